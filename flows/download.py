"""Download step: stream every output into result storage, never into memory.

Each output is read in chunks and written straight to the store (constant
memory whatever its size), hashed on the way, and published atomically. The
event loop only receives: hashing and writing run in a thread of their own, a
few MiB behind. A connection broken mid-stream is resumed with ``Range`` where
the server allows it, else restarted. Output URLs never receive the method's
credentials.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace

import anyio
import httpx
from prefect import task
from prefect.logging import get_run_logger

from flows.console import show_download
from flows.core.backoff import parse_retry_after
from flows.core.definition import MethodDefinition
from flows.core.detection import OutputRef, find_outputs
from flows.core.errors import ErrorCode, ToolflowsError
from flows.core.files import choose_filename, choose_mimetype, decode_data_uri, filename_from_url
from flows.core.templates import resolve_link
from flows.http import Credentials, current_session, is_transient_status, parse_json
from flows.models import StoredFile, SubmittedJob, Warning_
from flows.storage import FileStore, Upload, resolve_file_store

# Bodies are read as the network delivers them (so the first bytes, which name
# and type the file, arrive early); in-memory data is written in chunks of:
CHUNK_BYTES = 1024 * 1024
# Received chunks go to the writer thread in batches of about this size (one
# hand-off per batch, not per socket read), and at most WRITER_QUEUE batches wait
# for it: with the batch filling and the one being joined, a download holds
# about (WRITER_QUEUE + 2) batches in memory.
WRITER_BATCH_BYTES = 2 * 1024 * 1024
WRITER_QUEUE = 3
MAX_ATTEMPTS = 5
# The job's output exists once it is done: a download gets this many tries even
# when the wait deadline has already passed.
MIN_ATTEMPTS_PAST_DEADLINE = 3


@dataclass
class FileTarget:
    """Where one job's files go: ``<inventoryKey>/<name>/<taskId>/<filename>``."""

    store: FileStore
    key_prefix: str
    task_id: str
    max_bytes: int
    deadline: float
    taken: set[str] = field(default_factory=set)

    def key_for(self, filename: str) -> str:
        """A storage key, unique among this job's files (``a.mp4``, then ``a-2.mp4``)."""
        stem, dot, extension = filename.rpartition(".")
        if not dot:
            stem, extension = filename, ""
        candidate, number = filename, 1
        while candidate in self.taken:
            number += 1
            candidate = f"{stem}-{number}{dot}{extension}"
        self.taken.add(candidate)
        return f"{self.key_prefix}/{candidate}"


async def file_target(*, method: MethodDefinition, task_id: str, deadline: float) -> FileTarget:
    """The target for a job's files in the run's storage."""
    return FileTarget(
        store=await resolve_file_store(method.adapter_config.storage),
        key_prefix=f"{method.inventory_key}/{method.name}/{task_id}",
        task_id=task_id,
        max_bytes=method.adapter_config.max_download_bytes,
        deadline=deadline,
    )


@task(
    name="Download outputs",
    description="Stream each output into result storage; a failure degrades to a warning.",
)
async def download_outputs(
    outputs: list[OutputRef],
    method: MethodDefinition,
    job: SubmittedJob,
    refresh_url: str | None,
) -> tuple[list[StoredFile], list[Warning_]]:
    """Store every output; return the files and a ``DOWNLOAD_FAILED`` warning per failure.

    ``refresh_url`` is the status/result URL the outputs came from: asked once
    more, it signs fresh URLs when a signed one has expired (403).
    """
    polling = method.adapter_config.polling
    task_id = job.task_id or "job"
    target = await file_target(
        method=method, task_id=task_id, deadline=job.submitted_at + polling.max_wait_seconds
    )
    fresh_links = _FreshLinks(method, refresh_url)
    logger = get_run_logger()
    session = current_session()
    files: list[StoredFile] = []
    warnings: list[Warning_] = []
    for index, output in enumerate(outputs):
        try:
            try:
                stored = await store_output(output.url, target, index=index)
            except ToolflowsError as exc:
                fresh_url = await fresh_links.replacing(output, exc)
                if fresh_url is None:
                    raise
                logger.info("Signed URL expired; downloading a freshly signed one")
                stored = await store_output(fresh_url, target, index=index)
        except ToolflowsError as exc:
            exc.message = session.redact(exc.message)
            if polling.download == "required":
                raise exc.with_task_id(job.task_id) from None
            logger.warning("Download of %s failed: %s", session.redact(output.url), exc.message)
            warnings.append(
                Warning_(
                    code=ErrorCode.DOWNLOAD_FAILED,
                    message=exc.message,
                    source_url=session.redact(output.url),
                )
            )
            continue
        logger.info("Downloaded %d bytes as %s", stored.size, stored.filename)
        files.append(stored)
    return files, warnings


