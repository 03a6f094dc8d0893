"""What holds a file in the store: names (fetched files as added ones), pins, downloads in
progress; `rm NAME`, `rm ID`, `unpin` release it, and `gc` then gives the space back.

Network gets run in this process: `fetch_file` with a fake Lookup and real TransferServers
on 127.0.0.1 (as in test_download), every server stopped at the end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import chunkstore
from chunkstore.errors import InputError, MissingChunks, NotFound
from chunkstore.local.add import add_file
from chunkstore.local.store import Store
from chunkstore.local.verify import verify_store
from chunkstore.net.download import fetch_file
from chunkstore.net.transfer_client import TransferClient
from chunkstore.objects.chunking import ChunkerParams
from tests.helpers import MIB, run_cli, write_file
from tests.test_download import (
    CHUNK,
    NAME,
    SIZE,
    FakeLookup,
    holder_of,
    manifest_of,
    partial_copy,
    serving,
)

pytestmark = pytest.mark.timeout(60)
pytest_plugins = ["tests.test_download"]  # its fixtures: src, make_store


def held(store: Store) -> tuple[list[str], list[bytes], list[tuple[bytes, str]]]:
    """(names, pins, downloads) of a store."""
    return [n for n, _ in store.names()], store.pins(), store.downloads()


def fetch(store: Store, holders: list, what: str, out: Path | None, names=None):
    async def main():
        async with serving(*holders) as servers, TransferClient() as client:
            lookup = FakeLookup([holder_of(s) for s in servers], names)
            return await fetch_file(store, lookup, client, what, out)

    return asyncio.run(main())


def test_a_fetched_file_is_held_by_its_name_and_freed_by_rm_and_gc(src, make_store, tmp_path):
    holder = make_store("holder")
    fetcher = make_store("fetcher", with_file=False)
    manifest = manifest_of(holder)
    mid = manifest.id
    fetch(fetcher, [holder], NAME, tmp_path / "out.bin", {NAME: mid.hex()})
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    # held by its name, exactly like an added file: no pin, no download entry left
    assert held(fetcher) == ([NAME], [], [])
    assert fetcher.is_complete(mid) and fetcher.holds(mid[:20])

    before = fetcher.file_bytes()
    assert before > SIZE
    removed = chunkstore.rm(NAME, home=fetcher)
    assert (removed.manifest_id, removed.still_held) == (mid.hex(), "")
    # released: the node neither announces nor serves it as a file any more
    assert fetcher.get_manifest_bytes(mid) is None and not fetcher.holds(mid[:20])
    assert (mid, b"m") not in fetcher.pending_announces(100)

    result = chunkstore.gc(home=fetcher)
    assert result.chunks_deleted == SIZE // CHUNK and result.bytes_freed >= SIZE
    assert result.compacted and result.store_bytes_before >= before  # rm wrote a page or two
    # the store's size on disk drops by the file (random data: stored raw)
    assert fetcher.file_bytes() == result.store_bytes_after < before - SIZE
    assert fetcher.chunk_ids() == [] and verify_store(fetcher).ok


def test_a_get_by_id_is_pinned_and_rm_id_releases_it(src, make_store, tmp_path):
    holder = make_store("holder")
    fetcher = make_store("fetcher", with_file=False)
    mid = manifest_of(holder).id
    fetch(fetcher, [holder], mid.hex(), None)
    # no name to hold it: a pin does, and the file stays through gc
    assert held(fetcher) == ([], [mid], [])
    assert chunkstore.gc(home=fetcher, compact=False).chunks_deleted == 0
    assert [f.manifest_id for f in chunkstore.pins(home=fetcher)] == [mid.hex()]

    chunkstore.rm(mid.hex(), home=fetcher)
    assert held(fetcher) == ([], [], [])
    assert chunkstore.gc(home=fetcher, compact=False).chunks_deleted == SIZE // CHUNK
    with pytest.raises(NotFound):
        chunkstore.rm(mid.hex(), home=fetcher)


def test_a_failed_download_is_listed_and_removable(src, make_store, tmp_path):
    complete = make_store("complete")
    partial = make_store("partial", with_file=False)
    fetcher = make_store("fetcher", with_file=False)
    manifest = manifest_of(complete)
    mid = manifest.id
    partial_copy(complete, partial, {manifest.chunks[3].chunk_id})
    with pytest.raises(MissingChunks):
        fetch(fetcher, [partial], NAME, tmp_path / "out.bin", {NAME: mid.hex()})

    # listed as incomplete, by the name it was asked for; not among the named files
    assert chunkstore.ls(home=fetcher) == []
    (entry,) = chunkstore.ls(home=fetcher, incomplete=True)
    assert (entry.name, entry.manifest_id, entry.held_by) == (NAME, mid.hex(), "download")
    assert (entry.chunks_present, entry.chunks) == (SIZE // CHUNK - 1, SIZE // CHUNK)
    # kept through gc, so a retry resumes...
    assert chunkstore.gc(home=fetcher, compact=False).chunks_deleted == 0
    # ...and never announced or served as a file
    assert not fetcher.is_complete(mid) and not fetcher.holds(mid[:20])

    removed = chunkstore.rm(NAME, home=fetcher)
    assert removed.manifest_id == mid.hex()
    assert held(fetcher) == ([], [], []) and chunkstore.ls(home=fetcher, incomplete=True) == []
    assert fetcher.get_manifest(mid) is None
    assert chunkstore.gc(home=fetcher, compact=False).chunks_deleted == SIZE // CHUNK - 1
    assert fetcher.chunk_ids() == []


def test_a_resumed_download_ends_held_by_its_name_alone(src, make_store, tmp_path):
    complete = make_store("complete")
    partial = make_store("partial", with_file=False)
    fetcher = make_store("fetcher", with_file=False)
    manifest = manifest_of(complete)
    partial_copy(complete, partial, {manifest.chunks[0].chunk_id})
    names = {NAME: manifest.id.hex()}
    with pytest.raises(MissingChunks):
        fetch(fetcher, [partial], NAME, tmp_path / "out.bin", names)
    fetch(fetcher, [complete], NAME, tmp_path / "out.bin", names)
    assert held(fetcher) == ([NAME], [], [])
    assert chunkstore.ls(home=fetcher, incomplete=True) == []


def test_a_pin_keeps_a_file_its_names_no_longer_hold(home: Path, tmp_path: Path):
    f = write_file(tmp_path / "f", 2 * MIB, seed=4)
    with Store(home) as store:
        added = add_file(store, f, chunker=ChunkerParams.fixed(MIB))
        assert chunkstore.pin("f", home=store).changed
        assert not chunkstore.pin(added.manifest_id, home=store).changed  # already
        removed = chunkstore.rm("f", home=store)
        assert removed.still_held == "pin"
        assert chunkstore.gc(home=store, compact=False).chunks_deleted == 0
        # still readable by its id
        chunkstore.get(added.manifest_id, tmp_path / "back", home=store)
        assert (tmp_path / "back").read_bytes() == f.read_bytes()
        chunkstore.unpin(added.manifest_id, home=store)
        with pytest.raises(InputError, match="not pinned"):
            chunkstore.unpin(added.manifest_id, home=store)
        assert store.get_manifest(bytes.fromhex(added.manifest_id)) is None
        assert chunkstore.gc(home=store, compact=False).chunks_deleted == 2


def test_rm_of_an_id_drops_every_name_of_it(home: Path, tmp_path: Path):
    f = write_file(tmp_path / "f", MIB, seed=5)
    with Store(home) as store:
        added = add_file(store, f, name="one")
        add_file(store, f, name="two")
        removed = chunkstore.rm(added.manifest_id, home=store)
        assert sorted(removed.names) == ["one", "two"] and store.names() == []
        assert store.own_record("one") is None and store.own_record("two") is None


def test_cli_lists_and_removes_incomplete_files_and_pins(home: Path, tmp_path: Path):
    f = write_file(tmp_path / "f", 3 * MIB, seed=6)
    with Store(home) as store:
        added = add_file(store, f, chunker=ChunkerParams.fixed(MIB))
        mid = bytes.fromhex(added.manifest_id)
        manifest = store.get_manifest(mid)
        # as a get interrupted after one chunk: a download entry, one chunk stored
        store.remove_name("f")
        first = manifest.chunks[0].chunk_id
        stored = {c: store.get_stored(c) for c in store.chunk_ids()}
        store.gc(compact=False)
        store.put_chunks([(first, stored[first])])
        store.put_manifest(manifest, announce=False, download="wanted.bin")

    listed = run_cli("ls", "--incomplete", home=home, check=True).stdout.decode()
    assert added.manifest_id[:16] in listed and "1/3 chunks, download  wanted.bin" in listed
    assert run_cli("ls", home=home, check=True).stdout.decode() == ""
    as_json = json.loads(run_cli("ls", "--incomplete", "--json", home=home, check=True).stdout)
    assert [(e["name"], e["chunks_present"]) for e in as_json] == [("wanted.bin", 1)]

    assert run_cli("pin", added.manifest_id, home=home, check=True).returncode == 0
    out = run_cli("rm", "wanted.bin", home=home, check=True).stdout.decode()
    assert f"still pinned: `chunkstore unpin {added.manifest_id}` releases it" in out
    run_cli("unpin", added.manifest_id, home=home, check=True)
    assert run_cli("ls", "--incomplete", home=home, check=True).stdout.decode() == ""
    gc = json.loads(run_cli("gc", "--json", home=home, check=True).stdout)
    assert gc["chunks_deleted"] == 1 and gc["compacted"]
    missing = run_cli("rm", "wanted.bin", home=home)
    assert missing.returncode == 1 and b"no file named 'wanted.bin'" in missing.stderr


def test_pins_of_earlier_versions_become_the_holds_of_now(home: Path, tmp_path: Path):
    from chunkstore.local.store import HOLDS_KEY

    named = write_file(tmp_path / "named", MIB, seed=1)
    by_id = write_file(tmp_path / "by_id", MIB, seed=2)
    cut = write_file(tmp_path / "cut", 2 * MIB, seed=3)
    with Store(home) as store:
        ids = {}
        for path in (named, by_id, cut):
            ids[path.name] = mid = bytes.fromhex(
                add_file(store, path, chunker=ChunkerParams.fixed(MIB)).manifest_id
            )
            store.pin(mid)  # as every network get did
        store.remove_name("by_id")
        cut_manifest = store.get_manifest(ids["cut"])
        store.remove_name("cut")
        store._transact(lambda txn: txn.delete(cut_manifest.chunks[1].chunk_id, db=store._index))
        store._transact(lambda txn: txn.delete(ids["cut"], db=store._complete))
        store._transact(lambda txn: txn.delete(HOLDS_KEY, db=store._meta))
    with Store(home) as store:  # the first open of a store made by an earlier version
        assert store.pins() == [ids["by_id"]]
        assert store.downloads() == [(ids["cut"], "")]
        assert [n for n, _ in store.names()] == ["named"]
