"""Undoing a body's ``Content-Encoding`` in bounded steps (downloads and JSON answers alike).

httpx inflates a whole network read at once: one 256 KiB read of a gzip bomb
is 256 MiB in memory before any size cap can look at it. Decoded here, each
step yields at most ``DECODE_STEP_BYTES``, so a cap counted on the decoded
bytes stops a bomb at the cap.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from toolflows.core.errors import ErrorCode, ToolflowsError

# Content-Encodings undone on the way in (what httpx asks for by default).
ENCODINGS = ("gzip", "x-gzip", "deflate")
GZIP_WBITS = zlib.MAX_WBITS | 16
DECODE_STEP_BYTES = 1024 * 1024


class BodyDecoder:
    """Undoes a body's ``Content-Encoding`` as it arrives, a bounded step at a time.

    gzip and deflate (zlib-wrapped or raw, as servers send both) are known;
    another encoding is refused by name rather than stored still encoded.
    """

    def __init__(self, encoding: str, failure: ErrorCode) -> None:
        self.encoding = encoding  # "" for identity
        self._failure = failure
        self._gzip = "gzip" in encoding
        self._inflater = zlib.decompressobj(GZIP_WBITS) if self._gzip else None
        self._start = b""  # deflate: the first bytes, until they tell zlib from raw
        self._fed = False

    @classmethod
    def for_header(cls, content_encoding: str, failure: ErrorCode) -> BodyDecoder:
        """The decoder of a ``Content-Encoding`` header; ``failure``: the code of its errors."""
        codings = [part.strip().lower() for part in content_encoding.split(",")]
        codings = [coding for coding in codings if coding and coding != "identity"]
        if not codings:
            return cls("", failure)
        if len(codings) == 1 and codings[0] in ENCODINGS:
            return cls(codings[0], failure)
        raise ToolflowsError(
            failure,
            f"cannot decode Content-Encoding {content_encoding[:60]!r} (gzip and deflate can be)",
        )

    def decode(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, lazily, in pieces of at most ``DECODE_STEP_BYTES``."""
        if not data:
            return
        if not self.encoding:
            yield data
            return
        self._fed = True
        if self._inflater is None:
            self._start += data
            if len(self._start) < 2:
                return
            data, self._start = self._start, b""
            self._inflater = zlib.decompressobj(
                zlib.MAX_WBITS if _is_zlib_header(data) else -zlib.MAX_WBITS
            )
        yield from self._inflate(data)

    def finish(self) -> Iterator[bytes]:
        """Check that the encoded stream ended where the body did (an empty body is empty)."""
        if self._fed and (self._inflater is None or not self._inflater.eof):
            raise self._broken("it ends early")
        return iter(())

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        inflater = self._inflater
        assert inflater is not None
        while True:
            if inflater.eof:
                # gzip allows several members one after the other; nothing else may follow.
                if not data:
                    return
                if not self._gzip:
                    raise self._broken("data after its end")
                inflater = self._inflater = zlib.decompressobj(GZIP_WBITS)
            try:
                piece = inflater.decompress(data, DECODE_STEP_BYTES)
            except zlib.error as exc:
                raise self._broken(str(exc)) from None
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            if piece:
                yield piece
            if not data and len(piece) < DECODE_STEP_BYTES:
                return

    def _broken(self, reason: str) -> ToolflowsError:
        message = f"the {self.encoding} body cannot be decoded: {reason}"
        return ToolflowsError(self._failure, message)


def _is_zlib_header(data: bytes) -> bool:
    """RFC 1950: deflate method, and the first two bytes a multiple of 31."""
    return data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
