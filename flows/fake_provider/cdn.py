"""The CDN origin: serves output files like S3/CloudFront behind presigned links.

It refuses any request that carries credentials, as presigned storage does, and records
the attempt: that is how tests prove the engine never sends API keys off-origin.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal
from xml.sax.saxutils import escape

from toolflows.fake_provider.content import BLOCK_SIZE, FakeFile, gzip_bomb
from toolflows.fake_provider.faults import disturb, preempt
from toolflows.fake_provider.http import Reply, Request
from toolflows.fake_provider.model import PREEMPTIVE
from toolflows.fake_provider.state import State

CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "proxy-authorization"})
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_S3_CODES = {403: "AccessDenied", 404: "NoSuchKey", 405: "MethodNotAllowed", 416: "InvalidRange"}


def xml_error(status: int, message: str) -> Reply:
    """S3/CloudFront-style XML error body."""
    code = _S3_CODES.get(status, "InternalError" if status >= 500 else "InvalidRequest")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return Reply(status, (("content-type", "application/xml"),), body.encode())


def _span(header: str | None, size: int) -> tuple[int, int] | Literal[False] | None:
    """(start, end) for a satisfiable single range, None to send it all, False for 416."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        return (max(size - suffix, 0), size) if suffix and size else False
    start = int(first)
    if last and int(last) < start:
        return None
    end = min(int(last) + 1, size) if last else size
    return (start, end) if start < size else False


def serve_file(
    file: FakeFile,
    request: Request,
    ranges: bool,
    *,
    encoding: Literal["gzip", "deflate"] | None = None,
    bomb_bytes: int = 0,
) -> Reply:
    """The file (or the requested byte range of it), streamed in block-sized chunks.

    With an ``encoding`` (or a bomb) the body is the compressed bytes, as S3 serves an
    object stored with ``Content-Encoding``: Content-Length and Range count those.
    """
    headers: list[tuple[str, str]] = []
    if file.header_type:
        headers.append(("content-type", file.header_type))
    if file.content_disposition:
        headers.append(("content-disposition", file.content_disposition))
    headers.append(("accept-ranges", "bytes" if ranges else "none"))
    body: bytes | None = None
    if bomb_bytes:
        body, encoding = gzip_bomb(bomb_bytes), "gzip"
    elif encoding:
        body = file.encoded(encoding)
    if encoding:
        headers.append(("content-encoding", encoding))
    size = file.size if body is None else len(body)
    span = _span(request.headers.get("range"), size) if ranges else None
    if span is False:
        reply = xml_error(416, "The requested range is not satisfiable")
        return reply.but(headers=(*reply.headers, ("content-range", f"bytes */{size}")))
    start, end = span or (0, size)
    chunks = file.chunks(start, end) if body is None else _slices(body, start, end)
    if span is None:
        return Reply(200, tuple(headers), chunks, length=size)
    headers.append(("content-range", f"bytes {start}-{end - 1}/{size}"))
    return Reply(206, tuple(headers), chunks, length=end - start)


def _slices(body: bytes, start: int, end: int) -> Iterator[memoryview]:
    view = memoryview(body)
    for offset in range(start, end, BLOCK_SIZE):
        yield view[offset : min(offset + BLOCK_SIZE, end)]


class Cdn:
    def __init__(self, state: State) -> None:
        self.state = state

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
        if request.method not in ("GET", "HEAD"):
            return xml_error(405, "The specified method is not allowed against this resource.")
        parts = request.path.strip("/").split("/")
        job = self.state.get_job(parts[0], parts[1]) if len(parts) == 3 else None
        file = next((f for f in job.files if f.name == parts[2]), None) if job else None
        if job is None or file is None or job.deleted:
            return xml_error(404, "The specified key does not exist.")
        fault = self.state.pop_fault(job, "download")
        if fault is not None and fault.kind == "expired":
            self.state.expire_links(job)
        if fault is not None and fault.kind in PREEMPTIVE:
            return preempt(fault, xml_error)
        if file.signing and not self.state.signature_valid(job, request.path, request.query):
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
