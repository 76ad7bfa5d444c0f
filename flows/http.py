"""The HTTP side of a run: one pooled client, credentials kept home, errors named.

Every request of a run goes through one ``ProviderSession``: it owns the only
``httpx.AsyncClient`` of the run (pooled keep-alive connections on checked
addresses, ``toolflows.transport``), fills ``${VAR}`` only in URLs the definition
wrote, follows redirects itself so configured headers never leave their origin
(httpx strips only ``Authorization``), refuses unsafe URLs on every hop, bounds
each request's total time, and turns what goes wrong into ``ToolflowsError``
with the provider's own words. Only transport errors (worth another try, the
caller decides) leave it as httpx errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote, quote_plus

import httpx

from toolflows.core.encodings import BodyDecoder
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.redact import Redactor
from toolflows.core.templates import resolve_link, substitute_env
from toolflows.core.urls import (
    may_receive_credentials,
    may_use_private_addresses,
    unsafe_url_reason,
)
from toolflows.transport import (
    CheckedNetwork,
    CheckedTransport,
    ProviderResponse,
    Resolver,
    UnsafeAddress,
    resolve_host,
)

CONNECT_TIMEOUT_SECONDS = 10.0
# The run's pool. A batch keeps its requests in flight below it (``toolflows.batch``);
# httpcore pays CPU per pooled connection for every request it places.
MAX_CONNECTIONS = 32
MAX_REDIRECTS = 10
# A status or result document larger than this is not a status document: refuse
# to parse it rather than hold an attacker-sized body in memory.
MAX_JSON_BYTES = 16 * 1024 * 1024
# An error answer is read only for the provider's words; more is not a message.
ERROR_BODY_BYTES = 64 * 1024
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "toolflows/0.1 (+prefect)"


class Credentials(Enum):
    """Where a request may carry the method's configured headers (SPEC §7)."""

    # Submit, status, result, cancel: the endpoint's origin, and hosts in allowedHosts.
    ENDPOINT_AND_ALLOWED_HOSTS = "endpoint-and-allowed-hosts"
    # Outputs: the endpoint's origin only (Gemini serves its files there, key required);
    # a download URL on another origin never gets them, allowedHosts or not.
    ENDPOINT_ONLY = "endpoint-only"


