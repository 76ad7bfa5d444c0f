"""The submit's body as the method sends it: JSON, query string, form or multipart.

A multipart param ``{"file": "<path, file://, s3:// or http(s) URL>"}`` uploads
that file (SPEC §2). Remote files are streamed into a temporary file first, in
constant memory and once per submit: the request then has a length, and can be
sent again from its first byte when it never reached the server. An http(s)
source is fetched through the run's session, so the SSRF rules hold on every
hop and the method's credentials go only to the endpoint's own origin, and read
as a download is: decoded in bounded steps, within the download pace. An
``s3://`` source is read with the credentials of the run's storage: the
method's ``storage`` block, else the run's result storage, when it is an S3
bucket; else boto3's default chain (environment, ``~/.aws``, instance role).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from toolflows.core.definition import MethodDefinition
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.files import (
    choose_mimetype,
    extension_for,
    filename_from_content_disposition,
    filename_from_url,
)
from toolflows.http import (
    ERROR_BODY_BYTES,
    Credentials,
    current_session,
    http_error,
    read_capped,
)
from toolflows.storage import S3FileStore, resolve_file_store
from toolflows.transfer import TransferPace, receive_body

SPOOL_CHUNK_BYTES = 1024 * 1024
# Bytes kept to tell a file's type when its source does not say.
SNIFF_BYTES = 64


@dataclass(frozen=True)
class Upload:
    """One file part: its name, type and an open handle (rewound before each send)."""

    filename: str
    mimetype: str
    handle: BinaryIO


@asynccontextmanager
async def request_content(
    method: MethodDefinition, params: dict[str, Any]
) -> AsyncIterator[Callable[[], dict[str, Any]]]:
    """Yield a function giving the request's content (httpx keywords) for each send.

    Files are opened (and remote ones fetched) once, here, before anything is
    sent: a missing file or a refused URL costs nothing.
    """
    async with AsyncExitStack() as stack:
        if method.http_method in ("GET", "DELETE"):
            query = form_fields(params)
            yield lambda: {"params": query}
            return
        body_type = method.adapter_config.body_type
        if body_type == "json":
            yield lambda: {"json": params}
            return
        files = {key: value["file"] for key, value in params.items() if is_file_param(value)}
        fields = form_fields({key: value for key, value in params.items() if key not in files})
        if body_type == "form":
            if files:
                raise ToolflowsError(
                    ErrorCode.CONFIG_INVALID,
                    f"params {', '.join(sorted(files))} are files: a form cannot carry them, "
                    'set adapterConfig.bodyType to "multipart"',
                )
            yield lambda: {"data": fields}
            return
        uploads = {key: await _open(reference, method, stack) for key, reference in files.items()}

        def multipart() -> dict[str, Any]:
            for upload in uploads.values():
                upload.handle.seek(0)
            parts = {
                key: (upload.filename, upload.handle, upload.mimetype)
                for key, upload in uploads.items()
            }
            return {"data": fields, "files": parts}

        yield multipart


def is_file_param(value: Any) -> bool:
    """``{"file": "<reference>"}``: a file to upload, in a multipart body."""
    return isinstance(value, dict) and set(value) == {"file"} and isinstance(value["file"], str)


def form_fields(params: dict[str, Any]) -> dict[str, str]:
    """Params as form or query text; a null is left out (never sent as ``None``)."""
    return {key: _form_value(value) for key, value in params.items() if value is not None}


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


async def _open(reference: str, method: MethodDefinition, stack: AsyncExitStack) -> Upload:
    scheme = urlsplit(reference).scheme.lower()
    if scheme in ("", "file"):
        return _local(reference, stack)
    if scheme in ("http", "https"):
        return await _fetched(reference, method, stack)
    if scheme == "s3":
        return await _from_s3(reference, method, stack)
    raise ToolflowsError(
        ErrorCode.CONFIG_INVALID,
        f"multipart file {reference!r}: use a local path, a file://, s3:// or http(s) URL",
    )


def _local(reference: str, stack: AsyncExitStack) -> Upload:
    parts = urlsplit(reference)
    path = Path(unquote(parts.path)) if parts.scheme == "file" else Path(reference)
    if not path.is_file():
        raise ToolflowsError(ErrorCode.CONFIG_INVALID, f"multipart file {path} does not exist")
    handle = stack.enter_context(path.open("rb"))
    mimetype = choose_mimetype(content_type=None, head=handle.read(SNIFF_BYTES), filename=path.name)
    return Upload(path.name, mimetype, handle)


async def _fetched(url: str, method: MethodDefinition, stack: AsyncExitStack) -> Upload:
    """Stream an http(s) source into a temporary file, bounded like a download.

    Decoded a bounded step at a time, within the download pace, and capped at
    ``maxDownloadBytes``: a source that drips or inflates cannot hold the submit.
    """
    session = current_session()
    config = method.adapter_config
    source = session.redact(url)
    what = f"fetching multipart file {source}"
    spool = _spool(stack)

    def spooled(piece: bytes) -> None:
        if spool.tell() + len(piece) > config.max_download_bytes:
            raise _larger_than(source, config.max_download_bytes)
        spool.write(piece)

    async with session.stream("GET", url, credentials=Credentials.ENDPOINT_ONLY) as response:
        if response.status_code >= 400:
            await read_capped(response, ERROR_BODY_BYTES)
            raise http_error(response, what=what, redact=session.redact)
        await receive_body(
            response, TransferPace.of(config), spooled, what=what, failure=ErrorCode.HTTP_ERROR
        )
        spool.seek(0)
        named = filename_from_content_disposition(
            response.headers.get("content-disposition")
        ) or filename_from_url(url)
        mimetype = choose_mimetype(
            content_type=response.headers.get("content-type"),
            head=spool.read(SNIFF_BYTES),
            filename=named,
        )
    return Upload(named or f"upload{extension_for(mimetype)}", mimetype, spool)


async def _from_s3(reference: str, method: MethodDefinition, stack: AsyncExitStack) -> Upload:
    """Stream an S3 object into a temporary file with the run's storage credentials."""
    parts = urlsplit(reference)
    client = await _s3_client(method)
    spool = _spool(stack)
    limit = method.adapter_config.max_download_bytes

    def copy() -> str | None:
        answer = client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))
        size = 0
        for chunk in answer["Body"].iter_chunks(SPOOL_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise _larger_than(reference, limit)
            spool.write(chunk)
        return answer.get("ContentType")

    try:
        content_type = await asyncio.to_thread(copy)
    except ToolflowsError:
        raise
    except Exception as exc:  # botocore's errors: no such key, access denied, no credentials
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID, f"multipart file {reference}: cannot read it ({exc})"
        ) from exc
    spool.seek(0)
    named = filename_from_url(reference)
    mimetype = choose_mimetype(
        content_type=content_type, head=spool.read(SNIFF_BYTES), filename=named
    )
    return Upload(named or f"upload{extension_for(mimetype)}", mimetype, spool)


def _larger_than(source: str, limit: int) -> ToolflowsError:
    return ToolflowsError(
        ErrorCode.CONFIG_INVALID,
        f"multipart file {source} is larger than maxDownloadBytes ({limit} bytes)",
    )


def _spool(stack: AsyncExitStack) -> BinaryIO:
    """A temporary file on disk, deleted when the submit is over."""
    return stack.enter_context(tempfile.TemporaryFile())


async def _s3_client(method: MethodDefinition) -> Any:
    store = await resolve_file_store(method.adapter_config.storage)
    if isinstance(store, S3FileStore):
        return store.client
    import boto3

    return boto3.client("s3")
