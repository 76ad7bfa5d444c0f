"""Local result storage: streamed, atomic, readable back."""

from __future__ import annotations

import asyncio

import pytest

from flows.core.errors import ToolflowsError
from flows.storage import LocalFileStore


def test_a_file_appears_only_when_complete(tmp_path):
    store = LocalFileStore(tmp_path)

    async def write() -> None:
        async with store.upload("a/b/video.mp4") as upload:
            await upload.write(b"part one ")
            assert not (tmp_path / "a/b/video.mp4").exists()
            await upload.write(b"part two")

    asyncio.run(write())

    assert (tmp_path / "a/b/video.mp4").read_bytes() == b"part one part two"
    assert [path.name for path in (tmp_path / "a/b").iterdir()] == ["video.mp4"]
    assert store.uri_for("a/b/video.mp4") == (tmp_path / "a/b/video.mp4").as_uri()


def test_a_broken_upload_leaves_nothing_behind(tmp_path):
    store = LocalFileStore(tmp_path)

    async def write() -> None:
        async with store.upload("job/video.mp4") as upload:
            await upload.write(b"half")
            raise ConnectionError("stream broke")

    with pytest.raises(ConnectionError):
        asyncio.run(write())

    assert list((tmp_path / "job").iterdir()) == []


def test_keys_cannot_escape_the_basepath(tmp_path):
    with pytest.raises(ToolflowsError):
        LocalFileStore(tmp_path / "store").path_for("../outside.mp4")
