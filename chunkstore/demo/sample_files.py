"""Deterministic sample files for the demo, the benchmarks and the tests.

One generator, three kinds of content:
- "random": incompressible bytes, like media or archives (stored raw);
- "text": word text whose word frequencies follow Zipf's law, as natural text does
  (zstd -3 keeps about a quarter of it);
- "mixed": the first half random, the second half text.
The same (size, seed, content) gives the same bytes on every machine and Python version.
Files are written in 4 MiB blocks, so any size streams through bounded memory.
"""

from __future__ import annotations

import itertools
import random
from array import array
from operator import itemgetter
from pathlib import Path

import blake3

MIB = 1024 * 1024
BLOCK = 4 * MIB
RANDOM = "random"
TEXT = "text"
MIXED = "mixed"
CONTENTS = (MIXED, RANDOM, TEXT)


def _word_table(rng: random.Random) -> list[bytes]:
    """65536 word tokens whose frequencies follow Zipf's law.

    Words are built from syllables so they look word-like (shared prefixes and suffixes give
    zstd's matcher something to find, as in real text), and a few punctuation and newline
    tokens break the stream into sentences and lines. Drawing uniformly from this table gives
    the Zipf distribution without a per-word bisect (~90 MB/s in Python)."""
    syllables = [
        "ka",
        "ro",
        "mi",
        "ten",
        "sa",
        "lu",
        "de",
        "vor",
        "in",
        "ex",
        "pre",
        "ta",
        "no",
        "le",
        "qu",
        "is",
        "an",
        "ber",
        "cho",
        "ul",
        "ment",
        "ing",
        "er",
        "ly",
        "st",
        "ph",
        "ou",
        "ai",
    ]
    lengths = (1, 1, 2, 2, 2, 3, 3, 4)  # syllables per word
    words: set[str] = set()
    while len(words) < 8000:
        words.add("".join(rng.choice(syllables) for _ in range(rng.choice(lengths))))
    vocab = sorted(words)  # sorted: set order depends on the hash seed, the output must not
    rng.shuffle(vocab)
    tokens = [w.encode() for w in vocab] + [b"the", b"and", b"of", b",", b".", b".\n"]
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))] + [1.0, 0.6, 0.5, 0.3, 0.3, 0.15]
    return rng.choices(tokens, cum_weights=list(itertools.accumulate(weights)), k=65536)


def _text_block(rng: random.Random, table: list[bytes], size: int) -> bytes:
    """`size` bytes of text: tokens drawn uniformly from `table` with 16-bit random indices."""
    parts: list[bytes] = []
    have = 0
    while have < size:
        idx = array("H")
        idx.frombytes(rng.randbytes(2 * 65536))
        part = b" ".join(itemgetter(*idx)(table))
        parts.append(part)
        have += len(part) + 1
    return b" ".join(parts)[:size]


def write_sample_file(path: str | Path, size: int, *, seed: int = 0, content: str = MIXED) -> str:
    """Write `size` deterministic bytes of `content` to `path`; returns their BLAKE3 (hex),
    computed on the way, so checking a copy needs no extra pass over the original."""
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {', '.join(CONTENTS)}, not {content!r}")
    rng = random.Random(seed)
    table = _word_table(rng) if content != RANDOM else []
    text_from = {RANDOM: size, TEXT: 0, MIXED: size // 2}[content]
    digest = blake3.blake3()
    written = 0
    with open(path, "wb") as f:
        while written < size:
            if written < text_from:
                block = rng.randbytes(min(BLOCK, text_from - written))
            else:
                block = _text_block(rng, table, min(BLOCK, size - written))
            f.write(block)
            digest.update(block)
            written += len(block)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """The BLAKE3 (hex) of a file's bytes, read in blocks (never mapped: mapped pages would
    count in a benchmark's RSS figures)."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buf = bytearray(BLOCK)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()
