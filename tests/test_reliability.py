"""Fault injection on whole flow runs (SPEC §4.1, §4.5, §4.6): the paid submit is sent
once, transient trouble never fails a job before its deadline, the deadline is kept,
downloads survive broken transfers and never leave partial files, and hostile answers
end in a clear ToolflowsError instead of a crash.

Every run goes over real sockets to the fake provider, on a real Prefect API.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.fake_provider import FakeProvider, Fault, RecordedRequest
from tests.helpers import FAST_POLLING, PARAMS, fake_method, run
from toolflows.core.definition import MethodDefinition
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.engine import run_tool_method
from toolflows.models import ToolResult

pytestmark = pytest.mark.usefixtures("prefect_api")

HEYGEN_SUBMIT = "/v2/video/generate"
HEYGEN_STATUS = "/v1/video_status.get"
RUNWAY_TASKS = "/v1/tasks/"
FAL_REQUESTS = "/fal-ai/kling-video/requests/"
# A request timeout short enough to make a held-back answer a read timeout quickly.
SHORT_TIMEOUT = 0.5
# Clock tolerance between the fake's request stamps and the engine's sleeps.
CLOCK_SLACK = 0.05

Definition = MethodDefinition | dict[str, Any]
Outcome = ToolResult | Exception  # what a run ended with


# -- helpers ----------------------------------------------------------------------------


def method_for(
    fake: FakeProvider, provider: str, *, timeout: float | None = None, **polling: Any
) -> MethodDefinition:
    """The provider's preset aimed at the fake, polling fast, optionally a short timeout."""
    method = fake_method(fake, provider, **polling)
    if timeout is not None:
        method.adapter_config.timeout = timeout
    return method


def run_provider(fake: FakeProvider, provider: str, **polling: Any) -> ToolResult:
    return run(method_for(fake, provider, **polling), PARAMS[provider])


def run_returning_state(method: MethodDefinition, params: dict[str, Any]) -> tuple[Any, UUID]:
    """Run the flow; return its final State and its flow run id."""
    state = run_coro_as_sync(run_tool_method(method.model_dump(), params, return_state=True))
    return state, state.state_details.flow_run_id


def provider_run(
    fake: FakeProvider, provider: str, **options: Any
) -> tuple[Definition, dict[str, Any]]:
    """A method and params for ``provider``: a preset, or the fake's generic job API."""
    if provider == "jobs":
        timeout = options.pop("timeout", None)
        method = jobs_method(fake, "/v2/jobs/{id}", **options)
        if timeout is not None:
            method["adapterConfig"]["timeout"] = timeout
        return method, {"prompt": "a cat"}
    return method_for(fake, provider, **options), PARAMS[provider]


def run_outcome(method: Definition, params: dict[str, Any]) -> Outcome:
    """Run the flow; its result, or the exception it ended with (whatever its type)."""
    definition = method.model_dump() if isinstance(method, MethodDefinition) else method
    try:
        return run_coro_as_sync(run_tool_method(definition, params))
    except Exception as exc:  # the test decides whether this type was acceptable
        return exc


def stored_problems(fake: FakeProvider, provider: str, outcome: Outcome) -> list[str]:
    """What is wrong with a run that should have stored its output after one submit."""
    if not isinstance(outcome, ToolResult):
        return [f"raised {outcome!r}"]
    problems = []
    if fake.submits(provider) != 1:
        problems.append(f"{fake.submits(provider)} submits")
    if outcome.warnings:
        problems.append(f"warnings {[w.message for w in outcome.warnings]}")
    if not outcome.files:
        problems.append("no file stored")
    elif outcome.files[0].sha256 != fake.expected_sha256(outcome.task_id):
        problems.append("stored bytes differ from the served ones")
    return problems


def job_downloads(fake: FakeProvider, result: ToolResult) -> list[RecordedRequest]:
    return [r for r in fake.requests(origin="cdn") if f"/{result.task_id}/" in r.path]


def expect_error(method: MethodDefinition, params: dict[str, Any]) -> ToolflowsError:
    """Run the flow expecting a ToolflowsError (any other exception fails the test)."""
    with pytest.raises(ToolflowsError) as raised:
        run(method, params)
    return raised.value


