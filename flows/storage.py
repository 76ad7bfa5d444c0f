"""Where downloaded files go: the run's Prefect result storage.

A file is streamed into storage chunk by chunk (memory does not grow with its
size) and published atomically: readers see the whole file or nothing.

- ``LocalFileSystem`` (Prefect's embedded default): a temporary file renamed
  into place.
- prefect-aws ``S3Bucket``: an S3 multipart upload (parts of ``S3_PART_BYTES``,
  each sent while the next one fills), completed at the end, aborted on any
  failure, so no object or orphan part is left behind.
- any other fsspec-based ``RemoteFileSystem``: a temporary path moved into place.

Bytes reach a store through a ``HashingWriter``: the sha256 and the writes run
in a thread of their own, a few MiB behind the network, so the event loop only
receives.

Stored files carry the name of the block they live in, so they can be read
back (and presigned) later from any process that can load that block.

Whatever the store refuses (a disk error, a name too long, S3 AccessDenied) is a
``DOWNLOAD_FAILED`` naming the key: only ``ToolflowsError`` leaves the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread
from prefect.blocks.core import Block
from prefect.context import FlowRunContext
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.results import aget_default_result_storage, aresolve_result_storage, get_result_store
from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK
from prefect.utilities.asyncutils import run_coro_as_sync

from toolflows.core.errors import ErrorCode, ToolflowsError

try:  # prefect-aws is what S3 storage needs; without it, S3 is simply not offered.
    from botocore.exceptions import BotoCoreError, ClientError
    from prefect_aws import S3Bucket

    _S3_ERRORS: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
except ImportError:  # pragma: no cover - prefect-aws is a dependency
    S3Bucket = None
    _S3_ERRORS = ()

# Received chunks go to the writer thread in batches of about this size (one
# hand-off per batch, not per socket read), and at most WRITER_QUEUE batches wait
# for it: with the batch filling and the one being joined, a download holds
# about (WRITER_QUEUE + 2) batches in memory.
WRITER_BATCH_BYTES = 2 * 1024 * 1024
WRITER_QUEUE = 3
# S3 needs parts of at least 5 MiB (but the last); 8 MiB bounds memory per upload.
S3_PART_BYTES = 8 * 1024 * 1024
# Parts uploading at once while the next one fills: two took moto 20 % more bytes
# per second than one; each costs a part's worth of memory.
S3_PARTS_IN_FLIGHT = 2


def storage_failure(key: str, error: BaseException) -> ToolflowsError:
    """The DOWNLOAD_FAILED of a store that refused ``key`` (disk, permissions, S3)."""
    return ToolflowsError(
        ErrorCode.DOWNLOAD_FAILED, f"storing {key} failed: {type(error).__name__}: {error}"
    )


@contextmanager
def _refusals_as_download_failed(key: str) -> Iterator[None]:
    """OSError (local and fsspec stores) and botocore errors become ``storage_failure``."""
    try:
        yield
    except (OSError, *_S3_ERRORS) as exc:
        raise storage_failure(key, exc) from exc


class Upload(Protocol):
    """An object being written; invisible to readers until the upload completes.

    Its methods block: they are called from one worker thread, in order, never
    from the event loop. ``flush`` comes after the last ``write``, before the
    upload completes, so that storing errors surface in that thread too.
    """

    def write(self, chunk: bytes) -> None: ...

    def flush(self) -> None:
        """Store whatever is still buffered; wait until every byte is stored."""


class FileStore(Protocol):
    """A place files can be streamed into."""

    block_name: str | None

    def uri_for(self, key: str) -> str: ...

    def upload(self, key: str) -> AbstractAsyncContextManager[Upload]: ...


class LocalFileStore:
    """Files under a ``LocalFileSystem`` basepath, published by atomic rename."""

    def __init__(self, basepath: str | os.PathLike[str], block_name: str | None = None) -> None:
        self.basepath = Path(basepath).expanduser().resolve()
        self.block_name = block_name

    def path_for(self, key: str) -> Path:
        path = (self.basepath / key).resolve()
        if not path.is_relative_to(self.basepath):
            raise ToolflowsError(ErrorCode.DOWNLOAD_FAILED, f"unsafe storage key {key!r}")
        return path

    def uri_for(self, key: str) -> str:
        return self.path_for(key).as_uri()

    @asynccontextmanager
    async def upload(self, key: str) -> AsyncIterator[Upload]:
        with _refusals_as_download_failed(key):
            final = self.path_for(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
            handle = partial.open("wb")
        try:
            with handle:
                # No fsync: the rename is what makes publishing atomic, and
                # forcing a multi-GB file to disk would halve the throughput.
                yield _FileUpload(handle)
            with _refusals_as_download_failed(key):
                os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            raise


class _FileUpload:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, chunk: bytes) -> None:
        self._handle.write(chunk)

    def flush(self) -> None:
        self._handle.flush()


class S3FileStore:
    """Objects in an ``S3Bucket`` block, written as multipart uploads."""

    def __init__(self, bucket: Any, block_name: str | None = None) -> None:
        self.bucket = bucket
        self.block_name = block_name
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.bucket.credentials.get_s3_client()
        return self._client

    def object_key(self, key: str) -> str:
        """``key`` inside the block's ``bucket_folder``, if it has one."""
        folder = self.bucket.bucket_folder.strip("/")
        return f"{folder}/{key}" if folder else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket.bucket_name}/{self.object_key(key)}"

    @asynccontextmanager
    async def upload(self, key: str) -> AsyncIterator[Upload]:
        with _refusals_as_download_failed(key):
            upload = _S3MultipartUpload(self.client, self.bucket.bucket_name, self.object_key(key))
            await anyio.to_thread.run_sync(upload.start)
        try:
            yield upload
            with _refusals_as_download_failed(key):
                await anyio.to_thread.run_sync(upload.complete)
        except BaseException:
            # Shielded: a cancelled run must still abort, or its parts stay billed.
            # An abort refused too must not hide why the upload failed.
            with anyio.CancelScope(shield=True), contextlib.suppress(*_S3_ERRORS):
                await anyio.to_thread.run_sync(upload.abort)
            raise


