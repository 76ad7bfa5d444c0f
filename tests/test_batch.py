"""The batch helper and provider concurrency limits, on a real Prefect API."""

from __future__ import annotations

import json
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.fake_provider import Fault
from testkit.prefect_stack import wait_for
from tests.helpers import PARAMS, artifacts_of, fake_method, run
from toolflows import batch as batch_module
from toolflows import rounds as rounds_module
from toolflows.batch import run_batch
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.engine import run_tool_method
from toolflows.models import ErrorResult, ToolResult

pytestmark = pytest.mark.usefixtures("prefect_api")


def batch(method, params_list, **options):
    return run_coro_as_sync(run_batch(method.model_dump(), params_list, **options))


def batch_state(method, params_list, **options):
    return run_coro_as_sync(
        run_batch(method.model_dump(), params_list, return_state=True, **options)
    )


def task_run_names(flow_run_id, expected: int) -> list[str]:
    """Task runs are recorded from events, a moment after the run: wait for ``expected``."""

    async def read() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return [run.name.rsplit("-", 1)[0] for run in runs]

    return wait_for(
        lambda: (names := run_coro_as_sync(read())) and len(names) >= expected and names,
        timeout=30,
        what=f"{expected} task runs",
    )


def status_checks_per_job(fake, provider: str) -> list[int]:
    checks = [r for r in fake.requests(origin="api") if r.method == "GET"]
    return [sum(job.id in r.path + str(r.query) for r in checks) for job in fake.jobs(provider)]


def create_limit(name: str, limit: int) -> None:
    async def create() -> None:
        async with get_client() as client:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )

    run_coro_as_sync(create())


def most_jobs_running_at_once(fake, provider: str) -> int:
    """From the fake's records: overlap of [submit, last status check] per job."""
    spans = []
    for job in fake.jobs(provider):
        times = [r.time for r in fake.requests(origin="api") if job.id in r.path + str(r.query)]
        spans.append((job.created_wall, max(times)))
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_a_batch_runs_every_job_and_keeps_their_order(fresh_fake):
    fresh_fake.script("heygen", polls_until_done=2)
    prompts = [f"take {n}" for n in range(6)]
    params_list = [
        {"video_inputs": [{**PARAMS["heygen"]["video_inputs"][0], "voice": {"input_text": p}}]}
        for p in prompts
    ]

    result = batch(fake_method(fresh_fake, "heygen"), params_list)

    assert len(result.results) == 6
    assert all(isinstance(item, ToolResult) for item in result.results)
    assert fresh_fake.submits("heygen") == 6
    jobs = {job.id: job for job in fresh_fake.jobs("heygen")}
    for item, prompt in zip(result.results, prompts, strict=True):
        assert jobs[item.task_id].input["video_inputs"][0]["voice"]["input_text"] == prompt
        assert item.files[0].sha256 == fresh_fake.expected_sha256(item.task_id)


def test_one_failed_job_does_not_lose_the_others(fresh_fake):
    # The fake refuses the first submit after this script; the other jobs go through.
    fresh_fake.script("runway", polls_until_done=1, submit_fault=Fault.http(500))

    result = batch(fake_method(fresh_fake, "runway"), [PARAMS["runway"]] * 3, max_concurrency=1)

    outcomes = [type(item) for item in result.results]
    assert outcomes == [ErrorResult, ToolResult, ToolResult]
    assert result.results[0].error["code"] == "HTTP_ERROR"
    assert len(result.succeeded) == 2


def test_invalid_params_anywhere_in_the_batch_submit_nothing(fresh_fake):
    method = fake_method(fresh_fake, "fal")

    with pytest.raises(ToolflowsError) as raised:
        batch(method, [PARAMS["fal"], {"prompt": "no image"}, PARAMS["fal"]])

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert fresh_fake.submits() == 0


def test_a_failure_is_an_error_document_in_its_place(fresh_fake):
    fresh_fake.script("replicate", outcome="failure")

    result = batch(fake_method(fresh_fake, "replicate"), [PARAMS["replicate"]] * 2)

    assert all(isinstance(item, ErrorResult) for item in result.results)
    assert result.results[0].error["code"] == "TASK_FAILED"
    assert result.results[0].to_json_dict()["status"] == "error"


def test_a_concurrency_limit_caps_the_jobs_running_at_the_provider(fresh_fake):
    create_limit("fake-runway-jobs", 2)
    fresh_fake.script("runway", seconds_until_done=0.8)
    method = fake_method(fresh_fake, "runway")
    method.adapter_config.concurrency_limit = "fake-runway-jobs"

    result = batch(method, [PARAMS["runway"]] * 5)

    assert len(result.succeeded) == 5
    assert fresh_fake.submits("runway") == 5  # the same params five times: five jobs
    # Without the limit all five run at once. (Exactly 2 is not guaranteed: on a
    # loaded machine Prefect may grant the second slot only after the first job.)
    assert most_jobs_running_at_once(fresh_fake, "runway") <= 2


def test_an_unknown_concurrency_limit_fails_before_the_submit(fresh_fake):
    method = fake_method(fresh_fake, "runway")
    method.adapter_config.concurrency_limit = "no-such-limit"

    with pytest.raises(ToolflowsError) as raised:
        run_coro_as_sync(run_tool_method(method.model_dump(), PARAMS["runway"]))

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert "no-such-limit" in raised.value.message
    assert fresh_fake.submits() == 0


