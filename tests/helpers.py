"""Test helpers: generated files, hashing, and running the real CLI as a user does."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import blake3

MIB = 1024 * 1024


def write_file(path: Path, size: int, *, seed: int = 0, text: bool = False) -> Path:
    """A deterministic file of `size` bytes, written in blocks (never all in memory)."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(500)]
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            if text:
                block = b" ".join(rng.choices(words, k=n // 4))[:n]
                block += b"x" * (n - len(block))
            else:
                block = rng.randbytes(n)
            f.write(block)
            left -= n
    return path


def file_hash(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def run_cli(*args: str, home: Path | None = None, input: bytes | None = None,
            check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `chunkstore ARGS` as a separate process, the way a user does."""
    cmd = [sys.executable, "-m", "chunkstore_cli", *args]
    if home is not None:
        cmd += ["--home", str(home)]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


def corrupt_stored_chunk(store, chunk_id: bytes) -> None:
    """Flip one byte of a chunk's stored form in place, as disk rot would."""
    stored = bytearray(store.get_stored(chunk_id))
    stored[len(stored) // 2] ^= 0x55
    store._transact(lambda txn: txn.put(chunk_id, bytes(stored), db=store._chunks))
