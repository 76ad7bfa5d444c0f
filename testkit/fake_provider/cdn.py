"""The CDN origin as tests need it: it refuses (and records) credentials, checks signed
links, sends files compressed or as a gzip bomb, and meets the scripted download faults.

It refuses any request that carries credentials, as presigned storage does: that is how
tests prove the engine never sends API keys off-origin.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Literal

from testkit.fake_provider.content import BLOCK_SIZE, ScriptedFile, gzip_bomb
from testkit.fake_provider.faults import disturb, preempt
from testkit.fake_provider.model import PREEMPTIVE, FakeJob
from testkit.fake_provider.state import State
from toolflows.fake_provider import cdn
from toolflows.fake_provider.cdn import serve_body, xml_error
from toolflows.fake_provider.content import FakeFile
from toolflows.fake_provider.http import Reply, Request

CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "proxy-authorization"})


def serve_file(
    file: FakeFile,
    request: Request,
    ranges: bool,
    *,
    encoding: Literal["gzip", "deflate"] | None = None,
    bomb_bytes: int = 0,
) -> Reply:
    """The file (or the requested byte range of it), honouring Range only when `ranges`.

    With an ``encoding`` (or a bomb) the body is the compressed bytes, as S3 serves an
    object stored with ``Content-Encoding``: Content-Length and Range count those.
    """
    headers = file.headers()
    if bomb_bytes:
        body, encoding = gzip_bomb(bomb_bytes), "gzip"
    elif encoding and isinstance(file, ScriptedFile):
        body = file.encoded(encoding)
    else:
        return serve_body(headers, file.size, file.chunks, request, ranges)
    headers.append(("content-encoding", encoding))
    return serve_body(headers, len(body), partial(_slices, body), request, ranges)


def _slices(body: bytes, start: int, end: int) -> Iterator[memoryview]:
    view = memoryview(body)
    for offset in range(start, end, BLOCK_SIZE):
        yield view[offset : min(offset + BLOCK_SIZE, end)]


class Cdn(cdn.Cdn):
    state: State

    def _leaked(self, request: Request) -> list[str]:
        keys = [key for key in self.state.api_keys.values() if key]
        return [
            name
            for name, value in request.headers.items()
            if name in CREDENTIAL_HEADERS or any(key in value for key in keys)
        ]

    async def handle(self, request: Request) -> Reply:
        self.state.record("cdn", request)
        leaked = self._leaked(request)
        if leaked:
            for name in leaked:
                self.state.leak(request.path, name)
            return xml_error(403, "Only one auth mechanism allowed; credentials are not accepted")
        return await super().handle(request)

    def deliver(self, job: FakeJob, file: FakeFile, request: Request) -> Reply:
        fault = self.state.pop_fault(job, "download")
        if fault is not None and fault.kind == "expired":
            self.state.expire_links(job)
        if fault is not None and fault.kind in PREEMPTIVE:
            return preempt(fault, xml_error)
        signed = isinstance(file, ScriptedFile) and file.signing
        if signed and not self.state.signature_valid(job, request.path, request.query):
            return xml_error(403, "Request has expired")
        behaviour = job.behaviour
        reply = serve_file(
            file,
            request,
            behaviour.ranges,
            encoding=behaviour.content_encoding,
            bomb_bytes=behaviour.bomb_bytes,
        )
        return disturb(reply, fault)
