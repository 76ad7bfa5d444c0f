"""Where downloaded files go: the run's Prefect result storage.

A file is streamed into storage chunk by chunk (memory does not grow with its
size) and published atomically: readers see the whole file or nothing.
``LocalFileSystem`` (Prefect's embedded default) writes a temporary file and
renames it into place.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from prefect.filesystems import LocalFileSystem, WritableFileSystem
from prefect.results import aget_default_result_storage, aresolve_result_storage, get_result_store

from flows.core.errors import ErrorCode, ToolflowsError


class Upload(Protocol):
    """An object being written; invisible to readers until the upload completes."""

    async def write(self, chunk: bytes) -> None: ...


class FileStore(Protocol):
    """A place files can be streamed into and read back from."""

    def uri_for(self, key: str) -> str: ...

    def upload(self, key: str) -> AbstractAsyncContextManager[Upload]: ...


class LocalFileStore:
    """Files under a ``LocalFileSystem`` basepath, published by atomic rename."""

    def __init__(self, basepath: str | os.PathLike[str]) -> None:
        self.basepath = Path(basepath).expanduser().resolve()

    def path_for(self, key: str) -> Path:
        path = (self.basepath / key).resolve()
        if not path.is_relative_to(self.basepath):
            raise ToolflowsError(ErrorCode.DOWNLOAD_FAILED, f"unsafe storage key {key!r}")
        return path

    def uri_for(self, key: str) -> str:
        return self.path_for(key).as_uri()

    @asynccontextmanager
    async def upload(self, key: str) -> AsyncIterator[Upload]:
        final = self.path_for(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        with partial.open("wb") as handle:
            try:
                yield _LocalUpload(handle)
                handle.flush()
                os.fsync(handle.fileno())
            except BaseException:
                handle.close()
                partial.unlink(missing_ok=True)
                raise
        os.replace(partial, final)


class _LocalUpload:
    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    async def write(self, chunk: bytes) -> None:
        self._handle.write(chunk)


async def resolve_file_store(storage_block: str | None) -> FileStore:
    """The store for a run: the method's ``storage`` block, else the run's result storage."""
    if storage_block:
        try:
            storage: WritableFileSystem = await aresolve_result_storage(storage_block)
        except ValueError as exc:
            raise ToolflowsError(
                ErrorCode.CONFIG_INVALID, f"adapterConfig.storage: no block {storage_block!r}"
            ) from exc
    else:
        storage = get_result_store().result_storage or await aget_default_result_storage()
    return file_store_for(storage)


def file_store_for(storage: WritableFileSystem) -> FileStore:
    if isinstance(storage, LocalFileSystem):
        return LocalFileStore(storage.basepath or ".")
    raise ToolflowsError(
        ErrorCode.CONFIG_INVALID,
        f"result storage {type(storage).__name__} is not supported for files yet",
    )


def open_stored(uri: str) -> BinaryIO:
    """Open a stored file for reading, from the URI a result carries."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path)).open("rb")
    raise ToolflowsError(ErrorCode.DOWNLOAD_FAILED, f"cannot open stored file {uri!r}")
