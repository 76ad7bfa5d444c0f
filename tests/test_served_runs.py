"""Cancelling a run cancels the remote job: in the run, and from the runner's hook."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling, Scheduled
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.prefect_stack import wait_for
from tests.helpers import PARAMS, fake_method
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.engine import run_tool_method

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_a_flow_run_timeout_cancels_the_remote_job(fresh_fake):
    fresh_fake.script("runway", polls_until_done=10_000)
    method = fake_method(fresh_fake, "runway", max_wait_seconds=60)

    with pytest.raises((ToolflowsError, TimeoutError)):
        run_coro_as_sync(
            run_tool_method.with_options(timeout_seconds=1.5)(method.model_dump(), PARAMS["runway"])
        )

    assert len(fresh_fake.cancels("runway")) == 1
    assert fresh_fake.cancels("runway")[0] == fresh_fake.jobs("runway")[0].id


def test_polling_timeout_without_cancel_on_timeout_leaves_the_job(fresh_fake):
    fresh_fake.script("runway", polls_until_done=10_000)
    method = fake_method(fresh_fake, "runway", max_wait_seconds=0.5, cancel_on_timeout=False)

    with pytest.raises(ToolflowsError) as raised:
        run_coro_as_sync(run_tool_method(method.model_dump(), PARAMS["runway"]))

    assert raised.value.code is ErrorCode.POLLING_TIMEOUT
    assert fresh_fake.cancels() == []


@contextmanager
def served(
    prefect_api: str, log: Path, flow: str = "toolflows.engine:run_tool_method"
) -> Iterator[tuple[str, int]]:
    """A flow (``module:name``) served by a runner process; yields the deployment and pid."""
    module, name = flow.split(":")
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    with log.open("w") as output:
        runner = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from {module} import {name}; "
                f"{name}.serve(name='cancel-test', print_starting_message=False)",
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"{_flow_name(module, name)}/cancel-test", runner.pid
        finally:
            runner.terminate()
            runner.wait(timeout=30)


def _flow_name(module: str, name: str) -> str:
    return getattr(importlib.import_module(module), name).name


def test_cancelling_a_served_run_mid_poll_cancels_the_remote_job(fresh_fake, prefect_api, tmp_path):
    fresh_fake.script("fal", polls_until_done=10_000)
    method = fake_method(
        fresh_fake, "fal", max_wait_seconds=120, interval_seconds=0.2, max_interval_seconds=0.5
    )
    with served(prefect_api, tmp_path / "runner.log") as (deployment, _):
        flow_run = start_and_cancel_mid_poll(fresh_fake, deployment, method)
        wait_for(lambda: fresh_fake.cancels("fal"), 60, "the provider to see the cancel")

    job = fresh_fake.jobs("fal")[0]
    assert fresh_fake.cancels("fal")[0] == job.id
    assert fresh_fake.submits("fal") == 1
    assert flow_run.id


def start_and_cancel_mid_poll(fake, served: str, method) -> object:
    """Run the deployment, wait until it polls, then cancel it as the UI does."""

    wait_for(lambda: deployment_exists(served), 60, "the served deployment")
    flow_run = run_deployment(
        served, parameters={"method": method.model_dump(), "params": PARAMS["fal"]}, timeout=0
    )
    wait_for(
        lambda: len(fake.requests(method="GET", path_prefix="/fal-ai/kling-video/requests")) >= 2,
        90,
        "the run to poll",
    )

    async def cancel() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

    run_coro_as_sync(cancel())
    return flow_run


def test_a_crashed_run_rerun_resumes_the_same_job_without_a_second_submit(
    fresh_fake, prefect_api, tmp_path
):
    """SIGKILL the run's process after the submit; the same flow run, rerun, resumes it."""
    fresh_fake.script("heygen", polls_until_done=6)
    method = fake_method(
        fresh_fake, "heygen", max_wait_seconds=120, interval_seconds=0.3, max_interval_seconds=0.5
    )
    parameters = {"method": method.model_dump(), "params": PARAMS["heygen"]}
    with served(prefect_api, tmp_path / "runner.log") as (deployment, runner_pid):
        wait_for(lambda: deployment_exists(deployment), 60, "the served deployment")
        result = crash_then_rerun(fresh_fake, deployment, runner_pid, parameters)

    assert_one_submit_collected(fresh_fake, result)


def crash_then_rerun(
    fake: Any,
    deployment: str,
    runner_pid: int,
    parameters: dict[str, Any],
    before_rerun: Callable[[], None] = lambda: None,
) -> Any:
    """Start a run, SIGKILL its process after the first status check, rerun it; its result."""
    flow_run = run_deployment(deployment, parameters=parameters, timeout=0)
    wait_for(lambda: status_checks(fake) >= 1, 90, "the first status check")
    os.kill(flow_run_process(runner_pid), signal.SIGKILL)
    wait_for(lambda: read_flow_run(flow_run.id).state_type.value == "CRASHED", 120, "a crash")
    before_rerun()
    rerun(flow_run.id)
    wait_for(lambda: read_flow_run(flow_run.id).state_type.value == "COMPLETED", 180, "done")
    # Read the result while the runner is up: a runner shutting down marks the runs
    # it still tracks (a process still exiting) as cancelled.
    return run_coro_as_sync(read_flow_run_result(flow_run.id))


def assert_one_submit_collected(fake: Any, result: Any) -> None:
    assert fake.submits("heygen") == 1
    job = fake.jobs("heygen")[0]
    assert result.task_id == job.id
    assert result.files[0].sha256 == fake.expected_sha256(job.id)


def rerun(flow_run_id: Any) -> None:
    """What the UI's "Retry" does."""

    async def schedule() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, Scheduled(), force=True)

    run_coro_as_sync(schedule())


def flow_run_process(runner_pid: int) -> int:
    """The pid of the process the runner spawned for the (only) flow run in progress."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == runner_pid and b"spawn_main" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"runner {runner_pid} runs no flow run")


def status_checks(fake) -> int:
    return len(fake.requests(method="GET", path_prefix="/v1/video_status.get"))


def deployment_exists(name: str) -> bool:
    async def read() -> bool:
        async with get_client() as client:
            try:
                await client.read_deployment_by_name(name)
            except ObjectNotFound:
                return False
            return True

    return run_coro_as_sync(read())


def read_flow_run(flow_run_id):
    async def read():
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    return run_coro_as_sync(read())


async def read_flow_run_result(flow_run_id):
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
    return await flow_run.state.aresult()
