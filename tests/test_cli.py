"""The CLI as a user runs it: separate processes, real files, a real store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chunkstore.local.store import Store
from chunkstore.local.verify import verify_store
from tests.helpers import (
    MIB,
    RANDOM,
    TEXT,
    corrupt_stored_chunk,
    file_hash,
    run_cli,
    wait_until,
    write_file,
)


def assert_clean_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Non-zero exit, a one-line message naming the problem, no traceback."""
    err = proc.stderr.decode()
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], err


def test_add_get_round_trip_and_json(home: Path, tmp_path: Path) -> None:
    src = write_file(tmp_path / "data.bin", 5 * MIB, content=TEXT)
    added = json.loads(run_cli("add", str(src), "--json", home=home, check=True).stdout)
    assert added["name"] == "data.bin" and added["size"] == 5 * MIB
    assert added["new_chunks"] == added["chunks"] and added["stored_bytes"] < 5 * MIB
    again = json.loads(run_cli("add", str(src), "--json", home=home, check=True).stdout)
    assert again["new_chunks"] == 0 and again["dedup_chunks"] == added["chunks"]

    out = tmp_path / "out.bin"
    got = json.loads(
        run_cli("get", "data.bin", "-o", str(out), "--json", home=home, check=True).stdout
    )
    assert got["size"] == 5 * MIB and out.read_bytes() == src.read_bytes()
    piped = run_cli("get", added["manifest_id"], "-o", "-", home=home, check=True)
    assert piped.stdout == src.read_bytes()

    listed = json.loads(run_cli("ls", "--json", home=home, check=True).stdout)
    assert [f["name"] for f in listed] == ["data.bin"]
    info = json.loads(run_cli("stat", "data.bin", "--json", home=home, check=True).stdout)
    assert info["manifest_id"] == added["manifest_id"]
    assert info["chunks_present"] == info["chunks"]
    assert json.loads(run_cli("verify", "--json", home=home, check=True).stdout)["corrupt"] == []
    run_cli("rm", "data.bin", "--json", home=home, check=True)
    freed = json.loads(run_cli("gc", "--json", home=home, check=True).stdout)
    assert freed["chunks_deleted"] == added["chunks"]


def test_get_defaults_to_name_in_current_directory(home: Path, tmp_path: Path) -> None:
    src = write_file(tmp_path / "plain.txt", 1000)
    run_cli("add", str(src), "--name", "copy.txt", home=home, check=True)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "chunkstore_cli", "get", "copy.txt", "--home", str(home)],
        cwd=work,
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (work / "copy.txt").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/etc/passwd", "a\\b"])
def test_name_that_would_escape_is_refused(home: Path, tmp_path: Path, name: str) -> None:
    # Names are published to everyone and become file names: a path in one is refused at
    # add, and a get of it writes nothing anywhere.
    src = write_file(tmp_path / "f", 100)
    assert_clean_error(run_cli("add", str(src), "--name", name, home=home), "name")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "chunkstore_cli", "get", name, "--home", str(home)],
        cwd=work,
        capture_output=True,
    )
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr
    assert list(work.iterdir()) == [] and not (tmp_path / "escape").exists()


def test_bad_inputs_give_one_line_errors(home: Path, tmp_path: Path) -> None:
    assert_clean_error(run_cli("add", str(tmp_path / "missing"), home=home), "no such file")
    assert_clean_error(run_cli("add", str(tmp_path), home=home), "is a directory")
    assert_clean_error(run_cli("get", "unknown-name", home=home), "unknown-name")
    assert_clean_error(run_cli("get", "ab" * 32, home=home), "ab" * 32)
    assert_clean_error(run_cli("stat", "nope", home=home), "nope")
    assert_clean_error(run_cli("rm", "nope", home=home), "nope")
    src = write_file(tmp_path / "f", 100)
    run_cli("add", str(src), home=home, check=True)
    out = tmp_path / "exists"
    out.write_bytes(b"keep me")
    assert_clean_error(run_cli("get", "f", "-o", str(out), home=home), "--force")
    assert out.read_bytes() == b"keep me"
    run_cli("get", "f", "-o", str(out), "--force", home=home, check=True)
    assert out.read_bytes() == src.read_bytes()
    bad_chunker = run_cli("add", str(src), "--chunker", "rabin", home=home)
    assert bad_chunker.returncode != 0 and b"Traceback" not in bad_chunker.stderr
    if os.geteuid() != 0:  # root can read anything
        secret = write_file(tmp_path / "secret", 10)
        secret.chmod(0)
        assert_clean_error(run_cli("add", str(secret), home=home), "cannot read")


def test_corrupt_chunk_reported_by_get_and_verify(home: Path, tmp_path: Path) -> None:
    src = write_file(tmp_path / "f", 4 * MIB)
    run_cli("add", str(src), "--chunker", "fixed", home=home, check=True)
    with Store(home) as store:
        _, manifest = store.resolve("f")
        bad = manifest.chunks[1].chunk_id
        corrupt_stored_chunk(store, bad)
    out = tmp_path / "out"
    assert_clean_error(run_cli("get", "f", "-o", str(out), home=home), bad.hex())
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    proc = run_cli("verify", home=home)
    assert proc.returncode == 1 and f"corrupt chunk {bad.hex()}" in proc.stdout.decode()


