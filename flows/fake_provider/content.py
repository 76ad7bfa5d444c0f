"""Deterministic output files: real magic bytes, then pseudo-random bytes, any size.

A file is never held in memory: its bytes are a short type-specific header followed by one
block (at most 1 MiB, derived from the file's seed) repeated, so serving 1 GiB costs one
block of memory and runs at socket speed, and the sha256 can be recomputed at will.
"""

from __future__ import annotations

import hashlib
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

BLOCK_SIZE = 1 << 20


def _png_header(width: int = 1024, height: int = 1024) -> bytes:
    """PNG signature plus a valid IHDR chunk, so strict sniffers accept it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = zlib.crc32(b"IHDR" + ihdr)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + b"IHDR"
        + ihdr
        + struct.pack(">I", crc)
    )


MAGIC: dict[str, bytes] = {
    # 24-byte ftyp box: major brand mp42, minor version 0, compatible brands mp42 isom.
    "video/mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
    "image/png": _png_header(),
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    "image/gif": b"GIF89a\x01\x00\x01\x00\x80\x00\x00",
    # ID3v2.4 tag header of size 0, then an MPEG-1 Layer III frame sync.
    "audio/mpeg": b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x64",
}


@lru_cache(maxsize=64)
def _block(seed: int, length: int) -> bytes:
    """The repeated body block; cached because concurrent downloads share few seeds."""
    return random.Random(seed).randbytes(length)


@dataclass
class FakeFile:
    """One output file served by the CDN: what it is called, typed and made of."""

    name: str
    size: int
    mimetype: str
    seed_text: str
    _sha256: str | None = field(default=None, init=False, repr=False)

    def headers(self) -> list[tuple[str, str]]:
        """What the CDN says about the file besides its length."""
        return [("content-type", self.mimetype)]

    def _parts(self) -> tuple[bytes, bytes]:
        prefix = MAGIC.get(self.mimetype, b"")[: self.size]
        rest = self.size - len(prefix)
        if rest <= 0:
            return prefix, b""
        seed = int.from_bytes(hashlib.blake2b(self.seed_text.encode(), digest_size=8).digest())
        return prefix, _block(seed, min(BLOCK_SIZE, rest))

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        """Bytes [start, end) as zero-copy views of at most one block each."""
        end = self.size if end is None else min(end, self.size)
        prefix, block = self._parts()
        pos = start
        if pos < len(prefix):
            yield memoryview(prefix)[pos : min(end, len(prefix))]
            pos = len(prefix)
        view = memoryview(block)
        while pos < end:
            offset = (pos - len(prefix)) % len(block)
            piece = view[offset : offset + (end - pos)]
            yield piece
            pos += len(piece)

    def sha256(self) -> str:
        if self._sha256 is None:
            digest = hashlib.sha256()
            for chunk in self.chunks():
                digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256
