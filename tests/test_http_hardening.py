"""Issue 9 over real sockets: ``${VAR}`` is filled only in what the definition wrote, the
address checked is the address connected, credentials reach their own origin's files,
every request has a total time bound, and only ``ToolflowsError`` leaves a run.

Session tests talk to the fake's two origins directly; the end-to-end tests run whole
flows on a real Prefect API. Every host name here resolves to 127.0.0.x only.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import pytest
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.fake_provider import FakeProvider, Fault
from tests.helpers import PARAMS, fake_method, generic_definition
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.redact import Redactor
from toolflows.engine import run_tool_method
from toolflows.http import provider_session

SECRET_VARIABLE = "TOOLFLOWS_HARDENING_SECRET"
SECRET_PLACEHOLDER = "${" + SECRET_VARIABLE + "}"
KEY_PLACEHOLDER = "${HEYGEN_API_KEY}"


def outcome_of(method: Any, params: dict[str, Any]) -> tuple[Any, float]:
    """What a whole run ended with (a ToolResult or the exception), and how long it took."""
    if not isinstance(method, dict):
        method = method.model_dump()
    started = time.monotonic()
    state = run_coro_as_sync(run_tool_method(method, params, return_state=True))
    return state.result(raise_on_failure=False), time.monotonic() - started


def wire_text(fake: FakeProvider, origin: str | None = None) -> list[str]:
    """Path and query of every request that reached the fake (headers are checked apart)."""
    return [f"{request.path} {request.query}" for request in fake.requests(origin=origin)]


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"hardening-{time.time_ns()}"
    monkeypatch.setenv(SECRET_VARIABLE, value)
    return value


# -- 1. ${VAR} is filled only in text the definition wrote -------------------------------


@pytest.mark.usefixtures("prefect_api")
def test_placeholders_in_output_urls_are_sent_as_written(fresh_fake):
    key = fresh_fake.api_keys["heygen"]
    on_cdn = f"{fresh_fake.cdn_url}/heygen/nojob/video.mp4?k={KEY_PLACEHOLDER}"
    on_api = f"{fresh_fake.api_url}/_probe/headers?k={KEY_PLACEHOLDER}"
    done = {"code": 100, "data": {"status": "completed", "video_url": on_cdn, "url": on_api}}
    fresh_fake.script("heygen", polls_until_done=0, status_faults=[Fault.http(200, body=done)])

    result, _ = outcome_of(fake_method(fresh_fake, "heygen", download_all=True), PARAMS["heygen"])

    assert result.status == "success", result
    (echo,) = fresh_fake.requests(path_prefix="/_probe/headers")
    assert echo.query["k"] == KEY_PLACEHOLDER
    (cdn_request,) = fresh_fake.requests(origin="cdn")
    assert cdn_request.query["k"] == KEY_PLACEHOLDER
    assert not [text for text in wire_text(fresh_fake) if key in text]
    assert fresh_fake.credential_leaks == []


@pytest.mark.usefixtures("prefect_api")
def test_placeholders_in_the_submit_answers_links_are_sent_as_written(fresh_fake, secret):
    """The status and cancel links of a submit answer are the provider's: never filled.
    The endpoint's own placeholder is the definition's: filled."""
    status_link = f"{fresh_fake.api_url}/_probe/headers?k={SECRET_PLACEHOLDER}"
    cancel_link = f"{fresh_fake.cdn_url}/cancel/j1?k={SECRET_PLACEHOLDER}"
    answer = {"id": "j1", "status_url": status_link, "cancel_url": cancel_link}
    fresh_fake.script("jobs", submit_fault=Fault.http(200, body=answer))
    method = generic_definition(fresh_fake, "/v2/jobs", maxWaitSeconds=1.0)
    method["endpoint"] += f"?token={SECRET_PLACEHOLDER}"

    error, _ = outcome_of(method, {"prompt": "a cat"})

    assert isinstance(error, ToolflowsError), error
    assert error.code is ErrorCode.POLLING_TIMEOUT
    (submit,) = fresh_fake.requests(method="POST", path_prefix="/v2/jobs")
    assert submit.query["token"] == secret
    checks = fresh_fake.requests(path_prefix="/_probe/headers")
    assert checks
    assert {check.query["k"] for check in checks} == {SECRET_PLACEHOLDER}
    (cancel,) = fresh_fake.requests(origin="cdn")
    assert cancel.query["k"] == SECRET_PLACEHOLDER
    assert [text for text in wire_text(fresh_fake) if secret in text] == [
        f"{submit.path} {submit.query}"
    ]


@pytest.mark.usefixtures("prefect_api")
def test_a_placeholder_in_a_response_url_is_sent_as_written(fresh_fake):
    key = fresh_fake.api_keys["fal"]
    response_url = fresh_fake.api_url + "/_probe/headers?k=${FAL_KEY}"
    done = {"status": "COMPLETED", "request_id": "r1", "response_url": response_url}
    fresh_fake.script("fal", polls_until_done=0, status_faults=[Fault.http(200, body=done)])

    result, _ = outcome_of(fake_method(fresh_fake, "fal"), PARAMS["fal"])

    assert result.status == "success", result
    (result_request,) = fresh_fake.requests(path_prefix="/_probe/headers")
    assert result_request.query["k"] == "${FAL_KEY}"
    assert not [text for text in wire_text(fresh_fake) if key in text]


# -- 6. the endpoint's origin gets the credentials, downloads included ------------------


def gemini_definition(fake: FakeProvider) -> dict[str, Any]:
    """Veo on the Gemini API: the key in ``x-goog-api-key``, files on the API's origin."""
    definition = generic_definition(
        fake, "/v1beta/models/veo:predictLongRunning", statusUrl="/v1beta/{id}"
    )
    definition["adapterConfig"]["headers"] = {"x-goog-api-key": "${GENERIC_API_KEY}"}
    return definition


