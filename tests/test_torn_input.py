"""add refuses a file that changes while it is read (issue 12, item 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chunkstore.errors import InputChanged
from chunkstore.local.add import FileState, add_file, input_change
from chunkstore.local.store import Store
from tests.helpers import MIB, run_cli, write_file

SIZE = 48 * MIB


def other_process(code: str) -> None:
    """Run `code` in another Python process and wait for it: the file changes under add's
    feet at a moment the test chooses, not at one a timer guesses."""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def changing_at_first_chunk(code: str):
    """A progress callback that runs `code` in another process when the first chunk is seen."""
    calls = []

    def progress(n: int) -> None:
        if not calls:
            other_process(code)
        calls.append(n)

    return progress, calls


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "home") as s:
        yield s


def test_file_truncated_during_add_fails_and_names_nothing(store: Store, tmp_path: Path) -> None:
    path = write_file(tmp_path / "big.bin", SIZE, seed=1)
    progress, calls = changing_at_first_chunk(f"import os; os.truncate({str(path)!r}, 10 * 2**20)")
    with pytest.raises(InputChanged) as caught:
        add_file(store, path, name="big.bin", progress=progress)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert f"{SIZE:,} to {10 * MIB:,} bytes" in message
    assert calls, "the truncation ran while add was reading"
    assert store.lookup_name("big.bin") is None
    assert list(store.iter_manifests()) == []
    # the file as it is now is added normally
    result = add_file(store, path, name="big.bin")
    assert result.size == 10 * MIB


def test_file_grown_during_add_fails(store: Store, tmp_path: Path) -> None:
    path = write_file(tmp_path / "log.bin", SIZE, seed=2)
    progress, _ = changing_at_first_chunk(
        f"f = open({str(path)!r}, 'ab'); f.write(b'x' * 4096); f.close()"
    )
    with pytest.raises(InputChanged, match="its size went from"):
        add_file(store, path, name="log.bin", progress=progress)
    assert store.lookup_name("log.bin") is None


def test_file_rewritten_in_place_during_add_fails(store: Store, tmp_path: Path) -> None:
    path = write_file(tmp_path / "db.bin", SIZE, seed=3)
    # same size, new bytes at the end (not read yet) and a new mtime
    code = (
        f"import os; f = open({str(path)!r}, 'r+b'); f.seek({SIZE - 4096}); "
        "f.write(os.urandom(4096)); f.close(); "
        f"os.utime({str(path)!r}, ns=(0, os.stat({str(path)!r}).st_mtime_ns + 10**9))"
    )
    progress, _ = changing_at_first_chunk(code)
    with pytest.raises(InputChanged, match="modified"):
        add_file(store, path, name="db.bin", progress=progress)
    assert store.lookup_name("db.bin") is None


def test_file_replaced_during_add_fails(store: Store, tmp_path: Path) -> None:
    path = write_file(tmp_path / "doc.bin", SIZE, seed=4)
    other = write_file(tmp_path / "new.bin", MIB, seed=5)
    progress, _ = changing_at_first_chunk(f"import os; os.replace({str(other)!r}, {str(path)!r})")
    with pytest.raises(InputChanged, match="another file replaced it"):
        add_file(store, path, name="doc.bin", progress=progress)
    assert store.lookup_name("doc.bin") is None


def test_unchanged_file_is_added(store: Store, tmp_path: Path) -> None:
    path = write_file(tmp_path / "calm.bin", 3 * MIB, seed=6)
    result = add_file(store, path, name="calm.bin")
    assert result.size == 3 * MIB
    assert store.lookup_name("calm.bin") == bytes.fromhex(result.manifest_id)


def test_input_change_decisions() -> None:
    st = FileState(size=100, mtime_ns=5, ctime_ns=6, inode=7, device=8)
    same = FileState(**vars(st))
    assert input_change(st, same, same, 100) is None
    assert "size went from 100 to 50" in input_change(st, FileState(50, 9, 9, 7, 8), same, 50)
    assert "50 bytes were read of the 100" in input_change(st, same, same, 50)
    assert input_change(st, FileState(100, 9, 6, 7, 8), same, 100) == "it was modified"
    assert input_change(st, FileState(100, 5, 9, 7, 8), same, 100) == "it was modified"
    assert input_change(st, same, None, 100) == "it was removed"
    moved = FileState(100, 5, 6, 99, 8)
    assert input_change(st, same, moved, 100) == "another file replaced it"


def test_cli_add_of_a_stable_file_still_succeeds(tmp_path: Path) -> None:
    path = write_file(tmp_path / "f.bin", MIB, seed=7)
    proc = run_cli("add", str(path), home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    with Store(tmp_path / "home") as s:
        assert s.lookup_name("f.bin") is not None
