"""Benchmark 2: many jobs at once, from one flow run.

N jobs of the HeyGen preset, each finishing ``job_seconds`` after its submit
(the fake's ``seconds_until_done``), all submitted at once by ``run_batch``
(``max_concurrency=N``): one flow run, one event loop, one pooled client.
Polling: a fixed interval (factor 1, cap = interval) with the default ±10 %
jitter, the same schedule for the baseline.

Measured in the worker that runs the flow: every job completes with the
served bytes; peak RSS (the kernel's high-water mark of the whole worker);
average CPU = CPU seconds / wall seconds over the batch; the detection lag
of each job = the moment the flow saw its success minus the moment the fake
finished it (``created_wall + seconds_until_done`` on the fake's clock).
"Saw" is when the engine logged ``Task <id> status: completed``, right after
parsing the answer; the fake's own record of the answering request
(``FakeJob.finished_wall``, set by the first check that found the job done)
is kept in the details, and stands in if that log line is not seen.

Baseline: a bare asyncio + httpx poller doing the same jobs (submit, the same
schedule, download with sha256 into a file), in its own worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from pathlib import Path
from typing import Any

from bench.common import HEYGEN, HEYGEN_PARAMS, MIB, Context, Row, percentile
from bench.procstat import RssSampler, tree_cpu_seconds
from toolflows.core.definition import PollingConfig
from toolflows.http import MAX_CONNECTIONS

FILE_SIZE = 64 * 1024
JITTER = PollingConfig().jitter
# httpcore scans every pooled connection for each request it places: with 100
# connections that scan dominates the bare poller's CPU. A small pool shows it.
SMALL_POOL = 10
PEAK_RSS_LIMIT = 1.5e9  # 1.5 GB
STATUS_PATH = "/v1/video_status.get"


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    args = {"jobs": sizes.jobs, "seconds": sizes.job_seconds, "interval": sizes.job_interval}
    tf = ctx.run_worker("many_jobs:measure_toolflows", server_pid=ctx.server.pid, **args)
    bare = ctx.run_worker("many_jobs:measure_bare", **args)
    jobs, interval = sizes.jobs, sizes.job_interval
    label = f"{jobs} jobs x {sizes.job_seconds:g} s"
    rows = [
        Row(
            f"2. {label}: jobs completed (sha256 verified)",
            tf["completed"],
            bare["completed"],
            "jobs",
            f"== {jobs}",
            tf["completed"] == jobs,
            details={"toolflows": tf, "bare": bare},
        ),
        Row(
            f"2. {label}: peak RSS",
            tf["peak_rss"] / MIB,
            bare["peak_rss"] / MIB,
            "MiB",
            f"<= {PEAK_RSS_LIMIT / MIB:.0f} MiB (1.5 GB)",
            tf["peak_rss"] <= PEAK_RSS_LIMIT,
        ),
        Row(
            f"2. {label}: average CPU over the run",
            tf["cpu_cores"],
            bare["cpu_cores"],
            "cores",
            "<= 1 core",
            tf["cpu_cores"] <= 1.0,
        ),
        Row(
            f"2. {label}: detection lag p95 (interval {interval:g} s)",
            tf["lag_p95"],
            bare["lag_p95"],
            "s",
            f"<= {interval:g} s",
            tf["lag_p95"] <= interval,
        ),
        Row(
            f"2. {label}: wall time of the batch",
            tf["wall"],
            bare["wall"],
            "s",
            "(context)",
            None,
        ),
        Row(
            f"2. {label}: Prefect server CPU during the batch",
            tf["server_cpu_cores"],
            None,
            "cores",
            "(context)",
            None,
        ),
    ]
    if sizes.context_runs:
        small = ctx.run_worker("many_jobs:measure_bare", max_connections=SMALL_POOL, **args)
        rows += [
            Row(
                f"2. {label}: bare poller, {SMALL_POOL} connections (not 32): lag p95",
                tf["lag_p95"],
                small["lag_p95"],
                "s",
                "(context)",
                None,
                details={"bare_small_pool": small},
            ),
            Row(
                f"2. {label}: bare poller, {SMALL_POOL} connections (not 32): CPU",
                tf["cpu_cores"],
                small["cpu_cores"],
                "cores",
                "(context)",
                None,
            ),
        ]
    return rows


def _lags(detected: dict[str, float], seconds: float, fake_jobs: list[dict[str, Any]]) -> dict:
    """Detection lags from the fake's job records, flow side when every job was seen.

    The flow side needs the engine's ``Task <id> status`` INFO line; should it
    be logged at another level or worded otherwise, the fake's side stands in
    (``lag_source`` says which) rather than the benchmark breaking.
    """
    flow_side, fake_side = [], []
    for job in fake_jobs:
        finished = job["created_wall"] + seconds
        if job["id"] in detected:
            flow_side.append(detected[job["id"]] - finished)
        if job["finished_wall"] is not None:
            fake_side.append(job["finished_wall"] - finished)
    source = "flow" if flow_side and len(flow_side) == len(fake_jobs) else "fake"
    lags = flow_side if source == "flow" else fake_side
    return {
        "lag_source": source,
        "lag_p50": percentile(lags, 0.5),
        "lag_p95": percentile(lags, 0.95),
        "lag_max": max(lags, default=float("nan")),
        "fake_side_lag_p50": percentile(fake_side, 0.5),
        "fake_side_lag_p95": percentile(fake_side, 0.95),
        "flow_side_lags_measured": len(flow_side),
    }


def _status_checks(fake: Any, jobs: int) -> float:
    return len(fake.requests(path_prefix=STATUS_PATH)) / max(jobs, 1)


def _timeline(fake: Any, started: float, detected: dict[str, float]) -> dict[str, float]:
    """When the phases of the batch ended, in seconds from its start (fake's records)."""
    submits = [at for method, _, _, at in fake.requests(method="POST", origin="api")]
    downloads = [at for _, _, _, at in fake.requests(origin="cdn")]
    finishes = [job["created_wall"] + job["seconds_until_done"] for job in fake.jobs("heygen")]
    return {
        "first_submit_at": min(submits, default=started) - started,
        "last_submit_at": max(submits, default=started) - started,
        "first_finish_at": min(finishes, default=started) - started,
        "last_finish_at": max(finishes, default=started) - started,
        "last_detection_at": max(detected.values(), default=started) - started,
        "last_download_at": max(downloads, default=started) - started,
    }


def measure_toolflows(jobs: int, seconds: float, interval: float, server_pid: int) -> dict:
    """Worker side: one ``run_batch`` flow run of ``jobs`` concurrent jobs."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    from bench.fakectl import FakeClient
    from bench.methods import LogWatch, method_at_fake
    from toolflows.batch import run_batch
    from toolflows.models import ToolResult

    fake = FakeClient.from_env()
    method = method_at_fake(
        HEYGEN,
        interval_seconds=interval,
        backoff_factor=1,
        max_interval_seconds=interval,
        jitter=JITTER,
        max_wait_seconds=seconds * 3 + 120,
    )
    fake.reset()
    fake.script("heygen", seconds_until_done=seconds, file_size=FILE_SIZE)
    watch = LogWatch("prefect.task_runs", "Task %s status: %s")
    server = tree_cpu_seconds(server_pid)
    fake_cpu = fake.cpu_seconds()
    with RssSampler(interval=0.1) as memory:
        started = time.time()
        cpu, wall = time.process_time(), time.perf_counter()
        batch = run_coro_as_sync(run_batch(method, [HEYGEN_PARAMS] * jobs, max_concurrency=jobs))
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
    server = tree_cpu_seconds(server_pid) - server
    watch.close()
    detected: dict[str, float] = {}
    for at, args in watch.seen:
        if len(args) == 2 and args[1] == "completed":
            detected.setdefault(str(args[0]), at)
    completed = sum(
        1
        for item in batch.results
        if isinstance(item, ToolResult)
        and item.files
        and item.files[0].sha256 == fake.expected_sha256(item.task_id)
    )
    errors = [item.error for item in batch.results if not isinstance(item, ToolResult)][:5]
    return {
        "completed": completed,
        "errors": errors,
        "wall": wall,
        "cpu": cpu,
        "cpu_cores": cpu / wall,
        "server_cpu": server,
        "server_cpu_cores": server / wall,
        "fake_cpu": fake.cpu_seconds() - fake_cpu,
        "rss_before_batch": memory.baseline,
        "rss_peak_sampled": memory.peak,
        "status_checks_per_job": _status_checks(fake, jobs),
        "timeline": _timeline(fake, started, detected),
        **_lags(detected, seconds, fake.jobs("heygen")),
    }


def measure_bare(
    jobs: int, seconds: float, interval: float, max_connections: int = MAX_CONNECTIONS
) -> dict:
    """Worker side: the same jobs with nothing but asyncio and httpx."""
    import httpx

    from bench.fakectl import FakeClient

    fake = FakeClient.from_env()
    fake.reset()
    fake.script("heygen", seconds_until_done=seconds, file_size=FILE_SIZE)
    api_url = os.environ["BENCH_FAKE_API_URL"]
    headers = {"X-Api-Key": os.environ["HEYGEN_API_KEY"]}
    files = Path.cwd() / "bare-files"
    files.mkdir(exist_ok=True)
    detected: dict[str, float] = {}

    async def one(client: httpx.AsyncClient) -> tuple[str, str]:
        # The key goes to the API only: the CDN refuses credentials (as S3 does).
        submitted = await client.post(
            f"{api_url}/v2/video/generate", json=HEYGEN_PARAMS, headers=headers
        )
        video_id = submitted.json()["data"]["video_id"]
        delay = interval  # the first check waits the interval, unjittered, like the engine
        while True:
            await asyncio.sleep(delay)
            answer = await client.get(
                f"{api_url}{STATUS_PATH}", params={"video_id": video_id}, headers=headers
            )
            data = answer.json()["data"]
            if data["status"] == "completed":
                detected[video_id] = time.time()
                break
            delay = interval * (1 + random.uniform(-JITTER, JITTER))
        digest = hashlib.sha256()
        async with client.stream("GET", data["video_url"]) as response:
            with (files / video_id).open("wb") as handle:
                async for chunk in response.aiter_bytes():
                    digest.update(chunk)
                    handle.write(chunk)
        return video_id, digest.hexdigest()

    async def batch() -> list[tuple[str, str]]:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one(client) for _ in range(jobs)))

    started = time.time()
    cpu, wall = time.process_time(), time.perf_counter()
    outcomes = asyncio.run(batch())
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    completed = sum(1 for job_id, sha256 in outcomes if sha256 == fake.expected_sha256(job_id))
    return {
        "max_connections": max_connections,
        "completed": completed,
        "wall": wall,
        "cpu": cpu,
        "cpu_cores": cpu / wall,
        "status_checks_per_job": _status_checks(fake, jobs),
        "timeline": _timeline(fake, started, detected),
        **_lags(detected, seconds, fake.jobs("heygen")),
    }