@dataclass
class ProviderSession:
    """Everything one run needs to talk to one provider."""

    client: httpx.AsyncClient
    endpoint: str
    headers: dict[str, str]
    redact: Redactor
    timeout: float
    placeholder_values: Mapping[str, str] = field(default_factory=dict)
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        configured: bool = False,
        credentials: Credentials = Credentials.ENDPOINT_AND_ALLOWED_HOSTS,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
        **content: Any,
    ) -> AsyncIterator[ProviderResponse]:
        """Send a request, following redirects safely; yield the open final response.

        ``configured``: ``url`` is text the definition wrote (endpoint, a URL
        template), so its ``${VAR}`` are filled; any other URL (a provider's
        link, an output, a redirect) is sent as it is. The answer's head must
        arrive within the method's timeout and before ``deadline`` (wall clock);
        ``read_capped`` reads the body within what is left of that bound, while
        a download reads it at its own pace.
        """
        read_by = self._bound(deadline)
        async with _within(read_by, self.redact(url)):
            response = await self._send_following_redirects(
                method,
                self._fill_env_placeholders(url) if configured else url,
                credentials=credentials,
                headers=headers,
                content=content,
            )
        response.read_by = read_by
        try:
            yield response
        finally:
            await response.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        configured: bool = False,
        credentials: Credentials = Credentials.ENDPOINT_AND_ALLOWED_HOSTS,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
        **content: Any,
    ) -> ProviderResponse:
        """Send a request and read its body (capped at ``MAX_JSON_BYTES``), all in one bound."""
        async with self.stream(
            method,
            url,
            configured=configured,
            credentials=credentials,
            deadline=deadline,
            headers=headers,
            **content,
        ) as response:
            await read_capped(response, MAX_JSON_BYTES)
            return response

    def _bound(self, deadline: float | None) -> float:
        """When (event loop clock) a request must be over: the timeout, or the deadline."""
        seconds = self.timeout
        if deadline is not None:
            seconds = min(seconds, deadline - time.time())
        return asyncio.get_running_loop().time() + seconds

    async def _send_following_redirects(
        self,
        method: str,
        url: str,
        *,
        credentials: Credentials,
        headers: Mapping[str, str] | None,
        content: dict[str, Any],
    ) -> ProviderResponse:
        # Once a hop may not have the credentials, no later hop has them: a CDN
        # must not bounce the request back to the API to collect the key.
        credentials_kept = True
        for _hop in range(MAX_REDIRECTS + 1):
            url = self._checked(url)
            credentials_kept = credentials_kept and self._may_have_credentials(url, credentials)
            response = await self._send(method, url, credentials_kept, headers, content)
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

    async def _send(
        self,
        method: str,
        url: str,
        with_credentials: bool,
        extra_headers: Mapping[str, str] | None,
        content: dict[str, Any],
    ) -> ProviderResponse:
        """One hop; what cannot be sent at all is a ToolflowsError, never a retry."""
        headers = {"User-Agent": USER_AGENT}
        if with_credentials:
            headers.update(self.headers)
        if extra_headers:
            headers.update(extra_headers)
        try:
            request = self.client.build_request(method, url, headers=headers, **content)
            response = await self.client.send(request, stream=True, follow_redirects=False)
        except UnsafeAddress as exc:
            raise self._refusal(url, str(exc)) from None
        except (httpx.InvalidURL, httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
            # Nothing went out (h11 refused our own request): sending it again cannot help.
            raise ToolflowsError(
                ErrorCode.HTTP_ERROR,
                f"cannot send the request to {self.redact(url)}: {self.redact(str(exc))}",
            ) from None
        except UnicodeEncodeError:
            raise ToolflowsError(
                ErrorCode.CONFIG_INVALID,
                f"cannot send the request to {self.redact(url)}: a header value is not ASCII",
            ) from None
        assert isinstance(response, ProviderResponse)  # the run's client has our transport
        return response

    def _checked(self, url: str) -> str:
        """``url`` as httpx will send it, refused here unless it is safe to fetch.

        The checks read httpx's own parse of the URL, so no parser difference
        (userinfo, backslashes, control characters) can make the check and the
        request see two different hosts.
        """
        try:
            parsed = str(httpx.URL(url))
        except httpx.InvalidURL as exc:
            raise self._refusal(url, f"not a valid URL ({exc})") from None
        reason = unsafe_url_reason(parsed, endpoint=self.endpoint, allow_private=self.allow_private)
        if reason:
            raise self._refusal(parsed, reason)
        return parsed

    def _may_have_credentials(self, url: str, credentials: Credentials) -> bool:
        allowed_hosts = (
            self.allowed_hosts if credentials is Credentials.ENDPOINT_AND_ALLOWED_HOSTS else ()
        )
        return may_receive_credentials(url, endpoint=self.endpoint, allowed_hosts=allowed_hosts)

    def _refusal(self, url: str, reason: str) -> ToolflowsError:
        return ToolflowsError(
            ErrorCode.HTTP_ERROR, f"refusing to fetch {self.redact(url)!r}: {reason}"
        )

    def _fill_env_placeholders(self, url: str) -> str:
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


@asynccontextmanager
async def _within(read_by: float | None, where: str) -> AsyncIterator[None]:
    """Bound what happens inside to ``read_by`` (loop clock); past it, a ``ReadTimeout``.

    A timeout, like the per-read timeouts of httpx: a status check tries again,
    a submit is not sent again.
    """
    try:
        async with asyncio.timeout_at(read_by) as bound:
            yield
    except TimeoutError:
        if not bound.expired():
            raise
        raise httpx.ReadTimeout(
            f"no complete answer from {where} within the request's time bound"
        ) from None


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
    resolve: Resolver = resolve_host,
    bind: bool = True,
) -> AsyncIterator[ProviderSession]:
    """Open the run's one pooled client and make it the current session.

    Tasks awaited inside the block find it with ``current_session()``; a run
    never builds a client per request (30x the CPU per status check).
    ``endpoint`` is the endpoint as sent (``${VAR}`` filled): its origin gets
    the credentials, its host may be private. ``resolve`` looks host names up
    (once per new connection). ``bind=False``: not made current here, for a
    session opened in one task and closed in another (the waiter's), whose
    users make it current for each use (``using_session``).
    """
    allow_private = os.environ.get("TOOLFLOWS_ALLOW_PRIVATE_URLS") == "1"
    network = CheckedNetwork(
        private_allowed=lambda host: may_use_private_addresses(
            host, endpoint=endpoint, allow_private=allow_private
        ),
        resolve=resolve,
    )
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_SECONDS, timeout)),
        transport=CheckedTransport(network, max_connections=MAX_CONNECTIONS),
        follow_redirects=False,
    )
    session = ProviderSession(
        client=client,
        endpoint=endpoint,
        headers=dict(headers),
        redact=redact,
        timeout=timeout,
        allowed_hosts=allowed_hosts,
        placeholder_values=placeholder_values or {},
        allow_private=allow_private,
    )
    async with client:
        with using_session(session) if bind else nullcontext():
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


async def read_capped(response: ProviderResponse, limit: int) -> bytes:
    """Read the body into ``response.content``, refusing one larger than ``limit``.

    Within the time bound of the request that opened it: a body that drips a
    byte a second never ends otherwise (httpx's timeout is per read). A body
    that cannot be decoded (a broken gzip stream) is an HTTP_ERROR.
    """
    host = response.url.host
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ToolflowsError(
            ErrorCode.HTTP_ERROR,
            f"answer of {declared} bytes from {host} exceeds the {limit}-byte limit",
            http_status=response.status_code,
        )
    decoder = BodyDecoder.for_header(
        response.headers.get("content-encoding", ""), ErrorCode.HTTP_ERROR
    )
    chunks = []
    size = 0
    async with _within(response.read_by, host):
        try:
            async for raw in response.aiter_raw():
                for chunk in decoder.decode(raw):
                    size += len(chunk)
                    if size > limit:
                        raise ToolflowsError(
                            ErrorCode.HTTP_ERROR,
                            f"answer from {host} exceeds the {limit}-byte limit",
                        )
                    chunks.append(chunk)
            decoder.finish()
        except ToolflowsError as error:
            error.http_status = response.status_code
            raise
    response.body = b"".join(chunks)
    return response.body


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
    """The body as JSON, scrubbed of the run's secrets; an empty body is None; garbage names
    what was expected.

    Scrubbed here, where every provider payload enters, so that no echoed credential
    reaches the result, persisted task results, logs, artifacts or events.
    """
    redact = current_session().redact
    if not response.content.strip():
        return None
    try:
        payload = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        snippet = redact.secrets_out(response.content.decode("utf-8", "replace"))[:120]
        raise ToolflowsError(
            ErrorCode.HTTP_ERROR,
            f"expected a JSON {what} from {response.url.host}, got "
            f"{response.headers.get('content-type', 'no content type')}: {snippet!r}",
            task_id=task_id,
            http_status=response.status_code,
        ) from None
    return redact.scrub(payload)


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
