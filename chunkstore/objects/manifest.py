"""Manifest: the recipe of one file, a content-addressed object itself.

Encoded as canonical msgpack (a fixed-order array, no maps whose key order could vary), so the
same file and parameters give the same bytes, hence the same id, on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import msgpack

from chunkstore.errors import CorruptManifest
from chunkstore.objects.chunking import ChunkerParams
from chunkstore.objects.ids import ID_BYTES, object_id

FORMAT_VERSION = 1
MAGIC = "chunkstore-manifest"
# A manifest for a multi-TiB file of 256 KiB chunks stays below this; larger input is hostile.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its id (BLAKE3-256 of its raw bytes) and raw size."""

    chunk_id: bytes
    size: int


@dataclass(frozen=True)
class Manifest:
    """The recipe of one file: size, chunker parameters, ordered chunks. Its id is the
    BLAKE3-256 of `to_bytes()`, so equal files cut with equal parameters have equal ids."""

    size: int
    chunker: ChunkerParams
    chunks: tuple[ChunkRef, ...]
    version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        """The canonical encoding (a msgpack array in fixed order)."""
        record = [
            MAGIC,
            self.version,
            self.size,
            [
                self.chunker.kind,
                self.chunker.avg_size,
                self.chunker.min_size,
                self.chunker.max_size,
            ],
            [[c.chunk_id, c.size] for c in self.chunks],
        ]
        return msgpack.packb(record, use_bin_type=True)

    @property
    def id(self) -> bytes:
        """The manifest id: BLAKE3-256 of the canonical encoding."""
        return object_id(self.to_bytes())

    def offsets(self) -> Iterator[tuple[int, ChunkRef]]:
        """(offset in the file, chunk) for every chunk, in order."""
        offset = 0
        for ref in self.chunks:
            yield offset, ref
            offset += ref.size

    @classmethod
    def from_bytes(cls, data: bytes, expected_id: bytes | None = None) -> Manifest:
        """Decode and validate; with `expected_id`, also check the bytes hash to it.

        Raises CorruptManifest saying what is wrong."""
        label = expected_id.hex() if expected_id else "(no id given)"
        if expected_id is not None and object_id(data) != expected_id:
            raise CorruptManifest(label, "content does not match its id")
        if len(data) > MAX_MANIFEST_BYTES:
            raise CorruptManifest(label, "too large")
        try:
            magic, version, size, chunker, chunks = msgpack.unpackb(data, raw=False)
            if magic != MAGIC:
                raise ValueError("not a chunkstore manifest")
            if version != FORMAT_VERSION:
                raise ValueError(f"unsupported manifest version {version}")
            kind, avg, mn, mx = chunker
            params = ChunkerParams(kind=kind, avg_size=avg, min_size=mn, max_size=mx)
            refs = tuple(ChunkRef(bytes(cid), int(sz)) for cid, sz in chunks)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise CorruptManifest(label, f"not decodable: {e}") from None
        if any(len(r.chunk_id) != ID_BYTES or not 0 < r.size <= params.max_size for r in refs):
            raise CorruptManifest(label, "invalid chunk reference")
        if sum(r.size for r in refs) != size:
            raise CorruptManifest(label, "chunk sizes do not add up to the file size")
        return cls(size=size, chunker=params, chunks=refs, version=version)
