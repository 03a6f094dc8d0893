"""Splitting a byte stream into chunks: content-defined (FastCDC) or fixed-size.

The parameters are recorded in every manifest, so a file can be re-chunked identically anywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

KIB = 1024
MIB = 1024 * KIB

FASTCDC = "fastcdc"
FIXED = "fixed"
CHUNKERS = (FASTCDC, FIXED)


def _load_fastcdc():  # noqa: ANN202 - the Cython class has no stub worth naming here
    # pyfastcdc silently falls back to pure Python (~500x slower) when its extension is missing;
    # a store that ingests at 1 MB/s is broken, so refuse instead.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            from pyfastcdc.cy import FastCDC
        except ImportError as e:  # pragma: no cover - depends on the wheel
            raise RuntimeError(
                "pyfastcdc's compiled extension is missing; reinstall pyfastcdc from a wheel"
            ) from e
    return FastCDC


@dataclass(frozen=True)
class ChunkerParams:
    """How a file was cut. `avg_size` is FastCDC's parameter (its real mean is avg + min)."""

    kind: str = FASTCDC
    avg_size: int = 1 * MIB
    min_size: int = 256 * KIB
    max_size: int = 4 * MIB

    def __post_init__(self) -> None:
        if self.kind not in CHUNKERS:
            raise ValueError(f"unknown chunker {self.kind!r} (choose from {', '.join(CHUNKERS)})")
        if self.kind == FIXED:
            if not 1 <= self.avg_size <= 16 * MIB:
                raise ValueError("fixed chunk size must be 1 byte..16 MiB")
        elif not (64 <= self.min_size <= self.avg_size <= self.max_size <= 16 * MIB):
            raise ValueError("FastCDC sizes must satisfy 64 <= min <= avg <= max <= 16 MiB")

    @classmethod
    def fixed(cls, size: int = 1 * MIB) -> ChunkerParams:
        """Fixed-size blocks of `size` bytes (the last one shorter)."""
        return cls(kind=FIXED, avg_size=size, min_size=size, max_size=size)


# Bytes read from the file at a time for content-defined chunking; must exceed max_size.
READ_BLOCK = 8 * MIB


def iter_chunks(stream: BinaryIO, params: ChunkerParams) -> Iterator[bytes | memoryview]:
    """Yield the chunks of `stream` in order, reading it incrementally (bounded memory).

    Each yielded object stays valid after the next one is produced (it is a bytes object or a
    read-only view of one), so it may be handed to another thread.
    """
    if params.kind == FIXED:
        while block := stream.read(params.avg_size):
            yield block
        return
    chunker = _load_fastcdc()(params.avg_size, min_size=params.min_size, max_size=params.max_size)
    # pyfastcdc's own stream chunker moves its buffer and we would copy every chunk out of
    # it (together ~30% of add's main thread). Instead: cut whole blocks with cut_buf and
    # yield views into them; only the unfinished tail of a block is copied, once per block.
    # A cut found before the end of a block does not depend on later bytes (FastCDC looks at
    # most max_size ahead of a chunk's start), so the chunks equal cut_stream's exactly.
    block_size = max(READ_BLOCK, 2 * params.max_size)
    tail = b""
    while True:
        # A fresh buffer per block: views of the previous one may still be in use.
        block = bytearray(block_size)
        block[: len(tail)] = tail
        filled = len(tail)
        while filled < block_size and (n := stream.readinto(memoryview(block)[filled:])):
            filled += n
        at_eof = filled < block_size
        if not filled:
            return
        view = memoryview(block)[:filled].toreadonly()
        tail = b""
        for chunk in chunker.cut_buf(view):
            end = chunk.offset + chunk.length
            if end == filled and not at_eof:
                tail = bytes(view[chunk.offset : end])  # may grow when more data follows
                break
            yield view[chunk.offset : end]
        if at_eof:
            return
