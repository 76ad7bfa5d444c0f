"""Output files as a test scripts them: any Content-Type or none, a Content-Disposition,
signed links, compressed copies, and gzip bombs.

Compressed copies (``Content-Encoding``) are made whole, for test-sized files only; a
gzip bomb is assembled from one compressed block repeated, never inflated here.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Literal

from toolflows.fake_provider.content import BLOCK_SIZE, FakeFile

# A gzip member header: deflate, no name, no mtime, unknown OS.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

DEFAULT_TYPES = {"video": "video/mp4", "image": "image/png", "audio": "audio/mpeg"}
EXTENSIONS = {
    "video/mp4": "mp4",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "audio/mpeg": "mp3",
}

Signing = Literal["cloudfront", "jwt"]


@dataclass
class ScriptedFile(FakeFile):
    """A file with the headers a test scripted, served behind links signed as `signing`."""

    content_type: str | None = None
    content_disposition: str | None = None
    signing: Signing | None = None
    _encoded: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def of(cls, file: FakeFile, signing: Signing | None = None) -> ScriptedFile:
        """`file` as a scripted file, its links signed the `signing` way."""
        kept = {f.name: getattr(file, f.name) for f in fields(file) if f.init}
        return cls(**{**kept, "signing": signing})

    @property
    def header_type(self) -> str | None:
        """Content-Type the CDN sends: the scripted one ("" → none), else the real type."""
        if self.content_type is None:
            return self.mimetype
        return self.content_type or None

    def headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        if self.header_type:
            headers.append(("content-type", self.header_type))
        if self.content_disposition:
            headers.append(("content-disposition", self.content_disposition))
        return headers

    def read(self) -> bytes:
        """Whole file; only for small files (data: URIs)."""
        return b"".join(self.chunks())

    def data_uri(self) -> str:
        return f"data:{self.mimetype};base64,{base64.b64encode(self.read()).decode()}"

    def encoded(self, encoding: Literal["gzip", "deflate"]) -> bytes:
        """The file compressed as ``Content-Encoding: <encoding>`` sends it (cached)."""
        if encoding not in self._encoded:
            wbits = zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS
            compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
            pieces = [compressor.compress(chunk) for chunk in self.chunks()]
            self._encoded[encoding] = b"".join([*pieces, compressor.flush()])
        return self._encoded[encoding]


@lru_cache(maxsize=4)
def gzip_bomb(size: int) -> bytes:
    """A gzip body inflating to ``size`` zero bytes, built without ever holding them.

    After a full flush the compressor starts afresh, so every further block of zeros
    compresses to the same bytes: one compressed block is repeated (1 GiB -> ~1 MB).
    """
    zeros = bytes(BLOCK_SIZE)
    whole, rest = divmod(size, BLOCK_SIZE)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(whole):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(rest), crc)
    deflated = block * whole + compressor.compress(bytes(rest)) + compressor.flush()
    return GZIP_HEADER + deflated + struct.pack("<II", crc, size & 0xFFFFFFFF)
