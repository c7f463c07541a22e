"""Request bodies as they stream in, for every HTTP door: a size limit counted on the decoded bytes, and gzip or
deflate bodies decompressed chunk by chunk (no web framework here: a door feeds the chunks its server hands it).

A body whose ``Content-Length`` is over the limit is refused (413) before a byte of it is read; a chunked or
compressed one is refused as soon as what has arrived, decompressed, passes the limit. Decompression runs at most
``INFLATE_STEP`` bytes a call and never past the limit plus one byte in all, so however far a small input would
expand (a zip bomb), memory holds at most the limit plus one step. Errors are the family's: ``ResourceLimitError``
(413, naming the size, the limit and the setting that sets it), ``UnsupportedEncodingError`` (415) and
``ModelForgeError`` (400, a body that is not valid gzip/deflate data).
"""

from __future__ import annotations

import zlib

from .errors import ModelForgeError, ResourceLimitError, UnsupportedEncodingError

# Content-Encoding of a request body -> zlib wbits of its decompressor (tritonclient sends gzip or deflate, i.e. zlib)
BODY_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
INFLATE_STEP = 1 << 20  # bytes decompressed per zlib call: the memory a compressed body may take beyond its own size


class BodyReader:
    """Collect one request body: ``feed(chunk)`` for each chunk as it arrives, then ``body()``.

    ``encoding``: the request's ``Content-Encoding`` (None: identity); ``length``: its ``Content-Length`` text, if
    any; ``limit``: the largest body in bytes, decompressed; ``setting``: how the message names the limit's setting
    (e.g. ``--max-body-size``). Raises at construction when the encoding is unsupported (415) or the declared length
    is over the limit (413).
    """

    __slots__ = ("limit", "setting", "size", "_chunks", "_inflate", "_encoding")

    def __init__(self, encoding: str | None, length: str | None, limit: int, setting: str) -> None:
        self.limit, self.setting, self.size = limit, setting, 0
        self._chunks: list[bytes] = []
        self._encoding = (encoding or "identity").strip().lower()
        self._inflate = None
        if self._encoding in BODY_ENCODINGS:
            self._inflate = zlib.decompressobj(BODY_ENCODINGS[self._encoding])
        elif self._encoding != "identity":
            raise UnsupportedEncodingError(f"Content-Encoding {self._encoding!r} is not supported; send the body "
                                           "uncompressed, gzip or deflate")
        elif length is not None and length.strip().isdigit() and int(length) > limit:
            raise self.too_large(int(length))  # a compressed body's length says nothing of its decompressed size

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body as sent. Raises 413 once the decoded body passes the limit, 400 for data
        that is not valid gzip/deflate or follows the end of the compressed stream."""
        if self._inflate is None:
            self._take(chunk)
            return
        if self._inflate.eof:
            if chunk:
                raise ModelForgeError("request body has data after the end of its compressed stream")
            return
        data = chunk
        while True:
            step = min(self.limit - self.size + 1, INFLATE_STEP)
            try:
                out = self._inflate.decompress(data, step)
            except zlib.error as err:
                raise ModelForgeError(f"request body is not valid {self._encoding} data: {err}") from None
            self._take(out)
            data = self._inflate.unconsumed_tail
            if not data and len(out) < step:  # input used up and no output left pending in zlib
                break
        if self._inflate.unused_data:
            raise ModelForgeError("request body has data after the end of its compressed stream")

    def body(self) -> bytes:
        """The whole body, decoded. Raises 400 when a compressed body ended before its compressed stream did."""
        if self._inflate is not None and not self._inflate.eof:
            raise ModelForgeError(f"request body is truncated {self._encoding} data: its stream does not end")
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _take(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self._chunks.clear()
            raise self.too_large(self.size, "at least ")
        if data:
            self._chunks.append(data)

    def too_large(self, size: int, qualifier: str = "") -> ResourceLimitError:
        """The 413 of a body of ``size`` bytes (decoded), naming the limit and its setting."""
        decompressed = " decompressed" if self._inflate is not None else ""
        return ResourceLimitError(f"request body too large: {qualifier}{size} bytes{decompressed}; the limit is "
                                  f"{self.limit} bytes ({self.setting})")
