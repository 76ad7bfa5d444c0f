"""The download pipeline: the event loop receives, one writer thread hashes and stores.

The writer works in order, at most a few MiB behind the network; a failure in it is a
``DOWNLOAD_FAILED``, and a failed or cancelled download leaves no partial file behind.
Every download goes over real sockets to the fake provider.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from testkit.fake_provider import FakeProvider, Fault
from tests.helpers import PARAMS, fake_method, run
from toolflows import transfer
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.redact import Redactor
from toolflows.download import store_output
from toolflows.http import provider_session
from toolflows.models import StoredFile
from toolflows.storage import (
    WRITER_BATCH_BYTES,
    WRITER_QUEUE,
    FileStore,
    LocalFileStore,
    _FileUpload,
)
from toolflows.transfer import FileTarget

MIB = 1024 * 1024
_real_write = _FileUpload.write


def output_url(fake: FakeProvider, file_size: int, **behaviour: Any) -> tuple[str, str]:
    """The output URL of a finished Replicate prediction on the fake, and its job id."""
    fake.script("replicate", polls_until_done=0, file_size=file_size, **behaviour)
    headers = {"Authorization": f"Bearer {fake.api_keys['replicate']}"}
    predictions = f"{fake.api_url}/v1/predictions"
    created = httpx.post(predictions, json=PARAMS["replicate"], headers=headers)
    prediction = httpx.get(created.json()["urls"]["get"], headers=headers).json()
    assert prediction["status"] == "succeeded", prediction
    return prediction["output"][0], prediction["id"]


async def store_into(fake: FakeProvider, url: str, store: FileStore) -> StoredFile:
    """``store_output`` of one URL under ``job/`` in a store, in a session aimed at the fake."""
    target = FileTarget(
        store=store,
        key_prefix="job",
        task_id="job",
        max_bytes=1 << 40,
        deadline=time.time() + 60,
    )
    async with provider_session(fake.api_url, {}, timeout=10, redact=Redactor()):
        return await store_output(url, target, index=0)


def slow_write(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[int]:
    """Make every local write take ``seconds`` longer; the list holds the bytes written."""
    written = [0]

    def write(self: _FileUpload, chunk: bytes) -> None:
        time.sleep(seconds)
        _real_write(self, chunk)
        written[0] += len(chunk)

    monkeypatch.setattr(_FileUpload, "write", write)
    return written


@pytest.mark.usefixtures("prefect_api")
def test_bytes_are_hashed_and_written_in_order_by_a_writer_thread(fresh_fake, monkeypatch):
    threads: set[str] = set()

    def write(self: _FileUpload, chunk: bytes) -> None:
        threads.add(threading.current_thread().name)
        _real_write(self, chunk)

    monkeypatch.setattr(_FileUpload, "write", write)
    size = 5 * MIB + 12_345  # several batches, the last one short
    fresh_fake.script("runway", polls_until_done=0, file_size=size)

    result = run(fake_method(fresh_fake, "runway"), PARAMS["runway"])

    (file,) = result.files
    assert file.size == size
    assert file.sha256 == fresh_fake.expected_sha256(result.task_id)
    assert Path(file.uri.removeprefix("file://")).stat().st_size == size
    assert threads and all(name.startswith("toolflows-writer") for name in threads)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("required", [False, True], ids=["warning", "required"])
def test_a_storage_failure_in_the_writer_thread_is_download_failed(
    fresh_fake, storage_dir, monkeypatch, required
):
    calls = [0]

    def write(self: _FileUpload, chunk: bytes) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        _real_write(self, chunk)

    monkeypatch.setattr(_FileUpload, "write", write)
    fresh_fake.script("runway", polls_until_done=0, file_size=4 * MIB)
    method = fake_method(fresh_fake, "runway", download="required" if required else True)

    if required:
        with pytest.raises(ToolflowsError) as raised:
            run(method, PARAMS["runway"])
        code, message, task_id = raised.value.code, raised.value.message, raised.value.task_id
    else:
        result = run(method, PARAMS["runway"])
        assert result.files == []
        (warning,) = result.warnings
        code, message, task_id = warning.code, warning.message, result.task_id

    assert code == ErrorCode.DOWNLOAD_FAILED
    assert "No space left on device" in message
    job_folder = storage_dir / method.inventory_key / method.name / str(task_id)
    assert not job_folder.exists() or list(job_folder.iterdir()) == []
    assert list(storage_dir.rglob("*.part")) == []


def test_a_slow_store_holds_the_receiving_back_a_few_mib(fresh_fake, tmp_path, monkeypatch):
    """The writer falls behind, but never by more than its queue: memory stays bounded."""
    written = slow_write(monkeypatch, 0.01)
    lags: list[int] = []
    monkeypatch.setattr(
        transfer, "show_download", lambda _name, done, _total: lags.append(done - written[0])
    )
    url, job_id = output_url(fresh_fake, 24 * MIB)

    stored = asyncio.run(store_into(fresh_fake, url, LocalFileStore(tmp_path)))

    assert stored.sha256 == fresh_fake.expected_sha256(job_id)
    assert stored.size == written[0] == 24 * MIB
    # Ahead by queued batches (the receiving did not wait for each write) ...
    assert max(lags) >= (WRITER_QUEUE - 1) * WRITER_BATCH_BYTES
    # ... and by no more than the queue, the batch being filled and a read's slack.
    assert max(lags) <= (WRITER_QUEUE + 2) * WRITER_BATCH_BYTES


def test_a_resume_continues_from_the_bytes_received_not_those_written(
    fresh_fake, tmp_path, monkeypatch
):
    slow_write(monkeypatch, 0.01)
    url, job_id = output_url(fresh_fake, 12 * MIB, download_faults=[Fault.cut(5_000_000)])

    stored = asyncio.run(store_into(fresh_fake, url, LocalFileStore(tmp_path)))

    ranges = [request.headers.get("range") for request in fresh_fake.requests(origin="cdn")]
    assert ranges == [None, "bytes=5000000-"]
    assert stored.size == 12 * MIB
    assert stored.sha256 == fresh_fake.expected_sha256(job_id)


async def cancel_by_task_cancel(storing: Coroutine[Any, Any, Any], busy: threading.Event) -> None:
    """Run ``storing``; ``Task.cancel`` it once ``busy`` is set."""
    task = asyncio.create_task(storing)
    await asyncio.to_thread(busy.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def cancel_by_cancel_scope(storing: Coroutine[Any, Any, Any], busy: threading.Event) -> None:
    """Run ``storing``; cancel its anyio scope once ``busy`` is set.

    As Prefect's timeouts do: the scope cancels again at every await until it exits.
    """

    async def cancel_when_busy() -> None:
        await asyncio.to_thread(busy.wait, 10)
        scope.cancel()

    with anyio.CancelScope() as scope:
        watcher = asyncio.create_task(cancel_when_busy())
        await storing
    await watcher
    assert scope.cancelled_caught


@pytest.mark.parametrize("cancel", [cancel_by_task_cancel, cancel_by_cancel_scope])
def test_a_cancelled_download_stops_the_writer_then_removes_the_part_file(
    fresh_fake, tmp_path, monkeypatch, cancel
):
    writing = threading.Event()
    part_file_there: list[bool] = []

    def write(self: _FileUpload, chunk: bytes) -> None:
        writing.set()
        time.sleep(0.3)  # the download is cancelled meanwhile
        part_file_there.append(Path(self._handle.name).exists())
        _real_write(self, chunk)

    monkeypatch.setattr(_FileUpload, "write", write)
    url, _ = output_url(fresh_fake, 32 * MIB)

    asyncio.run(cancel(store_into(fresh_fake, url, LocalFileStore(tmp_path)), writing))

    # The batch in hand was written while its file still existed; nothing queued ran.
    assert part_file_there == [True]
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []
