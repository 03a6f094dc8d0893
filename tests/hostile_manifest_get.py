"""Run as a script by test_hostile_data: a get of a hostile manifest in a process of its own,
so that its peak RSS is the download's. Prints one JSON line.

A holder on 127.0.0.1 serves a manifest of N chunks of 1 MiB each (N MiB declared) and
answers every chunk request with a stored form that does not verify. The get must fail with
MissingChunks, in bounded memory, never growing the output past the bytes verified (none).

The hostile store is built by a first process ("build"), so that building a manifest of N
entries does not count in the peak RSS of the process that runs the get ("get").

Usage: python -m tests.hostile_manifest_get build DIR CHUNKS
       python -m tests.hostile_manifest_get get DIR
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import msgpack

from chunkstore.errors import ChunkstoreError
from chunkstore.local.store import Store
from chunkstore.net.download import fetch_file
from chunkstore.net.providers import Holder
from chunkstore.net.transfer_client import TransferClient
from chunkstore.net.transfer_server import TransferServer
from chunkstore.objects.ids import object_id
from chunkstore.objects.manifest import FORMAT_VERSION, MAGIC, Manifest
from tests.helpers import peak_rss_mib

MIB = 1 << 20


class OneHolderLookup:
    """Every object is held by one holder; no names."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder

    async def find_name_records(self, name: str) -> list:
        return []

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        return [self.holder]


def build_hostile_store(home: Path, chunks: int) -> None:
    entries = [[object_id(i.to_bytes(8, "big")), MIB] for i in range(chunks)]
    chunker = ["fastcdc", MIB, 256 * 1024, 4 * MIB]
    data = msgpack.packb([MAGIC, FORMAT_VERSION, chunks * MIB, chunker, entries])
    manifest = Manifest.from_bytes(data)
    store = Store(home)
    store.put_manifest(manifest, name="hostile.bin")
    ids = [ref.chunk_id for ref in manifest.chunks]
    store._transact(lambda txn: [txn.put(cid, b"\x00lies", db=store._chunks) for cid in ids])
    store.close()


async def main(work: Path) -> dict:
    hostile = Store(work / "hostile")
    _, manifest = hostile.resolve("hostile.bin")
    manifest_id = manifest.id.hex()
    server = TransferServer(hostile)
    await server.start("127.0.0.1", 0)
    out_dir = work / "out"
    out_dir.mkdir()
    largest = 0
    downloading = True

    async def watch_outputs() -> None:
        nonlocal largest
        while downloading:
            for path in out_dir.iterdir():
                largest = max(largest, path.stat().st_size)
            await asyncio.sleep(0.02)

    victim = Store(work / "victim")
    rss_before = peak_rss_mib()
    cpu_before = time.process_time()
    watcher = asyncio.create_task(watch_outputs())
    error = None
    try:
        async with TransferClient() as client:
            lookup = OneHolderLookup(Holder("127.0.0.1", server.port))
            await fetch_file(victim, lookup, client, manifest_id, out_dir / "hostile.bin")
    except ChunkstoreError as e:
        error = type(e).__name__
    finally:
        downloading = False
        await watcher
        await server.stop()
        hostile.close()
        victim.close()
    return {
        "error": error,
        "rss_before_mib": rss_before,
        "rss_peak_mib": peak_rss_mib(),
        "cpu_seconds": time.process_time() - cpu_before,
        "largest_output": largest,
        "outputs_left": sorted(p.name for p in out_dir.iterdir()),
        "requests_served": server.requests_served,
    }


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build_hostile_store(Path(sys.argv[2]) / "hostile", int(sys.argv[3]))
    else:
        print(json.dumps(asyncio.run(main(Path(sys.argv[2])))))
