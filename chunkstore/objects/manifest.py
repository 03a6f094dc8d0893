"""Manifest: the recipe of one file, a content-addressed object itself.

Encoded as canonical msgpack (a fixed-order array, no maps whose key order could vary), so the
same file and parameters give the same bytes, hence the same id, on every machine.
"""

from __future__ import annotations

import io
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import msgpack

from chunkstore.errors import CorruptManifest
from chunkstore.objects.chunking import ChunkerParams
from chunkstore.objects.ids import ID_BYTES, object_id

FORMAT_VERSION = 1
MAGIC = "chunkstore-manifest"
# A manifest for a multi-TiB file of 256 KiB chunks stays below this; larger input is hostile.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
# An entry of a chunk of 64 KiB or more takes 40 bytes (array header, bin header, 32-byte id,
# uint32 size), so this many chunks is what the transfer client's cap (MAX_MANIFEST_BYTES)
# lets through anyway: 2 TiB of the default chunker's ~1.25 MiB chunks, in ~64 MiB of memory.
MAX_CHUNKS = MAX_MANIFEST_BYTES // 40
# ext4's file size limit with 4 KiB blocks; a declared size beyond it is refused before any
# chunk entry is read.
MAX_FILE_SIZE = 16 * 1024**4


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its id (BLAKE3-256 of its raw bytes) and raw size."""

    chunk_id: bytes
    size: int


class ChunkList(Sequence[ChunkRef]):
    """The ordered chunks of a manifest, kept compact: the ids in one bytes buffer, the sizes
    in an array('Q'), about 40 bytes a chunk (as a tuple of ChunkRef objects a 1.6M-chunk
    manifest took ~450 MiB). Indexing and iteration give ChunkRef values; a slice is a
    ChunkList; equal lists compare and hash equal."""

    __slots__ = ("_ids", "_sizes")

    def __init__(self, refs: Iterable[ChunkRef] = ()) -> None:
        ids = bytearray()
        sizes = array("Q")
        for ref in refs:
            if len(ref.chunk_id) != ID_BYTES:
                raise ValueError(f"a chunk id has {ID_BYTES} bytes, not {len(ref.chunk_id)}")
            ids += ref.chunk_id
            sizes.append(ref.size)
        self._ids = bytes(ids)
        self._sizes = sizes

    @classmethod
    def _of(cls, ids: bytes, sizes: array) -> ChunkList:
        chunks = cls.__new__(cls)
        chunks._ids, chunks._sizes = ids, sizes
        return chunks

    def __len__(self) -> int:
        return len(self._sizes)

    def __getitem__(self, index):  # noqa: ANN001, ANN204 - int -> ChunkRef, slice -> ChunkList
        if isinstance(index, slice):
            positions = range(len(self))[index]
            if positions.step == 1:
                start, stop = positions.start, positions.stop
                return ChunkList._of(
                    self._ids[start * ID_BYTES : stop * ID_BYTES], self._sizes[start:stop]
                )
            return ChunkList(self[i] for i in positions)
        i = range(len(self))[index]  # IndexError out of range; negative indexes count back
        return ChunkRef(self._ids[i * ID_BYTES : (i + 1) * ID_BYTES], self._sizes[i])

    def __iter__(self) -> Iterator[ChunkRef]:
        ids = self._ids
        for i, size in enumerate(self._sizes):
            yield ChunkRef(ids[i * ID_BYTES : (i + 1) * ID_BYTES], size)

    def pairs(self) -> Iterator[tuple[bytes, int]]:
        """(chunk id, size) for every chunk, in order, without building ChunkRef objects."""
        ids = self._ids
        for i, size in enumerate(self._sizes):
            yield ids[i * ID_BYTES : (i + 1) * ID_BYTES], size

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChunkList):
            return self._ids == other._ids and self._sizes == other._sizes
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._ids, self._sizes.tobytes()))

    def __repr__(self) -> str:
        return f"ChunkList({len(self)} chunks)"


@dataclass(frozen=True)
class Manifest:
    """The recipe of one file: size, chunker parameters, ordered chunks. Its id is the
    BLAKE3-256 of `to_bytes()`, so equal files cut with equal parameters have equal ids.
    `chunks` may be given as any iterable of ChunkRef; it is kept as a ChunkList."""

    size: int
    chunker: ChunkerParams
    chunks: ChunkList
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.chunks, ChunkList):
            object.__setattr__(self, "chunks", ChunkList(self.chunks))

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
            [[cid, size] for cid, size in self.chunks.pairs()],
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

        Refuses, before reading any chunk entry, more than MAX_CHUNKS chunks and a declared
        size over MAX_FILE_SIZE or beyond what the chunks could add up to; the chunk entries
        are read one at a time into a ChunkList, so decoding takes little more memory than
        the result. Raises CorruptManifest saying what is wrong."""
        label = expected_id.hex() if expected_id else "(no id given)"
        if expected_id is not None and object_id(data) != expected_id:
            raise CorruptManifest(label, "content does not match its id")
        if len(data) > MAX_MANIFEST_BYTES:
            raise CorruptManifest(label, "too large")
        try:
            # Streamed from the bytes: unpackb would build a list per chunk entry (~1 GiB for
            # a 61 MiB manifest of 1.6M chunks) before any check.
            unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, read_size=1024 * 1024)
            if unpacker.read_array_header() != 5:
                raise ValueError("not a chunkstore manifest")
            magic, version, size, chunker = (unpacker.unpack() for _ in range(4))
            if magic != MAGIC:
                raise ValueError("not a chunkstore manifest")
            if version != FORMAT_VERSION:
                raise ValueError(f"unsupported manifest version {version}")
            kind, avg, mn, mx = chunker
            params = ChunkerParams(kind=kind, avg_size=avg, min_size=mn, max_size=mx)
            if type(size) is not int or size < 0:
                raise ValueError(f"file size {size!r}")
            count = unpacker.read_array_header()
            _check_limits(label, count, size, params)
            ids = bytearray()
            sizes = array("Q")
            for _ in range(count):
                cid, chunk_size = unpacker.unpack()
                if (
                    type(cid) is not bytes
                    or len(cid) != ID_BYTES
                    or type(chunk_size) is not int
                    or not 0 < chunk_size <= params.max_size
                ):
                    raise CorruptManifest(label, "invalid chunk reference")
                ids += cid
                sizes.append(chunk_size)
            try:
                unpacker.unpack()
            except msgpack.OutOfData:
                pass
            else:
                raise ValueError("extra data after the manifest")
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise CorruptManifest(label, f"not decodable: {e}") from None
        if sum(sizes) != size:
            raise CorruptManifest(label, "chunk sizes do not add up to the file size")
        chunks = ChunkList._of(bytes(ids), sizes)
        return cls(size=size, chunker=params, chunks=chunks, version=version)


def _check_limits(label: str, count: int, size: int, params: ChunkerParams) -> None:
    """Refuse, from the header alone, a manifest too large to be a real file's."""
    if count > MAX_CHUNKS:
        raise CorruptManifest(
            label, f"lists {count:,} chunks, more than the {MAX_CHUNKS:,} a manifest may list"
        )
    if size > MAX_FILE_SIZE:
        raise CorruptManifest(
            label, f"declares {size:,} bytes, more than the {MAX_FILE_SIZE:,} a file may have"
        )
    if size > count * params.max_size or count > size:
        raise CorruptManifest(
            label, f"declares {size:,} bytes, which {count:,} chunks cannot add up to"
        )