class _S3MultipartUpload:
    """Parts sent as they fill; the object exists only once ``complete`` succeeds.

    A full part goes to a sender thread while the next one fills; with at most
    ``S3_PARTS_IN_FLIGHT`` parts on their way, a download holds at most one
    part more than that. Every method blocks (called from worker threads,
    never from the event loop).
    """

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.buffer = bytearray()
        self.upload_id = ""
        self._sent: list[Future[dict[str, Any]]] = []
        self._sender = ThreadPoolExecutor(
            max_workers=S3_PARTS_IN_FLIGHT, thread_name_prefix="toolflows-s3-part"
        )

    def start(self) -> None:
        answer = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
        self.upload_id = answer["UploadId"]

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            room = S3_PART_BYTES - len(self.buffer)
            self.buffer += view[:room]
            view = view[room:]
            if len(self.buffer) == S3_PART_BYTES:
                self._send(self.buffer)
                self.buffer = bytearray()

    def flush(self) -> None:
        """Send the last part (an empty object is one empty part); wait for every part."""
        if self.buffer or not self._sent:
            self._send(self.buffer)
            self.buffer = bytearray()
        for sent in self._sent:
            sent.result()

    def complete(self) -> None:
        self.flush()
        self._sender.shutdown()
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": [sent.result() for sent in self._sent]},
        )

    def abort(self) -> None:
        # Parts still uploading would outlive the abort: let them end first.
        self._sender.shutdown(cancel_futures=True)
        if self.upload_id:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )

    def _send(self, data: bytearray) -> None:
        """Send a part once fewer than ``S3_PARTS_IN_FLIGHT`` are on their way.

        Waiting for the oldest of those raises its error, if it failed.
        """
        if len(self._sent) >= S3_PARTS_IN_FLIGHT:
            self._sent[-S3_PARTS_IN_FLIGHT].result()
        self._sent.append(self._sender.submit(self._upload_part, len(self._sent) + 1, data))

    def _upload_part(self, number: int, data: bytearray) -> dict[str, Any]:
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}


