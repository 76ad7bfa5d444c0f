"""The waiter's webhook endpoint (``toolflows waiter --listen HOST:PORT``).

A tiny ASGI app on uvicorn: it takes ``POST .../hooks/<flow run id>/<token>``, reads a
bounded body within a time bound, and hands the call to ``accept`` (the waiter, which
checks the token and signature and queues a status check). It answers fast and with
an empty body: providers retry slow endpoints, and nothing a caller sent is echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn

from toolflows.core.webhooks import parse_callback_path

# A Replicate prediction posted with its logs and outputs is a few hundred KB; 1 MiB
# takes any real callback while a flood of large bodies cannot fill the waiter's memory.
MAX_CALLBACK_BYTES = 1024 * 1024
# ``accept`` only checks and queues a wake-up; longer means the waiter is stuck, and the
# provider is better told 503 (it retries) than kept waiting.
ACCEPT_SECONDS = 2.0
# Connections held at once; past it uvicorn answers 503 and the backstop polling still
# finds every job, so a flood costs latency, never a result.
MAX_CONNECTIONS = 256
# Longest request head (line and headers): signature headers are well under 1 KB.
MAX_HEAD_BYTES = 16 * 1024

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Callback:
    """One provider call to a job's callback URL, as ``accept`` gets it."""

    flow_run_id: str
    token: str
    headers: Mapping[str, str]  # lowercased names; a repeated header keeps its last value
    body: bytes


Accept = Callable[[Callback], Awaitable[int]]  # returns the HTTP status to answer


class _BodyTooLarge(Exception):
    """The body went past the cap while it was read."""


class _ClientGone(Exception):
    """The caller disconnected before its body ended."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process hosting it (the waiter)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so a busy port raises OSError (uvicorn would exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def webhook_server(
    host: str,
    port: int,
    accept: Accept,
    *,
    max_body_bytes: int = MAX_CALLBACK_BYTES,
    read_seconds: float = 10,
    accept_seconds: float = ACCEPT_SECONDS,
) -> AsyncIterator[str]:
    """Serve callbacks while the context is open; yields the bound base URL, e.g.
    ``http://127.0.0.1:54321`` (port 0 binds a free port). On exit the port is closed
    and no task is left running."""
    app = _CallbackApp(
        accept,
        max_body_bytes=max_body_bytes,
        read_seconds=read_seconds,
        accept_seconds=accept_seconds,
    )
    config = uvicorn.Config(
        app,
        http="h11",  # h11_max_incomplete_event_size bounds the request head
        ws="none",
        lifespan="off",
        log_config=None,  # the hosting process's logging, untouched
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=read_seconds + accept_seconds,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    server = _Server(config)
    sock = _bind(host, port)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                await serving  # raises why it stopped
                raise RuntimeError("the webhook server stopped while starting")
            await asyncio.sleep(0.01)
        yield _base_url(sock)
    finally:
        server.should_exit = True
        await serving
        sock.close()


class _CallbackApp:
    """The ASGI app: route, bound the body, call ``accept``, answer its status."""

    def __init__(
        self, accept: Accept, *, max_body_bytes: int, read_seconds: float, accept_seconds: float
    ) -> None:
        self._accept = accept
        self._max_body_bytes = max_body_bytes
        self._read_seconds = read_seconds
        self._accept_seconds = accept_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn's "path" is percent-decoded; the raw path keeps %2F and %2E as written.
        try:
            parsed = parse_callback_path(scope["raw_path"].decode("ascii"))
        except UnicodeDecodeError:
            parsed = None
        if parsed is None:
            await _answer(send, 404, body_read=False)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, body_read=False, extra_headers=[(b"allow", b"POST")])
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        if _declared_length(headers) > self._max_body_bytes:
            await _answer(send, 413, body_read=False)
            return
        try:
            async with asyncio.timeout(self._read_seconds):
                body = await self._read_body(receive)
        except TimeoutError:
            await _answer(send, 408, body_read=False)
            return
        except _BodyTooLarge:
            await _answer(send, 413, body_read=False)
            return
        except _ClientGone:
            return
        flow_run_id, token = parsed
        callback = Callback(flow_run_id=flow_run_id, token=token, headers=headers, body=body)
        await _answer(send, await self._status_of(callback), body_read=True)

    async def _read_body(self, receive: Receive) -> bytes:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            body += message.get("body", b"")
            if len(body) > self._max_body_bytes:
                raise _BodyTooLarge
            if not message.get("more_body", False):
                return bytes(body)

    async def _status_of(self, callback: Callback) -> int:
        """What ``accept`` answers: 503 when it takes too long, 500 when it fails."""
        try:
            async with asyncio.timeout(self._accept_seconds):
                return await self._accept(callback)
        except TimeoutError:
            logger.warning("webhook: accepting a callback took over %ss", self._accept_seconds)
            return 503
        except Exception:
            logger.exception("webhook: accepting a callback failed")
            return 500


def _declared_length(headers: Mapping[str, str]) -> int:
    """The Content-Length a caller declared (h11 has checked it is a number); 0 if none."""
    declared = headers.get("content-length")
    return int(declared) if declared is not None else 0


async def _answer(
    send: Send,
    status: int,
    *,
    body_read: bool,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An empty answer; the connection closes when the body was left unread, so the
    server never drains (or keeps) what it refused."""
    headers = [(b"content-length", b"0"), *(extra_headers or [])]
    if not body_read:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
