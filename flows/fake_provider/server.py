"""FakeProvider: both origins on their own event loop thread, plus the test-facing API.

A thread of its own lets sync tests, async tests and code running inside another event
loop (Prefect's) all talk to it over real sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Any, Literal

from toolflows.fake_provider.cdn import Cdn
from toolflows.fake_provider.http import HttpServer, Reply, Request
from toolflows.fake_provider.model import Behaviour, FakeJob, RecordedRequest
from toolflows.fake_provider.providers import APIS, Route
from toolflows.fake_provider.state import State

HOST = "127.0.0.1"
DEFAULT_API_KEYS = {
    "heygen": "hg_test_key",
    "fal": "fal_test_key",
    "runway": "key_test",
    "replicate": "r8_test",
    "generic": "generic_test_key",
}
PROVIDERS = ("heygen", "fal", "runway", "replicate", "operation", "openai", "jobs")


class FakeProvider:
    """Fake HeyGen/FAL/Runway/Replicate (+ generic APIs) and their CDN, on 127.0.0.1.

    `with FakeProvider() as fake:` starts both servers; `fake.api_url` takes the provider
    routes, `fake.cdn_url` serves output files. `api_keys["generic"]` is the Bearer token
    of the generic routes (providers "operation", "openai", "jobs").
    """

    def __init__(self, port: int = 0, cdn_port: int = 0) -> None:
        self.api_keys = dict(DEFAULT_API_KEYS)
        self.api_url = ""
        self.cdn_url = ""
        self._ports = (port, cdn_port)
        self._state = State(self.api_keys)
        self._cdn = Cdn(self._state)
        self._routes: list[Route] = [route for api in APIS for route in api(self._state).routes()]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[HttpServer] = []

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeProvider:
        if self._loop is not None:
            raise RuntimeError("FakeProvider already started")
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="fake-provider", daemon=True)
        self._thread.start()
        self._loop = loop
        self._servers = [
            HttpServer(self._api, lambda: self._state.connected("api")),
            HttpServer(self._cdn.handle, lambda: self._state.connected("cdn")),
        ]
        ports = [
            self._run(server.start(HOST, p))
            for server, p in zip(self._servers, self._ports, strict=True)
        ]
        self.api_url, self.cdn_url = (f"http://{HOST}:{port}" for port in ports)
        self._state.api_url, self._state.cdn_url = self.api_url, self.cdn_url
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        for server in self._servers:
            self._run(server.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def _run(self, coroutine: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- routing ------------------------------------------------------------------------

    async def _api(self, request: Request) -> Reply:
        self._state.record("api", request)
        allowed = False
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            if route.method != request.method:
                allowed = True
                continue
            if route.submit:
                self._state.count_submit(route.api.name)
            refusal = route.api.check(request)
            if refusal is not None:
                return refusal
            return await route.handler(request, **match.groupdict())
        if allowed:
            return Reply.json(405, {"detail": "Method Not Allowed"})
        return Reply.json(404, {"detail": "Not Found"})

    # -- scripting and inspection -------------------------------------------------------

    def script(self, provider: str | None = None, **behaviour: Any) -> None:
        """Behaviour of the jobs submitted from now on (to `provider`, or to any provider
        without a script of its own). The submit fault hits the next submit only."""
        if provider is not None and provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; one of {PROVIDERS}")
        self._state.script(provider, Behaviour(**behaviour))

    def requests(
        self,
        *,
        method: str | None = None,
        path_prefix: str | None = None,
        origin: Literal["api", "cdn"] | None = None,
    ) -> list[RecordedRequest]:
        with self._state.lock:
            recorded = list(self._state.recorded)
        return [
            r
            for r in recorded
            if (method is None or r.method == method.upper())
            and (path_prefix is None or r.path.startswith(path_prefix))
            and (origin is None or r.origin == origin)
        ]

    def submits(self, provider: str | None = None) -> int:
        """Submit requests that reached the server, answered or not."""
        with self._state.lock:
            counts = self._state.submit_counts
            return sum(counts.values()) if provider is None else counts[provider]

    def cancels(self, provider: str | None = None) -> list[str]:
        """Job ids named by cancel requests, in order (twice if cancelled twice)."""
        with self._state.lock:
            return [job for who, job in self._state.cancelled if provider in (None, who)]

    @property
    def connections_opened(self) -> dict[str, int]:
        """TCP connections accepted, per origin ("api", "cdn")."""
        with self._state.lock:
            return {"api": self._state.connections["api"], "cdn": self._state.connections["cdn"]}

    @property
    def credential_leaks(self) -> list[tuple[str, str]]:
        """(path, header name) of every credential-bearing header the CDN refused."""
        with self._state.lock:
            return list(self._state.leaks)

    def job(self, job_id: str) -> FakeJob:
        with self._state.lock:
            return self._state.jobs[job_id]

    def jobs(self, provider: str | None = None) -> list[FakeJob]:
        with self._state.lock:
            return [j for j in self._state.jobs.values() if provider in (None, j.provider)]

    def expected_sha256(self, job_id: str, output_index: int = 0) -> str:
        """sha256 of what the CDN serves for that output (index 0 = primary)."""
        return self.job(job_id).files[output_index].sha256()

    def reset(self) -> None:
        """Forget scripts, jobs and recordings (open connections stay open)."""
        self._state.reset()


def main(argv: list[str] | None = None) -> None:
    """Run the fake in the foreground for manual demos until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m flows.fake_provider", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0, help="API port (default: any free)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (default: any free)")
    args = parser.parse_args(argv)
    with FakeProvider(port=args.port, cdn_port=args.cdn_port) as fake:
        print(f"API  {fake.api_url}", flush=True)
        print(f"CDN  {fake.cdn_url}", flush=True)
        for provider, key in fake.api_keys.items():
            print(f"key  {provider}: {key}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
