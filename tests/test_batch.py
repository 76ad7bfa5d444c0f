"""The batch helper and provider concurrency limits, on a real Prefect API."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.utilities.asyncutils import run_coro_as_sync

from flows.batch import run_batch
from flows.core.errors import ErrorCode, ToolflowsError
from flows.engine import run_tool_method
from flows.fake_provider import Fault
from flows.models import ErrorResult, ToolResult
from tests.helpers import PARAMS, fake_method

pytestmark = pytest.mark.usefixtures("prefect_api")


def batch(method, params_list, **options):
    return run_coro_as_sync(run_batch(method.model_dump(), params_list, **options))


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
