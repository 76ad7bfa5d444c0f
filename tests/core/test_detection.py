"""Auto-detection against SPEC §4.2/4.3/4.5, the original guide, and real provider payloads."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolflows.core.detection import (
    MAX_DEPTH,
    Found,
    JobState,
    JobStatus,
    OutputRef,
    Progress,
    detect_status,
    failure_reason,
    find_cancel_link,
    find_outputs,
    find_progress,
    find_result_link,
    find_status_link,
    find_task_id,
)
from toolflows.core.errors import ErrorCode, ToolflowsError

PENDING, SUCCEEDED, FAILED, CANCELLED = (
    JobState.PENDING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
)

# --- provider payloads (shared/providers/README.md) ----------------------------------

HEYGEN_ID = "ba6c802a4de4418f84272c1fdc0dfaf8"
HEYGEN_VIDEO = (
    "https://files2.heygen.ai/aws_pacific/avatar_tmp/ba6c802a/video.mp4"
    "?Expires=1718604800&Signature=abc"
)
HEYGEN_THUMB = (
    "https://files2.heygen.ai/aws_pacific/avatar_tmp/ba6c802a/thumb.jpeg"
    "?Expires=1718604800&Signature=abc"
)
HEYGEN_GIF = "https://resource2.heygen.ai/video/ba6c802a/gif.gif"
HEYGEN_SUBMIT = {"error": None, "data": {"video_id": HEYGEN_ID}}


def heygen_status(**data: Any) -> dict[str, Any]:
    body = {
        "callback_id": None,
        "caption_url": None,
        "duration": None,
        "error": None,
        "gif_url": None,
        "id": HEYGEN_ID,
        "status": "pending",
        "thumbnail_url": None,
        "video_url": None,
        "video_url_caption": None,
    }
    return {"code": 100, "data": {**body, **data}, "message": "Success"}


HEYGEN_PENDING = heygen_status()
HEYGEN_PROCESSING = heygen_status(status="processing")
HEYGEN_COMPLETED = heygen_status(
    status="completed",
    created_at=1718000000,
    duration=4.2,
    gif_url=HEYGEN_GIF,
    thumbnail_url=HEYGEN_THUMB,
    video_url=HEYGEN_VIDEO,
)
HEYGEN_FAILED = heygen_status(
    status="failed",
    error={
        "code": 40119,
        "detail": "Video is too long (> 3600.0s). Please upgrade your plan to generate "
        "longer videos",
        "message": "Video is too long",
    },
)
HEYGEN_RATE_LIMITED = {"code": 400123, "message": "Exceed rate limit"}

FAL_ID = "80e732af-660e-45cd-bd63-580e4f2a94cc"
FAL_BASE = f"https://queue.fal.run/fal-ai/kling-video/requests/{FAL_ID}"
FAL_LINKS = {
    "response_url": FAL_BASE,
    "status_url": f"{FAL_BASE}/status",
    "cancel_url": f"{FAL_BASE}/cancel",
}
FAL_SUBMIT = {"status": "IN_QUEUE", "request_id": FAL_ID, **FAL_LINKS, "queue_position": 0}
FAL_IN_QUEUE = {"status": "IN_QUEUE", "queue_position": 3, "request_id": FAL_ID, **FAL_LINKS}
FAL_IN_PROGRESS = {
    "status": "IN_PROGRESS",
    "request_id": FAL_ID,
    "logs": [
        {
            "message": "Generating video... https://v3.fal.media/files/tmp/partial.mp4",
            "level": "INFO",
            "source": "USER",
            "timestamp": "2025-06-01T12:00:05.123Z",
        }
    ],
    **FAL_LINKS,
}
FAL_COMPLETED = {
    "status": "COMPLETED",
    "request_id": FAL_ID,
    "logs": None,
    "metrics": {"inference_time": 41.7},
    **FAL_LINKS,
}
FAL_VIDEO = "https://v3.fal.media/files/penguin/abc123_output.mp4"
FAL_RESULT = {
    "video": {
        "url": FAL_VIDEO,
        "content_type": "video/mp4",
        "file_name": "output.mp4",
        "file_size": 3145728,
    }
}
FAL_COMPLETED_WITH_ERROR = {
    "status": "COMPLETED",
    "request_id": FAL_ID,
    "logs": [],
    "metrics": {},
    "error": "Runner disconnected",
    "error_type": "runner_disconnected",
    "response_url": FAL_BASE,
}
FAL_RESULT_AFTER_FAILURE = {"detail": "Runner disconnected", "error_type": "runner_disconnected"}
FAL_VALIDATION_ERROR = {
    "detail": [
        {"loc": ["body", "image_url"], "msg": "field required", "type": "value_error.missing"}
    ]
}
FAL_CANCEL = {"status": "CANCELLATION_REQUESTED"}
FAL_CANCEL_TOO_LATE = {"status": "ALREADY_COMPLETED"}

RUNWAY_ID = "17f20503-6c24-4c16-946b-35dbbce2af2f"
RUNWAY_VIDEO = "https://dnznrvs05pmza.cloudfront.net/17f20503/video.mp4?_jwt=eyJhbGciOi"
RUNWAY_SUBMIT = {"id": RUNWAY_ID}


def runway_task(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": RUNWAY_ID, "createdAt": "2025-06-01T12:00:00.000Z", "status": status, **extra}


RUNWAY_PENDING = runway_task("PENDING")
RUNWAY_THROTTLED = runway_task("THROTTLED")
RUNWAY_RUNNING = runway_task("RUNNING", progress=0.42)
RUNWAY_SUCCEEDED = runway_task("SUCCEEDED", output=[RUNWAY_VIDEO])
RUNWAY_FAILED = runway_task(
    "FAILED", failure="An unexpected error occurred.", failureCode="INTERNAL.BAD_OUTPUT.CODE01"
)
RUNWAY_CANCELLED = runway_task("CANCELLED")

REPLICATE_ID = "vgcm4plb7tgzlyznry5d5jkgvu"
REPLICATE_URLS = {
    "cancel": f"https://api.replicate.com/v1/predictions/{REPLICATE_ID}/cancel",
    "get": f"https://api.replicate.com/v1/predictions/{REPLICATE_ID}",
}
REPLICATE_IMAGE = (
    "https://replicate.delivery/pbxt/9inf36wjsEWuQ6XTf84iezPftv9QZdePfGySnU5tUai3BOrWE/out-0.png"
)


def replicate_prediction(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": REPLICATE_ID,
        "model": "stability-ai/sdxl",
        "version": "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b",
        "input": {
            "prompt": "a studio photo of a rainbow colored corgi",
            "image": "https://example.com/input.png",
            "seed": 42069,
        },
        "logs": "",
        "error": None,
        "status": status,
        "created_at": "2023-08-16T18:57:08.36078514Z",
        "urls": REPLICATE_URLS,
        **extra,
    }


REPLICATE_SUBMIT = replicate_prediction("starting")
REPLICATE_PROCESSING = replicate_prediction(
    "processing", logs="Using seed: 42069\n  4%|▍         | 2/50", output=None
)
REPLICATE_SUCCEEDED = replicate_prediction(
    "succeeded",
    output=[REPLICATE_IMAGE],
    completed_at="2023-08-16T18:57:12.17042Z",
    metrics={"predict_time": 3.804328},
)
REPLICATE_VIDEO = "https://replicate.delivery/xezq/abc/output.mp4"
REPLICATE_SUCCEEDED_VIDEO = replicate_prediction("succeeded", output=REPLICATE_VIDEO)
REPLICATE_FAILED = replicate_prediction("failed", output=None, error="OOM")
REPLICATE_CANCELED = replicate_prediction(
    "canceled", output=None, metrics={"predict_time": 0.128148, "total_time": 0.175128}
)
REPLICATE_DATA_URI = "data:image/png;base64,iVBORw0KGgo…"
REPLICATE_SYNC_SUBMIT = replicate_prediction(
    "processing",
    output=[REPLICATE_DATA_URI],
    data_removed=False,
    urls={**REPLICATE_URLS, "stream": "https://stream.replicate.com/v1/files/kzvt"},
)
REPLICATE_THROTTLED = {
    "title": "Request was throttled",
    "detail": "Request was throttled. Expected available in 3 seconds.",
    "status": 429,
}

HOSTILE_PAYLOADS = [None, True, 0, 4.2, "completed", "https://x.test/a.mp4", [], [{"id": "x"}]]


def nested_dicts(depth: int, key: str, leaf: Any) -> dict[str, Any]:
    """``{key: {key: ... leaf}}`` built iteratively, as deep as a hostile provider likes."""
    payload: Any = leaf
    for _ in range(depth):
        payload = {key: payload}
    return payload


def nested_lists(depth: int, leaf: Any) -> list[Any]:
    payload: Any = leaf
    for _ in range(depth):
        payload = [payload]
    return payload


# --- job id (§4.2) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # SPEC: an envelope's trace id never beats the job's id
        ({"request_id": "trace", "data": {"task_id": "42"}}, Found("data.task_id", "42")),
        ({"request_id": "trace", "data": {"task_id": 42}}, Found("data.task_id", "42")),
        # the original guide's test
        ({"data": {"video_id": "test123"}}, Found("data.video_id", "test123")),
        (HEYGEN_SUBMIT, Found("data.video_id", HEYGEN_ID)),
        (FAL_SUBMIT, Found("request_id", FAL_ID)),
        (RUNWAY_SUBMIT, Found("id", RUNWAY_ID)),
        (REPLICATE_SUBMIT, Found("id", REPLICATE_ID)),
        # operation-style APIs name their job
        ({"name": "operations/abc-123", "done": False}, Found("name", "operations/abc-123")),
        # names in order first, then places: a top-level id loses to a nested task_id
        ({"id": "row", "data": {"task_id": "job"}}, Found("data.task_id", "job")),
        # for one name, the top level comes first
        ({"id": "top", "data": {"id": "inner"}}, Found("id", "top")),
        # data before result before task, containers before other objects
        ({"task": {"job_id": "t"}, "data": {"job_id": "d"}}, Found("data.job_id", "d")),
        ({"meta": {"jobId": "m"}, "task": {"jobId": "t"}}, Found("task.jobId", "t")),
        ({"sdGenerationJob": {"generationId": "g1"}}, Found("sdGenerationJob.generationId", "g1")),
        ({"predictionId": 7}, Found("predictionId", "7")),
        ({"id": 1.5}, Found("id", "1.5")),
        # unusable values are skipped, not returned
        ({"task_id": "", "id": "next"}, Found("id", "next")),
        ({"task_id": "   ", "id": "next"}, Found("id", "next")),
        ({"task_id": True, "id": "next"}, Found("id", "next")),
        ({"task_id": {"value": "x"}, "id": "next"}, Found("id", "next")),
        ({"task_id": ["x"], "id": "next"}, Found("id", "next")),
        ({"task_id": None, "id": "next"}, Found("id", "next")),
        ({"task_id": float("nan"), "id": "next"}, Found("id", "next")),
        ({"task_id": 10**5000, "id": "next"}, Found("id", "next")),
        # echoes of the request and error objects are not the job
        ({"input": {"task_id": "mine"}}, None),
        ({"modelSettings": {"id": "mine"}}, None),
        ({"generation_settings": {"id": "mine"}}, None),
        ({"error": {"request_id": "trace"}}, None),
        # only one level of nesting
        ({"a": {"b": {"task_id": "deep"}}}, None),
        ({}, None),
        ({"task_id": False}, None),
    ],
)
def test_find_task_id(payload: Any, expected: Found | None) -> None:
    assert find_task_id(payload) == expected


@pytest.mark.parametrize("payload", HOSTILE_PAYLOADS)
def test_find_task_id_on_non_objects_is_none(payload: Any) -> None:
    assert find_task_id(payload) is None


@pytest.mark.parametrize(
    ("payload", "path", "expected"),
    [
        ({"job": {"ref": "abc"}, "id": "other"}, "job.ref", Found("job.ref", "abc")),
        ({"items": [{"id": 9}]}, "items.0.id", Found("items.0.id", "9")),
        ({"id": "other"}, "job.ref", None),
        ({"job": {"ref": ""}}, "job.ref", None),
        ({"job": {"ref": {"x": 1}}}, "job.ref", None),
        ({"job": {"ref": True}}, "job.ref", None),
        (["a"], "0", Found("0", "a")),
        # a step that str.isdigit() accepts but int() does not
        ({"output": ["a"]}, "output.²", None),
    ],
)
def test_find_task_id_with_task_id_path(payload: Any, path: str, expected: Found | None) -> None:
    assert find_task_id(payload, path) == expected


def test_blank_task_id_path_means_auto_detection() -> None:
    assert find_task_id({"data": {"task_id": "x"}}, " ") == Found("data.task_id", "x")


def test_non_string_task_id_path_is_a_config_error() -> None:
    with pytest.raises(ToolflowsError) as raised:
        find_task_id({"id": "x"}, 5)  # type: ignore[arg-type]
    assert raised.value.code is ErrorCode.CONFIG_INVALID


# --- links (§4.2, §4.4, §6) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("finder", "payload", "expected"),
    [
        (find_status_link, FAL_SUBMIT, Found("status_url", f"{FAL_BASE}/status")),
        (find_cancel_link, FAL_SUBMIT, Found("cancel_url", f"{FAL_BASE}/cancel")),
        (find_result_link, FAL_SUBMIT, Found("response_url", FAL_BASE)),
        (find_result_link, FAL_COMPLETED_WITH_ERROR, Found("response_url", FAL_BASE)),
        (find_status_link, REPLICATE_SUBMIT, Found("urls.get", REPLICATE_URLS["get"])),
        (find_cancel_link, REPLICATE_SUBMIT, Found("urls.cancel", REPLICATE_URLS["cancel"])),
        (find_result_link, REPLICATE_SUBMIT, None),
        (find_status_link, HEYGEN_SUBMIT, None),
        (find_cancel_link, RUNWAY_SUBMIT, None),
        (find_status_link, {"statusUrl": "/v1/s/1"}, Found("statusUrl", "/v1/s/1")),
        (find_status_link, {"polling_url": "https://p/1"}, Found("polling_url", "https://p/1")),
        (find_status_link, {"pollingUrl": "https://p/1"}, Found("pollingUrl", "https://p/1")),
        (
            find_status_link,
            {"data": {"status_url": "https://s"}},
            Found("data.status_url", "https://s"),
        ),
        (
            find_status_link,
            {"result": {"statusUrl": "https://s"}},
            Found("result.statusUrl", "https://s"),
        ),
        (
            find_cancel_link,
            {"task": {"cancelUrl": "https://c"}},
            Found("task.cancelUrl", "https://c"),
        ),
        (
            find_result_link,
            {"data": {"responseUrl": "https://r"}},
            Found("data.responseUrl", "https://r"),
        ),
        # name order first: urls.get beats status_url
        (
            find_status_link,
            {"status_url": "https://b", "urls": {"get": "https://a"}},
            Found("urls.get", "https://a"),
        ),
        # only strings with content are links
        (
            find_status_link,
            {"status_url": "", "statusUrl": "https://s"},
            Found("statusUrl", "https://s"),
        ),
        (find_status_link, {"status_url": {"href": "https://s"}}, None),
        (find_cancel_link, {"urls": ["https://c"]}, None),
        (find_status_link, {"meta": {"status_url": "https://s"}}, None),
    ],
)
def test_find_links(finder: Any, payload: Any, expected: Found | None) -> None:
    assert finder(payload) == expected


@pytest.mark.parametrize("finder", [find_status_link, find_cancel_link, find_result_link])
@pytest.mark.parametrize("payload", HOSTILE_PAYLOADS)
def test_find_links_on_non_objects_is_none(finder: Any, payload: Any) -> None:
    assert finder(payload) is None


# --- status (§4.3) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # SPEC: the job's status wins over an envelope's
        (
            {"status": "success", "data": {"status": "running"}},
            JobStatus(PENDING, "running", "data.status", None),
        ),
        # the original guide's test
        ({"data": {"status": "completed"}}, JobStatus(SUCCEEDED, "completed", "data.status", None)),
        (HEYGEN_PENDING, JobStatus(PENDING, "pending", "data.status", None)),
        (HEYGEN_PROCESSING, JobStatus(PENDING, "processing", "data.status", None)),
        (HEYGEN_COMPLETED, JobStatus(SUCCEEDED, "completed", "data.status", None)),
        (HEYGEN_FAILED, JobStatus(FAILED, "failed", "data.status", "Video is too long")),
        (FAL_SUBMIT, JobStatus(PENDING, "IN_QUEUE", "status", None)),
        (FAL_IN_QUEUE, JobStatus(PENDING, "IN_QUEUE", "status", None)),
        (FAL_IN_PROGRESS, JobStatus(PENDING, "IN_PROGRESS", "status", None)),
        (FAL_COMPLETED, JobStatus(SUCCEEDED, "COMPLETED", "status", None)),
        # FAL reports a failure as COMPLETED + error
        (FAL_COMPLETED_WITH_ERROR, JobStatus(FAILED, "COMPLETED", "status", "Runner disconnected")),
        (FAL_CANCEL, JobStatus(PENDING, "CANCELLATION_REQUESTED", "status", None)),
        (FAL_CANCEL_TOO_LATE, JobStatus(PENDING, "ALREADY_COMPLETED", "status", None)),
        (RUNWAY_PENDING, JobStatus(PENDING, "PENDING", "status", None)),
        (RUNWAY_THROTTLED, JobStatus(PENDING, "THROTTLED", "status", None)),
        (RUNWAY_RUNNING, JobStatus(PENDING, "RUNNING", "status", None)),
        (RUNWAY_SUCCEEDED, JobStatus(SUCCEEDED, "SUCCEEDED", "status", None)),
        (RUNWAY_FAILED, JobStatus(FAILED, "FAILED", "status", "An unexpected error occurred.")),
        (RUNWAY_CANCELLED, JobStatus(CANCELLED, "CANCELLED", "status", None)),
        (REPLICATE_SUBMIT, JobStatus(PENDING, "starting", "status", None)),
        (REPLICATE_PROCESSING, JobStatus(PENDING, "processing", "status", None)),
        (REPLICATE_SYNC_SUBMIT, JobStatus(PENDING, "processing", "status", None)),
        (REPLICATE_SUCCEEDED, JobStatus(SUCCEEDED, "succeeded", "status", None)),
        (REPLICATE_SUCCEEDED_VIDEO, JobStatus(SUCCEEDED, "succeeded", "status", None)),
        (REPLICATE_FAILED, JobStatus(FAILED, "failed", "status", "OOM")),
        (REPLICATE_CANCELED, JobStatus(CANCELLED, "canceled", "status", None)),
        (REPLICATE_THROTTLED, JobStatus(PENDING, "429", "status", None)),
        # Kling: a task_status in the job, a success word in the envelope's message
        (
            {
                "code": 0,
                "message": "SUCCEED",
                "data": {
                    "task_id": "t",
                    "task_status": "failed",
                    "task_status_msg": "Risk control",
                },
            },
            JobStatus(FAILED, "failed", "data.task_status", "Risk control"),
        ),
        # Leonardo
        (
            {"generations_by_pk": {"status": "COMPLETE"}},
            JobStatus(SUCCEEDED, "COMPLETE", "generations_by_pk.status", None),
        ),
        # no reason at all: the message names the value, in the provider's casing
        (
            {"data": {"status": "Fail"}, "message": "Success"},
            JobStatus(FAILED, "Fail", "data.status", 'job failed with status "Fail"'),
        ),
        # error_type alone turns a success into a failure
        (
            {"status": "COMPLETED", "error_type": "request_timeout"},
            JobStatus(FAILED, "COMPLETED", "status", 'job failed with status "COMPLETED"'),
        ),
        (
            {"status": "COMPLETED", "error": "Request timed out"},
            JobStatus(FAILED, "COMPLETED", "status", "Request timed out"),
        ),
        # an error that says nothing is no error
        ({"status": "done", "error": None}, JobStatus(SUCCEEDED, "done", "status", None)),
        ({"status": "done", "error": ""}, JobStatus(SUCCEEDED, "done", "status", None)),
        ({"status": "done", "error": {}}, JobStatus(SUCCEEDED, "done", "status", None)),
        ({"status": "done", "error": []}, JobStatus(SUCCEEDED, "done", "status", None)),
        ({"status": "done", "error": 0}, JobStatus(SUCCEEDED, "done", "status", None)),
        (
            {"status": "done", "error": {"code": None, "message": ""}},
            JobStatus(SUCCEEDED, "done", "status", None),
        ),
        # the error must sit beside the status, not in the envelope
        (
            {"data": {"status": "done"}, "error": "x"},
            JobStatus(SUCCEEDED, "done", "data.status", None),
        ),
        # field names in order, in each place
        ({"state": "ready"}, JobStatus(SUCCEEDED, "ready", "state", None)),
        ({"task_status": "finished"}, JobStatus(SUCCEEDED, "finished", "task_status", None)),
        (
            {"taskStatus": "errored"},
            JobStatus(FAILED, "errored", "taskStatus", 'job failed with status "errored"'),
        ),
        ({"state": "failed", "status": "running"}, JobStatus(PENDING, "running", "status", None)),
        # containers in order, then the top level, then other objects
        (
            {"task": {"status": "done"}, "data": {"status": "queued"}},
            JobStatus(PENDING, "queued", "data.status", None),
        ),
        (
            {"result": {"status": "done"}, "task": {"status": "queued"}},
            JobStatus(PENDING, "queued", "task.status", None),
        ),
        (
            {"status": "processing", "meta": {"status": "done"}},
            JobStatus(PENDING, "processing", "status", None),
        ),
        ({"job": {"state": "done"}}, JobStatus(SUCCEEDED, "done", "job.state", None)),
        # a status that is an object or a list is not a status: keep looking
        (
            {"data": {"status": {"code": 1}}, "status": "done"},
            JobStatus(SUCCEEDED, "done", "status", None),
        ),
        (
            {"status": ["done"], "state": "failed"},
            JobStatus(FAILED, "failed", "state", 'job failed with status "failed"'),
        ),
        (
            {"data": {"status": None}, "status": "completed"},
            JobStatus(SUCCEEDED, "completed", "status", None),
        ),
        ({"status": "", "state": "done"}, JobStatus(SUCCEEDED, "done", "state", None)),
        # echoes of the request and error objects hold no job status
        ({"input": {"status": "completed"}}, JobStatus(PENDING, None, None, None)),
        ({"runSettings": {"status": "completed"}}, JobStatus(PENDING, None, None, None)),
        ({"error": {"status": "INVALID_ARGUMENT"}}, JobStatus(PENDING, None, None, None)),
        # numbers and bools are values, just not known ones
        ({"status": 2}, JobStatus(PENDING, "2", "status", None)),
        ({"status": True}, JobStatus(PENDING, "True", "status", None)),
        ({}, JobStatus(PENDING, None, None, None)),
    ],
)
def test_detect_status(payload: Any, expected: JobStatus) -> None:
    assert detect_status(payload) == expected


@pytest.mark.parametrize(
    "value",
    [
        "completed",
        "complete",
        "success",
        "succeeded",
        "succeed",
        "done",
        "ready",
        "finished",
        "COMPLETED",
        "Success",
        "SUCCEED",
        " Done ",
    ],
)
def test_success_words(value: str) -> None:
    assert detect_status({"status": value}).state is SUCCEEDED


@pytest.mark.parametrize(
    "value",
    [
        "failed",
        "fail",
        "failure",
        "error",
        "errored",
        "rejected",
        "expired",
        "timeout",
        "timed_out",
        "moderated",
        "content_moderated",
        "request_moderated",
        "aborted",
        "not_found",
        "task_not_found",
        "FAILED",
        "Timed-Out",
        "timed out",
        "Content-Moderated",
        "REQUEST MODERATED",
        "Task-Not-Found",
    ],
)
def test_failure_words(value: str) -> None:
    status = detect_status({"status": value})
    assert status.state is FAILED
    assert status.reason == f'job failed with status "{value}"'


@pytest.mark.parametrize("value", ["cancelled", "canceled", "CANCELLED", "Canceled"])
def test_cancelled_words(value: str) -> None:
    assert detect_status({"status": value}) == JobStatus(CANCELLED, value, "status", None)


def test_cancelled_carries_the_providers_reason() -> None:
    status = detect_status({"status": "cancelled", "failure": "Deleted by user"})
    assert status == JobStatus(CANCELLED, "cancelled", "status", "Deleted by user")


@pytest.mark.parametrize(
    "value",
    [
        "IN_QUEUE",
        "IN_PROGRESS",
        "CANCELLATION_REQUESTED",
        "THROTTLED",
        "queued",
        "waiting",
        "processing",
        "starting",
        "pending",
        "running",
        "unknown",
        "completedish",
        "0",
        "100",
    ],
)
def test_other_words_are_pending(value: str) -> None:
    assert detect_status({"status": value}) == JobStatus(PENDING, value, "status", None)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        1,
        -1.5,
        pytest.param(10**5000, id="int-beyond-str-limit"),
        float("nan"),
        float("inf"),
        "",
        "   ",
        [],
        {},
        [{"status": "done"}],
        {"code": 1},
        "x" * 100_000,
    ],
)
def test_status_values_of_every_type(value: Any) -> None:
    status = detect_status({"status": value})
    assert isinstance(status, JobStatus)
    assert status.state is PENDING
    assert status.value is None or isinstance(status.value, str)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"name": "operations/1", "done": False}, JobStatus(PENDING, "False", "done", None)),
        ({"name": "operations/1"}, JobStatus(PENDING, None, None, None)),
        (
            {"name": "operations/1", "done": True, "response": {"videos": []}},
            JobStatus(SUCCEEDED, "True", "done", None),
        ),
        ({"name": "operations/1", "done": True}, JobStatus(SUCCEEDED, "True", "done", None)),
        (
            {"name": "operations/1", "done": True, "error": {"code": 3, "message": "Bad prompt"}},
            JobStatus(FAILED, "True", "done", "Bad prompt"),
        ),
        (
            {"done": True, "error": "quota exhausted", "response": {}},
            JobStatus(FAILED, "True", "done", "quota exhausted"),
        ),
        (
            {"done": True, "error": {"code": 13}},
            JobStatus(FAILED, "True", "done", "operation failed without an error message"),
        ),
        # an error object's own status is not the job's
        (
            {"done": True, "error": {"code": 3, "message": "m", "status": "INVALID_ARGUMENT"}},
            JobStatus(FAILED, "True", "done", "m"),
        ),
        ({"done": "true"}, JobStatus(PENDING, None, None, None)),
    ],
)
def test_operation_style(payload: Any, expected: JobStatus) -> None:
    assert detect_status(payload) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"finish_reason": "SUCCESS"}, JobStatus(SUCCEEDED, "SUCCESS", "finish_reason", None)),
        ({"finishReason": "success"}, JobStatus(SUCCEEDED, "success", "finishReason", None)),
        (
            {"image": "aGVsbG8=", "finish_reason": "CONTENT_FILTERED", "seed": 1},
            JobStatus(
                FAILED,
                "CONTENT_FILTERED",
                "finish_reason",
                'job failed with finish reason "CONTENT_FILTERED"',
            ),
        ),
        (
            {"data": {"finishReason": "ERROR", "detail": "GPU lost"}},
            JobStatus(FAILED, "ERROR", "data.finishReason", "GPU lost"),
        ),
        # a status field wins over a finish reason
        (
            {"status": "processing", "finish_reason": "ERROR"},
            JobStatus(PENDING, "processing", "status", None),
        ),
    ],
)
def test_finish_reason(payload: Any, expected: JobStatus) -> None:
    assert detect_status(payload) == expected


def test_finish_reason_accepts_the_users_success_values() -> None:
    status = detect_status({"finish_reason": "STOP"}, success_values=["stop"])
    assert status == JobStatus(SUCCEEDED, "STOP", "finish_reason", None)


@pytest.mark.parametrize(
    ("payload", "kwargs", "expected"),
    [
        (
            {"job": {"phase": "ALL DONE"}, "status": "failed"},
            {"status_path": "job.phase", "success_values": ["all-done"]},
            JobStatus(SUCCEEDED, "ALL DONE", "job.phase", None),
        ),
        (
            {"job": {"phase": "oops", "error": "disk full"}},
            {"status_path": "job.phase", "failure_values": ["OOPS"]},
            JobStatus(FAILED, "oops", "job.phase", "disk full"),
        ),
        (
            {"job": {"phase": "completed", "error": "disk full"}},
            {"status_path": "job.phase"},
            JobStatus(FAILED, "completed", "job.phase", "disk full"),
        ),
        # the user's values take precedence over the built-in words
        (
            {"status": "done"},
            {"failure_values": ["done"]},
            JobStatus(FAILED, "done", "status", 'job failed with status "done"'),
        ),
        (
            {"status": "cancelled"},
            {"success_values": ["cancelled"]},
            JobStatus(SUCCEEDED, "cancelled", "status", None),
        ),
        (
            {"status": "weird"},
            {"success_values": ["weird"], "failure_values": ["weird"]},
            JobStatus(FAILED, "weird", "status", 'job failed with status "weird"'),
        ),
        ({"status": 2}, {"success_values": [2]}, JobStatus(SUCCEEDED, "2", "status", None)),
        (
            {"status": "ready_now"},
            {"success_values": "ready-now"},
            JobStatus(SUCCEEDED, "ready_now", "status", None),
        ),
        (
            {"status": "IN_QUEUE"},
            {"success_values": None},
            JobStatus(PENDING, "IN_QUEUE", "status", None),
        ),
        # a status path leads nowhere: pending, no guessing elsewhere
        (
            {"status": "completed"},
            {"status_path": "job.phase"},
            JobStatus(PENDING, None, None, None),
        ),
        ({"done": True}, {"status_path": "job.phase"}, JobStatus(PENDING, None, None, None)),
        (
            {"job": {"phase": {"x": 1}}},
            {"status_path": "job.phase"},
            JobStatus(PENDING, None, None, None),
        ),
        ({"done": True}, {"status_path": "done"}, JobStatus(PENDING, "True", "done", None)),
        (
            {"done": True},
            {"status_path": "done", "success_values": ["true"]},
            JobStatus(SUCCEEDED, "True", "done", None),
        ),
        (
            [{"state": "done"}],
            {"status_path": "0.state"},
            JobStatus(SUCCEEDED, "done", "0.state", None),
        ),
        # blank means unset
        ({"status": "done"}, {"status_path": ""}, JobStatus(SUCCEEDED, "done", "status", None)),
    ],
)
def test_detect_status_overrides(payload: Any, kwargs: dict[str, Any], expected: JobStatus) -> None:
    assert detect_status(payload, **kwargs) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status_path": 5},
        {"status_path": ["status"]},
        {"success_values": 5},
        {"success_values": [{"a": 1}]},
        {"failure_values": [None]},
        {"failure_values": [["failed"]]},
    ],
)
def test_malformed_status_settings_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ToolflowsError) as raised:
        detect_status({"status": "done"}, **kwargs)
    assert raised.value.code is ErrorCode.CONFIG_INVALID


@pytest.mark.parametrize("payload", HOSTILE_PAYLOADS)
def test_detect_status_on_non_objects_is_pending(payload: Any) -> None:
    assert detect_status(payload) == JobStatus(PENDING, None, None, None)


# --- failure reason ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (HEYGEN_FAILED, "Video is too long"),
        (
            heygen_status(status="failed", error={"code": 1, "detail": "Avatar not found"}),
            "Avatar not found",
        ),
        (HEYGEN_RATE_LIMITED, "Exceed rate limit"),
        (FAL_COMPLETED_WITH_ERROR, "Runner disconnected"),
        (FAL_RESULT_AFTER_FAILURE, "Runner disconnected"),
        (FAL_VALIDATION_ERROR, "body.image_url: field required"),
        (
            {
                "detail": [
                    {"loc": ["body", "prompt"], "msg": "field required"},
                    {"loc": ["query", 0], "msg": "bad"},
                ]
            },
            "body.prompt: field required; query.0: bad",
        ),
        (RUNWAY_FAILED, "An unexpected error occurred."),
        (runway_task("FAILED", failureCode="SAFETY.INPUT.IMAGE"), "SAFETY.INPUT.IMAGE"),
        (REPLICATE_FAILED, "OOM"),
        (REPLICATE_THROTTLED, "Request was throttled. Expected available in 3 seconds."),
        # each field the SPEC names
        ({"status": "failed", "failure_reason": "bad input"}, "bad input"),
        ({"status": "failed", "failureCode": 1234}, "1234"),
        ({"status": "failed", "status_msg": "quota"}, "quota"),
        ({"status": "failed", "details": {"message": "nested"}}, "nested"),
        ({"status": "failed", "details": ["one", "two"]}, "one; two"),
        # the job's reason comes before the envelope's
        ({"message": "envelope", "data": {"status": "failed", "status_msg": "job"}}, "job"),
        ({"detail": "envelope", "data": {"status": "failed", "error": "job"}}, "job"),
        ({"error": "top", "message": "m", "data": {"status": "failed"}}, "top"),
        # an envelope's message only when nothing job-level exists, and not a success word
        ({"code": 1, "message": "Quota exceeded", "data": {"status": "failed"}}, "Quota exceeded"),
        ({"message": "Success", "data": {"status": "failed"}}, None),
        ({"message": "SUCCEED", "data": {"status": "failed"}}, None),
        ({"message": "ok"}, None),
        # the job's own message is a reason too, before the envelope's
        (
            {"message": "Success", "data": {"status": "failed", "message": "bad prompt"}},
            "bad prompt",
        ),
        # errors that say nothing are skipped
        ({"error": "", "failure": "real"}, "real"),
        ({"error": 500, "failure": "real"}, "real"),
        ({"error": {"code": 3}, "detail": "real"}, "real"),
        ({"status": "failed"}, None),
        ({}, None),
    ],
)
def test_failure_reason(payload: Any, expected: str | None) -> None:
    assert failure_reason(payload) == expected


# SPEC §4.3's reason fields in its order: each test gives a field and every later one.
REASON_ORDER = [
    ("error", {"message": "error.message", "detail": "x"}),
    ("error", {"detail": "error.detail"}),
    ("error", "error"),
    ("errorMessage", "errorMessage"),
    ("error_message", "error_message"),
    ("errorMsg", "errorMsg"),
    ("failure_detail", "failure_detail"),
    ("failure", "failure"),
    ("failure_reason", "failure_reason"),
    ("failureCode", "failureCode"),
    ("task_status_msg", "task_status_msg"),
    ("status_msg", "status_msg"),
    ("detail", "detail"),
    ("details", "details"),
    ("task_error", {"code": 7, "message": "task_error.message"}),
    ("message", "message"),
]


@pytest.mark.parametrize("first", range(len(REASON_ORDER)), ids=[f for f, _ in REASON_ORDER])
def test_the_failure_reason_follows_the_spec_order(first: int) -> None:
    fields: dict[str, Any] = {}
    for key, value in REASON_ORDER[first:]:
        fields.setdefault(key, value)
    # Written in reverse, so that the order of the keys in the payload cannot decide.
    job = {"status": "failed", **dict(reversed(fields.items()))}
    expected = REASON_ORDER[first][1]
    if isinstance(expected, dict):
        expected = next(text for text in expected.values() if isinstance(text, str))
    status = detect_status({"message": "envelope", "data": job})
    assert status.reason == expected


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ({"status": "failed", "errorMessage": "Insufficient credits"}, "Insufficient credits"),
        ({"status": "FAILED", "error_message": "NSFW"}, "NSFW"),
        ({"state": "error", "errorMsg": "timeout in worker"}, "timeout in worker"),
        ({"status": "failed", "failure_detail": "bad frame"}, "bad frame"),
        ({"status": "failed", "task_error": {"message": "GPU lost"}}, "GPU lost"),
        ({"status": "failed", "lastError": {"code": "E1", "detail": "codec"}}, "codec"),
        # an error object that says nothing is skipped, and so are non-objects named so
        ({"status": "failed", "task_error": {"code": 3}, "error_type": "X"}, None),
    ],
)
def test_failure_reasons_in_the_other_places_real_apis_use(
    job: dict[str, Any], expected: str | None
) -> None:
    # The job's reasons beat its envelope's error objects, which beat an envelope's message.
    payload = {"message": "Success", "request_error": {"message": "envelope"}, "data": job}
    status = detect_status(payload)
    assert status.state is FAILED
    assert status.reason == (expected or "envelope")


@pytest.mark.parametrize("payload", HOSTILE_PAYLOADS)
def test_failure_reason_on_non_objects_is_none(payload: Any) -> None:
    assert failure_reason(payload) is None


# --- outputs (§4.5) ------------------------------------------------------------------


def refs(*pairs: tuple[str, str], thumbnail: bool = False) -> list[OutputRef]:
    return [OutputRef(url, path, thumbnail) for url, path in pairs]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # HeyGen: the video only, not its thumbnail nor gif
        (HEYGEN_COMPLETED, refs((HEYGEN_VIDEO, "data.video_url"))),
        (HEYGEN_PENDING, []),
        # FAL: the status never holds the output, and its links and logs are no outputs
        (FAL_COMPLETED, []),
        (FAL_IN_PROGRESS, []),
        (FAL_COMPLETED_WITH_ERROR, []),
        (FAL_RESULT, refs((FAL_VIDEO, "video.url"))),
        (
            {
                "images": [{"url": "https://f/a.png", "width": 1}, {"url": "https://f/b.png"}],
                "seed": 1,
            },
            refs(("https://f/a.png", "images.0.url"), ("https://f/b.png", "images.1.url")),
        ),
        (RUNWAY_SUCCEEDED, refs((RUNWAY_VIDEO, "output.0"))),
        (RUNWAY_RUNNING, []),
        # Replicate: a list, a single URL, data URIs; the input echo and urls are never outputs
        (REPLICATE_SUCCEEDED, refs((REPLICATE_IMAGE, "output.0"))),
        (
            replicate_prediction("succeeded", output=["https://r/a.png", "https://r/b.png"]),
            refs(("https://r/a.png", "output.0"), ("https://r/b.png", "output.1")),
        ),
        (REPLICATE_SUCCEEDED_VIDEO, refs((REPLICATE_VIDEO, "output"))),
        (REPLICATE_SYNC_SUBMIT, refs((REPLICATE_DATA_URI, "output.0"))),
        (REPLICATE_SUBMIT, []),
        (REPLICATE_FAILED, []),
        (replicate_prediction("succeeded", output=["Hello", " world"]), []),
        # keys by priority: the first match is the primary
        (
            {"url": "https://x/page", "video_url": "https://x/v.mp4"},
            refs(("https://x/v.mp4", "video_url")),
        ),
        ({"sample": "https://bfl/s.jpg", "id": "1"}, refs(("https://bfl/s.jpg", "sample"))),
        ({"assets": {"video": "https://luma/v.mp4"}}, refs(("https://luma/v.mp4", "assets.video"))),
        ({"result": {"uri": "https://x/r.wav"}}, refs(("https://x/r.wav", "result.uri"))),
        # a list item's siblings come along, in list order
        (
            {"output": [None, "https://x/1.png", "not a url", "https://x/2.png"]},
            refs(("https://x/1.png", "output.1"), ("https://x/2.png", "output.3")),
        ),
        (
            {
                "generations_by_pk": {
                    "generated_images": [{"url": "https://l/1"}, {"url": "https://l/2"}]
                }
            },
            refs(
                ("https://l/1", "generations_by_pk.generated_images.0.url"),
                ("https://l/2", "generations_by_pk.generated_images.1.url"),
            ),
        ),
        # other matches only with download_all
        (
            {"video_url": "https://x/v.mp4", "audio_url": "https://x/a.mp3"},
            refs(("https://x/v.mp4", "video_url")),
        ),
        # root-relative links count from priority keys only; protocol-relative never
        ({"data": {"video_url": "/files/v.mp4"}}, refs(("/files/v.mp4", "data.video_url"))),
        ({"file": "/files/v.mp4"}, []),
        ({"video_url": "//cdn/v.mp4"}, []),
        ({"video_url": "/"}, []),
        # no key matched: any absolute http(s) string, with its list siblings
        ({"result": {"mp4": "https://x/v.mp4"}}, refs(("https://x/v.mp4", "result.mp4"))),
        (
            {"files": ["https://x/1.png", "https://x/2.png"]},
            refs(("https://x/1.png", "files.0"), ("https://x/2.png", "files.1")),
        ),
        ({"blob": "data:text/plain;base64,aGk="}, []),
        ({"note": "see https://x/docs"}, []),
        # a bare link beats a thumbnail
        (
            {"mp4": "https://x/v.mp4", "thumbnail": "https://x/t.jpg"},
            refs(("https://x/v.mp4", "mp4")),
        ),
        # never searched: job links, callbacks, webhooks, logs, request echoes
        (
            {
                "status_url": "https://a/s",
                "responseUrl": "https://a/r",
                "cancelUrl": "https://a/c",
                "polling_url": "https://a/p",
                "urls": {"get": "https://a/g"},
                "callback_url": "https://me/cb",
                "webhookUrl": "https://me/wh",
                "Callbacks": {"url": "https://me/cb2"},
                "logs": ["https://a/log"],
                "input": {"image_url": "https://me/in.png"},
                "inputs": ["https://me/in2"],
                "request": {"url": "https://me/r"},
                "params": {"url": "https://me/p"},
                "parameters": {"url": "https://me/p2"},
                "arguments": {"url": "https://me/a"},
                "modelSettings": {"url": "https://me/s"},
                "render_settings": {"url": "https://me/s2"},
            },
            [],
        ),
        ({}, []),
    ],
)
def test_find_outputs(payload: Any, expected: list[OutputRef]) -> None:
    assert find_outputs(payload) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (HEYGEN_COMPLETED, refs((HEYGEN_VIDEO, "data.video_url"))),
        (
            {
                "video_url": "https://x/v.mp4",
                "output": ["https://x/a.png", "https://x/b.png"],
                "audio_url": "https://x/a.mp3",
            },
            refs(
                ("https://x/v.mp4", "video_url"),
                ("https://x/a.mp3", "audio_url"),
                ("https://x/a.png", "output.0"),
                ("https://x/b.png", "output.1"),
            ),
        ),
        # duplicates are dropped, the first occurrence kept
        (
            {
                "video_url": "https://x/v.mp4",
                "url": "https://x/v.mp4",
                "data": {"video": "https://x/v.mp4"},
            },
            refs(("https://x/v.mp4", "video_url")),
        ),
        # thumbnails stay out while anything else is an output
        (
            {"video": {"url": "https://x/v.mp4"}, "thumbnail": {"url": "https://x/t.jpg"}},
            refs(("https://x/v.mp4", "video.url")),
        ),
    ],
)
def test_find_outputs_download_all(payload: Any, expected: list[OutputRef]) -> None:
    assert find_outputs(payload, download_all=True) == expected


def test_primary_keeps_its_place_ahead_of_its_list() -> None:
    payload = {"image_url": "https://x/c.png", "output": ["https://x/a.png", "https://x/b.png"]}
    assert find_outputs(payload) == refs(("https://x/c.png", "image_url"))


@pytest.mark.parametrize(
    ("payload", "download_all", "expected"),
    [
        (
            heygen_status(status="completed", thumbnail_url=HEYGEN_THUMB, gif_url=HEYGEN_GIF),
            False,
            refs((HEYGEN_THUMB, "data.thumbnail_url"), thumbnail=True),
        ),
        (
            heygen_status(status="completed", thumbnail_url=HEYGEN_THUMB, gif_url=HEYGEN_GIF),
            True,
            refs(
                (HEYGEN_THUMB, "data.thumbnail_url"), (HEYGEN_GIF, "data.gif_url"), thumbnail=True
            ),
        ),
        (
            {
                "preview": {"url": "https://x/p.jpg"},
                "poster": ["https://x/1.jpg", "https://x/2.jpg"],
            },
            False,
            refs(("https://x/p.jpg", "preview.url"), thumbnail=True),
        ),
        (
            {"poster": ["https://x/1.jpg", "https://x/2.jpg"]},
            False,
            refs(("https://x/1.jpg", "poster.0"), ("https://x/2.jpg", "poster.1"), thumbnail=True),
        ),
        ({"cover_url": "/c.jpg"}, False, []),
    ],
)
def test_thumbnails_only_when_nothing_else(
    payload: Any, download_all: bool, expected: list[OutputRef]
) -> None:
    assert find_outputs(payload, download_all=download_all) == expected


@pytest.mark.parametrize(
    ("payload", "path", "expected"),
    [
        ({"out": {"file": "https://x/v.mp4"}}, "out.file", refs(("https://x/v.mp4", "out.file"))),
        (
            {"out": ["https://x/1", "junk", "https://x/2"]},
            "out",
            refs(("https://x/1", "out.0"), ("https://x/2", "out.2")),
        ),
        ({"out": {"url": "https://x/v"}}, "out", refs(("https://x/v", "out.url"))),
        (
            {"out": [{"url": "https://x/1"}, {"uri": "https://x/2"}, {"name": "n"}, 3]},
            "out",
            refs(("https://x/1", "out.0.url"), ("https://x/2", "out.1.uri")),
        ),
        ({"out": "/files/v.mp4"}, "out", refs(("/files/v.mp4", "out"))),
        ({"out": ["https://x/1", "https://x/1"]}, "out", refs(("https://x/1", "out.0"))),
        # the path is the only place looked at
        ({"video_url": "https://x/v.mp4"}, "missing", []),
        ({"out": "not a url", "video_url": "https://x/v.mp4"}, "out", []),
        ({"out": None}, "out", []),
    ],
)
def test_find_outputs_with_output_path(payload: Any, path: str, expected: list[OutputRef]) -> None:
    assert find_outputs(payload, path) == expected
    assert find_outputs(payload, path, download_all=True) == expected


def test_non_string_output_path_is_a_config_error() -> None:
    with pytest.raises(ToolflowsError) as raised:
        find_outputs({}, {"path": "x"})  # type: ignore[arg-type]
    assert raised.value.code is ErrorCode.CONFIG_INVALID


def test_outputs_are_searched_to_a_bounded_depth() -> None:
    shallow = nested_dicts(5, "level", {"video_url": "https://x/v.mp4"})
    too_deep = nested_dicts(MAX_DEPTH, "level", {"video_url": "https://x/v.mp4"})
    assert [ref.url for ref in find_outputs(shallow)] == ["https://x/v.mp4"]
    assert find_outputs(too_deep) == []


@pytest.mark.parametrize("payload", [p for p in HOSTILE_PAYLOADS if not isinstance(p, str)])
def test_find_outputs_on_non_objects(payload: Any) -> None:
    assert find_outputs(payload) == []


@pytest.mark.parametrize(
    ("payload", "expected"),
    [("completed", []), ("https://x/v.mp4", refs(("https://x/v.mp4", "")))],
)
def test_a_bare_string_payload_is_an_output_when_it_is_a_link(
    payload: str, expected: list[OutputRef]
) -> None:
    assert find_outputs(payload) == expected


def test_huge_payload_costs_bounded_work() -> None:
    payload = {"output": ["token"] * 1_000_000, "meta": [{"x": i} for i in range(200_000)]}
    assert find_outputs(payload, download_all=True) == []


# --- progress --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (RUNWAY_RUNNING, Progress(0.42, None)),
        (FAL_IN_QUEUE, Progress(None, 3)),
        (FAL_SUBMIT, Progress(None, 0)),
        ({"progress": 42}, Progress(0.42, None)),
        ({"progress": 100}, Progress(1.0, None)),
        ({"progress": 1}, Progress(1.0, None)),
        ({"progress": 0}, Progress(0.0, None)),
        ({"percent": "55%"}, Progress(0.55, None)),
        ({"percentage": "1%"}, Progress(0.01, None)),
        ({"progress_percent": "0.5"}, Progress(0.5, None)),
        ({"data": {"progress": 0.3}, "task": {"progress": 0.9}}, Progress(0.3, None)),
        ({"progress": 0.1, "data": {"progress": 0.9}}, Progress(0.1, None)),
        ({"result": {"queuePosition": "2"}}, Progress(None, 2)),
        ({"task": {"progress": 0.5, "queue_position": 1}}, Progress(0.5, 1)),
        # unusable values are skipped
        ({"progress": 150, "percent": 20}, Progress(0.2, None)),
        ({"progress": -1}, None),
        ({"progress": True, "queue_position": False}, None),
        ({"progress": float("nan"), "queue_position": float("inf")}, None),
        ({"progress": "soon", "queue_position": "first"}, None),
        ({"progress": {"value": 0.5}}, None),
        ({"queue_position": -2}, None),
        ({"queue_position": 1.5}, None),
        ({"queue_position": 10**400}, Progress(None, 10**400)),
        ({"queue_position": "1e999"}, None),
        (HEYGEN_PROCESSING, None),
        ({}, None),
    ],
)
def test_find_progress(payload: Any, expected: Progress | None) -> None:
    assert find_progress(payload) == expected


@pytest.mark.parametrize("payload", HOSTILE_PAYLOADS)
def test_find_progress_on_non_objects_is_none(payload: Any) -> None:
    assert find_progress(payload) is None


# --- hostile inputs ------------------------------------------------------------------

DEEP_PAYLOADS = [
    nested_dicts(10_000, "data", {"status": "done", "video_url": "https://x/v"}),
    nested_dicts(10_000, "output", "https://x/v"),
    {"status": "COMPLETED", "error": nested_dicts(10_000, "error", "boom")},
    nested_lists(10_000, "https://x/v"),
    {"done": True, "error": nested_dicts(10_000, "x", 1)},
    {"status": "failed", "detail": nested_lists(10_000, {"msg": "m"})},
]
DEEP_IDS = ["dicts", "output", "error", "lists", "operation-error", "detail"]
ANSWER_TYPES: dict[Any, tuple[type, ...]] = {
    find_task_id: (Found, type(None)),
    find_status_link: (Found, type(None)),
    find_cancel_link: (Found, type(None)),
    find_result_link: (Found, type(None)),
    detect_status: (JobStatus,),
    failure_reason: (str, type(None)),
    find_outputs: (list,),
    find_progress: (Progress, type(None)),
}


@pytest.mark.parametrize("payload", DEEP_PAYLOADS, ids=DEEP_IDS)
@pytest.mark.parametrize("finder", list(ANSWER_TYPES), ids=lambda finder: finder.__name__)
def test_ten_thousand_levels_do_not_recurse(finder: Any, payload: Any) -> None:
    assert isinstance(finder(payload), ANSWER_TYPES[finder])


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (DEEP_PAYLOADS[0], JobStatus(PENDING, None, None, None)),
        (
            DEEP_PAYLOADS[4],
            JobStatus(FAILED, "True", "done", "operation failed without an error message"),
        ),
        (
            DEEP_PAYLOADS[5],
            JobStatus(FAILED, "failed", "status", 'job failed with status "failed"'),
        ),
    ],
)
def test_ten_thousand_levels_still_give_answers(payload: Any, expected: JobStatus) -> None:
    assert detect_status(payload) == expected


def _cyclic() -> dict[str, Any]:
    payload: dict[str, Any] = {"status": "done", "url": "https://x/v"}
    payload["data"] = payload
    payload["items"] = [payload, payload]
    return payload


@pytest.mark.parametrize("finder", list(ANSWER_TYPES), ids=lambda finder: finder.__name__)
def test_cyclic_payloads_terminate(finder: Any) -> None:
    assert isinstance(finder(_cyclic()), ANSWER_TYPES[finder])


def test_cyclic_payload_outputs_are_unique() -> None:
    assert find_outputs(_cyclic(), download_all=True) == refs(("https://x/v", "url"))


def test_non_string_keys_are_ignored() -> None:
    payload = {1: {"video_url": "https://x/1"}, None: "https://x/2", "id": "job"}
    assert find_outputs(payload, download_all=True) == []
    assert find_task_id(payload) == Found("id", "job")


# --- properties ----------------------------------------------------------------------

INTERESTING_KEYS = st.sampled_from(
    [
        "data",
        "result",
        "task",
        "status",
        "state",
        "id",
        "task_id",
        "name",
        "done",
        "error",
        "error_type",
        "response",
        "finish_reason",
        "message",
        "detail",
        "loc",
        "msg",
        "url",
        "video_url",
        "output",
        "images",
        "thumbnail",
        "urls",
        "get",
        "input",
        "progress",
        "queue_position",
        "generations_by_pk",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["https://x/v.mp4", "data:,x", "/rel", "done", "FAILED", "canceled", "42%"])
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(INTERESTING_KEYS | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)
PATHS = st.none() | st.sampled_from(["data.status", "output", "0", "a.0.b", "", "x..y"])


@settings(max_examples=400, deadline=None)
@given(payload=JSON, path=PATHS, download_all=st.booleans())
def test_every_function_answers_any_json(
    payload: Any, path: str | None, download_all: bool
) -> None:
    task_id = find_task_id(payload, path)
    assert task_id is None or (isinstance(task_id.path, str) and task_id.value.strip())
    for finder in (find_status_link, find_cancel_link, find_result_link):
        link = finder(payload)
        assert link is None or (isinstance(link.path, str) and isinstance(link.value, str))

    status = detect_status(payload, path, ["done"], ["FAILED"])
    assert isinstance(status.state, JobState)
    assert status.value is None or isinstance(status.value, str)
    assert status.path is None or isinstance(status.path, str)
    assert (status.value is None) == (status.path is None)
    if status.state is FAILED:
        assert isinstance(status.reason, str) and status.reason
    if status.state in (PENDING, SUCCEEDED):
        assert status.reason is None

    reason = failure_reason(payload)
    assert reason is None or (isinstance(reason, str) and reason)

    outputs = find_outputs(payload, path, download_all)
    assert all(isinstance(ref, OutputRef) for ref in outputs)
    assert all(isinstance(ref.url, str) and isinstance(ref.path, str) for ref in outputs)
    assert len({ref.url for ref in outputs}) == len(outputs)
    assert len({ref.thumbnail for ref in outputs}) <= 1

    progress = find_progress(payload)
    if progress is not None:
        assert progress.fraction is not None or progress.queue_position is not None
        assert progress.fraction is None or 0 <= progress.fraction <= 1
        assert progress.queue_position is None or progress.queue_position >= 0