class _FreshLinks:
    """Fresh signed output URLs, from one more request to the URL the outputs came from."""

    EXPIRED_STATUS = frozenset({401, 403, 410})

    def __init__(self, method: MethodDefinition, refresh_url: str | None) -> None:
        self.method = method
        self.refresh_url = refresh_url
        self._outputs: list[OutputRef] | None = None

    async def replacing(self, output: OutputRef, error: ToolflowsError) -> str | None:
        """A fresh URL for an output whose download was refused, or None."""
        if error.http_status not in self.EXPIRED_STATUS or self.refresh_url is None:
            return None
        if self._outputs is None:
            self._outputs = await self._fetch_outputs(self.refresh_url)
        fresh = next((item for item in self._outputs if item.path == output.path), None)
        return fresh.url if fresh and fresh.url != output.url else None

    async def _fetch_outputs(self, url: str) -> list[OutputRef]:
        polling = self.method.adapter_config.polling
        try:
            response = await current_session().request("GET", url)
            payload = parse_json(response, what="status answer") if response.is_success else None
        except (ToolflowsError, httpx.HTTPError):
            return []
        outputs = find_outputs(payload, polling.output_path, polling.download_all)
        return [replace(item, url=resolve_link(url, item.url)) for item in outputs]


async def store_output(url: str, target: FileTarget, *, index: int) -> StoredFile:
    """Store one output URL (or ``data:`` URI) with its size and sha256."""
    transfer = _Transfer(target=target, index=index, source_url=url)
    if url.startswith("data:"):
        return await transfer.from_data_uri()
    return await transfer.from_url()


async def store_body(response: httpx.Response, target: FileTarget, *, index: int) -> StoredFile:
    """Store the body of an open response: a file answered where JSON was expected."""
    transfer = _Transfer(target=target, index=index, source_url=str(response.url))
    return await transfer.from_response(response)


