"""The public API as a Python user meets it: the README's example, the import promises,
and the argument forms every call accepts."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import chunkstore
from tests.helpers import MIB, file_hash, write_file

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "added hello.txt" in proc.stdout
    fetched = re.search(r"fetched (\d+) bytes from \['127\.0\.0\.1:\d+'\]", proc.stdout)
    assert fetched and int(fetched.group(1)) > 0, proc.stdout  # bytes came over the network


def test_importing_and_getting_locally_loads_no_network_code(tmp_path: Path) -> None:
    code = (
        "import chunkstore, sys; chunkstore.get; "
        "assert 'aiohttp' not in sys.modules and 'kademlia' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

    home = tmp_path / "home"
    src = write_file(tmp_path / "f", MIB, seed=1)
    commands = {
        "chunkstore.local.add": ["add", str(src)],  # reads node.json for the share link too
        "chunkstore.local.restore": ["get", "f", "-o", str(tmp_path / "out")],
    }
    for module, args in commands.items():
        proc = subprocess.run(
            [
                sys.executable,
                "-X",
                "importtime",
                "-m",
                "chunkstore_cli",
                *args,
                "--home",
                str(home),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        imported = {
            line.rsplit("|", 1)[-1].strip()
            for line in proc.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert module in imported  # the log is what it claims to be
        assert not {m for m in imported if m.split(".")[0] in ("aiohttp", "kademlia")}, args


def test_every_call_takes_str_paths_and_home_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    src = write_file(tmp_path / "a.bin", 3 * MIB, seed=2)
    added = chunkstore.add(str(src), home="~/store", name="a")
    assert (tmp_path / "store" / "store").is_dir() and not Path("~").exists()

    out = tmp_path / "out.bin"
    result = chunkstore.get("a", str(out), home="~/store")  # output as str
    assert file_hash(out) == file_hash(src) and result.output == str(out)
    assert result.chunks_fetched == 0 and result.manifest_id == added.manifest_id

    sink = io.BytesIO()
    assert chunkstore.get(added.manifest_id, sink, home=tmp_path / "store").output == "-"
    assert sink.getvalue() == src.read_bytes()

    with chunkstore.Store(tmp_path / "store") as store:  # an open Store is left open
        assert [f.name for f in chunkstore.ls(home=store)] == ["a"]
        assert chunkstore.stat("a", home=store).chunks_present == added.chunks
        assert chunkstore.verify(home=store).ok
        assert store.lookup_name("a") is not None  # still open after the calls
    assert chunkstore.rm("a", home=str(tmp_path / "store")).manifest_id == added.manifest_id
    assert chunkstore.gc(home=tmp_path / "store").chunks_deleted == added.chunks


def test_library_errors_are_typed_and_name_no_cli_flags(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = write_file(tmp_path / "f", MIB, seed=3)
    chunkstore.add(src, home=home)
    (tmp_path / "exists").write_bytes(b"x")
    with pytest.raises(chunkstore.OutputExists) as exists:
        chunkstore.get("f", tmp_path / "exists", home=home)
    with pytest.raises(chunkstore.NoNetwork) as offline:
        chunkstore.get("not-here", tmp_path / "out", home=home)
    with pytest.raises(chunkstore.InputError) as bad_chunker:
        chunkstore.add(src, home=home, chunker="rabin")
    for error in (exists.value, offline.value, bad_chunker.value):
        assert isinstance(error, chunkstore.ChunkstoreError)
        assert "--" not in str(error), str(error)
    assert isinstance(offline.value, chunkstore.NotFound)
    assert (tmp_path / "exists").read_bytes() == b"x"
    assert chunkstore.get("f", tmp_path / "exists", home=home, force=True).size == MIB


def test_get_refuses_a_running_loop_and_fetch_works_there(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = write_file(tmp_path / "f", MIB, seed=4)
    chunkstore.add(src, home=home)

    async def inside_a_loop() -> chunkstore.GetResult:
        # A local file is written in place; the network needs the caller's loop: refused.
        with pytest.raises(chunkstore.ChunkstoreError, match="fetch"):
            chunkstore.get("elsewhere", tmp_path / "never", home=home, bootstrap=["127.0.0.1:9"])
        return await chunkstore.fetch("f", tmp_path / "out", home=home)

    result = asyncio.run(inside_a_loop())
    assert result.size == MIB and file_hash(tmp_path / "out") == file_hash(src)
    assert not (tmp_path / "never").exists()


def test_node_installs_no_signal_handlers(tmp_path: Path) -> None:
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))

    async def run() -> None:
        async with chunkstore.Node(tmp_path / "home", host="127.0.0.1") as node:
            assert node.port > 0 and node.dht_address == f"127.0.0.1:{node.port}"
            loop = asyncio.get_running_loop()
            # A handler installed with loop.add_signal_handler shows up here.
            assert not loop.remove_signal_handler(signal.SIGINT)
            assert not loop.remove_signal_handler(signal.SIGTERM)

    asyncio.run(run())
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_public_names_are_all_importable() -> None:
    for name in chunkstore.__all__:
        assert getattr(chunkstore, name) is not None, name
    assert chunkstore.__version__ == chunkstore.version.__version__
