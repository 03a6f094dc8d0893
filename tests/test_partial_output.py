"""Partial outputs of killed gets are reused or removed, and `verify` lists them (issue 12,
item 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chunkstore.local.add import add_file
from chunkstore.local.output import PARTIAL_SUFFIX, partial_path
from chunkstore.local.restore import restore
from chunkstore.local.store import Store
from chunkstore.local.verify import verify_store
from tests.helpers import MIB, file_hash, run_cli, write_file

NAME = "out.bin"

# A get as far as its output goes: claims the partial, writes into it, then waits (to be
# killed, or to stay alive as a concurrent get).
WRITER = """
import sys, time
from pathlib import Path
from chunkstore.local.output import PartialLog, atomic_output
out, key, home = Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), Path(sys.argv[3])
with atomic_output(out, key=key, log=PartialLog(home)) as f:
    f.write(b"x" * 1000000)
    f.flush()
    print("ready", flush=True)
    time.sleep(120)
"""


@contextmanager
def writing_get(out: Path, key: bytes, home: Path) -> Iterator[subprocess.Popen]:
    """A process in the middle of writing `out`'s partial; killed (SIGKILL) at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out), key.hex(), str(home)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def killed_get(out: Path, key: bytes, home: Path) -> None:
    with writing_get(out, key, home) as proc:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def partials(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(PARTIAL_SUFFIX))


@pytest.fixture
def stored(tmp_path: Path):
    """A home holding one 6 MiB file: (store, manifest id, manifest, source path)."""
    source = write_file(tmp_path / "source.bin", 6 * MIB, seed=11)
    with Store(tmp_path / "home") as store:
        result = add_file(store, source, name=NAME)
        mid, manifest = store.resolve(NAME)
        assert mid.hex() == result.manifest_id
        yield store, mid, manifest, source


def test_resumed_get_reuses_the_killed_partial(stored, tmp_path: Path) -> None:
    store, mid, manifest, source = stored
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / NAME
    killed_get(out, mid, store.home)
    left = partials(out_dir)
    assert left == [partial_path(out_dir, NAME, mid).name]
    assert verify_store(store).leftover_partials == [str(out_dir / left[0])]

    seen: list[list[str]] = []
    restore(store, manifest, out, progress=lambda n: seen.append(partials(out_dir)))
    assert seen and all(now == left for now in seen)  # the same one, reused: never two
    assert file_hash(out) == file_hash(source)
    assert partials(out_dir) == []
    report = verify_store(store)
    assert report.ok and report.leftover_partials == []


def test_a_partial_left_by_a_get_of_another_version_is_removed(stored, tmp_path: Path) -> None:
    store, mid, manifest, source = stored
    out = tmp_path / NAME
    older = bytes(32)  # the manifest id of the file the name pointed at before
    killed_get(out, older, store.home)
    assert partials(tmp_path) == [partial_path(tmp_path, NAME, older).name]

    seen: list[list[str]] = []
    restore(store, manifest, out, progress=lambda n: seen.append(partials(tmp_path)))
    assert seen and all(now == [partial_path(tmp_path, NAME, mid).name] for now in seen)
    assert partials(tmp_path) == []
    assert file_hash(out) == file_hash(source)


def test_a_live_get_keeps_its_partial(stored, tmp_path: Path) -> None:
    store, mid, manifest, source = stored
    out = tmp_path / NAME
    with writing_get(out, mid, store.home) as other:
        live = partials(tmp_path)
        assert len(live) == 1
        restore(store, manifest, out, force=True)  # a second get of the same output
        assert file_hash(out) == file_hash(source)
        assert partials(tmp_path) == live  # the live one untouched, ours renamed
        assert (tmp_path / live[0]).stat().st_size == 1000000
        assert verify_store(store).leftover_partials == []  # in progress, not left over
        os.kill(other.pid, signal.SIGKILL)
        other.wait()
    assert verify_store(store).leftover_partials == [str(tmp_path / live[0])]
    restore(store, manifest, out, force=True)
    assert partials(tmp_path) == []
    assert verify_store(store).leftover_partials == []


def test_a_link_planted_at_the_partial_name_is_not_followed(stored, tmp_path: Path) -> None:
    store, mid, manifest, source = stored
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    partial_path(tmp_path, NAME, mid).symlink_to(victim)
    restore(store, manifest, tmp_path / NAME)
    assert victim.read_bytes() == b"precious"
    assert file_hash(tmp_path / NAME) == file_hash(source)


def test_a_fifo_planted_at_the_partial_name_does_not_block(stored, tmp_path: Path) -> None:
    store, mid, manifest, source = stored
    os.mkfifo(partial_path(tmp_path, NAME, mid))
    restore(store, manifest, tmp_path / NAME)
    assert file_hash(tmp_path / NAME) == file_hash(source)
    assert partial_path(tmp_path, NAME, mid).exists()  # not ours to remove


def test_cli_verify_lists_leftovers_and_a_get_clears_them(stored, tmp_path: Path) -> None:
    store, mid, _, source = stored
    out = tmp_path / NAME
    killed_get(out, mid, store.home)
    proc = run_cli("verify", home=store.home)
    assert proc.returncode == 0, proc.stderr  # the store itself is intact
    text = proc.stdout.decode()
    assert f"leftover partial output {partial_path(tmp_path, NAME, mid)}" in text
    proc = run_cli("get", NAME, "-o", str(out), home=store.home)
    assert proc.returncode == 0, proc.stderr
    assert file_hash(out) == file_hash(source)
    assert partials(tmp_path) == []
    assert "leftover" not in run_cli("verify", home=store.home, check=True).stdout.decode()
