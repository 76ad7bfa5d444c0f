"""SPEC §7 over real sockets: credentials stay on the endpoint's origin, no request goes
where it must not (SSRF), and no secret reaches logs, errors, results or storage.

The ProviderSession tests talk to the fake's two origins (API and CDN) directly; the
``wire`` records every request handed to the transport and every TCP connection made,
so "refused" means "never connected". The end-to-end tests run whole flows on a real
Prefect API.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlencode, urlsplit
from uuid import UUID, uuid4

import httpcore
import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.fake_provider import FakeProvider, Fault
from tests.helpers import PARAMS, fake_method, generic_definition, run
from toolflows.core.definition import MethodDefinition
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.redact import Redactor
from toolflows.engine import run_tool_method
from toolflows.http import Credentials, ProviderSession, provider_session
from toolflows.transport import CheckedTransport

CONFIGURED_HEADERS = {
    "Authorization": "Bearer k-configured-authorization",
    "X-Api-Key": "k2-configured-api-key",
    "X-Custom-Token": "k3-configured-custom-token",
}
CONFIGURED_NAMES = {name.lower() for name in CONFIGURED_HEADERS}
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


# -- a session on the fake's API origin, with every request on the wire recorded -------


@dataclass
class Wire:
    """Requests handed to the session's transport, and the TCP connections it made."""

    sent: list[httpx.Request] = field(default_factory=list)
    connected: list[str] = field(default_factory=list)

    def hosts(self) -> list[str]:
        return [request.url.host for request in self.sent]


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    """Records what the sessions opened during the test send, and where they connect."""
    recorded = Wire()
    send = CheckedTransport.handle_async_request
    connect = httpcore.AnyIOBackend.connect_tcp

    # Only the sessions' connections: Prefect's own clients connect through httpcore too.
    sending = ContextVar("sending", default=False)

    async def recording_send(self: CheckedTransport, request: httpx.Request) -> httpx.Response:
        recorded.sent.append(request)
        token = sending.set(True)
        try:
            return await send(self, request)
        finally:
            sending.reset(token)

    async def recording_connect(self: Any, host: str, port: int, **options: Any) -> Any:
        if sending.get():
            recorded.connected.append(host)
        return await connect(self, host, port, **options)

    monkeypatch.setattr(CheckedTransport, "handle_async_request", recording_send)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", recording_connect)
    return recorded


@pytest.fixture
def private_urls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """TOOLFLOWS_ALLOW_PRIVATE_URLS=1 for this test."""
    monkeypatch.setenv("TOOLFLOWS_ALLOW_PRIVATE_URLS", "1")
    yield


@pytest.fixture(autouse=True)
def _no_private_opt_in_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOLFLOWS_ALLOW_PRIVATE_URLS", raising=False)


@asynccontextmanager
async def api_session(
    fake: FakeProvider, *, allowed_hosts: tuple[str, ...] = ()
) -> AsyncIterator[ProviderSession]:
    """The run's session as the engine opens it, with the endpoint on the fake's API origin."""
    async with provider_session(
        fake.api_url + "/v2/video/generate",
        CONFIGURED_HEADERS,
        timeout=5,
        redact=Redactor(CONFIGURED_HEADERS.values()),
        allowed_hosts=allowed_hosts,
    ) as session:
        yield session


def send(
    fake: FakeProvider,
    method: str,
    url: str,
    *,
    credentials: Credentials = Credentials.ENDPOINT_AND_ALLOWED_HOSTS,
    allowed_hosts: tuple[str, ...] = (),
    **content: Any,
) -> httpx.Response:
    """One request through a fresh session, from sync test code."""

    async def request() -> httpx.Response:
        async with api_session(fake, allowed_hosts=allowed_hosts) as session:
            return await session.request(method, url, credentials=credentials, **content)

    return asyncio.run(request())


def refusal(fake: FakeProvider, url: str, **options: Any) -> ToolflowsError:
    """The ToolflowsError a request to ``url`` must end in."""
    with pytest.raises(ToolflowsError) as raised:
        send(fake, "GET", url, **options)
    return raised.value


def redirect(fake: FakeProvider, to: str, status: int = 302) -> str:
    """An API-origin URL that redirects to ``to``."""
    return f"{fake.api_url}/_probe/redirect?{urlencode({'to': to, 'status': status})}"


def echo_url(fake: FakeProvider) -> str:
    return fake.api_url + "/_probe/headers"


def configured_headers_in(headers: dict[str, str]) -> set[str]:
    """Configured header names present, and names of headers carrying a configured value."""
    values = set(CONFIGURED_HEADERS.values())
    return {
        name.lower()
        for name, value in headers.items()
        if name.lower() in CONFIGURED_NAMES or any(secret in value for secret in values)
    }


def localhost(url: str) -> str:
    """The same port under the name ``localhost``: another origin, another host."""
    parts = urlsplit(url)
    return f"http://localhost:{parts.port}"


def last_cdn_request(fake: FakeProvider) -> dict[str, str]:
    requests = fake.requests(origin="cdn")
    assert requests, "the request never reached the CDN"
    return requests[-1].headers


# -- 5. credentials stay home -------------------------------------------------------------


def test_the_endpoint_origin_gets_every_configured_header(fresh_fake, wire):
    response = send(fresh_fake, "GET", echo_url(fresh_fake))

    assert configured_headers_in(response.json()["headers"]) == CONFIGURED_NAMES


def test_another_origin_gets_none_of_the_configured_headers(fresh_fake, wire):
    send(fresh_fake, "GET", fresh_fake.cdn_url + "/heygen/nobody/video.mp4")

    assert configured_headers_in(last_cdn_request(fresh_fake)) == set()
    assert fresh_fake.credential_leaks == []
    assert configured_headers_in(dict(wire.sent[-1].headers)) == set()


@pytest.mark.usefixtures("private_urls")
def test_another_host_gets_the_headers_only_when_listed_in_allowed_hosts(fresh_fake, wire):
    other_origin = localhost(fresh_fake.cdn_url) + "/heygen/nobody/video.mp4"

    send(fresh_fake, "GET", other_origin)
    assert configured_headers_in(last_cdn_request(fresh_fake)) == set()

    send(fresh_fake, "GET", other_origin, allowed_hosts=("localhost",))
    assert configured_headers_in(last_cdn_request(fresh_fake)) == CONFIGURED_NAMES


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_redirect_to_another_origin_drops_every_configured_header(
    fresh_fake, wire, status, method
):
    target = fresh_fake.cdn_url + "/heygen/nobody/video.mp4"

    send(fresh_fake, method, redirect(fresh_fake, target, status), json={"a": 1})

    first_hop, *later_hops = wire.sent
    assert configured_headers_in(dict(first_hop.headers)) == CONFIGURED_NAMES
    assert [hop.url.port for hop in later_hops] == [urlsplit(fresh_fake.cdn_url).port]
    assert configured_headers_in(last_cdn_request(fresh_fake)) == set()
    assert fresh_fake.credential_leaks == []


@pytest.mark.usefixtures("private_urls")
def test_a_redirect_to_another_host_of_the_same_machine_drops_them_too(fresh_fake, wire):
    """``localhost`` is not ``127.0.0.1``: hosts are compared as written (SPEC §7)."""
    api_as_localhost = localhost(fresh_fake.api_url) + "/_probe/headers"

    response = send(fresh_fake, "GET", redirect(fresh_fake, api_as_localhost, 307))

    assert response.status_code == 200
    assert configured_headers_in(response.json()["headers"]) == set()


def test_a_redirect_within_the_origin_keeps_the_headers(fresh_fake, wire):
    response = send(fresh_fake, "GET", redirect(fresh_fake, "/_probe/headers", 302))

    assert configured_headers_in(response.json()["headers"]) == CONFIGURED_NAMES


def test_a_download_on_the_endpoint_origin_gets_the_headers(fresh_fake, wire):
    """Gemini serves its files on the API origin and answers 403 without the key."""
    on_origin = send(fresh_fake, "GET", echo_url(fresh_fake), credentials=Credentials.ENDPOINT_ONLY)
    via_redirect = send(
        fresh_fake,
        "GET",
        redirect(fresh_fake, "/_probe/headers"),
        credentials=Credentials.ENDPOINT_ONLY,
    )

    assert configured_headers_in(on_origin.json()["headers"]) == CONFIGURED_NAMES
    assert configured_headers_in(via_redirect.json()["headers"]) == CONFIGURED_NAMES


