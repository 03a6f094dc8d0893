"""Test helpers: generated files, hashing, waiting on conditions, and running the real CLI."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from chunkstore.demo.sample_files import RANDOM, TEXT, file_digest, write_sample_file

MIB = 1024 * 1024
T = TypeVar("T")

__all__ = [
    "MIB",
    "RANDOM",
    "TEXT",
    "corrupt_stored_chunk",
    "file_hash",
    "run_cli",
    "wait_until",
    "wait_until_async",
    "write_file",
]


def write_file(path: Path, size: int, *, seed: int = 0, content: str = RANDOM) -> Path:
    """A deterministic file of `size` bytes (the library's sample generator): RANDOM is
    incompressible (stored raw), TEXT is Zipf word text (zstd keeps about a quarter)."""
    write_sample_file(path, size, seed=seed, content=content)
    return path


def file_hash(path: Path) -> str:
    """The BLAKE3 (hex) of a file's bytes."""
    return file_digest(path)


def wait_until(
    condition: Callable[[], T], what: str, *, timeout: float = 30.0, interval: float = 0.02
) -> T:
    """Poll `condition()` until it returns something true, and return that; fail naming
    `what` if it has not happened within `timeout` seconds (a deadline, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], T | Awaitable[T]],
    what: str,
    *,
    timeout: float = 30.0,
    interval: float = 0.02,
) -> T:
    """`wait_until` inside an event loop: `condition` may be a plain or an async function,
    and the loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def run_cli(
    *args: str,
    home: Path | None = None,
    input: bytes | None = None,
    check: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
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


def publisher(seed: int = 0):
    """A publisher identity made from `seed` (the same seed, the same key)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from chunkstore.local.identity import Identity
    from chunkstore.objects.name_record import public_key_of

    key = Ed25519PrivateKey.from_private_bytes(bytes([seed % 256]) * 32)
    return Identity(key, public_key_of(key))


def signed_record(
    name: str,
    manifest_id: str | bytes | None,
    *,
    seed: int = 0,
    seq: int = 1,
    expires: float | None = None,
):
    """`name` -> `manifest_id` (hex or bytes; None: a removal), signed by `publisher(seed)`,
    valid for a day unless `expires` says otherwise."""
    mid = bytes.fromhex(manifest_id) if isinstance(manifest_id, str) else manifest_id
    when = time.time() + 86400 if expires is None else expires
    return publisher(seed).sign(name, mid, seq, int(when))


def name_records_seen(api_url: str, name: str) -> dict[str, str]:
    """publisher key -> manifest id hex ("" for a removal) of the records of `name` that the
    node with local API `api_url` finds in the DHT (each checked here again)."""
    import urllib.parse

    from chunkstore.net.node_file import api_get_json
    from chunkstore.objects.name_record import NameRecord

    data = api_get_json(api_url, f"/dht/names/{urllib.parse.quote(name, safe='')}")
    found = {}
    for item in data["records"]:
        record = NameRecord.decode(bytes.fromhex(item))
        found[record.publisher_text] = record.manifest_id.hex() if record.manifest_id else ""
    return found


def reset_peak_rss() -> None:
    """Start this process's peak RSS (VmHWM) over from its current RSS (Linux 4.0+), so a
    test measures its own peak, not one an earlier test in the same pytest process reached.
    (ru_maxrss cannot be reset, and a child even inherits it from its parent across exec.)"""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib() -> float:
    """This process's peak RSS since it started or since `reset_peak_rss`, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def port_free_for_tcp_and_udp(host: str = "127.0.0.1") -> int:
    """A port nothing uses on `host`, neither TCP nor UDP (free when checked: a node binds
    both to one port, or a test names an address where nothing answers)."""
    for _ in range(20):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for both TCP and UDP")