def test_a_batch_checks_its_jobs_in_rounds_each_on_its_own_schedule(fresh_fake):
    fresh_fake.script("heygen", polls_until_done=3)
    method = fake_method(fresh_fake, "heygen")
    run(method, PARAMS["heygen"])
    [checks_alone] = status_checks_per_job(fresh_fake, "heygen")
    fresh_fake.reset()
    fresh_fake.script("heygen", polls_until_done=3)

    state = batch_state(method, [PARAMS["heygen"]] * 8)

    assert len(state.result().succeeded) == 8
    # Each job is asked as often as it would be alone...
    assert status_checks_per_job(fresh_fake, "heygen") == [checks_alone] * 8
    # ...but the checks are rounds of one task, not a task run retrying per job.
    names = task_run_names(state.state_details.flow_run_id, expected=8 + 8 + 1)
    assert names.count("Submit job") == 8
    assert names.count("Download outputs") == 8
    assert "Check job status" not in names
    assert 1 <= names.count("Check job statuses") <= 3


def test_a_job_past_its_deadline_times_out_alone(fresh_fake):
    method = fake_method(fresh_fake, "runway", max_wait_seconds=1)
    fresh_fake.script("runway", polls_until_done=1)
    quick = batch(method, [PARAMS["runway"]])
    fresh_fake.script("runway", polls_until_done=10_000)

    result = batch(method, [PARAMS["runway"]] * 2)

    assert len(quick.succeeded) == 1
    assert [item.error["code"] for item in result.results] == ["POLLING_TIMEOUT"] * 2
    assert {item.error["taskId"] for item in result.results} == {
        job.id for job in fresh_fake.jobs("runway")[1:]
    }


def test_submits_in_flight_are_capped_so_the_first_jobs_are_checked_early(fresh_fake, monkeypatch):
    monkeypatch.setattr(batch_module, "SUBMITS_IN_FLIGHT", 2)
    fresh_fake.script("runway", polls_until_done=2, submit_seconds=0.5)

    result = batch(fake_method(fresh_fake, "runway"), [PARAMS["runway"]] * 6)

    assert len(result.succeeded) == 6
    submits = sorted(r.time for r in fresh_fake.requests(origin="api") if r.method == "POST")
    checks = [r.time for r in fresh_fake.requests(origin="api") if r.method == "GET"]
    # Without the cap all six arrive within milliseconds.
    assert most_arrivals_within(submits, 0.25) <= 2
    assert min(checks) < submits[-1]


def most_arrivals_within(times: list[float], seconds: float) -> int:
    return max(sum(t <= other < t + seconds for other in times) for t in times)


def test_checks_in_flight_are_capped(fresh_fake, monkeypatch):
    monkeypatch.setattr(rounds_module, "CHECKS_IN_FLIGHT", 2)
    # Every job's first check takes 0.3 s to answer.
    fresh_fake.script("runway", polls_until_done=1, status_faults=[Fault.delay(0.3)])

    result = batch(fake_method(fresh_fake, "runway"), [PARAMS["runway"]] * 6)

    assert len(result.succeeded) == 6
    checks = [r for r in fresh_fake.requests(origin="api") if r.method == "GET"]
    first_checks = [
        min(r.time for r in checks if job.id in r.path) for job in fresh_fake.jobs("runway")
    ]
    # The six first (slow) checks are due together; without the cap all six go at once.
    assert most_arrivals_within(first_checks, 0.25) <= 2


def test_downloads_in_flight_are_capped(fresh_fake, monkeypatch):
    monkeypatch.setattr(batch_module, "DOWNLOADS_IN_FLIGHT", 2)
    fresh_fake.script("runway", polls_until_done=1, download_faults=[Fault.delay(0.3)])

    result = batch(fake_method(fresh_fake, "runway"), [PARAMS["runway"]] * 6)

    assert len(result.succeeded) == 6
    downloads = [r.time for r in fresh_fake.requests(origin="cdn")]
    assert len(downloads) == 6
    assert most_arrivals_within(downloads, 0.25) <= 2


def test_a_batch_shows_one_table_instead_of_artifacts_per_job(fresh_fake):
    fresh_fake.script("replicate", polls_until_done=1)
    fresh_fake.script("runway", polls_until_done=1, submit_fault=Fault.http(500))

    state = batch_state(
        fake_method(fresh_fake, "runway"), [PARAMS["runway"]] * 3, max_concurrency=1
    )

    # (The untyped artifact of the flow's persisted result does not count.)
    artifacts = [a for a in artifacts_of(state.state_details.flow_run_id) if a.type]
    assert [artifact.type for artifact in artifacts] == ["table"]
    rows = artifacts[0].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert [row["outcome"] for row in rows] == ["error", "success", "success"]
    assert rows[0]["error"].startswith("HTTP_ERROR")
    files = [item.files[0] for item in state.result().succeeded]
    assert [row["file"] for row in rows[1:]] == [stored.uri for stored in files]
    assert [row["job id"] for row in rows[1:]] == [
        item.task_id for item in state.result().succeeded
    ]


def test_a_batch_that_times_out_cancels_every_job_at_the_provider(fresh_fake):
    fresh_fake.script("runway", polls_until_done=10_000)
    method = fake_method(fresh_fake, "runway", max_wait_seconds=60)
    timed = run_batch.with_options(timeout_seconds=2)

    with pytest.raises((ToolflowsError, TimeoutError)):
        run_coro_as_sync(timed(method.model_dump(), [PARAMS["runway"]] * 3))

    jobs = {job.id for job in fresh_fake.jobs("runway")}
    assert len(jobs) == 3
    assert sorted(fresh_fake.cancels("runway")) == sorted(jobs)
    # The rounds stopped with the batch: no job is checked after its cancel.
    checks = [r for r in fresh_fake.requests(origin="api") if r.method == "GET"]
    time.sleep(1)
    assert [r for r in fresh_fake.requests(origin="api") if r.method == "GET"] == checks
