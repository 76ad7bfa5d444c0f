"""The CDN origin: serves output files as S3/CloudFront do behind presigned links."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Literal
from xml.sax.saxutils import escape

from toolflows.fake_provider.content import FakeFile
from toolflows.fake_provider.http import Reply, Request
from toolflows.fake_provider.model import FakeJob
from toolflows.fake_provider.state import State

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_S3_CODES = {403: "AccessDenied", 404: "NoSuchKey", 405: "MethodNotAllowed", 416: "InvalidRange"}

Slicer = Callable[[int, int], Iterable[bytes | memoryview]]


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


def serve_body(
    headers: list[tuple[str, str]],
    size: int,
    slices: Slicer,
    request: Request,
    ranges: bool = True,
) -> Reply:
    """A body of `size` bytes (`slices(start, end)` makes them), or the requested range of it.

    `ranges` False: the server ignores Range headers and says so (``Accept-Ranges: none``).
    """
    headers = [*headers, ("accept-ranges", "bytes" if ranges else "none")]
    span = _span(request.headers.get("range"), size) if ranges else None
    if span is False:
        reply = xml_error(416, "The requested range is not satisfiable")
        return reply.but(headers=(*reply.headers, ("content-range", f"bytes */{size}")))
    if span is None:
        return Reply(200, tuple(headers), slices(0, size), length=size)
    start, end = span
    headers.append(("content-range", f"bytes {start}-{end - 1}/{size}"))
    return Reply(206, tuple(headers), slices(start, end), length=end - start)


def serve_file(file: FakeFile, request: Request) -> Reply:
    """The file (or the requested byte range of it), streamed in block-sized chunks."""
    return serve_body(file.headers(), file.size, file.chunks, request)


class Cdn:
    """Serves every job's files at ``/{provider}/{job id}/{file name}``."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def handle(self, request: Request) -> Reply:
        if request.method not in ("GET", "HEAD"):
            return xml_error(405, "The specified method is not allowed against this resource.")
        parts = request.path.strip("/").split("/")
        job = self.state.get_job(parts[0], parts[1]) if len(parts) == 3 else None
        file = next((f for f in job.files if f.name == parts[2]), None) if job else None
        if job is None or file is None:
            return xml_error(404, "The specified key does not exist.")
        return self.deliver(job, file, request)

    def deliver(self, job: FakeJob, file: FakeFile, request: Request) -> Reply:
        """Answer a request for a file that exists."""
        return serve_file(file, request)