def status_requests(fake: FakeProvider, provider: str) -> list[RecordedRequest]:
    requests = fake.requests(method="GET", origin="api")
    if provider == "heygen":
        return [r for r in requests if r.path.startswith(HEYGEN_STATUS)]
    if provider == "runway":
        return [r for r in requests if r.path.startswith(RUNWAY_TASKS)]
    if provider == "fal":
        return [r for r in requests if r.path.endswith("/status")]
    raise ValueError(provider)


def fal_result_requests(fake: FakeProvider) -> list[RecordedRequest]:
    return [
        r
        for r in fake.requests(method="GET", path_prefix=FAL_REQUESTS)
        if not r.path.endswith("/status")
    ]


def downloads(fake: FakeProvider) -> list[RecordedRequest]:
    return fake.requests(origin="cdn")


def assert_stored_correctly(fake: FakeProvider, result: ToolResult, provider: str) -> None:
    """One submit, no warnings, and the stored bytes are the bytes the CDN serves."""
    assert fake.submits(provider) == 1
    assert result.warnings == []
    assert result.files, "no file was stored"
    primary = result.files[0]
    assert primary.sha256 == fake.expected_sha256(result.task_id)
    stored = Path(primary.uri.removeprefix("file://"))
    assert stored.stat().st_size == primary.size


def jobs_method(fake: FakeProvider, status_url: str, **polling: Any) -> dict[str, Any]:
    """A definition of the fake's terse job API (202 while running), written from the SPEC."""
    os.environ["GENERIC_API_KEY"] = fake.api_keys["generic"]
    settings = {**FAST_POLLING, **polling}
    return {
        "inventoryKey": "acme",
        "name": "jobs",
        "endpoint": fake.api_url + "/v2/jobs",
        "adapterConfig": {
            "headers": {"Authorization": "Bearer ${GENERIC_API_KEY}"},
            "polling": {
                "statusUrl": status_url,
                "intervalSeconds": settings["interval_seconds"],
                "maxIntervalSeconds": settings["max_interval_seconds"],
                "maxWaitSeconds": settings["max_wait_seconds"],
            },
        },
    }


def job_folder(storage_dir: Path, method: MethodDefinition, task_id: str) -> Path:
    return storage_dir / method.inventory_key / method.name / task_id


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def partial_files(storage_dir: Path) -> list[Path]:
    return [path for path in storage_dir.rglob("*") if path.name.endswith(".part")]


def retry_after_date(seconds_from_now: float) -> tuple[str, float]:
    """An HTTP-date ``Retry-After`` and the exact moment it names (whole seconds)."""
    moment = math.ceil(time.time() + seconds_from_now)
    return formatdate(moment, usegmt=True), float(moment)


# -- 1. the submit is never sent twice ---------------------------------------------------


def test_submit_dropped_after_the_server_accepted_it_is_not_sent_again(fresh_fake):
    fresh_fake.script("heygen", submit_fault=Fault.drop_after_accept())

    error = expect_error(method_for(fresh_fake, "heygen"), PARAMS["heygen"])

    assert error.code is ErrorCode.HTTP_ERROR
    assert fresh_fake.submits("heygen") == 1
    assert len(fresh_fake.jobs("heygen")) == 1  # the provider did create (and bill) the job


def test_submit_refused_with_429_and_retry_after_is_sent_again_after_the_wait(fresh_fake):
    fresh_fake.script("heygen", submit_fault=Fault.http(429, {"Retry-After": "1"}))

    result = run_provider(fresh_fake, "heygen")

    submits = fresh_fake.requests(method="POST", path_prefix=HEYGEN_SUBMIT)
    assert len(submits) == 2
    assert submits[1].time - submits[0].time >= 1.0 - CLOCK_SLACK
    assert len(fresh_fake.jobs("heygen")) == 1  # the refused submit created nothing
    assert result.files[0].sha256 == fresh_fake.expected_sha256(result.task_id)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_submit_error_without_retry_after_fails_after_one_submit(fresh_fake, status):
    fresh_fake.script("heygen", submit_fault=Fault.http(status))

    error = expect_error(method_for(fresh_fake, "heygen"), PARAMS["heygen"])

    assert error.code is ErrorCode.HTTP_ERROR
    assert error.http_status == status
    assert fresh_fake.submits("heygen") == 1


