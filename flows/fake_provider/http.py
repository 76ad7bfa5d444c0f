"""A small HTTP/1.1 server on asyncio streams + h11, with keep-alive and streamed bodies.

No framework: the fake must answer byte for byte as written (a Content-Length, a body
streamed in blocks), and a subclass can take over the socket (`_write`, `_send_body`).
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11

READ_SIZE = 256 * 1024
WRITE_HIGH_WATER = 4 << 20


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    time: float

    def json(self) -> Any:
        """The JSON body, or None when there is none or it does not parse."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass(frozen=True)
class Reply:
    """What to answer. An iterable body is streamed: `length` is its Content-Length, and
    None sends it chunked (its size unknown until the end)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | Iterable[bytes | memoryview] = b""
    length: int | None = None

    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Reply:
        data = json.dumps(payload).encode()
        return cls(status, (("content-type", "application/json"), *headers), data)

    def but(self, **changes: Any) -> Reply:
        return replace(self, **changes)

    def chunks(self) -> Iterable[bytes | memoryview]:
        return (self.body,) if isinstance(self.body, bytes) else self.body


Handler = Callable[[Request], Awaitable[Reply]]


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def send_data(conn: h11.Connection, writer: asyncio.StreamWriter, data: bytes | memoryview) -> None:
    """Queue one piece of the body on the socket (framed as the response requires)."""
    for piece in conn.send_with_data_passthrough(h11.Data(data=data)):
        writer.write(piece)


class HttpServer:
    """Serves one origin on 127.0.0.1 with keep-alive; `handler` decides every answer."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._date = (0, "")

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, backlog=4096)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read(conn, reader, writer)
                if request is None:
                    break
                try:
                    reply = await self._handler(request)
                except Exception:  # a bug in the fake must show up in the client, not hang it
                    reply = Reply(
                        500, (("content-type", "text/plain"),), traceback.format_exc().encode()
                    )
                if not await self._write(conn, writer, request, reply):
                    break
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        except asyncio.CancelledError:
            # Shutdown. Ending normally spares asyncio's stream callback from re-raising it.
            writer.transport.abort()
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _read(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:  # curl does, for large uploads
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                conn.receive_data(await reader.read(READ_SIZE))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return self._request(head, bytes(body))
            else:
                return None

    @staticmethod
    def _request(head: h11.Request, body: bytes) -> Request:
        target = urlsplit(head.target.decode("latin-1"))
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        query = dict(parse_qsl(target.query, keep_blank_values=True))
        return Request(head.method.decode(), target.path, query, headers, body, time.time())

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    async def _write(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: Request, reply: Reply
    ) -> bool:
        """Send `reply`; False when the connection must not be reused."""
        length = len(reply.body) if isinstance(reply.body, bytes) else reply.length
        headers = [("date", self._http_date()), ("server", "toolflows-fake"), *reply.headers]
        if reply.status != 204 and length is not None:
            headers.append(("content-length", str(length)))
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=phrase(reply.status)
        )
        writer.write(conn.send(response))
        has_body = request.method != "HEAD" and reply.status not in (204, 304)
        if has_body and not await self._send_body(conn, writer, reply):
            return False
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return True

    async def _send_body(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply
    ) -> bool:
        """Stream the body, waiting for the socket after each chunk; False when the
        connection was ended instead (never here: a misbehaving subclass may)."""
        for chunk in reply.chunks():
            send_data(conn, writer, chunk)
            await writer.drain()
        return True
