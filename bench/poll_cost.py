"""Benchmark 1: the cost of one status check.

A status check is one Prefect task attempt (``Check job status``), retried by
``schedule_next_check``. With the shortest schedule a method may have (every
``MIN_POLL_INTERVAL_SECONDS``, factor 1, jitter 0) a job that needs N polls
makes N + 1 status requests close together; CPU per check is the engine's own
cost (a sleep costs none), and the wall time per check includes that interval.

toolflows: the ``run_tool_method`` flow on the HeyGen preset, against a
Prefect server running in its own process (its CPU is reported apart). The
fixed cost of a run (flow run creation, submit, download) is removed by
difference: cost per poll = (run with N polls - run with 0 polls) / N.

Baseline: a bare ``httpx.Client`` polling the same fake status endpoint N
times, parsing the JSON. Both run in one fresh worker process; the baseline
runs first, before Prefect is imported, so Prefect's background threads are
not charged to it.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import HEYGEN, HEYGEN_PARAMS, Context, Row, median
from bench.procstat import tree_cpu_seconds

TARGET_RATIO = 10.0
# Long enough for Prefect's log shipper (2 s batches) to send what a run logged:
# that work belongs to the run and must fall inside its CPU window.
SETTLE_SECONDS = 2.5


def run(ctx: Context) -> list[Row]:
    """Driver side: one worker measures both; turn its numbers into rows."""
    sizes = ctx.sizes
    result = ctx.run_worker(
        "poll_cost:measure",
        polls=sizes.polls,
        repeats=sizes.poll_repeats,
        server_pid=ctx.server.pid,
    )
    tf, bare = result["toolflows"], result["bare"]
    ratio = tf["cpu_per_poll"] / bare["cpu_per_poll"]
    polls = sizes.polls
    return [
        Row(
            f"1. status check: CPU per poll ({polls} polls)",
            tf["cpu_per_poll"] * 1e3,
            bare["cpu_per_poll"] * 1e3,
            "ms",
            f"<= {TARGET_RATIO:g}x baseline",
            ratio <= TARGET_RATIO,
            details={"toolflows": tf, "bare": bare},
        ),
        Row(
            "1. status check: wall per poll",
            tf["wall_per_poll"] * 1e3,
            bare["wall_per_poll"] * 1e3,
            "ms",
            "(context)",
            None,
        ),
        Row(
            "1. Prefect server CPU per poll (not in the row above)",
            tf["server_cpu_per_poll"] * 1e3,
            None,
            "ms",
            "(context)",
            None,
        ),
        Row(
            "1. TCP connections to the API origin per run",
            tf["api_connections"],
            bare["api_connections"],
            "",
            "== 1",
            tf["api_connections"] == 1,
            details={"toolflows_connections": tf["connections"]},
        ),
    ]


def measure(polls: int, repeats: int, server_pid: int) -> dict[str, Any]:
    """Worker side: the bare loop first (no Prefect loaded yet), then the flow."""
    bare = _measure_bare(polls, repeats)
    return {"bare": bare, "toolflows": _measure_toolflows(polls, repeats, server_pid)}


def _measure_bare(polls: int, repeats: int) -> dict[str, Any]:
    import os

    import httpx

    from bench.fakectl import FakeClient

    fake = FakeClient.from_env()
    api_url = os.environ["BENCH_FAKE_API_URL"]
    cpu, wall, connections = [], [], 0
    for _ in range(repeats + 1):  # the first round warms up
        fake.reset()
        fake.script("heygen", polls_until_done=polls + 1)
        headers = {"X-Api-Key": os.environ["HEYGEN_API_KEY"]}
        with httpx.Client(headers=headers, timeout=30) as client:
            submitted = client.post(f"{api_url}/v2/video/generate", json=HEYGEN_PARAMS)
            video_id = submitted.json()["data"]["video_id"]
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            for _ in range(polls):
                answer = client.get(f"{api_url}/v1/video_status.get", params={"video_id": video_id})
                status = answer.json()["data"]["status"]
                assert status in ("pending", "processing"), status
            cpu.append(time.process_time() - started_cpu)
            wall.append(time.perf_counter() - started_wall)
        connections = fake.connections()["api"]
    cpu, wall = cpu[1:], wall[1:]
    return {
        "cpu_per_poll": median(cpu) / polls,
        "wall_per_poll": median(wall) / polls,
        "cpu_runs": cpu,
        "wall_runs": wall,
        "api_connections": connections,
    }


def _measure_toolflows(polls: int, repeats: int, server_pid: int) -> dict[str, Any]:
    from prefect.utilities.asyncutils import run_coro_as_sync

    from bench.fakectl import FakeClient
    from bench.methods import method_at_fake
    from toolflows.core.definition import MIN_POLL_INTERVAL_SECONDS
    from toolflows.engine import run_tool_method

    fake = FakeClient.from_env()
    method = method_at_fake(
        HEYGEN,
        interval_seconds=MIN_POLL_INTERVAL_SECONDS,
        backoff_factor=1,
        jitter=0,
        max_interval_seconds=MIN_POLL_INTERVAL_SECONDS,
        max_wait_seconds=600,
    )

    def one_run(job_polls: int) -> dict[str, Any]:
        fake.reset()
        fake.script("heygen", polls_until_done=job_polls, file_size=4096)
        cpu, wall = time.process_time(), time.perf_counter()
        server, fake_cpu = tree_cpu_seconds(server_pid), fake.cpu_seconds()
        result = run_coro_as_sync(run_tool_method(method, HEYGEN_PARAMS))
        flow_wall = time.perf_counter() - wall
        flow_cpu = time.process_time() - cpu
        time.sleep(SETTLE_SECONDS)
        assert result.files and result.files[0].sha256 == fake.expected_sha256(result.task_id)
        return {
            "polls": job_polls,
            "status_requests": len(fake.requests(path_prefix="/v1/video_status.get")),
            "cpu": time.process_time() - cpu,
            "cpu_during_flow": flow_cpu,
            "wall": flow_wall,
            "server_cpu": tree_cpu_seconds(server_pid) - server,
            "fake_cpu": fake.cpu_seconds() - fake_cpu,
            "connections": fake.connections(),
        }

    one_run(0)  # warm-up: imports, the first flow run's set-up, the API client
    empty, full = [], []
    for _ in range(repeats):
        empty.append(one_run(0))
        full.append(one_run(polls))

    def per_poll(key: str) -> float:
        return (median([r[key] for r in full]) - median([r[key] for r in empty])) / polls

    assert all(r["status_requests"] == polls + 1 for r in full), full
    connections = full[-1]["connections"]
    return {
        "cpu_per_poll": per_poll("cpu"),
        "wall_per_poll": per_poll("wall"),
        "server_cpu_per_poll": per_poll("server_cpu"),
        "fake_cpu_per_poll": per_poll("fake_cpu"),
        "api_connections": connections["api"],
        "connections": connections,
        "runs_without_polls": empty,
        "runs_with_polls": full,
    }
