"""Paid jobs stay paid once: polling settings that make sense, one idempotency key per job,
a persisted submit that survives a block edit, cancels that reach every job of a batch,
bodies sent as the method says, and pipelines that hand on the output they were told to.

Every run talks real HTTP to the fake provider, on a real Prefect API.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.states import Cancelling
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.fake_provider import Fault
from testkit.prefect_stack import moto_s3, save_s3_bucket, wait_for
from tests.helpers import PARAMS, fake_method, generic_definition, run
from tests.test_served_runs import (
    assert_one_submit_collected,
    crash_then_rerun,
    deployment_exists,
    flow_run_process,
    served,
)
from toolflows.batch import run_batch
from toolflows.core import backoff
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.deployments.registry import register_definitions
from toolflows.engine import run_tool_method
from toolflows.models import SubmittedJob
from toolflows.pipelines import image_to_video_pipeline

pytestmark = pytest.mark.usefixtures("prefect_api")

JOBS_STATUS = "/v2/jobs/{id}"


def jobs_definition(fake: Any, **polling: Any) -> dict[str, Any]:
    """The fake's generic job API (202 while running), written as a user would."""
    definition = generic_definition(fake, "/v2/jobs", **polling)
    definition["adapterConfig"]["polling"].setdefault("statusUrl", JOBS_STATUS)
    return definition


# -- polling settings: no busy loop, no raw CheckAgain ------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("intervalSeconds", 0), ("maxIntervalSeconds", 0), ("intervalSeconds", 0.001)],
)
def test_polling_intervals_below_the_floor_are_refused_before_the_submit(fresh_fake, key, value):
    definition = jobs_definition(fresh_fake, **{key: value})

    with pytest.raises(ToolflowsError) as raised:
        run(definition, {"prompt": "a cat"})

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert key in raised.value.message
    assert "0.05" in raised.value.message
    assert fresh_fake.submits() == 0


@pytest.fixture
def small_retry_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A schedule counted as 3 checks: the poll task's retries run out long before the deadline.

    The same happens for real when a schedule has more checks than are counted (10,000), or
    when jitter and transient errors add checks the plan did not count.
    """
    monkeypatch.setattr(backoff, "MAX_COUNTED_POLLS", 3)
    backoff._planned_polls.cache_clear()
    yield
    backoff._planned_polls.cache_clear()


@pytest.mark.usefixtures("small_retry_budget")
def test_a_job_outliving_the_check_tasks_retries_is_still_collected(fresh_fake):
    polls = 60
    fresh_fake.script("heygen", polls_until_done=polls)
    method = fake_method(fresh_fake, "heygen", max_interval_seconds=0.05, jitter=0)

    result = run(method, PARAMS["heygen"])

    job = fresh_fake.jobs("heygen")[0]
    assert result.task_id == job.id
    assert result.files[0].sha256 == fresh_fake.expected_sha256(job.id)
    assert fresh_fake.submits("heygen") == 1
    assert job.polls == polls + 1  # every check counted once, none lost or doubled


@pytest.mark.usefixtures("small_retry_budget")
def test_transient_errors_past_the_retry_budget_end_in_polling_timeout_at_the_deadline(
    fresh_fake,
):
    fresh_fake.script("heygen", status_faults=[Fault.http(503)] * 1000)
    method = fake_method(fresh_fake, "heygen", max_interval_seconds=0.05, max_wait_seconds=3)

    with pytest.raises(ToolflowsError) as raised:
        run(method, PARAMS["heygen"])

    assert raised.value.code is ErrorCode.POLLING_TIMEOUT
    assert raised.value.task_id == fresh_fake.jobs("heygen")[0].id
    assert fresh_fake.submits("heygen") == 1


# -- one idempotency key per job -----------------------------------------------------------


def test_each_job_of_a_batch_sends_its_own_idempotency_key(fresh_fake):
    """The fake's job API honours Idempotency-Key: a shared key would collapse the batch."""
    fresh_fake.script(
        "jobs", polls_until_done=1, submit_fault=Fault.http(429, {"Retry-After": "0"})
    )
    definition = jobs_definition(fresh_fake)
    definition["adapterConfig"]["idempotencyHeader"] = "Idempotency-Key"
    params_list = [{"prompt": f"take {n}"} for n in range(3)]

    batch = run_coro_as_sync(run_batch(definition, params_list))

    task_ids = [result.task_id for result in batch.succeeded]
    assert len(task_ids) == 3
    assert len(set(task_ids)) == 3
    assert len(fresh_fake.jobs("jobs")) == 3
    keys = [r.headers["idempotency-key"] for r in fresh_fake.requests(method="POST")]
    assert len(keys) == 4  # one submit refused with 429 was sent again, with the same key
    assert len(set(keys)) == 3
    assert all(key.isascii() and key.replace("-", "").isalnum() for key in keys)


