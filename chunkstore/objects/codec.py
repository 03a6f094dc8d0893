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
            d = self._local.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_RAW_CHUNK)
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

    def decode(self, stored: bytes | memoryview, size: int | None = None) -> bytes | memoryview:
        """Raw bytes of a stored form (not verified: see `decode_verified`).

        With `size` (the raw size a manifest declares), anything but exactly `size` bytes is
        refused, and no more than `size` + 1 bytes are ever decompressed; without it, no more
        than MAX_RAW_CHUNK. Raises ValueError or zstandard.ZstdError."""
        if len(stored) == 0:
            raise ValueError("empty stored form")
        view = memoryview(stored)
        codec = view[0]
        if codec == CODEC_RAW:
            raw = view[1:]
        elif codec == CODEC_ZSTD:
            raw = self._decompress(view[1:], MAX_RAW_CHUNK if size is None else size)
        else:
            raise ValueError(f"unknown codec byte {codec}")
        if size is not None and len(raw) != size:
            raise ValueError(f"{len(raw)} bytes where the manifest declares {size}")
        return raw

    def _decompress(self, frame: memoryview, limit: int) -> bytes:
        """The first zstd frame of `frame`, refused once it would exceed `limit` bytes.

        python-zstandard ignores max_output_size when a frame states its content size and
        allocates whatever the header claims (18 bytes can claim 64 GiB), so the header is
        read first: a frame declaring more than `limit` is refused before any allocation, and
        one that declares no size is read through a stream reader, never past `limit` + 1."""
        declared = zstandard.frame_content_size(frame)
        if declared > limit:
            raise ValueError(
                f"zstd frame declares {declared} bytes, more than the {limit} expected"
            )
        window = zstandard.get_frame_parameters(frame).window_size
        if window > MAX_RAW_CHUNK:
            # Our encoder's window never exceeds the chunk it compresses (zstd fits the window
            # to a known source size); a larger one only costs a stream decoder memory.
            raise ValueError(f"zstd window of {window} bytes is larger than a chunk")
        if declared >= 0:
            # Stated and within the limit: one allocation of the stated size, and zstd itself
            # refuses a frame whose content does not match what it stated.
            return self._decompressor().decompress(frame)
        reader = self._decompressor().stream_reader(frame, read_across_frames=False)
        parts: list[bytes] = []
        total = 0
        while total <= limit:
            part = reader.read(limit + 1 - total)
            if not part:
                break
            parts.append(part)
            total += len(part)
        if total > limit:
            raise ValueError(f"zstd frame expands beyond the {limit} bytes expected")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def decode_verified(
        self, chunk_id: bytes, stored: bytes | memoryview, size: int | None = None
    ) -> bytes | memoryview:
        """Raw bytes of a stored form, checked to hash to `chunk_id` and, with `size`, to be
        exactly `size` bytes long; raises CorruptChunk for any failure to decode (an unknown
        codec, a damaged or oversized zstd frame, too little memory) or to verify."""
        try:
            raw = self.decode(stored, size)
        except (ValueError, zstandard.ZstdError) as e:
            raise CorruptChunk(chunk_id.hex(), str(e)) from None
        except MemoryError:
            raise CorruptChunk(chunk_id.hex(), "too little memory to decode it") from None
        if object_id(raw) != chunk_id:
            raise CorruptChunk(chunk_id.hex(), "content does not match its id")
        return raw
