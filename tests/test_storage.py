"""Local result storage: streamed, atomic, readable back."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from toolflows.core.errors import ToolflowsError
from toolflows.storage import LocalFileStore


def test_a_file_appears_only_when_complete(tmp_path):
    store = LocalFileStore(tmp_path)

    async def write() -> None:
        async with store.upload("a/b/video.mp4") as upload:
            upload.write(b"part one ")
            assert not (tmp_path / "a/b/video.mp4").exists()
            upload.write(b"part two")
            upload.flush()

    asyncio.run(write())

    assert (tmp_path / "a/b/video.mp4").read_bytes() == b"part one part two"
    assert [path.name for path in (tmp_path / "a/b").iterdir()] == ["video.mp4"]
    assert store.uri_for("a/b/video.mp4") == (tmp_path / "a/b/video.mp4").as_uri()


def test_a_broken_upload_leaves_nothing_behind(tmp_path):
    store = LocalFileStore(tmp_path)

    async def write() -> None:
        async with store.upload("job/video.mp4") as upload:
            upload.write(b"half")
            raise ConnectionError("stream broke")

    with pytest.raises(ConnectionError):
        asyncio.run(write())

    assert list((tmp_path / "job").iterdir()) == []


def test_keys_cannot_escape_the_basepath(tmp_path):
    with pytest.raises(ToolflowsError):
        LocalFileStore(tmp_path / "store").path_for("../outside.mp4")


def test_an_fsspec_remote_file_system_block_keeps_working(fresh_fake, prefect_api):
    from prefect.filesystems import RemoteFileSystem
    from prefect.utilities.asyncutils import run_coro_as_sync

    from tests.helpers import PARAMS, fake_method, run

    run_coro_as_sync(
        RemoteFileSystem(basepath="memory://toolflows-test").asave("memory-store", overwrite=True)
    )
    fresh_fake.script("runway", file_size=70_000)
    method = fake_method(fresh_fake, "runway")
    method.adapter_config.storage = "remote-file-system/memory-store"

    result = run(method, PARAMS["runway"])

    file = result.files[0]
    assert file.uri == (
        f"memory://toolflows-test/runway/image_to_video/{result.task_id}/{file.filename}"
    )
    data = file.read_bytes()
    assert len(data) == 70_000
    assert hashlib.sha256(data).hexdigest() == fresh_fake.expected_sha256(result.task_id)