@pytest.mark.usefixtures("private_urls")
def test_a_download_elsewhere_never_gets_them_even_from_allowed_hosts(fresh_fake, wire):
    downloads = Credentials.ENDPOINT_ONLY
    other_host = localhost(fresh_fake.cdn_url) + "/x/y/z"
    send(fresh_fake, "GET", other_host, credentials=downloads, allowed_hosts=("localhost",))
    send(fresh_fake, "GET", fresh_fake.cdn_url + "/x/y/z", credentials=downloads)
    send(fresh_fake, "GET", redirect(fresh_fake, other_host), credentials=downloads)

    cdn_requests = fresh_fake.requests(origin="cdn")
    assert len(cdn_requests) == 3
    assert all(configured_headers_in(request.headers) == set() for request in cdn_requests)
    assert fresh_fake.credential_leaks == []


@pytest.mark.usefixtures("private_urls")
def test_a_redirect_back_to_the_endpoint_origin_does_not_regain_them(fresh_fake, wire):
    """Once a hop went without the credentials, another origin cannot bounce us home to
    collect them (``localhost`` is another origin, served by the same fake)."""
    elsewhere = (
        localhost(fresh_fake.api_url)
        + "/_probe/redirect?"
        + urlencode({"to": echo_url(fresh_fake)})
    )

    response = send(fresh_fake, "GET", redirect(fresh_fake, elsewhere))

    assert [hop.url.host for hop in wire.sent] == ["127.0.0.1", "localhost", "127.0.0.1"]
    assert configured_headers_in(dict(wire.sent[0].headers)) == CONFIGURED_NAMES
    assert configured_headers_in(response.json()["headers"]) == set()


# -- 6. no SSRF ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://127.0.0.1/pub/file", "gopher://127.0.0.1:70/", "//no-scheme"],
)
def test_only_http_and_https_are_fetched(fresh_fake, wire, url):
    error = refusal(fresh_fake, url)

    assert error.code is ErrorCode.HTTP_ERROR
    assert wire.sent == []
    assert wire.connected == []


ALWAYS_REFUSED = [
    METADATA_URL,
    "http://169.254.1.1/",
    "http://[fe80::1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    # The metadata address in the forms IPv6 delivers to it: 6to4, NAT64, compatible.
    "http://[2002:a9fe:a9fe::]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[64:ff9b::169.254.169.254]/",
    "http://[::a9fe:a9fe]/",
    # Numeric host spellings the C resolver reads as 169.254.169.254 (no DNS query).
    "http://2852039166/",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    # userinfo and backslash tricks: the host is the part after "@".
    "http://api.example.com@169.254.169.254/latest/",
    "http://api.example.com\\@169.254.169.254/latest/",
]


@pytest.mark.parametrize("opt_in", [False, True], ids=["default", "allow-private"])
@pytest.mark.parametrize("url", ALWAYS_REFUSED)
def test_link_local_and_metadata_addresses_are_always_refused(
    fresh_fake, wire, monkeypatch, url, opt_in
):
    if opt_in:
        monkeypatch.setenv("TOOLFLOWS_ALLOW_PRIVATE_URLS", "1")

    error = refusal(fresh_fake, url)

    assert error.code is ErrorCode.HTTP_ERROR
    assert "refusing" in error.message
    assert wire.connected == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://127.0.0.2/",
        "localhost",
    ],
)
def test_private_addresses_other_than_the_endpoints_host_are_refused(fresh_fake, wire, url):
    if url == "localhost":
        url = localhost(fresh_fake.cdn_url) + "/x"

    error = refusal(fresh_fake, url)

    assert error.code is ErrorCode.HTTP_ERROR
    assert "TOOLFLOWS_ALLOW_PRIVATE_URLS" in error.message
    assert wire.connected == []


