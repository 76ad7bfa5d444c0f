"""Servers the benchmarks run against, each in a process of its own.

- a Prefect API server (``prefect server start``) with its own PREFECT_HOME:
  already running before any measurement, so its start-up and its CPU are not
  charged to the toolflows process (its CPU is reported on the side);
- ``moto_server``: a real S3 API on loopback for the S3Bucket result storage.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.procstat import tree_cpu_seconds, wait_or_kill

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port nobody listens on right now (loopback)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was up")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{what} was not up after {timeout:.0f} s")
        time.sleep(0.25)


class _Service:
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        wait_or_kill(self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        """CPU of the server process tree so far."""
        return tree_cpu_seconds(self.pid) if self.process else 0.0


class PrefectServer(_Service):
    """``prefect server start`` on a free loopback port, on a private SQLite database."""

    def __init__(self, home: Path, log_path: Path) -> None:
        self.home = home
        self.log_path = log_path
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout: float = 180) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PREFECT_") or key == "PREFECT_SERVER_ANALYTICS_ENABLED"
        }
        env |= {"PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--no-ui", "--analytics-off"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        _wait_until_up(f"{self.api_url}/health", self.process, "the Prefect server", timeout)
        return self


class MotoServer(_Service):
    """moto's standalone S3 server (the S3 API, objects in its memory)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> MotoServer:
        command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_until_up(self.endpoint, self.process, "moto_server", timeout)
        return self