def sigkill_once_stored(proc: subprocess.Popen, home: Path, chunks: int) -> None:
    """SIGKILL `proc` (an add into `home`) once the store holds `chunks` chunks; fails if
    the add ended before that."""
    try:
        with Store(home) as store:
            wait_until(
                lambda: proc.poll() is not None or len(store.chunk_ids()) >= chunks,
                f"the add to have stored {chunks} chunks",
            )
        assert proc.poll() is None, "the add finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.slow
def test_sigkill_during_add_leaves_a_consistent_store(home: Path, tmp_path: Path) -> None:
    small = write_file(tmp_path / "small", 2 * MIB, seed=3)
    run_cli("add", str(small), home=home, check=True)
    big = write_file(tmp_path / "big", 256 * MIB, content=TEXT)
    # Killed twice: once its first batch of chunks is committed, then (re-adding, which
    # skips what is stored) once it has committed 40 more. Each kill comes while the add is
    # still running, so the name it would write last is never there.
    for more in (1, 40):
        with Store(home) as store:
            had = len(store.chunk_ids())
        proc = subprocess.Popen(
            [sys.executable, "-m", "chunkstore_cli", "add", str(big), "--home", str(home)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sigkill_once_stored(proc, home, had + more)
        with Store(home) as store:
            assert verify_store(store).ok
            assert [n for n, _ in store.names()] == ["small"]
            assert len(store.chunk_ids()) >= had + more  # committed batches survive the kill
    # the orphaned chunks of the killed add do not block gc, and a re-add completes
    run_cli("gc", home=home, check=True)
    run_cli("add", str(big), home=home, check=True)
    run_cli("get", "big", "-o", str(tmp_path / "big.out"), home=home, check=True)
    assert file_hash(tmp_path / "big.out") == file_hash(big)
    run_cli("get", "small", "-o", str(tmp_path / "small.out"), home=home, check=True)
    assert (tmp_path / "small.out").read_bytes() == small.read_bytes()


@pytest.mark.slow
def test_two_processes_adding_at_once(home: Path, tmp_path: Path) -> None:
    files = [
        write_file(tmp_path / f"f{i}", 48 * MIB, seed=i, content=content)
        for i, content in enumerate((RANDOM, TEXT))
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "chunkstore_cli", "add", str(f), "--home", str(home)],
            stderr=subprocess.PIPE,
        )
        for f in files
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    with Store(home) as store:
        assert sorted(n for n, _ in store.names()) == ["f0", "f1"]
        assert verify_store(store).ok
    for f in files:
        out = tmp_path / (f.name + ".out")
        run_cli("get", f.name, "-o", str(out), home=home, check=True)
        assert file_hash(out) == file_hash(f)


@pytest.mark.skipif(
    os.geteuid() != 0 or not sys.platform.startswith("linux"),
    reason="mounting a small tmpfs needs root on Linux",
)
def test_full_disk_gives_clear_error_and_consistent_store(tmp_path: Path) -> None:
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        home = mnt / "home"
        small = write_file(tmp_path / "small", 1 * MIB, seed=5)
        run_cli("add", str(small), home=home, check=True)
        big = write_file(tmp_path / "big", 64 * MIB, seed=6)
        assert_clean_error(run_cli("add", str(big), home=home), "disk full")
        with Store(home) as store:
            assert verify_store(store).ok
            assert [n for n, _ in store.names()] == ["small"]
        out = tmp_path / "small.out"
        run_cli("get", "small", "-o", str(out), home=home, check=True)
        assert out.read_bytes() == small.read_bytes()
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_multi_gib_round_trip(home: Path, tmp_path: Path) -> None:
    size = 2 * 1024 * MIB + 12345
    src = write_file(tmp_path / "huge", size, seed=9)
    run_cli("add", str(src), home=home, check=True, timeout=900)
    out = tmp_path / "huge.out"
    run_cli("get", "huge", "-o", str(out), home=home, check=True, timeout=900)
    assert out.stat().st_size == size and file_hash(out) == file_hash(src)


def test_add_prints_a_share_link_and_link_prints_it_again(home: Path, tmp_path: Path) -> None:
    src = write_file(tmp_path / "shared.bin", 1000)
    proc = run_cli("add", str(src), home=home, check=True)
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "added shared.bin" and lines[-1].startswith("  link    chunkstore:")
    token = lines[-1].split()[-1]
    # No node serves the home: the link has no address to join through, and stderr says so.
    notes = [line for line in proc.stderr.decode().splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: no node serves"), notes
    again = json.loads(run_cli("add", str(src), "--json", home=home, check=True).stdout)
    assert again["link"] == token
    assert run_cli("link", "shared.bin", home=home, check=True).stdout.decode() == token + "\n"
    by_id = json.loads(run_cli("link", again["manifest_id"], "--json", home=home).stdout)
    assert by_id == {"link": token}
    assert_clean_error(run_cli("link", "missing", home=home), "missing")


def test_get_by_link_names_the_output_after_the_link(home: Path, tmp_path: Path) -> None:
    src = write_file(tmp_path / "a.bin", 1000)
    token = json.loads(run_cli("add", str(src), "--json", home=home, check=True).stdout)["link"]
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "chunkstore_cli", "get", token, "--home", str(home)],
        cwd=work,
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in work.iterdir()] == ["a.bin"]
    assert (work / "a.bin").read_bytes() == src.read_bytes()
    assert_clean_error(run_cli("get", token[:-3], home=home), "link")