class FsspecFileStore:
    """Any ``RemoteFileSystem`` (fsspec URL): a temporary path moved into place."""

    def __init__(self, storage: RemoteFileSystem, block_name: str | None = None) -> None:
        self.storage = storage
        self.block_name = block_name

    def uri_for(self, key: str) -> str:
        return f"{self.storage.basepath.rstrip('/')}/{key}"

    @asynccontextmanager
    async def upload(self, key: str) -> AsyncIterator[Upload]:
        final = self.uri_for(key)
        partial = f"{final}.{uuid.uuid4().hex}.part"
        with _refusals_as_download_failed(key):
            filesystem = self.storage.filesystem
            filesystem.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            handle = filesystem.open(partial, "wb")
        try:
            with handle:
                yield _FileUpload(handle)
            with _refusals_as_download_failed(key):
                filesystem.mv(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                filesystem.rm(partial)
            raise


@asynccontextmanager
async def hashing_upload(store: FileStore, key: str) -> AsyncIterator[HashingWriter]:
    """An upload to ``key`` fed through a writer thread; published once all is written."""
    async with store.upload(key) as upload:
        writer = HashingWriter(upload, key)
        try:
            yield writer
            await writer.finish()
        finally:
            await writer.close()


class HashingWriter:
    """Hashes and stores a body, in order, in a thread of its own.

    sha256 and file or S3 writes release the GIL on large buffers, so they run
    on another core while the event loop receives the next bytes. Bytes queue
    in batches (at most ``WRITER_QUEUE``), so a slow store holds the receiving
    back instead of filling memory. A failure in the thread is a
    ``DOWNLOAD_FAILED``, raised by the next hand-over or by ``finish``.
    """

    def __init__(self, upload: Upload, key: str) -> None:
        self.key = key
        self.size = 0
        self._upload = upload
        self._digest = hashlib.sha256()
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._queued: deque[Future[None]] = deque()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toolflows-writer")

    @property
    def sha256(self) -> str:
        """The hex digest; complete once ``finish`` has returned."""
        return self._digest.hexdigest()

    @property
    def batch_full(self) -> bool:
        """Time to ``hand_over``: the batch being filled has reached its size."""
        return self._batch_bytes >= WRITER_BATCH_BYTES

    def add(self, chunk: bytes) -> None:
        """Append to the batch being filled (never waits)."""
        self.size += len(chunk)
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)

    async def write(self, chunk: bytes) -> None:
        self.add(chunk)
        if self.batch_full:
            await self.hand_over()

    async def finish(self) -> None:
        """Wait until every byte written so far is hashed and stored."""
        await self.hand_over()
        self._queued.append(self._thread.submit(self._upload.flush))
        while self._queued:
            await self._settle_oldest()

    async def close(self) -> None:
        """End the thread; after a failure, drop the queued batches and wait for the one in hand.

        The upload may only be discarded once the thread no longer writes to it.
        """
        self._thread.shutdown(wait=False, cancel_futures=True)
        running = [asyncio.wrap_future(batch) for batch in self._queued if not batch.done()]
        if running:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(running)

    async def hand_over(self) -> None:
        """Queue the batch for the thread, once the queue has room (this is where a slow
        store holds the receiving back)."""
        while self._queued and (self._queued[0].done() or len(self._queued) >= WRITER_QUEUE):
            await self._settle_oldest()
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._queued.append(self._thread.submit(self._store, batch))

    async def _settle_oldest(self) -> None:
        """Wait for the oldest batch (it stays queued, for ``close``, until it is done)."""
        try:
            await asyncio.wrap_future(self._queued[0])
        except Exception as exc:
            # The thread only hashes and stores: whatever it raised, storing failed.
            raise storage_failure(self.key, exc) from exc
        self._queued.popleft()

    def _store(self, batch: list[bytes]) -> None:
        """In the writer thread: one buffer, so the GIL is given up twice per batch.

        Per 64 KiB chunk, taking the GIL back from the busy event loop costs
        more than the ~50 us the join takes.
        """
        data = b"".join(batch)
        self._digest.update(data)
        self._upload.write(data)


