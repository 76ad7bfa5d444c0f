"""The fake provider in a process of its own, scripted over a local RPC pipe.

``FakeProvider`` serves from a thread of the process that starts it: in the
benchmark process its CPU would be charged to toolflows. So ``python -m
bench.fakectl`` starts it in a child process and answers a few calls
(``script``, ``reset``, ``jobs`` ...) on a ``multiprocessing.connection``
listener, from the benchmark parent and from the worker processes alike.
Nothing is added to the fake: this only drives its public API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from bench.procstat import wait_or_kill

AUTHKEY_ENV = "BENCH_FAKE_AUTHKEY"
ADDRESS_ENV = "BENCH_FAKE_ADDRESS"


def _job_record(job: Any) -> dict[str, Any]:
    return {
        "id": job.id,
        "provider": job.provider,
        "created_wall": job.created_wall,
        "finished_wall": job.finished_wall,
        "seconds_until_done": job.behaviour.seconds_until_done,
        "polls": job.polls,
    }


def _serve() -> None:
    """Child side: start the fake, print its URLs, answer calls until ``stop``."""
    from testkit.fake_provider import FakeProvider

    authkey = bytes.fromhex(os.environ[AUTHKEY_ENV])
    with FakeProvider() as fake, Listener(("127.0.0.1", 0), authkey=authkey) as listener:
        calls: dict[str, Callable[..., Any]] = {
            "script": lambda provider, behaviour: fake.script(provider, **behaviour),
            "reset": fake.reset,
            "connections": lambda: fake.connections_opened,
            "requests": lambda **filters: [
                [r.method, r.path, r.query, r.time] for r in fake.requests(**filters)
            ],
            "jobs": lambda provider=None: [_job_record(job) for job in fake.jobs(provider)],
            "expected_sha256": fake.expected_sha256,
            "submits": fake.submits,
            "callbacks": lambda: [dataclasses.asdict(record) for record in fake.callbacks],
            "webhook_secrets": lambda: dict(fake.webhook_secrets),
            "cpu": lambda: _own_cpu(),
        }
        done = threading.Event()

        def answer(conn: Connection) -> None:
            with conn:
                while True:
                    try:
                        name, args, kwargs = conn.recv()
                    except (EOFError, OSError):
                        return
                    if name == "stop":
                        done.set()
                        conn.send(("ok", None))
                        return
                    try:
                        conn.send(("ok", calls[name](*args, **kwargs)))
                    except Exception as exc:  # report to the caller, keep serving
                        conn.send(("error", f"{type(exc).__name__}: {exc}"))

        def accept() -> None:
            while not done.is_set():
                try:
                    conn = listener.accept()
                except OSError:
                    return
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        host, port = listener.address
        print(
            json.dumps(
                {
                    "api_url": fake.api_url,
                    "cdn_url": fake.cdn_url,
                    "api_keys": fake.api_keys,
                    "address": f"{host}:{port}",
                }
            ),
            flush=True,
        )
        done.wait()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class FakeClient:
    """Calls into the fake's process (one connection; not shared between threads)."""

    def __init__(self, address: str, authkey: bytes) -> None:
        host, port = address.rsplit(":", 1)
        self._conn = Client((host, int(port)), authkey=authkey)

    @classmethod
    def from_env(cls) -> FakeClient:
        """In a worker: the fake its parent started (address and key in the environment)."""
        return cls(os.environ[ADDRESS_ENV], bytes.fromhex(os.environ[AUTHKEY_ENV]))

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._conn.send((name, args, kwargs))
        outcome, value = self._conn.recv()
        if outcome != "ok":
            raise RuntimeError(f"fake provider: {value}")
        return value

    def script(self, provider: str | None, **behaviour: Any) -> None:
        """Behaviour of the jobs submitted from now on (``FakeProvider.script``)."""
        self.call("script", provider, behaviour)

    def reset(self) -> None:
        self.call("reset")

    def connections(self) -> dict[str, int]:
        """TCP connections accepted per origin since the last reset."""
        return self.call("connections")

    def requests(self, **filters: Any) -> list[tuple[str, str, dict[str, str], float]]:
        """(method, path, query, arrival time) of recorded requests."""
        return [tuple(item) for item in self.call("requests", **filters)]

    def jobs(self, provider: str | None = None) -> list[dict[str, Any]]:
        return self.call("jobs", provider)

    def expected_sha256(self, job_id: str) -> str:
        return self.call("expected_sha256", job_id)

    def submits(self, provider: str | None = None) -> int:
        """Submit requests that reached the fake (answered or not)."""
        return self.call("submits", provider)

    def callbacks(self) -> list[dict[str, Any]]:
        """Every callback the fake attempted (``CallbackRecord`` fields; ``sent``: wall time)."""
        return self.call("callbacks")

    def webhook_secrets(self) -> dict[str, str]:
        """The secrets the fake signs its callbacks with, by provider."""
        return self.call("webhook_secrets")

    def cpu_seconds(self) -> float:
        """CPU the fake's process has spent so far."""
        return self.call("cpu")

    def close(self) -> None:
        self._conn.close()


class FakeProcess:
    """Parent side: the child process running the fake, and a client to script it."""

    def __init__(self) -> None:
        self.authkey = os.urandom(16)
        self.process: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self.client: FakeClient | None = None

    def __enter__(self) -> FakeProcess:
        env = {**os.environ, AUTHKEY_ENV: self.authkey.hex()}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fakectl"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the fake provider process did not start")
        self.info = json.loads(line)
        self.client = FakeClient(self.info["address"], self.authkey)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.client is not None:
            with contextlib.suppress(OSError, EOFError, RuntimeError):
                self.client.call("stop")
            self.client.close()
        if self.process is not None:
            wait_or_kill(self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def api_url(self) -> str:
        return self.info["api_url"]

    @property
    def cdn_url(self) -> str:
        return self.info["cdn_url"]

    @property
    def api_keys(self) -> dict[str, str]:
        return self.info["api_keys"]

    def env(self) -> dict[str, str]:
        """What a worker needs to reach this fake's control pipe."""
        return {AUTHKEY_ENV: self.authkey.hex(), ADDRESS_ENV: self.info["address"]}


if __name__ == "__main__":
    _serve()
