"""Waiting costs nothing: deployment runs suspend while ``toolflows waiter`` watches their jobs.

A real stack of its own: ``prefect server start``, a process work pool and
worker, the generic flow deployed on it, the fake provider over HTTP, and the
waiter as a ``toolflows waiter`` process (killed, restarted, doubled). Runs are
started by deployment name, as the UI does, and checked through the API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Cancelling
from prefect.types.entrypoint import EntrypointType
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.prefect_stack import (
    BIN,
    aimed_at_api,
    background,
    free_port,
    log_tails,
    prefect_server,
    process_worker,
    read_flow_run,
    stack_env,
    stop_group,
    wait_for,
)
from tests.helpers import (
    PARAMS,
    PRESETS,
    assert_completed_with_the_served_files,
    deploy_generic_flow,
    fake_method,
    states_of,
)
from toolflows.core.definition import WebhookConfig
from toolflows.suspend import WAITER_LIMIT, WAITING_TAG
from toolflows.waiter import waiter_flow

POOL = "waiting"
DEPLOYMENT = "run_tool_method/waits"
RUN_SECONDS = 180
# Long enough for all of a test's runs to be suspended at once on a loaded 2-core machine
# (a flow run process takes 5-15 s to start).
JOB_SECONDS = 40
# The job's polling while suspended: the waiter's first check after 1 s, then every 2 s.
POLLING = {"interval_seconds": 1, "max_interval_seconds": 2, "max_wait_seconds": 240}


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    processes: ExitStack
    waiters: list[subprocess.Popen[Any]] = field(default_factory=list)
    public_port: int = 0

    def start_waiter(self, name: str, *, listen: bool = True) -> subprocess.Popen[Any]:
        command = [str(BIN / "toolflows"), "waiter", "--scan-seconds", "1"]
        if listen:
            port = self.public_port
            command += ["--listen", f"127.0.0.1:{port}"]
            command += ["--public-url", f"http://127.0.0.1:{port}/toolflows"]
        waiter = self.processes.enter_context(
            background(command, self.env, self.home / f"waiter-{name}.log", self.home)
        )
        self.waiters.append(waiter)
        return waiter

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def log_tails(self) -> str:
        return log_tails(self.home)


@pytest.fixture(scope="module")
def stack(fake, tmp_path_factory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("waiter-stack")
    api_url = f"http://127.0.0.1:{free_port()}/api"
    provider_keys = {variable: fake.api_keys[key] for key, _, variable in PRESETS.values()}
    env = stack_env(
        home,
        api_url,
        **provider_keys,
        REPLICATE_WEBHOOK_SECRET=fake.webhook_secrets["replicate"],
    )
    server_env = {
        **env,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        # Expired leases (a killed waiter's claim) are freed within a second.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
    }
    os.environ.update({key: env[key] for key in (*provider_keys, "REPLICATE_WEBHOOK_SECRET")})
    with ExitStack() as processes:
        processes.enter_context(prefect_server(home, server_env, api_url))
        processes.enter_context(aimed_at_api(api_url))
        run_coro_as_sync(deploy_generic_flow(POOL, DEPLOYMENT.split("/")[1]))
        worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
        processes.enter_context(process_worker(POOL, worker_env, home / "worker.log", home))
        built = Stack(home, env, processes, public_port=free_port())
        built.start_waiter("first")
        yield built


def start_runs(method: Any, params: dict[str, Any], count: int) -> list[FlowRun]:
    definition = method.model_dump(mode="json", by_alias=True)
    return [
        run_deployment(DEPLOYMENT, parameters={"method": definition, "params": params}, timeout=0)
        for _ in range(count)
    ]


def current(runs: list[FlowRun]) -> list[FlowRun]:
    return [run_coro_as_sync(read_flow_run(run.id)) for run in runs]


def wait_until(stack: Stack, runs: list[FlowRun], condition: Any, what: str) -> list[FlowRun]:
    def check() -> list[FlowRun] | None:
        now = current(runs)
        return now if all(condition(run) for run in now) else None

    try:
        return wait_for(check, RUN_SECONDS, what)
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}\n{stack.log_tails()}") from None


def suspended(run: FlowRun) -> bool:
    return bool(run.state and run.state.name == "Suspended")


def final(run: FlowRun) -> bool:
    return bool(run.state and run.state.is_final())


def flow_run_processes(stack: Stack) -> list[int]:
    """Flow run processes alive under the worker (the engine's command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"prefect.engine" in command and stack.home.name.encode() in environ:
            found.append(int(proc.name))
    return found


def resumes(run: FlowRun) -> int:
    """How often the run went from Suspended back to scheduled."""
    names = [state.name for state in states_of(run.id)]
    return sum(
        1 for before, after in pairwise(names) if before == "Suspended" and after != "Suspended"
    )


def test_suspended_runs_hold_no_process_outlive_a_killed_waiter_and_complete_once(
    stack, fresh_fake
):
    fresh_fake.script("runway", seconds_until_done=JOB_SECONDS)
    method = fake_method(fresh_fake, "runway", wait="suspend", **POLLING)

    runs = start_runs(method, PARAMS["runway"], 3)
    waiting = wait_until(stack, runs, suspended, "the runs to suspend")
    # A process exits a moment after its run suspends.
    wait_for(lambda: not flow_run_processes(stack), 30, "the flow run processes to exit")
    still_waiting = current(runs)
    victim = stack.waiters.pop()
    os.killpg(victim.pid, signal.SIGKILL)  # mid-wait, with nothing saved anywhere
    victim.wait()
    stack.start_waiter("restarted")  # takes over once the killed one's claim runs out
    done = wait_until(stack, runs, final, "the runs to finish")

    assert all(suspended(run) for run in still_waiting)
    assert all(WAITING_TAG in run.tags for run in still_waiting)
    for run in still_waiting:  # the wait record keeps ${VAR}, never the value
        record = run.labels["toolflows.wait"]
        assert "${RUNWAYML_API_SECRET}" in record
        assert fresh_fake.api_keys["runway"] not in record
    for run in waiting:
        assert "runway/image_to_video job" in run.state.message
        assert "toolflows waiter resumes this run" in run.state.message
    assert_completed_with_the_served_files(done, fresh_fake)
    assert fresh_fake.submits("runway") == 3
    assert [resumes(run) for run in done] == [1, 1, 1]
    assert all(WAITING_TAG not in run.tags for run in done)


def first_resume_at(run: FlowRun) -> float:
    """When the run left its first suspension (the waiter's resume), epoch seconds."""
    states = states_of(run.id)
    for before, after in pairwise(states):
        if before.name == "Suspended" and after.name != "Suspended":
            return after.timestamp.timestamp()
    raise AssertionError(f"the run never left a suspension: {[s.name for s in states]}")


def replicate_with_webhook(fake: Any, **webhook: Any) -> Any:
    method = fake_method(fake, "replicate", wait="suspend", **POLLING)
    method.adapter_config.webhook = WebhookConfig(
        field="webhook",
        signing="standard-webhooks",
        secret="${REPLICATE_WEBHOOK_SECRET}",
        **webhook,
    )
    return method


def test_a_callback_resumes_the_run_long_before_the_backstop_check(stack, fresh_fake):
    fresh_fake.script("replicate", seconds_until_done=8, callback="duplicate")
    method = replicate_with_webhook(fresh_fake, backstop_seconds=120)

    runs = start_runs(method, PARAMS["replicate"], 2)
    done = wait_until(stack, runs, final, "the runs to finish")

    assert_completed_with_the_served_files(done, fresh_fake)
    for run in done:
        task_id = run_coro_as_sync(run.state.aresult()).task_id
        sent = [record for record in fresh_fake.callbacks if record.job_id == task_id]
        assert [record.status for record in sent] == [202, 202]  # a duplicate, answered
        assert all("/toolflows/hooks/" in r.url and str(run.id) in r.url for r in sent)
        # Without the callback the next check was due 120 s after the submit.
        assert first_resume_at(run) - sent[0].sent < 10
        assert resumes(run) == 1
    assert fresh_fake.submits("replicate") == 2


def test_a_callback_url_in_a_query_parameter_wakes_the_waiter(stack, fresh_fake):
    fresh_fake.script("fal", seconds_until_done=8)
    method = fake_method(fresh_fake, "fal", wait="suspend", **POLLING)
    method.adapter_config.webhook = WebhookConfig(query="fal_webhook", backstop_seconds=120)

    [run] = start_runs(method, PARAMS["fal"], 1)
    [done] = wait_until(stack, [run], final, "the run to finish")

    [callback] = fresh_fake.callbacks
    assert callback.status == 202
    assert first_resume_at(done) - callback.sent < 10
    assert_completed_with_the_served_files([done], fresh_fake)


def test_a_forged_callback_is_refused_and_resumes_nothing(stack, fresh_fake):
    fresh_fake.script("replicate", seconds_until_done=10, callback="forge")
    method = replicate_with_webhook(fresh_fake, backstop_seconds=120)

    [run] = start_runs(method, PARAMS["replicate"], 1)
    [done] = wait_until(stack, [run], final, "the run to finish")

    forged = [record for record in fresh_fake.callbacks if record.forged]
    genuine = [record for record in fresh_fake.callbacks if not record.forged]
    assert [record.status for record in forged] == [401]
    assert [record.status for record in genuine] == [202]
    job = fresh_fake.jobs("replicate")[0]
    assert first_resume_at(done) >= job.finished_wall
    assert resumes(done) == 1
    assert_completed_with_the_served_files([done], fresh_fake)


def test_with_every_callback_lost_the_backstop_checks_still_finish_the_run(stack, fresh_fake):
    fresh_fake.script("replicate", seconds_until_done=4, callback="drop")
    method = replicate_with_webhook(fresh_fake, backstop_seconds=3)

    [run] = start_runs(method, PARAMS["replicate"], 1)
    [done] = wait_until(stack, [run], final, "the run to finish")

    assert fresh_fake.callbacks == []
    assert_completed_with_the_served_files([done], fresh_fake)


def test_auto_suspends_only_a_job_still_running_after_the_threshold(stack, fresh_fake):
    fresh_fake.script("runway", seconds_until_done=12)
    long_job = fake_method(fresh_fake, "runway", wait="auto", suspend_after_seconds=3, **POLLING)
    [slow] = start_runs(long_job, PARAMS["runway"], 1)
    [slow_done] = wait_until(stack, [slow], final, "the long job's run to finish")

    fresh_fake.script("runway", seconds_until_done=1)
    [quick] = start_runs(
        fake_method(fresh_fake, "runway", wait="auto", suspend_after_seconds=30, **POLLING),
        PARAMS["runway"],
        1,
    )
    [quick_done] = wait_until(stack, [quick], final, "the quick job's run to finish")

    assert "Suspended" in [state.name for state in states_of(slow_done.id)]
    assert "Suspended" not in [state.name for state in states_of(quick_done.id)]
    assert_completed_with_the_served_files([slow_done, quick_done], fresh_fake)


def test_a_suspended_job_keeps_its_concurrency_slot_until_it_ends(stack, fresh_fake):
    run_coro_as_sync(create_limit("runway-jobs", 1))
    fresh_fake.script("runway", seconds_until_done=10)
    method = fake_method(fresh_fake, "runway", wait="suspend", **POLLING)
    method.adapter_config.concurrency_limit = "runway-jobs"

    runs = start_runs(method, PARAMS["runway"], 2)
    wait_for(lambda: any(suspended(run) for run in current(runs)), RUN_SECONDS, "a suspension")
    time.sleep(5)  # the second run would have submitted by now, were the slot free
    submitted_while_suspended = fresh_fake.submits("runway")
    slots_while_suspended = run_coro_as_sync(active_slots("runway-jobs"))
    done = wait_until(stack, runs, final, "the runs to finish")

    assert submitted_while_suspended == 1
    assert slots_while_suspended == 1
    assert_completed_with_the_served_files(done, fresh_fake)
    first, second = sorted(fresh_fake.jobs("runway"), key=lambda job: job.created_wall)
    assert second.created_wall >= first.finished_wall
    wait_for(lambda: run_coro_as_sync(active_slots("runway-jobs")) == 0, 30, "the slot to be free")


def test_cancelling_a_suspended_run_cancels_its_job_at_the_provider(stack, fresh_fake):
    fresh_fake.script("runway", seconds_until_done=600)
    method = fake_method(
        fresh_fake, "runway", wait="suspend", **{**POLLING, "max_wait_seconds": 900}
    )
    [run] = start_runs(method, PARAMS["runway"], 1)
    wait_until(stack, [run], suspended, "the run to suspend")

    run_coro_as_sync(cancel_like_the_ui(run.id))

    job = fresh_fake.jobs("runway")[0]
    wait_for(lambda: job.id in fresh_fake.cancels("runway"), 60, "the remote cancel")
    [cancelled] = wait_until(stack, [run], final, "the run to be cancelled")
    assert cancelled.state.is_cancelled()
    wait_for(
        lambda: WAITING_TAG not in run_coro_as_sync(read_flow_run(run.id)).tags, 30, "untagging"
    )
    assert fresh_fake.cancels("runway").count(job.id) == 1


def test_a_second_waiter_stands_by_then_takes_over(stack, fresh_fake):
    active = stack.waiters[-1]
    stack.start_waiter("second")
    wait_for(lambda: "standing by" in stack.log("waiter-second"), 60, "the standby")
    fresh_fake.script("runway", seconds_until_done=5)
    method = fake_method(fresh_fake, "runway", wait="suspend", **POLLING)
    first_runs = wait_until(
        stack, start_runs(method, PARAMS["runway"], 2), final, "the runs to finish"
    )
    resumed_by_standby = "Resumed flow run" in stack.log("waiter-second")

    stop_group(active)  # SIGTERM: the claim is released at once
    [later] = start_runs(method, PARAMS["runway"], 1)
    [later_done] = wait_until(stack, [later], final, "the run after the handover")

    assert not resumed_by_standby
    assert f"Resumed flow run {later.id}" in stack.log("waiter-second")
    assert_completed_with_the_served_files([*first_runs, later_done], fresh_fake)


async def create_limit(name: str, limit: int) -> None:
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit)
        )


