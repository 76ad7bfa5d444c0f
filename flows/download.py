"""Download step: stream every output into result storage, never into memory.

Each output is read in chunks and written straight to the store (constant
memory whatever its size), hashed on the way, and published atomically. The
event loop only receives: hashing and writing run in a thread of their own, a
few MiB behind. A connection broken mid-stream, or too slow to be alive
(``TransferPace``), is resumed with ``Range`` where the server allows it, else
restarted. A ``Content-Encoding`` (gzip, deflate) is undone as bytes arrive, a
bounded piece at a time: the file stored is the one the user asked for, and a
decompression bomb costs no memory. Output URLs get the method's credentials
only on the endpoint's own origin (SPEC §7).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass, field, replace

import anyio
import httpx
from prefect import task
from prefect.logging import get_run_logger

from toolflows.console import show_download
from toolflows.core.backoff import parse_retry_after
from toolflows.core.definition import AdapterConfig, MethodDefinition
from toolflows.core.detection import OutputRef, find_outputs
from toolflows.core.encodings import BodyDecoder
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.files import (
    choose_filename,
    choose_mimetype,
    decode_data_uri,
    filename_from_url,
    storage_prefix,
)
from toolflows.core.templates import resolve_link
from toolflows.http import Credentials, current_session, is_transient_status, parse_json
from toolflows.models import StoredFile, SubmittedJob, Warning_
from toolflows.storage import FileStore, Upload, resolve_file_store, storage_failure

# In-memory data is written in chunks of this size, and a compressed body is
# inflated at most this much at a time (whatever its ratio).
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
# Between tries: 1 s, doubling, at most this (or longer when the server asks).
MAX_BACKOFF_SECONDS = 8.0


@dataclass(frozen=True)
class TransferPace:
    """When a transfer is too slow to be alive, as curl's --speed-limit/--speed-time.

    The body must start within ``first_byte_seconds`` of the request, then bring
    ``min_bytes_per_second * stall_seconds`` bytes in every ``stall_seconds``
    (no rate rule when it is 0). Time spent waiting for the store does not count.
    """

    first_byte_seconds: float
    min_bytes_per_second: int
    stall_seconds: float

    @classmethod
    def of(cls, config: AdapterConfig) -> TransferPace:
        return cls(
            first_byte_seconds=config.download_first_byte_seconds,
            min_bytes_per_second=config.download_min_bytes_per_second,
            stall_seconds=config.download_stall_seconds,
        )


@dataclass
class FileTarget:
    """Where one job's files go: ``<inventoryKey>/<name>/<taskId>/<filename>``."""

    store: FileStore
    key_prefix: str
    task_id: str
    max_bytes: int
    deadline: float
    taken: set[str] = field(default_factory=set)
    pace: TransferPace = field(default_factory=lambda: TransferPace.of(AdapterConfig()))

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
    config = method.adapter_config
    return FileTarget(
        store=await resolve_file_store(config.storage),
        key_prefix=storage_prefix(method.inventory_key, method.name, task_id),
        task_id=task_id,
        max_bytes=config.max_download_bytes,
        deadline=deadline,
        pace=TransferPace.of(config),
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
    refresh_url_configured: bool = False,
) -> tuple[list[StoredFile], list[Warning_]]:
    """Store every output; return the files and a ``DOWNLOAD_FAILED`` warning per failure.

    ``refresh_url`` is the status/result URL the outputs came from: asked once
    more, it signs fresh URLs when a signed one has expired (403).
    ``refresh_url_configured``: it is the definition's template (``${VAR}`` filled).
    """
    polling = method.adapter_config.polling
    task_id = job.task_id or "job"
    target = await file_target(
        method=method, task_id=task_id, deadline=job.submitted_at + polling.max_wait_seconds
    )
    fresh_links = _FreshLinks(method, refresh_url, configured=refresh_url_configured)
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
                # Whatever stopped it (a refused URL, storage), the download is what failed.
                exc.code = ErrorCode.DOWNLOAD_FAILED
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

    def __init__(
        self, method: MethodDefinition, refresh_url: str | None, *, configured: bool
    ) -> None:
        self.method = method
        self.refresh_url = refresh_url
        self.configured = configured
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
            response = await current_session().request("GET", url, configured=self.configured)
            payload = parse_json(response, what="status answer") if response.is_success else None
        except (ToolflowsError, httpx.HTTPError):
            return []
        outputs = find_outputs(payload, polling.output_path, polling.download_all)
        return [replace(item, url=resolve_link(url, item.url)) for item in outputs]


