"""Durability (issue 12, item 4): the store's LMDB mode, and the ingest benchmark that
measures what it costs against restic and borg."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chunkstore.local.add import add_file
from chunkstore.local.store import Store
from chunkstore.local.verify import verify_store
from chunkstore.objects.chunking import ChunkerParams
from chunkstore.objects.manifest import ChunkRef, Manifest
from tests.helpers import MIB, write_file

ROOT = Path(__file__).resolve().parents[1]


def test_store_flushes_data_at_every_commit(tmp_path: Path) -> None:
    # MDB_NOMETASYNC: LMDB's documented guarantee is that a system crash may undo the last
    # committed transaction but never corrupts the database; MDB_NOSYNC (sync=False) is not.
    with Store(tmp_path / "home") as store:
        flags = store.env.flags()
        assert flags["sync"] is True
        assert flags["metasync"] is False
        assert flags["writemap"] is False  # NOSYNC|WRITEMAP-like orderings stay out


def test_verify_tells_an_unfinished_download_from_a_damaged_file(tmp_path: Path) -> None:
    source = write_file(tmp_path / "f.bin", 3 * MIB, seed=21)
    with Store(tmp_path / "home") as store:
        result = add_file(store, source, name="f.bin", chunker=ChunkerParams.fixed(MIB))
        mid, manifest = store.resolve("f.bin")
        # a get killed after the manifest and one chunk: held by its download entry only
        other = Manifest(
            size=2 * MIB,
            chunker=ChunkerParams.fixed(MIB),
            chunks=(manifest.chunks[0], ChunkRef(bytes(32), MIB)),
        )
        store.put_manifest(other, announce=False, download="other.bin")
        report = verify_store(store)
        assert report.ok and report.missing == []
        assert report.incomplete == [other.id.hex()]
        # a chunk of the named, complete file lost: that is damage
        lost = manifest.chunks[1].chunk_id
        store._transact(lambda txn: txn.delete(lost, db=store._chunks))
        report = verify_store(store)
        assert not report.ok and report.missing == [lost.hex()]
        assert result.chunks == 3


@pytest.mark.slow
def test_ingest_benchmark_runs_with_its_references(tmp_path: Path) -> None:
    """A small run of benchmarks/ingest.py: every row it can make is made and checked byte
    for byte by the benchmark itself, the durability cost is reported. restic and borg rows
    need the tools (.ci/run installs them); a test never installs anything."""
    args = ["--size", "8MiB", "--repeat", "1", "--no-rss", "--workdir", str(tmp_path)]
    have = {tool: shutil.which(tool) is not None for tool in ("restic", "borg")}
    args += [f"--skip-{tool}" for tool, present in have.items() if not present]
    out = tmp_path / "ingest.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ingest.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = set(data["summary"])
    assert {"chunkstore add", "chunkstore add nosync", "chunkstore get"} <= rows
    assert ("borg add" in rows and "borg get" in rows) == have["borg"]
    assert ("restic add" in rows and "restic get" in rows) == have["restic"]
    cost = data["durability"]
    assert cost["nometasync_mbps"] > 0 and cost["nosync_mbps"] > 0
    assert "durability mode" in proc.stdout
    references = {r["reference"] for r in data["ratios"]}
    assert ("borg create" in references) == have["borg"]
    # the workdir the benchmark made inside tmp_path is gone: nothing left behind
    assert [p.name for p in tmp_path.iterdir()] == ["ingest.json"]