def test_submit_read_timeout_is_a_failure_not_a_resend(fresh_fake):
    fresh_fake.script("heygen", submit_fault=Fault.delay(SHORT_TIMEOUT * 4))
    method = method_for(fresh_fake, "heygen", timeout=SHORT_TIMEOUT)

    started = time.monotonic()
    error = expect_error(method, PARAMS["heygen"])

    assert error.code is ErrorCode.HTTP_ERROR
    assert fresh_fake.submits("heygen") == 1
    assert not status_requests(fresh_fake, "heygen")
    assert time.monotonic() - started < SHORT_TIMEOUT * 4 + 2


def test_idempotency_header_carries_the_flow_run_id(fresh_fake):
    fresh_fake.script("heygen", polls_until_done=0)
    method = method_for(fresh_fake, "heygen")
    method.adapter_config.idempotency_header = "Idempotency-Key"

    state, flow_run_id = run_returning_state(method, PARAMS["heygen"])

    assert state.is_completed()
    submit = fresh_fake.requests(method="POST", path_prefix=HEYGEN_SUBMIT)[0]
    assert str(flow_run_id) in submit.headers["idempotency-key"]


# -- 2. transient faults never fail a job before its deadline ----------------------------

TRANSIENT_STORM = [
    Fault.reset(),
    Fault.delay(SHORT_TIMEOUT * 2),
    Fault.http(500),
    Fault.http(502),
    Fault.http(503),
    Fault.http(504),
]


def test_a_storm_of_transient_status_faults_does_not_fail_the_job(fresh_fake):
    fresh_fake.script("heygen", polls_until_done=1, status_faults=TRANSIENT_STORM)

    result = run_provider(fresh_fake, "heygen", timeout=SHORT_TIMEOUT)

    assert_stored_correctly(fresh_fake, result, "heygen")
    # One request per fault, then the finishing check; the held-back answer (delay) was
    # processed by the provider, so it counted as the job's one "running" check.
    assert len(status_requests(fresh_fake, "heygen")) == len(TRANSIENT_STORM) + 1


def test_a_storm_of_transient_result_faults_does_not_fail_the_job(fresh_fake):
    fresh_fake.script("fal", polls_until_done=1, result_faults=TRANSIENT_STORM)

    result = run(method_for(fresh_fake, "fal", timeout=SHORT_TIMEOUT), PARAMS["fal"])

    assert_stored_correctly(fresh_fake, result, "fal")
    assert len(fal_result_requests(fresh_fake)) == len(TRANSIENT_STORM) + 1


DOWNLOAD_FAULT_BY_PROVIDER = {
    "heygen": Fault.reset(),
    "fal": Fault.delay(SHORT_TIMEOUT * 2),  # a read timeout
    "runway": Fault.http(500),
    "replicate": Fault.http(502),
    "jobs": Fault.http(504),
}


@pytest.mark.parametrize(
    ("provider", "fault"),
    DOWNLOAD_FAULT_BY_PROVIDER.items(),
    ids=[
        f"{provider}-{fault.kind}-{fault.status}"
        for provider, fault in DOWNLOAD_FAULT_BY_PROVIDER.items()
    ],
)
def test_a_transient_download_fault_is_retried(fresh_fake, provider, fault):
    fresh_fake.script(provider, polls_until_done=0, download_faults=[fault])
    method, params = provider_run(fresh_fake, provider, timeout=SHORT_TIMEOUT)

    outcome = run_outcome(method, params)

    assert stored_problems(fresh_fake, provider, outcome) == []
    assert isinstance(outcome, ToolResult)
    assert len(job_downloads(fresh_fake, outcome)) == 2


def rate_limits() -> tuple[list[Fault], list[Callable[[RecordedRequest], float]]]:
    """429s asking, in the three spellings, for a wait; and when each next request may come.

    The HTTP date goes first: it names a moment, so it must be scripted just before the run.
    """
    date, moment = retry_after_date(1.0)
    faults = [
        Fault.http(429, {"Retry-After": date}),
        Fault.http(429, {"Retry-After": "1"}),
        Fault.http(429, {"retry-after-ms": "500"}),
    ]
    earliest: list[Callable[[RecordedRequest], float]] = [
        lambda _refused: moment,
        lambda refused: refused.time + 1.0,
        lambda refused: refused.time + 0.5,
    ]
    return faults, earliest


def too_early(requests: list[RecordedRequest], earliest: list[Callable[..., float]]) -> list[str]:
    """Each request that came before the wait the previous (refused) one was told."""
    problems = []
    for index, allowed_at in enumerate(earliest):
        refused, following = requests[index], requests[index + 1]
        wanted = allowed_at(refused)
        if following.time < wanted - CLOCK_SLACK:
            problems.append(
                f"request {index + 2} came {wanted - following.time:.2f} s before the "
                f"Retry-After of request {index + 1} allowed"
            )
    return problems