# -- what a run persists -------------------------------------------------------------------


def task_runs_of(flow_run_id: Any) -> list[Any]:
    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return run_coro_as_sync(read())


def finished_task_runs(flow_run_id: Any, expected: int) -> list[Any] | None:
    """The flow run's task runs once ``expected`` are recorded as finished (from events)."""
    runs = task_runs_of(flow_run_id)
    finished = [run for run in runs if run.state is not None and run.state.is_final()]
    return runs if len(finished) >= expected else None


def test_status_checks_and_results_persist_nothing_a_rerun_would_read(fresh_fake):
    """Only the submit is read back by a rerun; status answers (up to 16 MiB) stay in memory."""
    definition = jobs_definition(fresh_fake, resultUrl=JOBS_STATUS)
    fresh_fake.script("jobs", polls_until_done=2)

    state = run_coro_as_sync(run_tool_method(definition, {"prompt": "a cat"}, return_state=True))

    assert state.is_completed()
    task_runs = wait_for(
        lambda: finished_task_runs(state.state_details.flow_run_id, 4), 30, "4 task runs"
    )
    persisted = {run.name.rsplit("-", 1)[0]: run.state.data is not None for run in task_runs}
    assert persisted["Submit job"]
    assert not persisted["Check job status"]
    assert not persisted["Fetch job result"]


# -- pipelines hand on the output the method selects ----------------------------------------

RUNWAY_PARAMS = {"model": "gen4_turbo", "promptImage": "{image_url}", "ratio": "1280:720"}


def test_a_pipeline_hands_on_the_output_the_methods_output_path_selects(fresh_fake):
    """HeyGen answers a video, a thumbnail and a gif: ``outputPath`` picks the thumbnail."""
    fresh_fake.script("heygen", polls_until_done=1)
    fresh_fake.script("runway", polls_until_done=1)
    image = fake_method(fresh_fake, "heygen", output_path="data.thumbnail_url")

    result = run_coro_as_sync(
        image_to_video_pipeline(
            ["a cat surfing"],
            image_method=image.model_dump(),
            image_params=PARAMS["heygen"],
            video_method=fake_method(fresh_fake, "runway").model_dump(),
            video_params=RUNWAY_PARAMS,
        )
    )

    heygen_job = fresh_fake.jobs("heygen")[0]
    handed_on = fresh_fake.jobs("runway")[0].input["promptImage"]
    assert f"/heygen/{heygen_job.id}/thumb.jpeg?" in handed_on
    assert result.items[0].image.files[0].filename == "thumb.jpeg"


# -- bodies as the method says: forms and multipart uploads ----------------------------------


def form_definition(fake: Any, body_type: str) -> dict[str, Any]:
    definition = jobs_definition(fake)
    definition["adapterConfig"]["bodyType"] = body_type
    return definition


def test_form_params_arrive_as_a_url_encoded_form_without_nulls(fresh_fake):
    fresh_fake.script("jobs", polls_until_done=0)
    params = {"prompt": "a cat & a dog", "n": 2, "hd": True, "tags": ["a", "b"], "seed": None}

    run(form_definition(fresh_fake, "form"), params)

    received = fresh_fake.jobs("jobs")[0].input
    assert received == {"prompt": "a cat & a dog", "n": "2", "hd": "true", "tags": '["a", "b"]'}


def test_a_file_param_in_a_url_encoded_form_is_refused_before_the_submit(fresh_fake, tmp_path):
    picture = tmp_path / "cat.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")

    with pytest.raises(ToolflowsError) as raised:
        run(form_definition(fresh_fake, "form"), {"image": {"file": str(picture)}})

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert "multipart" in raised.value.message
    assert fresh_fake.submits() == 0


def probe_body(size: int) -> bytes:
    """What the fake's ``/_probe/stream?bytes=size`` answers."""
    return b'{"padding": "' + b"x" * (size - 15) + b'"}'


def part(data: bytes, filename: str, content_type: str) -> dict[str, Any]:
    """A file part as the fake's job API records it."""
    digest = hashlib.sha256(data).hexdigest()
    return {"filename": filename, "contentType": content_type, "size": len(data), "sha256": digest}


