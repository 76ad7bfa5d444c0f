"""The HTTP side of a run: one pooled client, credentials kept home, errors named.

Every request of a run goes through one ``ProviderSession``: it owns the only
``httpx.AsyncClient`` of the run (pooled keep-alive connections, timeouts),
follows redirects itself so configured headers never leave their origin
(httpx strips only ``Authorization``), refuses unsafe URLs on every hop, and
turns provider answers into ``ToolflowsError`` with the provider's own words.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote, quote_plus

import httpcore
import httpx

from flows.core.errors import ErrorCode, ToolflowsError
from flows.core.redact import Redactor
from flows.core.templates import resolve_link, substitute_env
from flows.core.urls import may_receive_credentials, unsafe_url_reason

CONNECT_TIMEOUT_SECONDS = 10.0
# The run's pool. A batch keeps its requests in flight below it (``flows.batch``);
# httpcore pays CPU per pooled connection for every request it places.
MAX_CONNECTIONS = 32
MAX_REDIRECTS = 10
# A status or result document larger than this is not a status document: refuse
# to parse it rather than hold an attacker-sized body in memory.
MAX_JSON_BYTES = 16 * 1024 * 1024
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "toolflows/0.1 (+prefect)"
# httpcore reads HTTP/1.1 bodies 64 KiB at a time (a class constant: httpx has no
# setting for it). asyncio's transport receives up to 256 KiB per recv, so asking
# for that much cuts the trips through anyio, httpcore and h11 per byte by 4
# (1 GiB download: ~620 -> ~755 MiB/s). Process-wide, but only an upper bound:
# a read returns what has already arrived, nothing is allocated at that size.
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 256 * 1024


class Credentials(Enum):
    """Whether a request may carry the method's configured headers."""

    ENDPOINT = "endpoint"  # submit, status, result, cancel: only to the endpoint's origin
    NEVER = "never"  # downloads: output URLs never get credentials


@dataclass
class ProviderSession:
    """Everything one run needs to talk to one provider."""

    client: httpx.AsyncClient
    endpoint: str
    headers: dict[str, str]
    redact: Redactor
    placeholder_values: Mapping[str, str] = field(default_factory=dict)
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = field(
        default_factory=lambda: os.environ.get("TOOLFLOWS_ALLOW_PRIVATE_URLS") == "1"
    )

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        credentials: Credentials = Credentials.ENDPOINT,
        headers: Mapping[str, str] | None = None,
        **content: Any,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request, following redirects safely; yield the open final response."""
        response = await self._send_following_redirects(
            method, url, credentials=credentials, headers=headers, content=content
        )
        try:
            yield response
        finally:
            await response.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        credentials: Credentials = Credentials.ENDPOINT,
        headers: Mapping[str, str] | None = None,
        **content: Any,
    ) -> httpx.Response:
        """Send a request and read its body, capped at ``MAX_JSON_BYTES``."""
        async with self.stream(
            method, url, credentials=credentials, headers=headers, **content
        ) as response:
            await read_capped(response, MAX_JSON_BYTES)
            return response

    async def _send_following_redirects(
        self,
        method: str,
        url: str,
        *,
        credentials: Credentials,
        headers: Mapping[str, str] | None,
        content: dict[str, Any],
    ) -> httpx.Response:
        url = self.fill(url)
        for _hop in range(MAX_REDIRECTS + 1):
            self._refuse_unsafe(url)
            request = self.client.build_request(
                method, url, headers=self._headers_for(url, credentials, headers), **content
            )
            response = await self.client.send(request, stream=True, follow_redirects=False)
            location = response.headers.get("location")
            if not (response.is_redirect and location):
                return response
            await response.aclose()
            url = resolve_link(str(response.url), location)
            if response.status_code == 303 or (
                response.status_code in (301, 302) and method == "POST"
            ):
                method, content = "GET", {}
        raise ToolflowsError(
            ErrorCode.HTTP_ERROR, f"more than {MAX_REDIRECTS} redirects from {self.redact(url)}"
        )

    def _headers_for(
        self, url: str, credentials: Credentials, extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT}
        if credentials is Credentials.ENDPOINT and may_receive_credentials(
            url, endpoint=self.endpoint, allowed_hosts=self.allowed_hosts
        ):
            headers.update(self.headers)
        if extra:
            headers.update(extra)
        return headers

    def _refuse_unsafe(self, url: str) -> None:
        reason = unsafe_url_reason(url, endpoint=self.endpoint, allow_private=self.allow_private)
        if reason:
            raise ToolflowsError(
                ErrorCode.HTTP_ERROR, f"refusing to fetch {self.redact(url)}: {reason}"
            )

    def fill(self, url: str) -> str:
        """Resolve ``${VAR}`` at send time, so persisted URLs never hold the secret."""
        return substitute_env(url, self.placeholder_values) if "${" in url else url

    def url_of(self, response: httpx.Response) -> str:
        """The URL that answered, with ``${VAR}`` values put back as placeholders.

        Answers' URLs are persisted (relative links resolve against them); the
        secret a URL was sent with must not be.
        """
        url = str(response.url)
        for name, value in self.placeholder_values.items():
            for form in {value, quote(value, safe=""), quote_plus(value)}:
                if form:
                    url = url.replace(form, f"${{{name}}}")
        return url


_current_session: ContextVar[ProviderSession] = ContextVar("toolflows_provider_session")


@asynccontextmanager
async def provider_session(
    endpoint: str,
    headers: Mapping[str, str],
    *,
    timeout: float,
    redact: Redactor,
    allowed_hosts: tuple[str, ...] = (),
    placeholder_values: Mapping[str, str] | None = None,
) -> AsyncIterator[ProviderSession]:
    """Open the run's one pooled client and make it the current session.

    Tasks awaited inside the block find it with ``current_session()``; a run
    never builds a client per request (30x the CPU per status check).
    """
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_SECONDS, timeout)),
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
        ),
        follow_redirects=False,
    )
    session = ProviderSession(
        client=client,
        endpoint=endpoint,
        headers=dict(headers),
        redact=redact,
        allowed_hosts=allowed_hosts,
        placeholder_values=placeholder_values or {},
    )
    async with client:
        with using_session(session):
            yield session


@contextmanager
def using_session(session: ProviderSession) -> Iterator[ProviderSession]:
    """Make ``session`` the current one here (a pipeline runs steps of several methods)."""
    token = _current_session.set(session)
    try:
        yield session
    finally:
        _current_session.reset(token)


def current_session() -> ProviderSession:
    """The session of the run in progress (set by ``provider_session``)."""
    try:
        return _current_session.get()
    except LookupError:
        raise RuntimeError(
            "toolflows tasks must run inside run_tool_method (no provider session is open)"
        ) from None


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """Read a body into ``response.content``, refusing one larger than ``limit``."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ToolflowsError(
            ErrorCode.HTTP_ERROR,
            f"answer of {declared} bytes from {response.url.host} exceeds the {limit}-byte limit",
            http_status=response.status_code,
        )
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ToolflowsError(
                ErrorCode.HTTP_ERROR,
                f"answer from {response.url.host} exceeds the {limit}-byte limit",
                http_status=response.status_code,
            )
        chunks.append(chunk)
    body = b"".join(chunks)
    response._content = body
    return body