def test_rate_limited_status_checks_wait_what_each_header_spelling_asks(fresh_fake):
    faults, earliest = rate_limits()
    fresh_fake.script("heygen", polls_until_done=0, status_faults=faults)

    result = run_provider(fresh_fake, "heygen")

    assert_stored_correctly(fresh_fake, result, "heygen")
    checks = status_requests(fresh_fake, "heygen")
    assert len(checks) == len(faults) + 1
    assert too_early(checks, earliest) == []


def test_rate_limited_result_requests_wait_what_each_header_spelling_asks(fresh_fake):
    faults, earliest = rate_limits()
    fresh_fake.script("fal", polls_until_done=0, result_faults=faults)

    result = run(method_for(fresh_fake, "fal"), PARAMS["fal"])

    assert_stored_correctly(fresh_fake, result, "fal")
    fetches = fal_result_requests(fresh_fake)
    assert len(fetches) == len(faults) + 1
    assert too_early(fetches, earliest) == []


@pytest.mark.parametrize(
    ("provider", "spelling"),
    [("runway", "seconds"), ("heygen", "milliseconds"), ("replicate", "http-date")],
)
def test_a_rate_limited_download_waits_what_the_server_asks(fresh_fake, provider, spelling):
    """Each wait is longer than the engine's own first download backoff (1 s), so a
    download that ignores the header shows."""
    date, moment = retry_after_date(2.0)
    fault, allowed_at = {
        "seconds": (Fault.http(429, {"Retry-After": "2"}), lambda refused: refused.time + 2.0),
        "milliseconds": (
            Fault.http(429, {"retry-after-ms": "1500"}),
            lambda refused: refused.time + 1.5,
        ),
        "http-date": (Fault.http(429, {"Retry-After": date}), lambda _refused: moment),
    }[spelling]
    fresh_fake.script(provider, polls_until_done=0, download_faults=[fault])
    method, params = provider_run(fresh_fake, provider)

    outcome = run_outcome(method, params)

    assert stored_problems(fresh_fake, provider, outcome) == []
    assert isinstance(outcome, ToolResult)
    refused, retried = job_downloads(fresh_fake, outcome)
    wanted = allowed_at(refused)
    assert retried.time >= wanted - CLOCK_SLACK, (
        f"download retried {wanted - retried.time:.2f} s before {dict(fault.headers)} allowed"
    )


def test_a_hung_status_connection_cannot_hang_the_run(fresh_fake):
    fresh_fake.script("heygen", polls_until_done=0, status_faults=[Fault.delay(30)])

    started = time.monotonic()
    result = run_provider(fresh_fake, "heygen", timeout=SHORT_TIMEOUT)

    assert time.monotonic() - started < 10
    assert_stored_correctly(fresh_fake, result, "heygen")


# -- 3. persistent trouble ends at the deadline ------------------------------------------

DEADLINE = 1.0


PERSISTENT_FAULT_BY_PROVIDER = {
    "runway": Fault.http(503),
    "replicate": Fault.reset(),
    "fal": Fault.http(429, {"Retry-After": "60"}),  # a wait beyond the deadline
}


@pytest.mark.parametrize(
    ("provider", "fault"),
    PERSISTENT_FAULT_BY_PROVIDER.items(),
    ids=["runway-503", "replicate-reset", "fal-429-retry-after-beyond-the-deadline"],
)
def test_persistent_transient_errors_end_in_polling_timeout_at_the_deadline(
    fresh_fake, provider, fault
):
    """POLLING_TIMEOUT with the job id, at the deadline (not earlier, not much later), and
    the remote job cancelled with the provider's own cancel request."""
    fresh_fake.script(provider, polls_until_done=0, status_faults=[fault] * 500)
    method, params = provider_run(fresh_fake, provider, max_wait_seconds=DEADLINE)

    error = run_outcome(method, params)
    ended_at = time.time()

    assert isinstance(error, ToolflowsError), repr(error)
    assert error.code is ErrorCode.POLLING_TIMEOUT
    (job,) = fresh_fake.jobs(provider)
    assert error.task_id == job.id
    assert error.to_dict()["taskId"] == job.id
    assert job.id in error.message
    assert fresh_fake.submits(provider) == 1
    assert fresh_fake.cancels(provider) == [job.id]
    (cancel,) = [
        request
        for request in fresh_fake.requests(origin="api")
        if job.id in request.path and request.method in ("DELETE", "PUT", "POST")
    ]
    # Not earlier than the deadline, and not much later.
    assert cancel.time - job.created_wall >= DEADLINE - CLOCK_SLACK
    assert ended_at - job.created_wall <= DEADLINE + 2.5


