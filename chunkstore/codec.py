"""Stored form of a chunk: one codec byte followed by the payload.

The codec byte is part of the data so that old stores stay readable whatever the defaults of
later versions are. A chunk is stored raw when zstd saves too little to be worth a
decompression on every read (random data, media, archives).
"""

from __future__ import annotations

import threading

import zstandard

from chunkstore.errors import CorruptChunk
from chunkstore.objectid import object_id

CODEC_RAW = 0
CODEC_ZSTD = 1
RAW_PREFIX = bytes((CODEC_RAW,))
ZSTD_PREFIX = bytes((CODEC_ZSTD,))
DEFAULT_LEVEL = 3
# Compression must save at least this fraction of the raw size, else the chunk is stored raw.
MIN_SAVING = 0.03
# No chunk decompresses past this: the chunker's largest maximum. Bounds memory on hostile input.
MAX_RAW_CHUNK = 16 * 1024 * 1024


class ChunkCodec:
    """Encodes and decodes stored forms.

    zstandard (de)compressor objects must not be shared between threads (sharing one crashed
    the process in our measurements), so each thread gets its own through thread-local storage.
    """

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level must be 1..22, not {level}")
        self.level = level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "compressor", None)
        if c is None:
            c = self._local.compressor = zstandard.ZstdCompressor(level=self.level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "decompressor", None)
        if d is None:
            d = self._local.decompressor = zstandard.ZstdDecompressor()
        return d

    def encode(self, raw: bytes | memoryview) -> bytes:
        """Stored form of `raw`: zstd when it saves at least MIN_SAVING, else raw."""
        packed = self._compressor().compress(raw)
        if len(packed) <= len(raw) * (1 - MIN_SAVING):
            return ZSTD_PREFIX + packed
        return RAW_PREFIX + raw  # one copy, whether raw is bytes or a view

    def decode(self, stored: bytes | memoryview) -> bytes | memoryview:
        """Raw bytes of a stored form (not verified: see `decode_verified`)."""
        if len(stored) == 0:
            raise ValueError("empty stored form")
        view = memoryview(stored)
        codec = view[0]
        if codec == CODEC_RAW:
            return view[1:]
        if codec == CODEC_ZSTD:
            return self._decompressor().decompress(view[1:], max_output_size=MAX_RAW_CHUNK)
        raise ValueError(f"unknown codec byte {codec}")

    def decode_verified(self, chunk_id: bytes, stored: bytes | memoryview) -> bytes | memoryview:
        """Raw bytes of a stored form, checked to hash to `chunk_id`; raises CorruptChunk."""
        try:
            raw = self.decode(stored)
        except (ValueError, zstandard.ZstdError) as e:
            raise CorruptChunk(chunk_id.hex(), str(e)) from None
        if object_id(raw) != chunk_id:
            raise CorruptChunk(chunk_id.hex(), "content does not match its id")
        return raw