@pytest.mark.usefixtures("private_urls")
def test_a_private_address_is_fetched_with_the_opt_in(fresh_fake, wire):
    response = send(fresh_fake, "GET", localhost(fresh_fake.cdn_url) + "/x/y/z")

    assert response.status_code == 404  # the CDN answered: the request went through
    assert fresh_fake.requests(origin="cdn")


def test_the_endpoints_own_host_is_reachable_on_another_port(fresh_fake, wire):
    """A provider on loopback serves its files there too (SPEC §7)."""
    response = send(fresh_fake, "GET", fresh_fake.cdn_url + "/x/y/z")

    assert response.status_code == 404
    assert fresh_fake.requests(origin="cdn")


@pytest.mark.parametrize("opt_in", [False, True], ids=["default", "allow-private"])
@pytest.mark.parametrize(
    "target", [METADATA_URL, "http://[fe80::1]:8080/", "file:///etc/passwd"], ids=str
)
def test_every_redirect_hop_is_checked(fresh_fake, wire, monkeypatch, target, opt_in):
    if opt_in:
        monkeypatch.setenv("TOOLFLOWS_ALLOW_PRIVATE_URLS", "1")

    error = refusal(fresh_fake, redirect(fresh_fake, target))

    assert error.code is ErrorCode.HTTP_ERROR
    assert "refusing" in error.message
    assert wire.connected == ["127.0.0.1"]  # the redirect itself, nothing after it


def test_a_redirect_to_a_private_host_needs_the_opt_in(fresh_fake, wire):
    target = localhost(fresh_fake.cdn_url) + "/x/y/z"

    error = refusal(fresh_fake, redirect(fresh_fake, target))

    assert "TOOLFLOWS_ALLOW_PRIVATE_URLS" in error.message
    assert wire.connected == ["127.0.0.1"]
    assert not fresh_fake.requests(origin="cdn")


# -- end to end: no provider leaks ---------------------------------------------------------


@pytest.mark.usefixtures("prefect_api")
def test_no_run_of_any_provider_sends_credentials_to_the_cdn(fresh_fake):
    runs: list[tuple[str, MethodDefinition | dict[str, Any], dict[str, Any]]] = [
        (provider, fake_method(fresh_fake, provider), PARAMS[provider])
        for provider in ("heygen", "fal", "runway", "replicate")
    ]
    runs += [
        (
            "operation",
            generic_definition(
                fresh_fake, "/v1beta/models/veo:predictLongRunning", statusUrl="/v1beta/{id}"
            ),
            {"instances": [{"prompt": "a cat"}]},
        ),
        ("jobs", generic_definition(fresh_fake, "/v2/jobs", statusUrl="/v2/jobs/{id}"), {}),
    ]
    for provider, method, params in runs:
        fresh_fake.script(provider, polls_until_done=1)
        result = run(method, params)
        assert result.files, f"{provider}: nothing downloaded"

    keys = [key for key in fresh_fake.api_keys.values() if key]
    cdn_requests = fresh_fake.requests(origin="cdn")
    assert len(cdn_requests) >= len(runs)
    assert fresh_fake.credential_leaks == []
    for request in cdn_requests:
        assert not {"authorization", "x-api-key", "x-runway-version"} & set(request.headers)
        sent = json.dumps([request.headers, request.query])
        assert not [key for key in keys if key in sent], request.path


# -- 7. secrets never appear -------------------------------------------------------------

SECRET_VARIABLE = "TOOLFLOWS_TEST_SECRET"


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"tfs-{uuid4().hex}"
    monkeypatch.setenv(SECRET_VARIABLE, value)
    return value


def secret_forms(*secrets: str) -> list[str]:
    """Each secret as written and as a URL would carry it."""
    forms = set()
    for secret in secrets:
        forms |= {secret, quote(secret, safe=""), quote_plus(secret)}
    return sorted(forms)


def method_with_secret(fake: FakeProvider, **polling: Any) -> MethodDefinition:
    """HeyGen's preset with ``${TOOLFLOWS_TEST_SECRET}`` in a header and in the query
    string of the endpoint and of the status URL."""
    method = fake_method(fake, "heygen", **polling)
    placeholder = "${" + SECRET_VARIABLE + "}"
    method.endpoint = f"{method.endpoint}?api_key={placeholder}"
    method.adapter_config.headers["X-Extra-Token"] = placeholder
    method.adapter_config.polling.status_url = (
        f"/v1/video_status.get?video_id={{id}}&api_key={placeholder}"
    )
    return method


SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any], ErrorCode | None]] = {
    "success": ({}, {}, None),
    "download-warning": ({"download_faults": [Fault.http(404)]}, {}, None),
    "task-failed": ({"outcome": "failure"}, {}, ErrorCode.TASK_FAILED),
    "polling-timeout": (
        {"polls_until_done": 10_000},
        {"max_wait_seconds": 1.0},
        ErrorCode.POLLING_TIMEOUT,
    ),
    "status-http-error": ({"status_faults": [Fault.http(401)]}, {}, ErrorCode.HTTP_ERROR),
    "submit-http-error": ({"submit_fault": Fault.http(500)}, {}, ErrorCode.HTTP_ERROR),
}


async def _flow_run_logs(flow_run_id: UUID) -> list[Any]:
    async with get_client() as client:
        return await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )


async def _flow_run_artifacts(flow_run_id: UUID) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def flow_run_logs(flow_run_id: UUID) -> list[str]:
    """The flow run's log messages as the Prefect API stores them, once the last arrived."""
    deadline = time.monotonic() + 15
    while True:
        logs = run_coro_as_sync(_flow_run_logs(flow_run_id))
        finished = any(
            log.task_run_id is None and "Finished in state" in log.message for log in logs
        )
        if finished or time.monotonic() > deadline:
            return [log.message for log in logs]
        time.sleep(0.2)


def flow_run_artifacts(flow_run_id: UUID) -> list[str]:
    artifacts = run_coro_as_sync(_flow_run_artifacts(flow_run_id))
    return [json.dumps(artifact.model_dump(mode="json")) for artifact in artifacts]


def stored_texts(storage_dir: Path, since: float) -> dict[str, bytes]:
    """Every file written under storage since ``since``, also base64-decoded where it holds
    Prefect's serialized results (a pickle in base64, bare or in a JSON record)."""
    texts: dict[str, bytes] = {}
    for path in storage_dir.rglob("*"):
        if not path.is_file() or path.stat().st_mtime < since - 1:
            continue
        raw = path.read_bytes()
        texts[str(path)] = raw
        decoded = _decoded_result(raw)
        if decoded is not None:
            texts[f"{path} (decoded)"] = decoded
    return texts


def _decoded_result(raw: bytes) -> bytes | None:
    try:
        record = json.loads(raw)
        encoded = record["result"] if isinstance(record, dict) else None
    except (ValueError, UnicodeDecodeError):
        encoded = raw
    if not isinstance(encoded, str | bytes):
        return None
    try:
        return base64.b64decode(encoded)
    except (binascii.Error, ValueError):
        return None


def leaks(secrets: list[str], places: dict[str, str | bytes]) -> list[str]:
    """``place: …context…`` for every secret form found in every place."""
    found = []
    for place, text in places.items():
        for form in secrets:
            needle: str | bytes = form.encode() if isinstance(text, bytes) else form
            at = text.find(needle)  # type: ignore[arg-type]
            if at >= 0:
                context = text[max(0, at - 60) : at + len(needle) + 20]
                found.append(f"{place}: …{context!r}…")
    return found