def test_cancel_on_timeout_false_leaves_the_remote_job_alone(fresh_fake):
    fresh_fake.script("runway", polls_until_done=0, status_faults=[Fault.http(503)] * 500)
    method = method_for(fresh_fake, "runway", max_wait_seconds=DEADLINE, cancel_on_timeout=False)

    error = expect_error(method, PARAMS["runway"])

    assert error.code is ErrorCode.POLLING_TIMEOUT
    assert error.task_id == fresh_fake.jobs("runway")[0].id
    assert fresh_fake.cancels() == []
    assert not fresh_fake.requests(method="DELETE")


# -- 4. downloads ------------------------------------------------------------------------


def test_two_cuts_in_a_row_are_both_resumed_with_range(fresh_fake, storage_dir):
    fresh_fake.script(
        "runway",
        polls_until_done=0,
        file_size=3_000_000,
        download_faults=[Fault.cut(1_000_000), Fault.cut(500_000)],
    )

    result = run_provider(fresh_fake, "runway")

    assert_stored_correctly(fresh_fake, result, "runway")
    ranges = [request.headers.get("range") for request in downloads(fresh_fake)]
    assert ranges == [None, "bytes=1000000-", "bytes=1500000-"]
    assert partial_files(storage_dir) == []


def test_two_cuts_in_a_row_without_range_support_restart_from_zero(fresh_fake, storage_dir):
    fresh_fake.script(
        "runway",
        polls_until_done=0,
        file_size=3_000_000,
        ranges=False,
        download_faults=[Fault.cut(1_000_000), Fault.cut(2_000_000)],
    )

    result = run_provider(fresh_fake, "runway")

    assert_stored_correctly(fresh_fake, result, "runway")
    assert [request.headers.get("range") for request in downloads(fresh_fake)] == [None] * 3
    assert result.files[0].size == 3_000_000
    assert partial_files(storage_dir) == []
    # Starting over writes the same file again, not a "-2" sibling of a file never stored.
    fresh_fake.script("runway", polls_until_done=0, file_size=3_000_000, ranges=False)
    uncut = run_provider(fresh_fake, "runway")
    assert result.files[0].filename == uncut.files[0].filename


@pytest.mark.parametrize("ranges", [True, False], ids=["ranges", "no-ranges"])
def test_a_cut_at_byte_10_is_recovered(fresh_fake, ranges):
    fresh_fake.script(
        "runway",
        polls_until_done=0,
        file_size=200_000,
        ranges=ranges,
        download_faults=[Fault.cut(10)],
    )

    result = run_provider(fresh_fake, "runway")

    assert_stored_correctly(fresh_fake, result, "runway")
    assert result.files[0].mimetype == "video/mp4"
    second = downloads(fresh_fake)[1]
    assert second.headers.get("range") == ("bytes=10-" if ranges else None)


def test_a_body_shorter_than_its_content_length_is_never_stored(fresh_fake, storage_dir):
    """Every try (and every resume) is cut short: a warning, and nothing is stored."""
    fresh_fake.script(
        "runway",
        polls_until_done=0,
        file_size=300_000,
        # Each resume gets 10 kB further; the tries run out long before the end.
        download_faults=[Fault.cut(10_000)] * 60,
    )
    # A deadline already past when the job is done: the download gets its minimum tries.
    method = method_for(fresh_fake, "runway", max_wait_seconds=0.5)

    result = run(method, PARAMS["runway"])

    assert result.status == "success"
    assert result.files == []
    assert [warning.code for warning in result.warnings] == ["DOWNLOAD_FAILED"]
    assert len(downloads(fresh_fake)) > 2  # it did resume before giving up
    assert files_under(job_folder(storage_dir, method, result.task_id)) == []
    assert partial_files(storage_dir) == []


@pytest.mark.parametrize("required", [False, True], ids=["warning", "required"])
def test_max_download_bytes_leaves_no_file_in_storage(fresh_fake, storage_dir, required):
    fresh_fake.script("runway", polls_until_done=0, file_size=2_000_000)
    method = method_for(fresh_fake, "runway", download="required" if required else True)
    method.adapter_config.max_download_bytes = 1_000_000

    if required:
        error = expect_error(method, PARAMS["runway"])
        assert error.code is ErrorCode.DOWNLOAD_FAILED
        task_id, message = error.task_id, error.message
    else:
        result = run(method, PARAMS["runway"])
        assert result.files == []
        (warning,) = result.warnings
        assert warning.code == "DOWNLOAD_FAILED"
        task_id, message = result.task_id, warning.message

    assert "maxDownloadBytes" in message
    assert task_id == fresh_fake.jobs("runway")[0].id
    assert files_under(job_folder(storage_dir, method, task_id)) == []
    assert partial_files(storage_dir) == []


@pytest.mark.parametrize("provider", ["heygen", "runway"])
def test_an_expired_signed_url_is_refreshed_from_the_status(fresh_fake, provider):
    """SPEC §4.5: a 403 on a signed URL fetches the status once more for a fresh URL."""
    fresh_fake.script(provider, polls_until_done=0, download_faults=[Fault.expired()])

    result = run_provider(fresh_fake, provider)

    assert_stored_correctly(fresh_fake, result, provider)
    expired, fresh = downloads(fresh_fake)
    assert expired.query != fresh.query  # a newly signed link, not the dead one again
    checks_after_403 = [r for r in status_requests(fresh_fake, provider) if r.time > expired.time]
    assert len(checks_after_403) == 1


# -- 8. hostile and broken answers -------------------------------------------------------


def answer_with(body: bytes | str, content_type: str = "application/json") -> Fault:
    """A 200 answer with exactly this body and Content-Type, in place of the real one."""
    return Fault.http(200, {"Content-Type": content_type}, body=body)


PENDING_LOOKING = {
    "empty-body": answer_with(b""),
    "json-list": answer_with(b'[{"status": "completed"}, 1, null]'),
    "json-string": answer_with(b'"completed"'),
    "json-number": answer_with(b"42"),
    "json-true": answer_with(b"true"),
    "json-null": answer_with(b"null"),
}


@pytest.mark.parametrize("garbage", PENDING_LOOKING.values(), ids=PENDING_LOOKING.keys())
def test_a_status_answer_that_is_not_a_json_object_is_checked_again(fresh_fake, garbage):
    fresh_fake.script("heygen", polls_until_done=0, status_faults=[garbage])

    result = run_provider(fresh_fake, "heygen")

    assert_stored_correctly(fresh_fake, result, "heygen")
    assert len(status_requests(fresh_fake, "heygen")) == 2


STATUS_VALUES_OF_EVERY_TYPE = [
    None,
    True,
    False,
    0,
    -1,
    1.5e308,
    "",
    "x" * 200_000,
    ["a", 1],
    {"b": 1},
]


def test_status_values_of_every_type_are_pending_not_a_crash(fresh_fake):
    """HeyGen's envelope with ``data.status`` of each JSON type in turn, then the truth."""
    fresh_fake.script(
        "heygen",
        polls_until_done=0,
        status_faults=[
            Fault.http(200, body={"code": 100, "data": {"status": value}, "message": "Success"})
            for value in STATUS_VALUES_OF_EVERY_TYPE
        ],
    )

    result = run_provider(fresh_fake, "heygen")

    assert_stored_correctly(fresh_fake, result, "heygen")
    assert len(status_requests(fresh_fake, "heygen")) == len(STATUS_VALUES_OF_EVERY_TYPE) + 1


def test_pending_looking_garbage_until_the_deadline_is_a_polling_timeout(fresh_fake):
    fresh_fake.script("heygen", polls_until_done=0, status_faults=[answer_with(b"[]")] * 500)

    error = expect_error(method_for(fresh_fake, "heygen", max_wait_seconds=1.0), PARAMS["heygen"])

    assert error.code is ErrorCode.POLLING_TIMEOUT
    assert error.task_id == fresh_fake.jobs("heygen")[0].id


