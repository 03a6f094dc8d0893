"""Leases: one per operation, live while its flock is held, honoured by gc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chunkstore.local.add import add_file
from chunkstore.local.leases import LEASES_DIR, LeaseScan, gc_exclusive
from chunkstore.local.store import Store
from chunkstore.objects.chunking import ChunkerParams
from tests.helpers import MIB, write_file

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def garbage(home: Path, tmp_path: Path):
    """A store holding the chunks of a removed 3-chunk file (nothing holds them) and the
    chunk ids, in file order."""
    with Store(home) as store:
        add_file(
            store, write_file(tmp_path / "f", 3 * MIB, seed=8), chunker=ChunkerParams.fixed(MIB)
        )
        manifest = store.get_manifest(store.lookup_name("f"))
        store.remove_name("f")
        yield store, [r.chunk_id for r in manifest.chunks]


def test_two_leases_in_one_process_are_independent(garbage):
    store, ids = garbage
    first, second = store.lease(), store.lease()
    assert store.keep_chunk(first, ids[0]) and store.keep_chunk(second, ids[1])
    assert store.gc(compact=False).chunks_deleted == 1  # only ids[2]: nothing covers it
    first.release()
    # the end of one lease ends nothing of the other
    assert store.gc(compact=False).chunks_deleted == 1
    assert store.chunk_ids() == [ids[1]]
    second.release()
    assert store.gc(compact=False).chunks_deleted == 1
    assert store.chunk_ids() == [] and os.listdir(store.home / LEASES_DIR) == []


def test_a_lease_covering_a_manifest_keeps_all_its_chunks(home: Path, tmp_path: Path):
    with Store(home) as store:
        added = add_file(
            store, write_file(tmp_path / "f", 3 * MIB), chunker=ChunkerParams.fixed(MIB)
        )
        mid = bytes.fromhex(added.manifest_id)
        with store.lease() as lease:
            assert store.keep_file(lease, mid) is not None
            store.remove_name("f")
            # released, but a live lease covers it: the manifest stays until the lease ends
            assert store.get_manifest(mid) is not None and not store.is_complete(mid)
            assert store.gc(compact=False).chunks_deleted == 0
        result = store.gc(compact=False)
        assert (result.chunks_deleted, result.manifests_dropped) == (3, 1)
        assert store.get_manifest(mid) is None


def test_a_lease_whose_process_is_killed_stops_holding_at_once(garbage):
    store, ids = garbage
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from chunkstore.local.store import Store\n"
            "store = Store(sys.argv[1]); lease = store.lease()\n"
            "assert store.keep_chunk(lease, bytes.fromhex(sys.argv[2]))\n"
            "print('held', flush=True); sys.stdin.read()\n",
            str(store.home),
            ids[0].hex(),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        assert store.gc(compact=False).chunks_deleted == 2
        assert store.chunk_ids() == [ids[0]]
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        # no wait, no pid check: the kernel dropped its flock with the process
        result = store.gc(compact=False)
        assert result.chunks_deleted == 1 and store.chunk_ids() == []
        assert os.listdir(store.home / LEASES_DIR) == []  # its file was cleaned up
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_an_add_does_not_rely_on_a_chunk_while_a_gc_runs(garbage):
    store, ids = garbage
    with store.lease() as lease:
        with gc_exclusive(store.home, wait=False) as alone:
            assert alone
            # a gc is running: the add stores the chunk again rather than count on it
            assert not store.keep_chunk(lease, ids[0])
            with gc_exclusive(store.home, wait=False) as second:
                assert not second  # and a second gc is refused meanwhile
        assert store.keep_chunk(lease, ids[0])


def test_lease_scan_reads_only_whole_new_records(garbage):
    store, ids = garbage
    scan = LeaseScan(store.home)
    with store.lease() as lease:
        lease.cover(b"c", ids[:2])
        assert scan.read() == ({ids[0], ids[1]}, set())
        lease.cover(b"m", ids[2:])
        assert scan.read() == (set(), {ids[2]})
        with open(lease.path, "ab") as f:
            f.write(b"c" + ids[0][:10])  # a record being written
        assert scan.read() == (set(), set())
    assert scan.read() == (set(), set())