class _BrokenTransfer(Exception):
    """The body stopped early or the server hiccuped: worth another try.

    ``retry_after``: how long the server asked us to wait, if it said.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Transfer:
    """One output moving from a URL (or an open response) into the store."""

    target: FileTarget
    index: int
    source_url: str
    filename: str = ""
    mimetype: str = "application/octet-stream"

    async def from_url(self) -> StoredFile:
        attempt = 1
        while True:
            try:
                return await self._download()
            except _BrokenTransfer as exc:
                wait = max(min(2.0 ** (attempt - 1), 8.0), exc.retry_after or 0.0)
                past_deadline = time.time() + wait > self.target.deadline
                if attempt >= MAX_ATTEMPTS or (
                    past_deadline and attempt >= MIN_ATTEMPTS_PAST_DEADLINE
                ):
                    raise ToolflowsError(
                        ErrorCode.DOWNLOAD_FAILED, f"download failed after {attempt} tries: {exc}"
                    ) from exc
                attempt += 1
                await asyncio.sleep(wait)

    async def from_data_uri(self) -> StoredFile:
        try:
            data, declared = decode_data_uri(self.source_url)
        except ValueError as exc:
            raise ToolflowsError(ErrorCode.DOWNLOAD_FAILED, str(exc)) from None
        self._name(content_type=declared, content_disposition=None, head=data[:512])
        return await self._write(_chunks_of(data))

    async def from_response(self, response: httpx.Response) -> StoredFile:
        chunks = response.aiter_bytes()
        head = await anext(chunks, b"")
        self._name_from(response, head)
        return await self._write(_prepend(head, chunks))

    async def _download(self) -> StoredFile:
        async with AsyncExitStack() as responses:
            response = await responses.enter_async_context(self._open(offset=0))
            chunks = response.aiter_bytes()
            head = await anext(chunks, b"")
            self._name_from(response, head)
            expected = _content_length(response)
            if expected is not None:
                self._check_size(expected)
            key = self.target.key_for(self.filename)
            resumes = 0
            async with self._storing(key) as writer:
                pending: AsyncIterator[bytes] = _prepend(head, chunks)
                while True:
                    try:
                        await self._pour(pending, writer, expected)
                        break
                    except httpx.TransportError as exc:
                        resumes += 1
                        if not _accepts_ranges(response) or resumes >= MAX_ATTEMPTS:
                            raise _BrokenTransfer(
                                f"connection broken after {writer.size} bytes"
                            ) from exc
                        await response.aclose()
                        response = await responses.enter_async_context(
                            self._open(offset=writer.size)
                        )
                        pending = response.aiter_bytes()
                if expected is not None and writer.size != expected:
                    raise _BrokenTransfer(f"got {writer.size} of {expected} bytes")
            return self._stored(key, writer.size, writer.sha256)

    @asynccontextmanager
    async def _open(self, *, offset: int) -> AsyncIterator[httpx.Response]:
        """GET the output (from ``offset`` on), without credentials."""
        session = current_session()
        headers = {"Range": f"bytes={offset}-"} if offset else None
        try:
            async with session.stream(
                "GET", self.source_url, credentials=Credentials.NEVER, headers=headers
            ) as response:
                if offset and response.status_code != 206:
                    raise _BrokenTransfer(f"server ignored Range (HTTP {response.status_code})")
                if is_transient_status(response.status_code):
                    raise _BrokenTransfer(
                        f"HTTP {response.status_code}",
                        retry_after=parse_retry_after(response.headers),
                    )
                if response.status_code >= 400:
                    raise ToolflowsError(
                        ErrorCode.DOWNLOAD_FAILED,
                        f"HTTP {response.status_code} from {session.redact(self.source_url)}",
                        http_status=response.status_code,
                    )
                yield response
        except httpx.TransportError as exc:
            raise _BrokenTransfer(f"{type(exc).__name__}: {exc}") from exc

    async def _write(self, chunks: AsyncIterator[bytes]) -> StoredFile:
        key = self.target.key_for(self.filename)
        async with self._storing(key) as writer:
            await self._pour(chunks, writer, None)
        return self._stored(key, writer.size, writer.sha256)

    @asynccontextmanager
    async def _storing(self, key: str) -> AsyncIterator[_HashingWriter]:
        """An upload to ``key`` fed through a writer thread; published once all is written."""
        async with self.target.store.upload(key) as upload:
            writer = _HashingWriter(upload)
            try:
                yield writer
                await writer.finish()
            finally:
                await writer.close()

    async def _pour(
        self, chunks: AsyncIterator[bytes], writer: _HashingWriter, total: int | None
    ) -> None:
        """Hand chunks to the writer as they arrive, refusing a body past maxDownloadBytes."""
        async for chunk in chunks:
            self._check_size(writer.size + len(chunk))
            await writer.write(chunk)
            show_download(self.filename, writer.size, total)

    def _name_from(self, response: httpx.Response, head: bytes) -> None:
        self._name(
            content_type=response.headers.get("content-type"),
            content_disposition=response.headers.get("content-disposition"),
            head=head,
        )

    def _name(
        self, *, content_type: str | None, content_disposition: str | None, head: bytes
    ) -> None:
        self.mimetype = choose_mimetype(
            content_type=content_type, head=head, filename=filename_from_url(self.source_url)
        )
        self.filename = choose_filename(
            content_disposition=content_disposition,
            url=self.source_url,
            mimetype=self.mimetype,
            task_id=self.target.task_id,
            index=self.index,
        )

    def _check_size(self, size: int) -> None:
        if size > self.target.max_bytes:
            raise ToolflowsError(
                ErrorCode.DOWNLOAD_FAILED,
                f"output is larger than maxDownloadBytes ({self.target.max_bytes} bytes)",
            )

    def _stored(self, key: str, size: int, sha256: str) -> StoredFile:
        return StoredFile(
            uri=self.target.store.uri_for(key),
            storage_block=self.target.store.block_name,
            filename=key.rsplit("/", 1)[-1],
            mimetype=self.mimetype,
            size=size,
            sha256=sha256,
            source_url=current_session().redact(self.source_url)
            if not self.source_url.startswith("data:")
            else self.source_url[:64],
        )


class _HashingWriter:
    """Hashes and stores a body, in order, in a thread of its own.

    sha256 and file or S3 writes release the GIL on large buffers, so they run
    on another core while the event loop receives the next bytes. Bytes queue
    in batches (at most ``WRITER_QUEUE``), so a slow store holds the receiving
    back instead of filling memory. A failure in the thread is a
    ``DOWNLOAD_FAILED``, raised by the next ``write`` or by ``finish``.
    """

    def __init__(self, upload: Upload) -> None:
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

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= WRITER_BATCH_BYTES:
            await self._hand_over()

    async def finish(self) -> None:
        """Wait until every byte written so far is hashed and stored."""
        await self._hand_over()
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

    async def _hand_over(self) -> None:
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
            raise ToolflowsError(
                ErrorCode.DOWNLOAD_FAILED, f"storing the file failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._queued.popleft()

    def _store(self, batch: list[bytes]) -> None:
        """In the writer thread: one buffer, so the GIL is given up twice per batch.

        Per 64 KiB chunk, taking the GIL back from the busy event loop costs
        more than the ~50 us the join takes.
        """
        data = b"".join(batch)
        self._digest.update(data)
        self._upload.write(data)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _accepts_ranges(response: httpx.Response) -> bool:
    return response.headers.get("accept-ranges", "").lower() == "bytes"


async def _prepend(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def _chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]