NOT_JSON = {
    "html-error-page": answer_with(
        "<html><body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>", "text/html"
    ),
    "plain-text": answer_with("OK", "text/plain"),
    "invalid-utf8-json": answer_with(b'{"status": "\xff\xfe\xfa"}'),
    "truncated-json": answer_with(b'{"status": "proc'),
    "nested-100000-open": answer_with(b"[" * 100_000),
    "nested-100000-balanced": answer_with(b"[" * 100_000 + b"]" * 100_000),
    "nested-100000-objects": answer_with(b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
}


@pytest.mark.parametrize("garbage", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_a_status_answer_that_is_not_usable_json_fails_clearly(fresh_fake, garbage):
    fresh_fake.script("heygen", polls_until_done=0, status_faults=[garbage])

    error = expect_error(method_for(fresh_fake, "heygen"), PARAMS["heygen"])

    assert error.code is ErrorCode.HTTP_ERROR
    assert "expected a JSON status check answer" in error.message
    assert error.task_id == fresh_fake.jobs("heygen")[0].id
    assert fresh_fake.submits("heygen") == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_gigantic_status_answer_is_refused(fresh_fake, chunked):
    fresh_fake.script("jobs")
    size = 17 * 1024 * 1024
    url = f"/_probe/stream?bytes={size}&chunked={int(chunked)}"

    with pytest.raises(ToolflowsError) as raised:
        run(jobs_method(fresh_fake, url), {"prompt": "a cat"})

    error = raised.value
    assert error.code is ErrorCode.HTTP_ERROR
    assert "limit" in error.message
    assert error.task_id == fresh_fake.jobs("jobs")[0].id


ODD_IDS = {
    "object": {"$oid": "64f1c2"},
    "list": ["a", "b"],
    "true": True,
    "null": None,
    "empty": "",
}


@pytest.mark.parametrize("odd_id", ODD_IDS.values(), ids=ODD_IDS.keys())
def test_a_job_id_that_is_not_a_string_or_number_is_not_found(fresh_fake, odd_id):
    answer = {"error": None, "data": {"video_id": odd_id}}
    fresh_fake.script("heygen", submit_fault=Fault.http(200, body=answer))

    error = expect_error(method_for(fresh_fake, "heygen"), PARAMS["heygen"])

    assert error.code is ErrorCode.TASK_ID_NOT_FOUND
    assert "data" in error.message  # names the keys it found
    assert fresh_fake.submits("heygen") == 1
    assert not status_requests(fresh_fake, "heygen")


def test_a_submit_answered_with_an_html_page_fails_clearly(fresh_fake):
    page = "<!DOCTYPE html><html><body>Service Unavailable</body></html>"
    fresh_fake.script("heygen", submit_fault=answer_with(page, "text/html"))

    error = expect_error(method_for(fresh_fake, "heygen"), PARAMS["heygen"])

    assert error.code is ErrorCode.HTTP_ERROR
    assert "expected a JSON submit response" in error.message
    assert fresh_fake.submits("heygen") == 1


def test_a_submit_answered_with_a_json_list_has_no_job_id(fresh_fake):
    fresh_fake.script("heygen", submit_fault=answer_with(b'[{"video_id": 1}]'))

    error = expect_error(method_for(fresh_fake, "heygen"), PARAMS["heygen"])

    assert error.code is ErrorCode.TASK_ID_NOT_FOUND
    assert fresh_fake.submits("heygen") == 1


def test_a_result_answered_with_an_html_page_fails_clearly(fresh_fake):
    fresh_fake.script(
        "fal",
        polls_until_done=0,
        result_faults=[answer_with("<html>Gateway Timeout</html>", "text/html")],
    )

    error = expect_error(method_for(fresh_fake, "fal"), PARAMS["fal"])

    assert error.code is ErrorCode.HTTP_ERROR
    assert "expected a JSON result request answer" in error.message
    assert error.task_id == fresh_fake.jobs("fal")[0].id


def test_an_output_url_at_the_metadata_address_is_a_warning_not_a_fetch(fresh_fake):
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    done = {"code": 100, "data": {"status": "completed", "video_url": metadata}}
    fresh_fake.script("heygen", polls_until_done=5, status_faults=[Fault.http(200, body=done)])

    started = time.monotonic()
    result = run_provider(fresh_fake, "heygen")

    assert result.status == "success"
    assert result.files == []
    (warning,) = result.warnings
    assert warning.code == "DOWNLOAD_FAILED"
    assert "169.254.169.254" in warning.message
    assert "metadata" in warning.message
    assert not downloads(fresh_fake)
    # Refused before connecting: no connect timeout was waited for.
    assert time.monotonic() - started < 5