async def store_output(url: str, target: FileTarget, *, index: int) -> StoredFile:
    """Store one output URL (or ``data:`` URI) with its size and sha256."""
    transfer = _Transfer(
        target=target,
        index=index,
        source_url=url,
        fetch_url=url,
        credentials=Credentials.ENDPOINT_ONLY,
    )
    if url.startswith("data:"):
        return await transfer.from_data_uri()
    return await transfer.from_url()


async def store_body(
    response: httpx.Response,
    target: FileTarget,
    *,
    index: int,
    refetch_url: str | None = None,
) -> StoredFile:
    """Store the body of an open response: a file answered where JSON was expected.

    It is checked like a download (Content-Length, encoding, size cap, pace).
    Broken or cut short, it is fetched again with GET from ``refetch_url`` (the
    status or result URL that answered it), resumed with ``Range`` where
    allowed. Without one (a submit, which is never sent twice) a broken body is
    a ``DOWNLOAD_FAILED`` that says the request was not sent again.
    """
    transfer = _Transfer(
        target=target,
        index=index,
        source_url=str(response.url),
        fetch_url=refetch_url,
        credentials=Credentials.ENDPOINT_AND_ALLOWED_HOSTS,
    )
    return await transfer.from_url(opened=response)


class _BrokenTransfer(Exception):
    """The body stopped early, stalled, or the server hiccuped: worth another try.

    ``retry_after``: how long the server asked us to wait, if it said.
    ``resumable``: False when a ``Range`` request cannot continue it (start over).
    """

    def __init__(
        self, message: str, retry_after: float | None = None, *, resumable: bool = True
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.resumable = resumable


@dataclass
class _Transfer:
    """One output moving from a URL (or an open response) into the store.

    ``source_url`` names the file and is reported; ``fetch_url`` is where it is
    requested (again), None when it must not be.
    """

    target: FileTarget
    index: int
    source_url: str
    fetch_url: str | None
    credentials: Credentials
    filename: str = ""
    mimetype: str = "application/octet-stream"

    async def from_url(self, opened: httpx.Response | None = None) -> StoredFile:
        """Download with retries; the first try reads ``opened`` when given."""
        attempt = 1
        while True:
            first = nullcontext(opened) if attempt == 1 and opened is not None else None
            try:
                return await self._download(first or self._open(offset=0))
            except _BrokenTransfer as exc:
                if self.fetch_url is None:
                    raise ToolflowsError(
                        ErrorCode.DOWNLOAD_FAILED,
                        f"the file answered was broken ({exc}); the request was not sent again",
                    ) from exc
                wait = max(min(2.0 ** (attempt - 1), MAX_BACKOFF_SECONDS), exc.retry_after or 0.0)
                past_deadline = time.time() + wait > self.target.deadline
                if attempt >= MAX_ATTEMPTS or (
                    past_deadline
                    and (attempt >= MIN_ATTEMPTS_PAST_DEADLINE or wait > MAX_BACKOFF_SECONDS)
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
        self._check_size(len(data))
        key = self.target.key_for(self.filename)
        async with self._storing(key) as writer:
            for start in range(0, len(data), CHUNK_BYTES):
                await writer.write(data[start : start + CHUNK_BYTES])
        return self._stored(key, writer.size, writer.sha256)

    async def _download(self, opening: AbstractAsyncContextManager[httpx.Response]) -> StoredFile:
        async with AsyncExitStack() as responses:
            watch = _Watch(self.target.pace)
            try:
                async with watch.waiting():
                    response = await responses.enter_async_context(opening)
                    body = _Body(
                        response,
                        _decoder_of(response),
                        watch,
                        offset=0,
                    )
                    head = await body.next_piece() or b""
            except httpx.TransportError as exc:
                raise _BrokenTransfer(_describe(exc)) from exc
            self._name_from(response, head)
            expected = _content_length(response)
            if expected is not None and not body.decoder.encoding:
                self._check_size(expected)
            # Range counts stored bytes only when they are the bytes sent.
            may_resume = (
                self.fetch_url is not None
                and _accepts_ranges(response)
                and not body.decoder.encoding
            )
            self._check_size(len(head))
            key = self.target.key_for(self.filename)
            resumes = 0
            async with self._storing(key) as writer:
                writer.add(head)
                resumed: _Body | None = body
                while True:
                    try:
                        if resumed is None:
                            resumed = await self._resume(responses, writer.size, expected)
                        await self._pour(resumed, writer, expected)
                        received = resumed.offset + resumed.received
                        if expected is not None and received != expected:
                            raise _BrokenTransfer(f"got {received} of {expected} bytes")
                        break
                    except (httpx.TransportError, _BrokenTransfer) as exc:
                        resumes += 1
                        resumable = may_resume and getattr(exc, "resumable", True)
                        if not resumable or resumes >= MAX_ATTEMPTS:
                            raise _BrokenTransfer(
                                f"broken after {writer.size} bytes: {_describe(exc)}",
                                retry_after=getattr(exc, "retry_after", None),
                            ) from exc
                        if resumed is not None:
                            await resumed.response.aclose()
                        resumed = None
            return self._stored(key, writer.size, writer.sha256)

    async def _resume(self, responses: AsyncExitStack, offset: int, expected: int | None) -> _Body:
        """The rest of the body from ``offset`` on, by a ``Range`` request."""
        watch = _Watch(self.target.pace)
        async with watch.waiting():
            response = await responses.enter_async_context(self._open(offset=offset))
            decoder = _decoder_of(response)
        if decoder.encoding or not _continues_at(response, offset, expected):
            raise _BrokenTransfer(
                f"the answer to Range bytes={offset}- does not continue the file "
                f"({response.headers.get('content-range', 'no Content-Range')[:80]!r})",
                resumable=False,
            )
        return _Body(response, decoder, watch, offset=offset)

    @asynccontextmanager
    async def _open(self, *, offset: int) -> AsyncIterator[httpx.Response]:
        """GET the file (from ``offset`` on)."""
        assert self.fetch_url is not None, "a file that must not be fetched again"
        session = current_session()
        headers = {"Range": f"bytes={offset}-"} if offset else None
        try:
            async with session.stream(
                "GET", self.fetch_url, credentials=self.credentials, headers=headers
            ) as response:
                if is_transient_status(response.status_code):
                    raise _BrokenTransfer(
                        f"HTTP {response.status_code}",
                        retry_after=parse_retry_after(response.headers),
                    )
                if response.status_code >= 400:
                    raise ToolflowsError(
                        ErrorCode.DOWNLOAD_FAILED,
                        f"HTTP {response.status_code} from {session.redact(self.fetch_url)}",
                        http_status=response.status_code,
                    )
                if (response.status_code == 206) != bool(offset):
                    raise _BrokenTransfer(
                        f"HTTP {response.status_code} to a request "
                        + (f"for bytes {offset}-" if offset else "for the whole file"),
                        resumable=False,
                    )
                yield response
        except httpx.TransportError as exc:
            raise _BrokenTransfer(_describe(exc)) from exc

    @asynccontextmanager
    async def _storing(self, key: str) -> AsyncIterator[_HashingWriter]:
        """An upload to ``key`` fed through a writer thread; published once all is written."""
        async with self.target.store.upload(key) as upload:
            writer = _HashingWriter(upload, key)
            try:
                yield writer
                await writer.finish()
            finally:
                await writer.close()

    async def _pour(self, body: _Body, writer: _HashingWriter, total: int | None) -> None:
        """Receive into the writer, a batch at a time, refusing a body past maxDownloadBytes.

        Only the receiving runs under the pace deadline: waiting for the writer
        (a slow store holding the download back) is not the network being slow.
        """
        total = None if body.decoder.encoding else total
        while True:
            async with body.watch.waiting():
                while not writer.batch_full:
                    piece = await body.next_piece()
                    if piece is None:
                        return
                    self._check_size(writer.size + len(piece))
                    writer.add(piece)
                    show_download(self.filename, writer.size, total)
            await writer.hand_over()

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


class _Watch:
    """Ends a response too slow to be alive (``TransferPace``), from its request on.

    Time counts only inside ``waiting()`` spans: the receiving, not the writes.
    The rate is judged over consecutive windows of ``stall_seconds``, each owing
    its quota of bytes: the deadline moves one window on when the quota is in,
    so a fast body reschedules its timer once a window, not once a chunk.
    """

    def __init__(self, pace: TransferPace) -> None:
        self.pace = pace
        self._clock = asyncio.get_running_loop().time
        self._deadline: float | None = self._clock() + pace.first_byte_seconds
        self._window_start: float | None = None  # None until the first byte
        self._window_bytes = 0
        self._timer: asyncio.Timeout | None = None
        self._paused_at: float | None = None

    @asynccontextmanager
    async def waiting(self) -> AsyncIterator[None]:
        """A span of network waits under the deadline; time between spans is not counted."""
        if self._paused_at is not None:
            self._shift(self._clock() - self._paused_at)
        timer = asyncio.timeout_at(self._deadline)
        try:
            async with timer:
                self._timer = timer
                yield
        except TimeoutError:
            if not timer.expired():
                raise
            raise _BrokenTransfer(self._verdict()) from None
        finally:
            self._timer = None
            self._paused_at = self._clock()

    def received(self, size: int) -> None:
        """Count bytes off the network (raw, before any decoding)."""
        now = self._clock()
        window = self.pace.stall_seconds
        if self._window_start is None:
            self._window_start = now
            self._set_deadline(now + window if self.pace.min_bytes_per_second else None)
        while now >= self._window_start + window:
            self._window_start += window
            self._window_bytes = 0
        self._window_bytes += size
        quota_met = self._window_bytes >= self.pace.min_bytes_per_second * window
        next_end = self._window_start + 2 * window
        if self.pace.min_bytes_per_second and quota_met and self._deadline != next_end:
            self._set_deadline(next_end)

    def _set_deadline(self, deadline: float | None) -> None:
        self._deadline = deadline
        if self._timer is not None:
            self._timer.reschedule(deadline)

    def _shift(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline += seconds
        if self._window_start is not None:
            self._window_start += seconds

    def _verdict(self) -> str:
        if self._window_start is None:
            return f"no byte within {self.pace.first_byte_seconds:g} s"
        return (
            f"slower than {self.pace.min_bytes_per_second} bytes/s "
            f"for {self.pace.stall_seconds:g} s"
        )


class _Body:
    """The decoded bytes of one response; raw bytes counted, as Content-Length counts them.

    ``offset``: where in the file this response starts (a resumed one).
    """

    def __init__(
        self, response: httpx.Response, decoder: BodyDecoder, watch: _Watch, *, offset: int
    ) -> None:
        self.response = response
        self.decoder = decoder
        self.watch = watch
        self.offset = offset
        self.received = 0
        self._raw = response.aiter_raw()
        self._pieces: Iterator[bytes] = iter(())
        self._ended = False

    async def next_piece(self) -> bytes | None:
        """The next decoded piece, None at the end; awaits the network only when needed."""
        while True:
            piece = next(self._pieces, None)
            if piece is not None:
                return piece
            if self._ended:
                return None
            raw = await anext(self._raw, None)
            if raw is None:
                self._ended = True
                self._pieces = self.decoder.finish()
                continue
            self.received += len(raw)
            self.watch.received(len(raw))
            self._pieces = self.decoder.decode(raw)


class _HashingWriter:
    """Hashes and stores a body, in order, in a thread of its own.

    sha256 and file or S3 writes release the GIL on large buffers, so they run
    on another core while the event loop receives the next bytes. Bytes queue
    in batches (at most ``WRITER_QUEUE``), so a slow store holds the receiving
    back instead of filling memory. A failure in the thread is a
    ``DOWNLOAD_FAILED``, raised by the next hand-over or by ``finish``.
    """

    def __init__(self, upload: Upload, key: str) -> None:
        self.size = 0
        self._upload = upload
        self._key = key
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
            raise storage_failure(self._key, exc) from exc
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


def _continues_at(response: httpx.Response, offset: int, expected: int | None) -> bool:
    """A 206 whose Content-Range starts at ``offset`` (of the same total, when known)."""
    unit, _, span = response.headers.get("content-range", "").partition(" ")
    first, _, total = span.partition("/")
    start = first.partition("-")[0]
    if unit.lower() != "bytes" or not start.isdigit() or int(start) != offset:
        return False
    return expected is None or total == "*" or total == str(expected)


def _decoder_of(response: httpx.Response) -> BodyDecoder:
    return BodyDecoder.for_header(
        response.headers.get("content-encoding", ""), ErrorCode.DOWNLOAD_FAILED
    )


def _describe(exc: BaseException) -> str:
    """A transport error named by its type (httpx messages are often empty)."""
    if isinstance(exc, httpx.TransportError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return str(exc)