def assert_no_leaks(secrets: list[str], places: dict[str, str | bytes]) -> None:
    found = leaks(secrets, places)
    assert not found, "a secret was found in:\n" + "\n".join(found)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secrets_never_appear_in_results_errors_logs_or_storage(
    fresh_fake, storage_dir, secret, scenario
):
    behaviour, polling, expected_error = SCENARIOS[scenario]
    fresh_fake.script("heygen", **{"polls_until_done": 1, **behaviour})
    method = method_with_secret(fresh_fake, **polling)
    secrets = secret_forms(secret, fresh_fake.api_keys["heygen"])
    started = time.time()

    state = run_coro_as_sync(
        run_tool_method(method.model_dump(), PARAMS["heygen"], return_state=True)
    )

    outcome = state.result(raise_on_failure=False)
    if expected_error is None:
        assert state.is_completed(), outcome
        shown = {"result": json.dumps(outcome.to_json_dict())}
    else:
        assert isinstance(outcome, ToolflowsError), repr(outcome)
        assert outcome.code is expected_error
        shown = {
            "error": json.dumps(outcome.to_dict()),
            "str(error)": str(outcome),
            "repr(error)": repr(outcome),
            "state message": state.message or "",
        }
    # The secret did travel where it belongs: it was configured, not dropped.
    submit = fresh_fake.requests(method="POST", origin="api")[0]
    assert submit.query["api_key"] == secret
    assert submit.headers["x-extra-token"] == secret
    flow_run_id = state.state_details.flow_run_id
    logs = flow_run_logs(flow_run_id)
    assert any("Finished in state" in message for message in logs)  # the logs were read
    places: dict[str, str | bytes] = {
        **shown,
        **{f"log: {message[:60]}": message for message in logs},
        **{f"artifact {n}": text for n, text in enumerate(flow_run_artifacts(flow_run_id))},
        **stored_texts(storage_dir, started),
    }
    assert_no_leaks(secrets, places)


def toolflows_command() -> str:
    return str(Path(sys.executable).with_name("toolflows"))


def toolflows_run(definition: Path, params: Path, env: dict[str, str]) -> tuple[int, str, str]:
    completed = subprocess.run(
        [toolflows_command(), "run", str(definition), "--params", f"@{params}"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    return completed.returncode, completed.stdout, completed.stderr


@pytest.mark.parametrize("scenario", ["download-warning", "status-http-error"])
def test_secrets_never_appear_in_the_clis_output(
    fresh_fake, storage_dir, secret, tmp_path, prefect_api, scenario
):
    behaviour, polling, expected_error = SCENARIOS[scenario]
    fresh_fake.script("heygen", **{"polls_until_done": 1, **behaviour})
    definition = tmp_path / "method.json"
    definition.write_text(json.dumps(method_with_secret(fresh_fake, **polling).model_dump()))
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS["heygen"]))
    started = time.time()

    code, stdout, stderr = toolflows_run(
        definition, params, {**os.environ, "PREFECT_API_URL": prefect_api}
    )

    document = json.loads(stdout)
    assert code == (0 if expected_error is None else 1), stderr[-3000:]
    if expected_error is not None:
        assert document["error"]["code"] == expected_error.value
    assert "Task ID detected" in stderr  # the logs were captured
    assert fresh_fake.requests(method="POST", origin="api")[0].query["api_key"] == secret
    places: dict[str, str | bytes] = {
        "stdout": stdout,
        "stderr": stderr,
        **stored_texts(storage_dir, started),
    }
    assert_no_leaks(secret_forms(secret, fresh_fake.api_keys["heygen"]), places)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("provider", "signature_parameter"), [("heygen", "Signature"), ("runway", "_jwt")]
)
@pytest.mark.parametrize("required", [False, True], ids=["warning", "required"])
def test_signed_url_signatures_are_redacted_in_logs_and_errors(
    fresh_fake, provider, signature_parameter, required
):
    fresh_fake.script(provider, polls_until_done=0, download_faults=[Fault.http(404)])
    method = fake_method(fresh_fake, provider, download="required" if required else True)

    state = run_coro_as_sync(
        run_tool_method(method.model_dump(), PARAMS[provider], return_state=True)
    )

    (download,) = fresh_fake.requests(origin="cdn")
    signature = download.query[signature_parameter]
    outcome = state.result(raise_on_failure=False)
    if required:
        assert isinstance(outcome, ToolflowsError)
        assert outcome.code is ErrorCode.DOWNLOAD_FAILED
        shown = {"error": json.dumps(outcome.to_dict()), "state message": state.message or ""}
    else:
        (warning,) = outcome.warnings
        assert warning.code == "DOWNLOAD_FAILED"
        assert "[REDACTED]" in (warning.source_url or "")
        shown = {"warnings": json.dumps([w.to_json_dict() for w in outcome.warnings])}
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert any("failed" in message.lower() for message in logs)
    places: dict[str, str | bytes] = {**shown, **{f"log {n}": m for n, m in enumerate(logs)}}
    assert_no_leaks([signature], places)
