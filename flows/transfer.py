"""Fetching one file into the store: GET, Range resume and retries, a verified stream.

A connection broken mid-stream, or too slow to be alive (``TransferPace``), is
resumed with ``Range`` where the server allows it, else restarted, after the
delays every re-sent request waits (``retry_delay``). A ``Content-Encoding``
(gzip, deflate) is undone as bytes arrive, a bounded piece at a time: the file
stored is the one the user asked for, and a decompression bomb costs no memory.
What reaches the store's hashing writer has passed the ``Content-Length`` and
``maxDownloadBytes`` checks. A file a provider answered in place of JSON goes
the same way (``store_body``), so the submit and poll steps keep one without the
download step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass, field

import httpx

from toolflows.console import show_download
from toolflows.core.backoff import MAX_RETRY_DELAY_SECONDS, parse_retry_after, retry_delay
from toolflows.core.definition import AdapterConfig, MethodDefinition
from toolflows.core.encodings import BodyDecoder
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.files import choose_filename, choose_mimetype, filename_from_url, storage_prefix
from toolflows.http import Credentials, current_session, is_transient_status
from toolflows.models import StoredFile
from toolflows.storage import FileStore, HashingWriter, hashing_upload, resolve_file_store

MAX_ATTEMPTS = 5
# The job's output exists once it is done: a file gets this many tries even
# when the wait deadline has already passed.
MIN_ATTEMPTS_PAST_DEADLINE = 3


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
    """Where one job's files go (``<inventoryKey>/<name>/<taskId>/<filename>``), and the
    bounds they are fetched within: size cap, deadline, pace."""

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

    def check_size(self, size: int) -> None:
        """Refuse a file of ``size`` bytes (announced, or received so far) past the cap."""
        if size > self.max_bytes:
            raise ToolflowsError(
                ErrorCode.DOWNLOAD_FAILED,
                f"output is larger than maxDownloadBytes ({self.max_bytes} bytes)",
            )


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
    transfer = Transfer(
        OutputFile(target, index, source_url=str(response.url)),
        fetch_url=refetch_url,
        credentials=Credentials.ENDPOINT_AND_ALLOWED_HOSTS,
    )
    return await transfer.store(opened=response)


async def receive_body(
    response: httpx.Response,
    pace: TransferPace,
    receive: Callable[[bytes], None],
    *,
    what: str,
    failure: ErrorCode,
) -> None:
    """Pour one open response's decoded body into ``receive``, a bounded piece at a time.

    For a file fetched once, not resumed (an upload's source): too slow for
    ``pace``, broken or undecodable, it is a ``failure`` about ``what``.
    """
    watch = _Watch(pace)
    body = _Body(response, _decoder_of(response, failure), watch, offset=0)
    try:
        async with watch.waiting():
            while (piece := await body.next_piece()) is not None:
                receive(piece)
    except (httpx.TransportError, _BrokenTransfer) as exc:
        raise ToolflowsError(failure, f"{what} failed: {_describe(exc)}") from exc


@dataclass
class OutputFile:
    """One output on its way into the target: named from its first bytes, stored, reported.

    ``source_url`` names the file and is reported.
    """

    target: FileTarget
    index: int
    source_url: str
    filename: str = ""
    mimetype: str = "application/octet-stream"
    key: str = ""

    @asynccontextmanager
    async def storing(
        self, *, content_type: str | None, content_disposition: str | None, head: bytes
    ) -> AsyncIterator[HashingWriter]:
        """Name the file from what its source says, then write it under a key of its own."""
        self.mimetype = choose_mimetype(
            content_type=content_type, head=head, filename=filename_from_url(self.source_url)
        )
        filename = choose_filename(
            content_disposition=content_disposition,
            url=self.source_url,
            mimetype=self.mimetype,
            task_id=self.target.task_id,
            index=self.index,
        )
        # Starting over rewrites the same key: a broken attempt published nothing.
        if filename != self.filename:
            self.filename, self.key = filename, self.target.key_for(filename)
        async with hashing_upload(self.target.store, self.key) as writer:
            yield writer

    def stored(self, writer: HashingWriter) -> StoredFile:
        """The result for the file ``writer`` has finished storing."""
        return StoredFile(
            uri=self.target.store.uri_for(writer.key),
            storage_block=self.target.store.block_name,
            filename=writer.key.rsplit("/", 1)[-1],
            mimetype=self.mimetype,
            size=writer.size,
            sha256=writer.sha256,
            source_url=current_session().redact(self.source_url)
            if not self.source_url.startswith("data:")
            else self.source_url[:64],
        )


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
class Transfer:
    """GETs of one file until its verified bytes are all in the store.

    ``fetch_url`` is where the file is requested (again), None when it must
    not be; ``credentials``: which of the method's headers that request may carry.
    """

    output: OutputFile
    fetch_url: str | None
    credentials: Credentials

    async def store(self, opened: httpx.Response | None = None) -> StoredFile:
        """Fetch with retries; the first try reads ``opened`` when given."""
        attempt = 1
        while True:
            first = nullcontext(opened) if attempt == 1 and opened is not None else None
            try:
                writer = await self._attempt(first or self._open(offset=0))
                return self.output.stored(writer)
            except _BrokenTransfer as exc:
                if self.fetch_url is None:
                    raise ToolflowsError(
                        ErrorCode.DOWNLOAD_FAILED,
                        f"the file answered was broken ({exc}); the request was not sent again",
                    ) from exc
                wait = max(retry_delay(attempt), exc.retry_after or 0.0)
                past_deadline = time.time() + wait > self.output.target.deadline
                if attempt >= MAX_ATTEMPTS or (
                    past_deadline
                    and (attempt >= MIN_ATTEMPTS_PAST_DEADLINE or wait > MAX_RETRY_DELAY_SECONDS)
                ):
                    raise ToolflowsError(
                        ErrorCode.DOWNLOAD_FAILED, f"download failed after {attempt} tries: {exc}"
                    ) from exc
                attempt += 1
                await asyncio.sleep(wait)

    async def _attempt(self, opening: AbstractAsyncContextManager[httpx.Response]) -> HashingWriter:
        """One try: the whole file into a new upload, resumed within it where allowed."""
        target = self.output.target
        async with AsyncExitStack() as responses:
            watch = _Watch(target.pace)
            try:
                async with watch.waiting():
                    response = await responses.enter_async_context(opening)
                    body = _Body(
                        response, _decoder_of(response, ErrorCode.DOWNLOAD_FAILED), watch, offset=0
                    )
                    head = await body.next_piece() or b""
            except httpx.TransportError as exc:
                raise _BrokenTransfer(_describe(exc)) from exc
            expected = _content_length(response)
            if expected is not None and not body.decoder.encoding:
                target.check_size(expected)
            # Range counts stored bytes only when they are the bytes sent.
            may_resume = (
                self.fetch_url is not None
                and _accepts_ranges(response)
                and not body.decoder.encoding
            )
            target.check_size(len(head))
            resumes = 0
            async with self.output.storing(
                content_type=response.headers.get("content-type"),
                content_disposition=response.headers.get("content-disposition"),
                head=head,
            ) as writer:
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
            return writer

    async def _resume(self, responses: AsyncExitStack, offset: int, expected: int | None) -> _Body:
        """The rest of the body from ``offset`` on, by a ``Range`` request."""
        watch = _Watch(self.output.target.pace)
        async with watch.waiting():
            response = await responses.enter_async_context(self._open(offset=offset))
            decoder = _decoder_of(response, ErrorCode.DOWNLOAD_FAILED)
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

    async def _pour(self, body: _Body, writer: HashingWriter, total: int | None) -> None:
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
                    self.output.target.check_size(writer.size + len(piece))
                    writer.add(piece)
                    show_download(self.output.filename, writer.size, total)
            await writer.hand_over()


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


def _decoder_of(response: httpx.Response, failure: ErrorCode) -> BodyDecoder:
    return BodyDecoder.for_header(response.headers.get("content-encoding", ""), failure)


def _describe(exc: BaseException) -> str:
    """A transport error named by its type (httpx messages are often empty)."""
    if isinstance(exc, httpx.TransportError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return str(exc)
