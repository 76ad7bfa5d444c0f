"""The fake's HTTP server, able to misbehave on purpose.

A framework would hide exactly what the fault tests need: resetting a socket with no
answer, announcing a Content-Length and closing halfway, holding an answer back.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields

import h11

from toolflows.fake_provider.http import Handler, HttpServer, Reply, Request, send_data


@dataclass(frozen=True)
class Misbehaving(Reply):
    """A reply and how to misbehave while answering it."""

    delay: float = 0.0
    abort: bool = False
    cut_after: int | None = None
    # Seconds between the body's bytes, sent one at a time (a stalled, dripping server).
    drip: float = 0.0

    @classmethod
    def spoiling(cls, reply: Reply, **how: float | bool | int) -> Misbehaving:
        """`reply`, answered the way `how` says (fields of this class)."""
        kept = {f.name: getattr(reply, f.name) for f in fields(reply)}
        return cls(**{**kept, **how})


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (linger 0) so the client sees a reset, not a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class MisbehavingServer(HttpServer):
    """The shipped server, counting connections and misbehaving as a reply says."""

    def __init__(self, handler: Handler, on_connect: Callable[[], None]) -> None:
        super().__init__(handler)
        self._on_connect = on_connect

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._on_connect()
        await super()._serve(reader, writer)

    async def _write(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: Request, reply: Reply
    ) -> bool:
        if isinstance(reply, Misbehaving):
            await asyncio.sleep(reply.delay)
            if reply.abort:
                _reset(writer)
                return False
        return await super()._write(conn, writer, request, reply)

    async def _send_body(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply
    ) -> bool:
        if not isinstance(reply, Misbehaving) or (reply.cut_after is None and not reply.drip):
            return await super()._send_body(conn, writer, reply)
        sent = 0
        for chunk in reply.chunks():
            if reply.cut_after is not None and sent + len(chunk) >= reply.cut_after:
                send_data(conn, writer, chunk[: reply.cut_after - sent])
                writer.close()  # flushes what was written, then FIN: a short body
                return False
            if reply.drip:
                await self._drip(conn, writer, bytes(chunk), reply.drip)
            else:
                send_data(conn, writer, chunk)
            sent += len(chunk)
            await writer.drain()
        return True

    @staticmethod
    async def _drip(
        conn: h11.Connection, writer: asyncio.StreamWriter, chunk: bytes, interval: float
    ) -> None:
        for index in range(len(chunk)):
            send_data(conn, writer, chunk[index : index + 1])
            await writer.drain()
            await asyncio.sleep(interval)