async def active_slots(name: str) -> int:
    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


async def cancel_like_the_ui(flow_run_id: Any) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)


def test_the_waiter_runs_as_a_deployment_of_its_flow(stack, fresh_fake):
    for waiter in stack.waiters:
        stop_group(waiter)  # SIGTERM: each releases its claim
    run_coro_as_sync(deploy_waiter_flow())
    waiter_run = run_deployment(
        "toolflows-waiter/served", parameters={"scan_seconds": 1}, timeout=0
    )
    wait_for(lambda: run_coro_as_sync(active_slots(WAITER_LIMIT)) == 1, 120, "its claim")
    fresh_fake.script("runway", seconds_until_done=15)
    method = fake_method(fresh_fake, "runway", wait="suspend", **POLLING)

    [run] = start_runs(method, PARAMS["runway"], 1)
    [done] = wait_until(stack, [run], final, "the run to finish")

    assert run_coro_as_sync(read_flow_run(waiter_run.id)).state.is_running()
    assert resumes(done) == 1
    assert_completed_with_the_served_files([done], fresh_fake)


async def deploy_waiter_flow() -> None:
    deployment = await waiter_flow.ato_deployment(
        name="served", work_pool_name=POOL, entrypoint_type=EntrypointType.MODULE_PATH
    )
    await deployment.aapply()
