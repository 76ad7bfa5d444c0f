"""A small HTTP/1.1 server on asyncio streams + h11, able to misbehave on purpose.

A framework would hide exactly what the fault tests need: resetting a socket with no
answer, announcing a Content-Length and closing halfway, holding an answer back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
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
    """What to answer, and how to misbehave while answering."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | Iterable[bytes | memoryview] = b""
    length: int | None = None
    delay: float = 0.0
    abort: bool = False
    cut_after: int | None = None
    # No Content-Length: the body goes out chunked, its size unknown until the end.
    chunked: bool = False
    # Seconds between the body's bytes, sent one at a time (a stalled, dripping server).
    drip: float = 0.0

    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Reply:
        data = json.dumps(payload).encode()
        return cls(status, (("content-type", "application/json"), *headers), data)

    def but(self, **changes: Any) -> Reply:
        return replace(self, **changes)


Handler = Callable[[Request], Awaitable[Reply]]


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (linger 0) so the client sees a reset, not a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class HttpServer:
    """Serves one origin on 127.0.0.1 with keep-alive; `handler` decides every answer."""

    def __init__(self, handler: Handler, on_connect: Callable[[], None]) -> None:
        self._handler = handler
        self._on_connect = on_connect
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
        self._on_connect()
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read(conn, reader, writer)
                if request is None:
                    break
                try:
                    reply = await self._handler(request)
                except Exception:  # a bug in the fake must show up in the test, not hang it
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
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.abort:
            _reset(writer)
            return False
        chunks: Iterable[bytes | memoryview]
        if isinstance(reply.body, bytes):
            chunks, length = (reply.body,), len(reply.body)
        else:
            chunks, length = reply.body, reply.length or 0
        headers = [("date", self._http_date()), ("server", "toolflows-fake"), *reply.headers]
        no_body = request.method == "HEAD" or reply.status in (204, 304)
        if reply.status != 204 and not reply.chunked:
            headers.append(("content-length", str(length)))
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=phrase(reply.status)
        )
        writer.write(conn.send(response))
        if not no_body:
            sent = 0
            for chunk in chunks:
                if reply.cut_after is not None and sent + len(chunk) >= reply.cut_after:
                    for piece in conn.send_with_data_passthrough(
                        h11.Data(data=chunk[: reply.cut_after - sent])
                    ):
                        writer.write(piece)
                    writer.close()  # flushes what was written, then FIN: a short body
                    return False
                if reply.drip:
                    await self._drip(conn, writer, bytes(chunk), reply.drip)
                else:
                    for piece in conn.send_with_data_passthrough(h11.Data(data=chunk)):
                        writer.write(piece)
                sent += len(chunk)
                await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return True

    @staticmethod
    async def _drip(
        conn: h11.Connection, writer: asyncio.StreamWriter, chunk: bytes, interval: float
    ) -> None:
        for index in range(len(chunk)):
            for piece in conn.send_with_data_passthrough(h11.Data(data=chunk[index : index + 1])):
                writer.write(piece)
            await writer.drain()
            await asyncio.sleep(interval)