def test_multipart_uploads_local_files_and_urls_fetched_through_the_session(fresh_fake, tmp_path):
    fresh_fake.script("jobs", polls_until_done=0)
    local = tmp_path / "mask.png"
    local.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(50_000))
    size = 3 * 1024 * 1024 + 17
    url = f"{fresh_fake.api_url}/_probe/stream?bytes={size}&type=image/png"
    params = {
        "prompt": "a cat",
        "steps": 4,
        "mask": {"file": local.as_uri()},
        "image": {"file": url},
    }

    run(form_definition(fresh_fake, "multipart"), params)

    received = fresh_fake.jobs("jobs")[0].input
    assert received["prompt"] == "a cat"
    assert received["steps"] == "4"
    assert received["mask"] == part(local.read_bytes(), "mask.png", "image/png")
    assert received["image"] == part(probe_body(size), "upload.png", "image/png")
    fetch = fresh_fake.requests(method="GET", path_prefix="/_probe/stream")
    assert len(fetch) == 1  # fetched once, not once per send


def test_a_multipart_url_on_another_origin_is_fetched_without_the_credentials(fresh_fake):
    """The fake's CDN refuses (and records) any credential: the upload must arrive without."""
    fresh_fake.script("fal", kind="image", polls_until_done=0)
    picture = run(fake_method(fresh_fake, "fal_image"), {"prompt": "a cat"})
    fresh_fake.script("jobs", polls_until_done=0)

    run(form_definition(fresh_fake, "multipart"), {"image": {"file": picture.files[0].source_url}})

    received = fresh_fake.jobs("jobs")[0].input["image"]
    assert received["sha256"] == fresh_fake.expected_sha256(picture.task_id)
    assert received["filename"] == picture.files[0].filename
    assert fresh_fake.credential_leaks == []


def test_multipart_uploads_an_s3_object_with_the_methods_storage_credentials(fresh_fake):
    """The object is read with the S3Bucket block the method stores its outputs with."""
    fresh_fake.script("jobs", polls_until_done=0)
    picture = b"\x89PNG\r\n\x1a\n" + os.urandom(200_000)
    with moto_s3() as endpoint:
        client = save_s3_bucket(endpoint, "toolflows-inputs", "toolflows-inputs")
        client.put_object(Bucket="toolflows-inputs", Key="in/cat.png", Body=picture)
        definition = form_definition(fresh_fake, "multipart")
        definition["adapterConfig"]["storage"] = "s3-bucket/toolflows-inputs"

        run(definition, {"image": {"file": "s3://toolflows-inputs/in/cat.png"}})

    assert fresh_fake.jobs("jobs")[0].input["image"] == part(picture, "cat.png", "image/png")


def test_an_s3_upload_larger_than_max_download_bytes_submits_nothing(fresh_fake):
    fresh_fake.script("jobs", polls_until_done=0)
    with moto_s3() as endpoint:
        client = save_s3_bucket(endpoint, "toolflows-inputs", "toolflows-inputs")
        client.put_object(Bucket="toolflows-inputs", Key="in/big.bin", Body=os.urandom(300_000))
        definition = form_definition(fresh_fake, "multipart")
        definition["adapterConfig"]["storage"] = "s3-bucket/toolflows-inputs"
        definition["adapterConfig"]["maxDownloadBytes"] = 100_000

        with pytest.raises(ToolflowsError) as raised:
            run(definition, {"image": {"file": "s3://toolflows-inputs/in/big.bin"}})

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert "larger than maxDownloadBytes" in raised.value.message
    assert fresh_fake.submits() == 0


@pytest.mark.parametrize(
    "source",
    ["http://169.254.169.254/latest/meta-data/iam", "ftp://example.com/cat.png"],
)
def test_an_upload_source_that_may_not_be_fetched_submits_nothing(fresh_fake, source):
    with pytest.raises(ToolflowsError) as raised:
        run(form_definition(fresh_fake, "multipart"), {"image": {"file": source}})

    assert raised.value.code in (ErrorCode.CONFIG_INVALID, ErrorCode.HTTP_ERROR)
    assert fresh_fake.submits() == 0


# -- served runs: crash, edit, rerun; cancel a batch ---------------------------------------


def test_a_block_edit_between_crash_and_rerun_does_not_submit_again(
    fresh_fake, prefect_api, tmp_path
):
    """SIGKILL after the submit, edit the method's polling in its block, rerun: one submit."""
    fresh_fake.script("heygen", polls_until_done=6)
    method = fake_method(
        fresh_fake, "heygen", max_wait_seconds=120, interval_seconds=0.3, max_interval_seconds=0.5
    )
    run_coro_as_sync(register_definitions([method]))
    with served(prefect_api, tmp_path / "runner.log") as (deployment, runner_pid):
        wait_for(lambda: deployment_exists(deployment), 60, "the served deployment")

        def edit_the_method() -> None:
            """Between the crash and the rerun, someone edits the method in the UI."""
            edited = method.model_copy(deep=True)
            edited.adapter_config.polling.max_wait_seconds = 90
            run_coro_as_sync(register_definitions([edited]))

        parameters = {"method": method.qualified_name, "params": PARAMS["heygen"]}
        result = crash_then_rerun(fresh_fake, deployment, runner_pid, parameters, edit_the_method)

    assert_one_submit_collected(fresh_fake, result)