async def resolve_file_store(storage_block: str | None) -> FileStore:
    """The store for a run: the method's ``storage`` block, else the run's result storage."""
    if storage_block:
        try:
            storage: WritableFileSystem = await aresolve_result_storage(storage_block)
        except ValueError as exc:
            raise ToolflowsError(
                ErrorCode.CONFIG_INVALID, f"adapterConfig.storage: no block {storage_block!r}"
            ) from exc
        return file_store_for(storage, storage_block)
    storage = get_result_store().result_storage or await aget_default_result_storage()
    return file_store_for(storage, _result_storage_name())


def file_store_for(storage: WritableFileSystem, block_name: str | None = None) -> FileStore:
    """The file store writing into a Prefect storage block saved as ``block_name``."""
    if isinstance(storage, LocalFileSystem):
        return LocalFileStore(storage.basepath or ".", block_name)
    if S3Bucket is not None and isinstance(storage, S3Bucket):
        return S3FileStore(storage, block_name)
    if isinstance(storage, RemoteFileSystem):
        return FsspecFileStore(storage, block_name)
    raise ToolflowsError(
        ErrorCode.CONFIG_INVALID,
        f"result storage {type(storage).__name__} cannot store files yet: use a local, "
        "S3Bucket or RemoteFileSystem block",
    )


def _result_storage_name() -> str | None:
    """The ``<block-type-slug>/<name>`` the run's result storage was configured by.

    The flow's ``result_storage`` when given by name, else Prefect's default
    setting; None for a block object or the embedded local default.
    """
    context = FlowRunContext.get()
    configured = context.flow.result_storage if context and context.flow else None
    if configured is None:
        return PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK.value()
    return configured if isinstance(configured, str) else None


def open_stored(uri: str, block_name: str | None = None) -> BinaryIO:
    """Open a stored file for reading, from the URI a result carries."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path)).open("rb")
    if parts.scheme == "s3":
        body = _s3_client(block_name).get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))
        return body["Body"]
    if block_name:
        storage = _load_block(block_name)
        if isinstance(storage, RemoteFileSystem):
            return storage.filesystem.open(uri, "rb")
    raise ToolflowsError(ErrorCode.DOWNLOAD_FAILED, f"cannot open stored file {uri!r}")


# How long a presigned link stays valid unless asked otherwise: long enough for the
# next provider in a pipeline to queue the job and fetch the file.
PRESIGNED_LINK_SECONDS = 3600


def presigned_url(
    uri: str, block_name: str | None, expires_seconds: int = PRESIGNED_LINK_SECONDS
) -> str:
    """A time-limited HTTPS link to an S3 object (for the next provider in a pipeline)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID, f"only S3 objects can be presigned, not {uri!r}"
        )
    return _s3_client(block_name).generate_presigned_url(
        "get_object",
        Params={"Bucket": parts.netloc, "Key": parts.path.lstrip("/")},
        ExpiresIn=expires_seconds,
    )


def _s3_client(block_name: str | None) -> Any:
    if block_name:
        return _load_block(block_name).credentials.get_s3_client()
    import boto3

    return boto3.client("s3")


def _load_block(block_name: str) -> Any:
    return run_coro_as_sync(Block.aload(block_name))
