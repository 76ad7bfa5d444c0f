"""What the benchmarks share: result rows, sizes, and running a measurement in a worker.

Each toolflows measurement runs in a fresh worker process (``python -m
bench.worker``): its CPU and peak RSS are its own, not those of the
benchmark driver, the Prefect server or the fake provider, and one
benchmark's memory high-water mark never leaks into the next.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.fakectl import FakeProcess
from bench.services import MotoServer, PrefectServer

MIB = 1024 * 1024
GIB = 1024 * MIB

# Presets the benchmarks run (inventoryKey, name), as shipped in deployments/presets.
HEYGEN = ("heygen", "create_avatar_video_v2")
REPLICATE = ("replicate", "create_prediction")
RUNWAY = ("runway", "image_to_video")
# The variables the presets' ${...} headers read, and the fake's key for each.
KEY_VARIABLES = {
    "HEYGEN_API_KEY": "heygen",
    "REPLICATE_API_TOKEN": "replicate",
    "RUNWAYML_API_SECRET": "runway",
}

HEYGEN_PARAMS: dict[str, Any] = {
    "video_inputs": [
        {
            "character": {"type": "avatar", "avatar_id": "Daisy-inskirt-20220818"},
            "voice": {"type": "text", "input_text": "Hello", "voice_id": "v1"},
        }
    ]
}
REPLICATE_PARAMS: dict[str, Any] = {"version": "39ed52f2", "input": {"prompt": "corgi"}}
RUNWAY_PARAMS: dict[str, Any] = {
    "model": "gen4_turbo",
    "promptImage": "https://example.com/first.png",
    "ratio": "1280:720",
}


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is: the full suite, or the CI smoke run."""

    smoke: bool
    polls: int  # status checks of benchmark 1
    poll_repeats: int  # runs of each kind in benchmark 1 (median taken)
    jobs: int  # concurrent jobs of benchmark 2
    job_seconds: float  # simulated work of each job
    job_interval: float  # the fixed polling interval of benchmark 2
    download_bytes: int  # output size of benchmark 3
    curl_repeats: int
    startup_repeats: int  # runs of each kind in benchmark 5 (median taken)
    context_runs: bool  # extra baselines shown for context only (small pool, moto alone)
    waiting_runs: int  # deployment runs of benchmark 6, suspended and inline
    waiting_job_seconds: float  # how long each of their jobs takes
    webhook_runs: int  # runs of benchmark 6's webhook rows (called back, then dropped)
    webhook_job_seconds: float
    waiter_kill_runs: int  # runs of benchmark 6's SIGKILL row (0: not measured)
    waiting_own_server: bool  # benchmark 6 on a Prefect server of its own, on PostgreSQL

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            smoke=False,
            polls=200,
            poll_repeats=3,
            jobs=1000,
            job_seconds=60,
            job_interval=5,
            download_bytes=GIB,
            curl_repeats=3,
            startup_repeats=3,
            context_runs=True,
            waiting_runs=100,
            # Not the 3 minutes: starting 100 flow run processes takes ~7 min on 2
            # cores, and every run must be waiting at once.
            waiting_job_seconds=600,
            webhook_runs=10,
            webhook_job_seconds=60,
            waiter_kill_runs=5,
            waiting_own_server=True,
        )

    @classmethod
    def small(cls) -> Sizes:
        return cls(
            smoke=True,
            polls=100,
            poll_repeats=1,
            jobs=20,
            job_seconds=3,
            job_interval=1,
            download_bytes=16 * MIB,
            curl_repeats=1,
            startup_repeats=1,
            context_runs=False,
            waiting_runs=2,
            # Just under the preset's third status check (23.75 s): no wait for a fourth.
            waiting_job_seconds=22,
            webhook_runs=2,
            webhook_job_seconds=10,
            waiter_kill_runs=0,
            waiting_own_server=False,
        )


@dataclass
class Row:
    """One line of the results table: toolflows beside its baseline, judged on a target.

    ``met`` is None for figures shown for context only (no target applies).
    """

    figure: str
    toolflows: float | None
    baseline: float | None
    unit: str
    target: str
    met: bool | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.toolflows is None or not self.baseline:
            return None
        return self.toolflows / self.baseline

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def clean_env() -> dict[str, str]:
    """The environment without Prefect settings: each process gets exactly ours."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}


@dataclass
class Context:
    """The services of one benchmark session and where its files go."""

    sizes: Sizes
    workdir: Path
    fake: FakeProcess
    server: PrefectServer
    moto: MotoServer | None = None
    _workers: int = 0

    def key_env(self) -> dict[str, str]:
        """The preset credentials, resolved from the fake's keys."""
        return {variable: self.fake.api_keys[key] for variable, key in KEY_VARIABLES.items()}

    def worker_env(self) -> dict[str, str]:
        return {
            **clean_env(),
            **self.fake.env(),
            **self.key_env(),
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            "PREFECT_API_URL": self.server.api_url,
            "PREFECT_HOME": str(self.workdir / "worker-home"),
            "PREFECT_LOCAL_STORAGE_PATH": str(self.workdir / "storage"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "BENCH_FAKE_API_URL": self.fake.api_url,
            "BENCH_FAKE_CDN_URL": self.fake.cdn_url,
        }

    def run_worker(self, target: str, **args: Any) -> dict[str, Any]:
        """Run ``bench.<module>:<function>(**args)`` in a fresh process; its JSON result.

        The result gains ``peak_rss`` (bytes, the kernel's high-water mark of
        the whole worker) and ``worker_wall`` (seconds, process start to exit).
        """
        self._workers += 1
        name = f"worker-{self._workers}-{target.replace(':', '-')}"
        result_path = self.workdir / f"{name}.json"
        log_path = self.workdir / f"{name}.log"
        command = [sys.executable, "-m", "bench.worker", target, json.dumps(args)]
        started = time.perf_counter()
        with log_path.open("wb") as log:
            log.write(f"{shlex.join([*command, str(result_path)])}\n".encode())
            log.flush()
            child = subprocess.Popen(
                [*command, str(result_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.worker_env(),
                cwd=self.workdir,
            )
            _, wait_status, usage = os.wait4(child.pid, 0)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 or not result_path.exists():
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker {target} exited with {code} (log {log_path}):\n{tail}")
        result = json.loads(result_path.read_text())
        result["peak_rss"] = usage.ru_maxrss * 1024
        result["worker_wall"] = time.perf_counter() - started
        return result


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 1,000 values is the 950th smallest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