@pytest.mark.usefixtures("prefect_api")
def test_an_output_on_the_api_origin_is_downloaded_with_the_key(fresh_fake):
    fresh_fake.script("operation", polls_until_done=1, files_on_api=True)

    result, _ = outcome_of(gemini_definition(fresh_fake), {"instances": [{"prompt": "a cat"}]})

    assert result.status == "success", result
    assert result.warnings == []
    (job,) = fresh_fake.jobs("operation")
    assert result.files[0].sha256 == fresh_fake.expected_sha256(job.id)
    (download,) = fresh_fake.requests(path_prefix="/v1beta/files/")
    assert download.headers["x-goog-api-key"] == fresh_fake.api_keys["generic"]
    assert fresh_fake.requests(origin="cdn") == []


# -- 9. one error boundary: provider answers httpx cannot take end as ToolflowsError ----


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("control", ["\x01", "\n", "\x7f"], ids=["x01", "newline", "del"])
def test_an_output_url_with_a_control_character_is_a_download_warning(fresh_fake, control):
    url = f"{fresh_fake.cdn_url}/heygen/nojob/vid{control}eo.mp4"
    done = {"code": 100, "data": {"status": "completed", "video_url": url}}
    fresh_fake.script("heygen", polls_until_done=0, status_faults=[Fault.http(200, body=done)])

    result, _ = outcome_of(fake_method(fresh_fake, "heygen"), PARAMS["heygen"])

    assert not isinstance(result, BaseException), repr(result)
    (warning,) = result.warnings
    assert warning.code == "DOWNLOAD_FAILED"
    assert "URL" in warning.message
    assert control not in warning.message  # shown escaped: no forged log lines
    assert fresh_fake.requests(origin="cdn") == []


@pytest.mark.usefixtures("prefect_api")
def test_a_required_output_with_a_control_character_fails_as_a_toolflows_error(fresh_fake):
    url = f"{fresh_fake.cdn_url}/heygen/nojob/vid\x01eo.mp4"
    done = {"code": 100, "data": {"status": "completed", "video_url": url}}
    fresh_fake.script("heygen", polls_until_done=0, status_faults=[Fault.http(200, body=done)])

    error, _ = outcome_of(fake_method(fresh_fake, "heygen", download="required"), PARAMS["heygen"])

    assert isinstance(error, ToolflowsError), repr(error)
    assert error.task_id == fresh_fake.jobs("heygen")[0].id


