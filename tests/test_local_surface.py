"""The local surface (issue 10): private home and store, a local API that wants its token
and a local Host, and a node lock that a stale node.json with a reused pid cannot fake."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import chunkstore
from chunkstore.demo.local_swarm import LocalSwarm
from chunkstore.net.node_file import NODE_FILE, api_request, running_node
from tests.helpers import MIB, file_hash, run_cli, write_file

HOST = "127.0.0.1"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_home_is_0700_and_its_store_files_0600(tmp_path: Path) -> None:
    home = tmp_path / "home"
    chunkstore.add(write_file(tmp_path / "f.bin", MIB), home=home)
    assert mode(home) == 0o700
    assert mode(home / "store") == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert mode(home / "store" / name) == 0o600


def test_an_old_open_home_is_tightened_at_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    chunkstore.add(write_file(tmp_path / "f.bin", MIB), home=home)
    home.chmod(0o755)
    (home / "store").chmod(0o755)
    (home / "store" / "data.mdb").chmod(0o644)
    chunkstore.add(write_file(tmp_path / "g.bin", MIB, seed=1), home=home)
    assert mode(home) == 0o700 and mode(home / "store") == 0o700
    assert mode(home / "store" / "data.mdb") == 0o600


def status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_local_api_wants_the_token_and_a_local_host(tmp_path: Path) -> None:
    home = tmp_path / "home"

    async def main() -> None:
        async with chunkstore.Node(home, host=HOST) as node:
            assert mode(home / NODE_FILE) == 0o600
            url, auth = api_request(node.info.api_url, "/node")
            port = url.split(":")[2].split("/")[0]
            calls = {
                "right": (auth, 200),
                "no token": ({}, 401),
                "wrong token": ({"Authorization": "Basic Y2h1bmtzdG9yZTp4"}, 401),
                "foreign host": ({**auth, "Host": f"rebind.invalid:{port}"}, 403),
                "localhost": ({**auth, "Host": f"localhost:{port}"}, 200),
            }
            for what, (headers, expected) in calls.items():
                got = await asyncio.to_thread(status, url, headers)
                assert got == expected, what

    asyncio.run(main())


def stale_node_file(home: Path, pid: int) -> None:
    """A node.json as a killed node leaves it, naming a live unrelated process."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / NODE_FILE).write_text(
        json.dumps(
            {
                "pid": pid,
                "host": HOST,
                "dht_port": 9,
                "transfer_port": 9,
                "api_url": "http://chunkstore:x@127.0.0.1:9",
                "advertised_host": HOST,
            }
        )
    )


def test_a_stale_node_file_with_a_live_pid_blocks_neither_serve_nor_get(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        src = write_file(tmp_path / "doc.bin", 2 * MIB, seed=3)
        holder_home = tmp_path / "holder"
        stale_node_file(holder_home, sleeper.pid)
        assert running_node(holder_home) is None  # the pid lives, but nobody holds the lock
        with LocalSwarm(1) as swarm:
            holder = swarm.start_node([swarm.nodes[0].dht_address], home=holder_home)
            assert holder.info.pid == holder.proc.pid  # serve started despite the stale file
            run_cli("add", str(src), home=holder_home, check=True)
            fetcher_home = tmp_path / "fetcher"
            stale_node_file(fetcher_home, sleeper.pid)
            out = tmp_path / "doc.out"
            proc = run_cli(
                "get", "doc.bin", "-o", str(out), "--bootstrap", holder.dht_address,
                home=fetcher_home, timeout=120,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr.decode()
            assert file_hash(out) == file_hash(src)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_second_node_on_a_home_is_refused_in_process(tmp_path: Path) -> None:
    home = tmp_path / "home"

    async def main() -> None:
        async with chunkstore.Node(home, host=HOST):
            assert running_node(home) is not None
            with pytest.raises(chunkstore.InputError, match="already serves"):
                await chunkstore.Node(home, host=HOST).start()
        assert running_node(home) is None

    asyncio.run(main())
