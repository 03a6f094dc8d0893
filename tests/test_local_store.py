"""The local store and its operations (add, restore, verify, rm, gc, the announce queue)
through a real LMDB store."""

from __future__ import annotations

import io
import os
import stat
import threading
from pathlib import Path

import pytest

import chunkstore
from chunkstore.errors import CorruptChunk, InputError, NotFound
from chunkstore.local.add import add_file
from chunkstore.local.store import Store
from chunkstore.local.verify import verify_store
from chunkstore.objects.chunking import ChunkerParams
from tests.helpers import MIB, TEXT, corrupt_stored_chunk, file_hash, write_file


@pytest.fixture
def store(home: Path):
    with Store(home) as s:
        yield s


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * MIB + 17])
def test_round_trip_small_sizes(store: Store, tmp_path: Path, size: int) -> None:
    src = write_file(tmp_path / "in", size, seed=size)
    result = add_file(store, src)
    out = tmp_path / "out"
    chunkstore.get(result.name, out, home=store)
    assert out.read_bytes() == src.read_bytes()
    assert result.size == size


def test_round_trip_exactly_one_chunk(store: Store, tmp_path: Path) -> None:
    src = write_file(tmp_path / "one", MIB)
    result = add_file(store, src, chunker=ChunkerParams.fixed(MIB))
    assert result.chunks == 1
    chunkstore.get(result.manifest_id, tmp_path / "out", home=store)
    assert (tmp_path / "out").read_bytes() == src.read_bytes()


def test_adding_twice_stores_nothing_new(store: Store, tmp_path: Path) -> None:
    src = write_file(tmp_path / "f", 12 * MIB, content=TEXT)
    first = add_file(store, src)
    second = add_file(store, src)
    assert first.new_chunks == first.chunks > 1
    assert second.new_chunks == 0 and second.stored_bytes == 0
    assert second.manifest_id == first.manifest_id


def test_insertion_in_the_middle_stores_few_new_chunks(store: Store, tmp_path: Path) -> None:
    src = write_file(tmp_path / "a", 32 * MIB, seed=1)
    data = src.read_bytes()
    edited = tmp_path / "b"
    edited.write_bytes(
        data[: 16 * MIB] + write_file(tmp_path / "ins", MIB, seed=2).read_bytes() + data[16 * MIB :]
    )
    first = add_file(store, src)
    second = add_file(store, edited, name="b")
    # 1 MiB of new data spans ~1 chunk, plus the chunks cut across each boundary.
    assert second.new_chunks <= 4, second
    assert second.dedup_chunks >= first.chunks - 3


def test_fixed_chunker_loses_dedup_on_insertion(store: Store, tmp_path: Path) -> None:
    # The reason content-defined chunking is the default: fixed blocks shift.
    src = write_file(tmp_path / "a", 8 * MIB, seed=1)
    edited = tmp_path / "b"
    edited.write_bytes(b"x" + src.read_bytes())
    add_file(store, src, chunker=ChunkerParams.fixed(MIB))
    assert add_file(store, edited, chunker=ChunkerParams.fixed(MIB)).dedup_chunks == 0


def test_compressible_data_is_stored_smaller(store: Store, tmp_path: Path) -> None:
    result = add_file(store, write_file(tmp_path / "t", 8 * MIB, content=TEXT))
    assert result.stored_bytes < result.size * 0.7


def test_get_to_stream(store: Store, tmp_path: Path) -> None:
    src = write_file(tmp_path / "s", 2 * MIB)
    add_file(store, src)
    sink = io.BytesIO()
    chunkstore.get("s", sink, home=store)
    assert sink.getvalue() == src.read_bytes()


def test_unknown_name(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        chunkstore.get("nope", tmp_path / "out", home=store)
    with pytest.raises(NotFound):
        chunkstore.get("ab" * 32, tmp_path / "out", home=store)


def test_existing_output_refused_unless_forced(store: Store, tmp_path: Path) -> None:
    src = write_file(tmp_path / "s", 1000)
    add_file(store, src)
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match="exists"):
        chunkstore.get("s", out, home=store)
    assert out.read_bytes() == b"precious"
    chunkstore.get("s", out, force=True, home=store)
    assert out.read_bytes() == src.read_bytes()


def test_corrupt_chunk_fails_get_without_partial_output(store: Store, tmp_path: Path) -> None:
    src = write_file(tmp_path / "c", 6 * MIB)
    result = add_file(store, src, chunker=ChunkerParams.fixed(MIB))
    _, manifest = store.resolve("c")
    bad = manifest.chunks[3].chunk_id
    corrupt_stored_chunk(store, bad)
    with pytest.raises(CorruptChunk, match=bad.hex()):
        chunkstore.get(result.name, tmp_path / "out", home=store)
    assert list(tmp_path.glob("*out*")) == []  # nothing under the final name, no temp left
    report = verify_store(store)
    assert report.corrupt == [bad.hex()] and not report.ok
    assert verify_store(store, "c").corrupt == [bad.hex()]


def test_rm_and_gc_free_only_unreferenced_chunks(store: Store, tmp_path: Path) -> None:
    a = write_file(tmp_path / "a", 4 * MIB, seed=1)
    b = write_file(tmp_path / "b", 4 * MIB, seed=2)
    add_file(store, a, chunker=ChunkerParams.fixed(MIB))
    add_file(store, b, chunker=ChunkerParams.fixed(MIB))
    store.remove_name("a")
    result = store.gc()
    assert result.chunks_deleted == 4 and result.bytes_freed > 4 * MIB
    assert verify_store(store).ok
    chunkstore.get("b", tmp_path / "b2", home=store)
    assert file_hash(tmp_path / "b2") == file_hash(b)
    assert store.gc().chunks_deleted == 0


