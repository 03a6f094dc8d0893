"""gc: frees what nothing holds, never what a running operation needs, in bounded
transactions, and gives the space back to the filesystem."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import blake3
import pytest

import chunkstore
import chunkstore.local.store as store_module
from chunkstore.errors import ChunkstoreError
from chunkstore.local.add import add_file
from chunkstore.local.leases import Lease, only_gc
from chunkstore.local.store import Store
from chunkstore.local.verify import verify_store
from chunkstore.objects.chunking import ChunkerParams
from tests.helpers import MIB, TEXT, file_hash, write_file

pytestmark = pytest.mark.timeout(120)
FIXED = ChunkerParams.fixed(MIB)


@pytest.mark.slow
def test_gc_during_a_slow_streaming_get_leaves_the_reader_a_whole_file(home, tmp_path):
    src = write_file(tmp_path / "f", 24 * MIB, seed=2, content=TEXT)
    with Store(home) as store:
        add_file(store, src, chunker=FIXED)
    reader = subprocess.Popen(
        [sys.executable, "-m", "chunkstore_cli", "get", "f", "-o", "-", "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        digest = blake3.blake3()
        first = reader.stdout.read(64 * 1024)  # the get is restoring: the pipe holds it back
        digest.update(first)
        chunkstore.rm("f", home=home)
        during = chunkstore.gc(home=home)
        assert during.chunks_deleted == 0  # its lease covers every chunk of the file
        while block := reader.stdout.read(MIB):  # the rest, read slowly after the gc
            digest.update(block)
        assert reader.wait() == 0, reader.stderr.read()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert digest.hexdigest() == file_hash(src)
    after = chunkstore.gc(home=home)
    assert after.chunks_deleted == 24 and after.compacted
    assert after.store_bytes_after < after.store_bytes_before // 10


def test_gc_during_an_add_keeps_the_chunks_the_add_reuses(home, tmp_path):
    src = write_file(tmp_path / "f", 6 * MIB, seed=3)
    with Store(home) as store:
        add_file(store, src, chunker=FIXED)
        store.remove_name("f")  # its chunks are garbage, which the next add reuses
        results = []

        def progress(n: int) -> None:
            if not results:  # once, mid-add
                results.append(store.gc(compact=False))

        added = add_file(store, src, chunker=FIXED, progress=progress)
        # The chunks the add had reached were kept (its lease covers them); those it had
        # not reached were garbage then, so gc freed them and the add stored them again.
        freed = results[0].chunks_deleted
        assert freed < 6 and added.new_chunks == freed
        assert verify_store(store).ok
        chunkstore.get("f", tmp_path / "back", home=store)
        assert file_hash(tmp_path / "back") == file_hash(src)


def test_gc_sweeps_in_batches_and_marks_a_manifest_stored_meanwhile(home, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "SWEEP_BATCH", 2)
    keep = write_file(tmp_path / "keep", 3 * MIB, seed=4)
    late = write_file(tmp_path / "late", 4 * MIB, seed=5)
    with Store(home) as store:
        add_file(store, keep, chunker=FIXED)
        add_file(store, late, chunker=FIXED)
        manifest = store.get_manifest(store.lookup_name("late"))
        store.remove_name("late")
        write_file(tmp_path / "gone", 5 * MIB, seed=6)
        add_file(store, tmp_path / "gone", chunker=FIXED)
        store.remove_name("gone")
        candidates = store_module._Sweep._candidates
        calls = []

        def candidates_then_store(sweep, after):
            found = candidates(sweep, after)
            calls.append(after)
            if len(calls) == 1:
                # another process stores a manifest of garbage chunks mid-sweep (an add
                # that found them all stored)
                store.put_manifest(manifest, name="late")
            return found

        monkeypatch.setattr(store_module._Sweep, "_candidates", candidates_then_store)
        result = store.gc(compact=False)
        assert result.chunks_deleted == 5 and len(calls) > 6  # batches of two
        assert verify_store(store).ok
        for name, src in (("keep", keep), ("late", late)):
            chunkstore.get(name, tmp_path / f"{name}.out", home=store)
            assert file_hash(tmp_path / f"{name}.out") == file_hash(src)


def test_gc_skips_and_reports_a_manifest_it_cannot_decode(home, tmp_path):
    with Store(home) as store:
        add_file(store, write_file(tmp_path / "a", 2 * MIB, seed=7), chunker=FIXED)
        add_file(store, write_file(tmp_path / "b", 2 * MIB, seed=8), chunker=FIXED)
        store.remove_name("b")
        bad = bytes(range(32))
        store._transact(lambda txn: txn.put(bad, b"\x99not a manifest", db=store._manifests))
        store.pin(bad)
        result = store.gc(compact=False)
        assert result.undecodable == [bad.hex()] and result.chunks_deleted == 2
        assert verify_store(store, "a").ok


def test_compaction_waits_for_the_store_to_be_open_nowhere_else(home, tmp_path):
    with Store(home) as store:
        add_file(store, write_file(tmp_path / "a", 8 * MIB, seed=9), chunker=FIXED)
        store.remove_name("a")
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom chunkstore.local.store import Store\n"
            "s = Store(sys.argv[1]); print('open', flush=True); sys.stdin.read()",
            str(home),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert other.stdout.readline() == b"open\n"
        refused = chunkstore.gc(home=home, compact=True)
        assert refused.chunks_deleted == 8 and not refused.compacted
        assert "another process has the store open" in refused.compact_note
        assert refused.store_bytes_after >= 8 * MIB  # freed inside the file only
        other.stdin.close()
        assert other.wait() == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    done = chunkstore.gc(home=home)  # alone now: compacted without asking
    assert done.compacted and done.store_bytes_after < MIB
    assert (home / "store" / "data.mdb").stat().st_size == done.store_bytes_after
    with Store(home) as store:
        assert store.chunk_ids() == [] and verify_store(store).ok
        add_file(store, tmp_path / "a", chunker=FIXED)  # the compacted store works as before
        assert verify_store(store).ok


def test_the_same_process_compacts_only_through_its_only_handle(home: Path, tmp_path):
    with Store(home) as store:
        add_file(store, write_file(tmp_path / "a", 4 * MIB, seed=10), chunker=FIXED)
        store.remove_name("a")
        with Store(home) as second:
            result = second.gc(compact=True)
            assert not result.compacted and "elsewhere in this process" in result.compact_note
        result = store.gc(compact=True)
        assert result.compacted and result.store_bytes_after < MIB
        assert store.names() == [] and store.chunk_ids() == []  # the handle works on


def test_a_gc_waits_out_a_look_at_the_store_and_refuses_only_a_second_gc(home):
    # An add holds gc.lock shared for a moment per chunk it checks; a gc meeting that used to
    # fail "another gc is running" (seen in CI). It waits it out; a second gc is refused.
    with Store(home) as store, Lease(home) as lease:
        outcome: list[object] = []
        with lease.no_gc_running(wait=True):
            sweeper = threading.Thread(target=lambda: outcome.append(store.gc(compact=False)))
            sweeper.start()
            sweeper.join(0.3)
            assert sweeper.is_alive() and outcome == []  # waiting for the look to end
        sweeper.join(10)
        assert len(outcome) == 1 and outcome[0].chunks_deleted == 0
        with only_gc(home) as alone:
            assert alone
            with pytest.raises(ChunkstoreError, match="another gc is running"):
                store.gc()