def is_transient_status(status_code: int) -> bool:
    """Worth asking again later: rate limits, timeouts and server errors."""
    return status_code in TRANSIENT_STATUS or 500 <= status_code < 600


def is_file_response(response: httpx.Response) -> bool:
    """A body that is a file (video, audio, ...) rather than a JSON or text document."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type or content_type.startswith("text/"):
        return False
    return content_type != "application/json" and not content_type.endswith("+json")


def parse_json(response: httpx.Response, *, what: str, task_id: str | None = None) -> Any:
    """The body as JSON; an empty body is None; garbage names what was expected."""
    if not response.content.strip():
        return None
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        snippet = response.content[:120].decode("utf-8", "replace")
        raise ToolflowsError(
            ErrorCode.HTTP_ERROR,
            f"expected a JSON {what} from {response.url.host}, got "
            f"{response.headers.get('content-type', 'no content type')}: {snippet!r}",
            task_id=task_id,
            http_status=response.status_code,
        ) from None


def provider_message(response: httpx.Response) -> str:
    """The provider's own words for a failed request (detail, message, error, title)."""
    try:
        body = json.loads(response.content) if response.content else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if isinstance(body, dict):
        for key in ("detail", "message", "error", "title", "error_message", "msg"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("detail")
            if isinstance(value, list) and value:
                value = "; ".join(_describe_problem(item) for item in value[:5])
            if isinstance(value, str | int) and str(value).strip():
                return str(value).strip()[:500]
    text = response.content[:200].decode("utf-8", "replace").strip()
    if text and not text.lstrip().startswith("<"):
        return text
    return response.reason_phrase or "no reason given"


def _describe_problem(item: Any) -> str:
    if isinstance(item, dict):
        location = ".".join(str(part) for part in item.get("loc", []))
        message = item.get("msg") or item.get("message") or json.dumps(item)[:100]
        return f"{location}: {message}" if location else str(message)
    return str(item)


def http_error(
    response: httpx.Response, *, what: str, redact: Redactor, task_id: str | None = None
) -> ToolflowsError:
    """HTTP_ERROR for a refused request, carrying the status and the provider's reason."""
    return ToolflowsError(
        ErrorCode.HTTP_ERROR,
        f"{what} failed: HTTP {response.status_code} from {redact(str(response.url))}: "
        f"{redact(provider_message(response))}",
        task_id=task_id,
        http_status=response.status_code,
    )