def test_bad_inputs(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        add_file(store, tmp_path / "missing")
    with pytest.raises(InputError, match="directory"):
        add_file(store, tmp_path)
    secret = write_file(tmp_path / "secret", 10)
    secret.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(InputError, match="cannot read"):
            add_file(store, secret)


def test_output_to_a_device_writes_through_it(store: Store, tmp_path: Path) -> None:
    # Renaming a temporary file over /dev/null would replace the device with a file.
    src = write_file(tmp_path / "d", 2 * MIB)
    add_file(store, src)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = bytearray()

    def drain() -> None:
        with open(fifo, "rb") as f:
            while block := f.read(MIB):
                received.extend(block)

    reader = threading.Thread(target=drain)
    reader.start()
    chunkstore.get("d", fifo, home=store)  # no --force needed, as with cp
    reader.join(10)
    assert bytes(received) == src.read_bytes()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    chunkstore.get("d", Path(os.devnull), home=store)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_announce_queue_gives_manifests_first_and_drains(store: Store, tmp_path: Path) -> None:
    result = add_file(store, write_file(tmp_path / "q", 3 * MIB), chunker=ChunkerParams.fixed(MIB))
    first = store.pending_announces(2)
    assert first[0] == (bytes.fromhex(result.manifest_id), b"m") and first[1][1] == b"c"
    everything = store.pending_announces(100)
    assert len(everything) == 1 + 3 and sorted(store.chunk_ids()) == sorted(
        oid for oid, kind in everything if kind == b"c"
    )
    store.ack_announces(everything)
    assert store.pending_announces(100) == []


def test_a_manifest_is_complete_only_once_every_chunk_is_stored(
    store: Store, home: Path, tmp_path: Path
) -> None:
    whole = add_file(
        store, write_file(tmp_path / "whole", 3 * MIB), chunker=ChunkerParams.fixed(MIB)
    )
    whole_id = bytes.fromhex(whole.manifest_id)
    assert store.is_complete(whole_id) and store.complete_manifests() == [whole_id]
    # a DHT key is the first 20 bytes of an id: the store answers for prefixes
    assert store.holds(whole_id[:20])
    assert all(store.holds(cid[:20]) for cid in store.chunk_ids())
    assert not store.holds(os.urandom(20))

    # a download in progress: the manifest first (announce=False), then some of its chunks
    with Store(tmp_path / "origin") as origin:
        add_file(
            origin, write_file(tmp_path / "part", 3 * MIB, seed=9), chunker=ChunkerParams.fixed(MIB)
        )
        ((part_id, manifest),) = origin.iter_manifests()
        refs = manifest.chunks
        store.put_manifest(manifest, pin=True, announce=False)
        store.put_chunks([(refs[0].chunk_id, origin.get_stored(refs[0].chunk_id))])
        assert not store.is_complete(part_id) and not store.holds(part_id[:20])
        assert store.holds(refs[0].chunk_id[:20]) and not store.holds(refs[1].chunk_id[:20])
        # announce=True with chunks missing neither records nor queues it
        store.put_manifest(manifest, name="part", pin=True)
        assert not store.is_complete(part_id)
        assert (part_id, b"m") not in store.pending_announces(100)
        # the last chunks arrive; the download's final put_manifest completes it
        store.put_chunks([(r.chunk_id, origin.get_stored(r.chunk_id)) for r in refs[1:]])
        store.put_manifest(manifest, name="part", pin=True)
    assert store.is_complete(part_id) and store.holds(part_id[:20])
    assert (part_id, b"m") in store.pending_announces(100)
    # rm drops the record with the manifest (a pin keeps both)
    store.remove_name(whole.name)
    assert not store.is_complete(whole_id) and store.complete_manifests() == [part_id]


def test_complete_manifests_are_recorded_for_a_store_made_before_the_table(
    store: Store, tmp_path: Path
) -> None:
    whole = add_file(
        store, write_file(tmp_path / "whole", 2 * MIB), chunker=ChunkerParams.fixed(MIB)
    )
    partial = add_file(
        store, write_file(tmp_path / "partial", 2 * MIB, seed=3), chunker=ChunkerParams.fixed(MIB)
    )
    whole_id, partial_id = bytes.fromhex(whole.manifest_id), bytes.fromhex(partial.manifest_id)
    _, manifest = store.resolve(partial.name)
    lost = manifest.chunks[0].chunk_id

    def as_an_old_store(txn) -> None:  # no `complete` records, and a chunk gone
        txn.drop(store._complete, delete=False)
        txn.delete(lost, db=store._chunks)
        txn.delete(lost, db=store._index)

    store._transact(as_an_old_store)
    assert store.complete_manifests() == []
    assert store.record_complete_manifests() == 1
    assert store.complete_manifests() == [whole_id]
    assert not store.is_complete(partial_id)
    assert store.record_complete_manifests() == 0  # nothing new: idempotent


def test_outputs_get_the_usual_mode_and_bad_names_are_input_errors(
    store: Store, tmp_path: Path
) -> None:
    src = write_file(tmp_path / "m.bin", 1000, seed=11)
    add_file(store, src, name="m")
    old = os.umask(0o022)
    try:
        chunkstore.get("m", tmp_path / "out.bin", home=store)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.bin").st_mode) == 0o644
    with pytest.raises(InputError, match="valid Unicode"):
        add_file(store, src, name="bad\udcff")
