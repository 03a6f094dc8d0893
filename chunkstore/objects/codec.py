"""Stored form of a chunk: one codec byte followed by the payload.

The codec byte is part of the data so that old stores stay readable whatever the defaults of
later versions are. A chunk is stored raw when zstd saves too little to be worth a
decompression on every read (random data, media, archives).
"""

from __future__ import annotations

import threading

import zstandard

from chunkstore.errors import CorruptChunk
from chunkstore.objects.ids import object_id

CODEC_RAW = 0
CODEC_ZSTD = 1
RAW_PREFIX = bytes((CODEC_RAW,))
ZSTD_PREFIX = bytes((CODEC_ZSTD,))
DEFAULT_LEVEL = 3
# Compression must save at least this fraction of the raw size, else the chunk is stored raw.
MIN_SAVING = 0.03
# Size of each sample compressed to detect incompressible chunks.
PROBE_BYTES = 16 * 1024
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

    def _looks_incompressible(self, raw: bytes | memoryview) -> bool:
        """True when samples from the start, middle and end all fail to compress.

        Compressing a whole MiB of random data still costs ~1 ms; three 16 KiB samples at
        level 1 cost a tenth of that and give the same answer for media, archives and
        encrypted data. A chunk that is compressible anywhere in a sample is compressed."""
        n = len(raw)
        if n < 4 * PROBE_BYTES:
            return False
        view = memoryview(raw)
        probe = self._prober()
        for start in (0, n // 2, n - PROBE_BYTES):
            sample = view[start : start + PROBE_BYTES]
            if len(probe.compress(sample)) <= PROBE_BYTES * (1 - MIN_SAVING):
                return False
        return True

    def _prober(self) -> zstandard.ZstdCompressor:
        p = getattr(self._local, "prober", None)
        if p is None:
            p = self._local.prober = zstandard.ZstdCompressor(level=1)
        return p

    def encode(self, raw: bytes | memoryview) -> bytes:
        """Stored form of `raw`: zstd when it saves at least MIN_SAVING, else raw."""
        if self._looks_incompressible(raw):
            return RAW_PREFIX + raw
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