def test_cancelling_hung_served_runs_cancels_their_jobs_from_the_runner(
    fresh_fake, prefect_api, tmp_path
):
    """The run's process cannot clean up (frozen, like a hung loop or a paused machine):
    the runner kills it, and its cancellation hook cancels every job from persisted state.

    A batch and a pipeline, each in its own runner, frozen and cancelled together: the
    runners' 30 s kill grace runs once for both.
    """
    fresh_fake.script("replicate", polls_until_done=10_000)
    fresh_fake.script("fal", kind="image", polls_until_done=0)
    fresh_fake.script("runway", polls_until_done=10_000)
    fast = {"max_wait_seconds": 300, "interval_seconds": 0.2, "max_interval_seconds": 0.5}
    batch_method = fake_method(fresh_fake, "replicate", **fast)
    jobs = 3
    pipeline_parameters = {
        "prompts": ["a cat surfing", "a dog skiing"],
        "image_method": fake_method(fresh_fake, "fal_image").model_dump(),
        "video_method": fake_method(fresh_fake, "runway", **fast).model_dump(),
        "video_params": RUNWAY_PARAMS,
    }
    batch_flow = "toolflows.batch:run_batch"
    pipeline_flow = "toolflows.pipelines.image_to_video:image_to_video_pipeline"
    with (
        served(prefect_api, tmp_path / "batch-runner.log", batch_flow) as (batch, batch_pid),
        served(prefect_api, tmp_path / "pipeline-runner.log", pipeline_flow) as (
            pipeline,
            pipeline_pid,
        ),
    ):
        wait_for(lambda: deployment_exists(batch), 60, "the served batch")
        wait_for(lambda: deployment_exists(pipeline), 60, "the served pipeline")
        batch_run = run_deployment(
            batch,
            parameters={
                "method": batch_method.model_dump(),
                "params_list": [PARAMS["replicate"]] * jobs,
            },
            timeout=0,
        )
        pipeline_run = run_deployment(pipeline, parameters=pipeline_parameters, timeout=0)
        wait_for(lambda: every_job_polled(fresh_fake, jobs, "replicate"), 90, "the batch's jobs")
        wait_for(lambda: every_job_polled(fresh_fake, 2, "runway"), 90, "both videos polled")
        for runner_pid, flow_run in ((batch_pid, batch_run), (pipeline_pid, pipeline_run)):
            os.kill(flow_run_process(runner_pid), signal.SIGSTOP)
            cancel_through_the_api(flow_run.id)
        # Each runner waits 30 s for its frozen process to end on SIGTERM, then kills it.
        wait_for(
            lambda: (
                len(fresh_fake.cancels("replicate")) >= jobs
                and len(fresh_fake.cancels("runway")) >= 2
            ),
            120,
            "the provider's cancels",
        )

    batch_jobs = sorted(job.id for job in fresh_fake.jobs("replicate"))
    assert sorted(fresh_fake.cancels("replicate")) == batch_jobs
    assert fresh_fake.submits("replicate") == jobs
    videos = sorted(job.id for job in fresh_fake.jobs("runway"))
    assert sorted(fresh_fake.cancels("runway")) == videos


def every_job_polled(fake: Any, jobs: int, provider: str = "fal") -> bool:
    submitted = fake.jobs(provider)
    return len(submitted) == jobs and all(job.polls >= 1 for job in submitted)


def cancel_through_the_api(flow_run_id: Any) -> None:
    """What the UI's "Cancel" does."""

    async def cancel() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)

    run_coro_as_sync(cancel())


def test_a_submit_persisted_by_an_older_toolflows_reads_back_with_the_newer_fields():
    """An upgrade between a crash and its rerun: the pickled job lacks fields added since."""
    job = SubmittedJob(task_id="42", submitted_at=1.0, payload_url="https://api.example.com/v1")
    state = job.__getstate__()
    older = {k: v for k, v in state["__dict__"].items() if k not in ("method", "params")}

    read_back = pickle.loads(pickle.dumps(job))
    read_back.__setstate__({**state, "__dict__": older})

    assert read_back.task_id == "42"
    assert read_back.method is None
    assert read_back.params is None