BROKEN_GZIP = Fault.http(
    200,
    {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    body=b"\x1f\x8b\x08\x00 this is not a gzip stream",
)


@pytest.mark.usefixtures("prefect_api")
def test_a_status_answer_with_a_broken_gzip_body_fails_clearly(fresh_fake):
    fresh_fake.script("heygen", polls_until_done=0, status_faults=[BROKEN_GZIP])

    error, _ = outcome_of(fake_method(fresh_fake, "heygen"), PARAMS["heygen"])

    assert isinstance(error, ToolflowsError), repr(error)
    assert error.code is ErrorCode.HTTP_ERROR
    assert "gzip" in error.message
    assert error.task_id == fresh_fake.jobs("heygen")[0].id


@pytest.mark.usefixtures("prefect_api")
def test_a_submit_answer_with_a_broken_gzip_body_fails_without_a_resend(fresh_fake):
    fresh_fake.script("jobs", submit_fault=BROKEN_GZIP)

    error, _ = outcome_of(generic_definition(fresh_fake, "/v2/jobs"), {"prompt": "a cat"})

    assert isinstance(error, ToolflowsError), repr(error)
    assert error.code is ErrorCode.HTTP_ERROR
    assert fresh_fake.submits("jobs") == 1


@pytest.mark.usefixtures("prefect_api")
def test_a_status_link_that_is_no_url_fails_clearly(fresh_fake):
    answer = {"id": "j1", "status_url": "http://[::1"}
    fresh_fake.script("jobs", submit_fault=Fault.http(200, body=answer))

    error, _ = outcome_of(generic_definition(fresh_fake, "/v2/jobs"), {"prompt": "a cat"})

    assert isinstance(error, ToolflowsError), repr(error)
    assert error.code is ErrorCode.HTTP_ERROR
    assert error.task_id == "j1"


@pytest.mark.parametrize(
    ("value", "code"),
    [("cl\u00e9", ErrorCode.CONFIG_INVALID), ("a\r\nX-Injected: 1", ErrorCode.HTTP_ERROR)],
    ids=["not-ascii", "crlf"],
)
def test_a_header_that_cannot_be_sent_is_a_toolflows_error(fresh_fake, value, code):
    """A secret with a stray character must not crash the run nor inject a header."""

    async def scenario() -> None:
        async with provider_session(
            fresh_fake.api_url, {"X-Api-Key": value}, timeout=5, redact=Redactor([value])
        ) as session:
            await session.request("GET", fresh_fake.api_url + "/_probe/headers")

    with pytest.raises(ToolflowsError) as raised:
        asyncio.run(scenario())

    assert raised.value.code is code
    assert value not in raised.value.message
    assert fresh_fake.requests(path_prefix="/_probe/headers") == []


# -- 7. every request has a total bound; the job deadline holds -------------------------

# A drip sends one byte of the body per this many seconds: a status answer of ~300 bytes
# would take minutes, while no single read ever waits longer than the timeout.
DRIP = 0.5
# The run must end this soon after the bound it is owed (flow start-up, one more check).
SLACK_SECONDS = 10


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("timeout", [3, 30], ids=["timeout-first", "deadline-first"])
def test_a_dripping_status_answer_ends_in_polling_timeout_at_the_deadline(fresh_fake, timeout):
    fresh_fake.script("heygen", polls_until_done=0, status_faults=[Fault.drip(DRIP)] * 100)
    method = fake_method(fresh_fake, "heygen", max_wait_seconds=5)
    method.adapter_config.timeout = timeout

    error, elapsed = outcome_of(method, PARAMS["heygen"])

    assert isinstance(error, ToolflowsError), repr(error)
    assert error.code is ErrorCode.POLLING_TIMEOUT
    assert elapsed < 5 + SLACK_SECONDS


@pytest.mark.usefixtures("prefect_api")
def test_a_dripping_result_answer_ends_in_polling_timeout_at_the_deadline(fresh_fake):
    fresh_fake.script("fal", polls_until_done=0, result_faults=[Fault.drip(DRIP)] * 100)
    method = fake_method(fresh_fake, "fal", max_wait_seconds=5)
    method.adapter_config.timeout = 3

    error, elapsed = outcome_of(method, PARAMS["fal"])

    assert isinstance(error, ToolflowsError), repr(error)
    assert error.code is ErrorCode.POLLING_TIMEOUT
    assert elapsed < 5 + SLACK_SECONDS


@pytest.mark.usefixtures("prefect_api")
def test_a_dripping_submit_answer_is_a_failure_never_a_resend(fresh_fake):
    fresh_fake.script("heygen", submit_fault=Fault.drip(DRIP))
    method = fake_method(fresh_fake, "heygen")
    method.adapter_config.timeout = 2

    error, elapsed = outcome_of(method, PARAMS["heygen"])

    assert isinstance(error, ToolflowsError), repr(error)
    assert error.code is ErrorCode.HTTP_ERROR
    assert "not sent again" in error.message
    assert fresh_fake.submits("heygen") == 1
    assert elapsed < 2 + SLACK_SECONDS


@asynccontextmanager
async def heygen_session(fake: FakeProvider, *, timeout: float = 5) -> AsyncIterator[Any]:
    key = fake.api_keys["heygen"]
    async with provider_session(
        fake.api_url + "/v2/video/generate",
        {"X-Api-Key": key},
        timeout=timeout,
        redact=Redactor([key]),
    ) as session:
        yield session


def test_a_dripping_answer_to_a_plain_request_ends_at_the_timeout(fresh_fake):
    """``request()`` (cancel, a fresh status for expired links) is bounded as a whole."""
    fresh_fake.script("heygen", polls_until_done=5, status_faults=[Fault.drip(DRIP)])

    async def scenario() -> float:
        async with heygen_session(fresh_fake, timeout=1.5) as session:
            submitted = await session.request(
                "POST", fresh_fake.api_url + "/v2/video/generate", json=PARAMS["heygen"]
            )
            video_id = submitted.json()["data"]["video_id"]
            started = time.monotonic()
            with pytest.raises(httpx.TimeoutException):
                await session.request(
                    "GET", fresh_fake.api_url + f"/v1/video_status.get?video_id={video_id}"
                )
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.5 + 1


# -- 4. the address checked is the address connected -------------------------------------


class RebindingResolver:
    """Answers 127.0.0.1 once, then another loopback address nobody listens on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return ["127.0.0.1"] if len(self.calls) == 1 else ["127.0.0.254"]


def test_a_host_is_connected_at_the_address_that_was_checked(fresh_fake):
    port = urlsplit(fresh_fake.api_url).port
    resolver = RebindingResolver()

    async def scenario() -> list[httpx.Response]:
        async with provider_session(
            f"http://rebind.test:{port}/v2/video/generate",
            {"X-Api-Key": "k"},
            timeout=5,
            redact=Redactor(["k"]),
            resolve=resolver,
        ) as session:
            return [
                await session.request("GET", f"http://rebind.test:{port}/_probe/headers")
                for _ in range(3)
            ]

    responses = asyncio.run(scenario())

    assert [response.status_code for response in responses] == [200, 200, 200]
    assert resolver.calls == [("rebind.test", port)]  # once per connection, one connection
    assert responses[0].json()["headers"]["host"] == f"rebind.test:{port}"


@pytest.mark.parametrize(
    "answers",
    [["169.254.169.254"], ["127.0.0.1", "169.254.169.254"], ["2002:a9fe:a9fe::"]],
    ids=["metadata", "one-bad-answer", "6to4-metadata"],
)
def test_a_name_resolving_to_a_forbidden_address_is_refused_before_connecting(
    fresh_fake, monkeypatch, answers
):
    connected: list[str] = []
    real_connect = httpcore.AnyIOBackend.connect_tcp

    async def recording_connect(self: Any, host: str, port: int, **options: Any) -> Any:
        connected.append(host)
        return await real_connect(self, host, port, **options)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", recording_connect)
    monkeypatch.setenv("TOOLFLOWS_ALLOW_PRIVATE_URLS", "1")

    async def resolve(host: str, port: int) -> list[str]:
        return answers

    async def scenario() -> None:
        async with provider_session(
            fresh_fake.api_url, {}, timeout=5, redact=Redactor([]), resolve=resolve
        ) as session:
            await session.request("GET", "http://files.evil.test/latest/meta-data/")

    with pytest.raises(ToolflowsError) as raised:
        asyncio.run(scenario())

    assert raised.value.code is ErrorCode.HTTP_ERROR
    assert "refusing" in raised.value.message
    assert connected == []


def test_names_are_resolved_off_the_event_loop(fresh_fake, monkeypatch):
    """A slow DNS server must not stall every other job of the run."""
    resolving_threads: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def recording_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        resolving_threads.append(threading.current_thread().name)
        return real_getaddrinfo(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
    url = f"http://localhost:{urlsplit(fresh_fake.api_url).port}/_probe/headers"

    async def scenario() -> tuple[int, str]:
        loop_thread = threading.current_thread().name
        async with provider_session(url, {}, timeout=5, redact=Redactor([])) as session:
            response = await session.request("GET", url)
        return response.status_code, loop_thread

    status, loop_thread = asyncio.run(scenario())

    assert status == 200
    assert resolving_threads
    assert loop_thread not in resolving_threads


# -- 16. no process-wide patches ------------------------------------------------------------


def test_using_toolflows_changes_no_setting_of_the_http_library():
    """Prefect's own client shares httpcore: toolflows must not retune it."""
    import toolflows.http  # noqa: F401

    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == 64 * 1024
