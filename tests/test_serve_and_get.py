"""`chunkstore serve` and `get` as a user runs them: multi-process swarms on 127.0.0.1 (real
`serve` processes, real DHT, real HTTP), and gets that lose a holder or are killed midway.

Every test here starts several processes, so all are `slow`. Where a test interrupts
something, it waits for a condition (chunks in a store), never for a fixed time."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore.demo.local_swarm import LocalSwarm, node_stats, providers_of, wait_for_providers
from chunkstore.local.add import add_file
from chunkstore.local.store import Store
from tests.helpers import (
    MIB,
    corrupt_stored_chunk,
    file_hash,
    run_cli,
    wait_until,
    write_file,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def seed(node, path: Path, name: str | None = None) -> str:
    """Add a file to a node's store (the running node announces it) and return its id."""
    with Store(node.home) as store:
        return add_file(store, path, name=name).manifest_id


def get_json(node, name: str, out: Path, *extra: str, check: bool = True) -> dict:
    proc = run_cli("get", name, "-o", str(out), "--json", *extra, home=node.home)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
        return json.loads(proc.stdout)
    return {"returncode": proc.returncode, "stderr": proc.stderr.decode()}


def holders_found(node, mid: str, count: int = 1, **options) -> list[dict]:
    """`wait_for_providers`, failing clearly when the holders do not show up in time."""
    holders = wait_for_providers(node, mid, count, **options)
    including = options.get("including")
    found = {f"{h['host']}:{h['port']}" for h in holders}
    assert len(holders) >= count, f"{node.dht_address} found {holders} for {mid}"
    assert including is None or including.transfer_address in found, holders
    return holders


@contextlib.contextmanager
def cli_process(*args: str) -> Iterator[subprocess.Popen]:
    """`chunkstore ARGS` started in the background; killed on exit if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chunkstore_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for_chunks(home: Path, proc: subprocess.Popen, what: str) -> int:
    """Poll the store of `home` until it holds a chunk, while `proc` (the get filling it)
    still runs; returns how many it holds then. Fails if `proc` ended first."""
    with Store(home) as store:
        held = wait_until(
            lambda: proc.poll() is not None or len(store.chunk_ids()),
            f"the get to store some chunks in {home}",
        )
    assert proc.poll() is None, f"the get ended before {what}"
    return held


def one_line_error(proc_stderr: str) -> str:
    lines = [ln for ln in proc_stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc_stderr
    assert "Traceback" not in proc_stderr
    return lines[0]


def test_five_nodes_get_from_two_holders(tmp_path: Path) -> None:
    src = write_file(tmp_path / "movie.bin", 24 * MIB, seed=1)
    with LocalSwarm(5, upload_rate="8MB") as swarm:
        holders = swarm.nodes[1:3]
        mid = ""
        for node in holders:
            mid = seed(node, src)
        fetcher = swarm.nodes[3]
        holders_found(fetcher, mid, 2)
        result = get_json(fetcher, "movie.bin", tmp_path / "out.bin")
        assert file_hash(tmp_path / "out.bin") == file_hash(src)
        sources = result["sources"]
        addresses = {n.transfer_address for n in holders}
        assert set(sources) == addresses, sources
        assert all(sources[a] > 0 for a in addresses), sources
        assert sum(sources.values()) == result["bytes_fetched"] == 24 * MIB
        # the fetcher announces itself as a holder once done
        wait_until(
            lambda: (
                fetcher.transfer_address
                in {f"{h['host']}:{h['port']}" for h in providers_of(swarm.nodes[4], mid)}
            ),
            "the fetcher to be announced as a holder",
            timeout=20,
            interval=0.3,
        )
        proc = run_cli("providers", mid, "--json", home=swarm.nodes[4].home, check=True)
        assert fetcher.transfer_address in {
            f"{h['host']}:{h['port']}" for h in json.loads(proc.stdout)
        }
        peers = json.loads(run_cli("peers", "--json", home=fetcher.home, check=True).stdout)
        assert len(peers) >= 3


def test_short_lived_node_with_bootstrap_and_unknown_name(tmp_path: Path) -> None:
    src = write_file(tmp_path / "doc.bin", 3 * MIB, seed=4)
    with LocalSwarm(3) as swarm:
        mid = seed(swarm.nodes[1], src)
        holders_found(swarm.nodes[2], mid)
        home = tmp_path / "fresh"  # no node serves this home
        boot = swarm.nodes[0].dht_address
        proc = run_cli(
            "get",
            "doc.bin",
            "-o",
            str(tmp_path / "doc.out"),
            "--bootstrap",
            boot,
            "--json",
            home=home,
            check=True,
        )
        assert json.loads(proc.stdout)["chunks_fetched"] > 0
        assert file_hash(tmp_path / "doc.out") == file_hash(src)
        # a device as output is written through, never replaced by a file
        run_cli(
            "get",
            "doc.bin",
            "-o",
            os.devnull,
            "--bootstrap",
            boot,
            home=tmp_path / "dev",
            check=True,
        )
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode)

        # an unknown name is a clean "not found", and nothing is written
        proc = run_cli(
            "get", "no-such-file", "-o", str(tmp_path / "x"), "--bootstrap", boot, "--wait",
            "1.5", home=home
        )  # fmt: skip
        assert proc.returncode != 0
        error = one_line_error(proc.stderr.decode())
        assert "no file named 'no-such-file'" in error
        assert re.search(r"\(asked [2-9] times over [12] s\)", error), error  # kept looking
        assert not (tmp_path / "x").exists()
        proc = run_cli("get", "doc.bin", "-o", str(tmp_path / "y"), home=tmp_path / "lonely")
        assert "--bootstrap" in one_line_error(proc.stderr.decode())  # names the way out
        proc = run_cli("get", "../escape", home=swarm.nodes[2].home)
        assert "output file name" in one_line_error(proc.stderr.decode())


def test_holder_killed_mid_transfer(tmp_path: Path) -> None:
    src = write_file(tmp_path / "big.bin", 24 * MIB, seed=5)
    with LocalSwarm(4, upload_rate="6MB") as swarm:
        a, b, fetcher = swarm.nodes[1], swarm.nodes[2], swarm.nodes[3]
        mid = seed(a, src)
        seed(b, src)
        holders_found(fetcher, mid, 2)
        with cli_process(
            "get", "big.bin", "-o", str(tmp_path / "out"), "--json", "--home", str(fetcher.home)
        ) as get:
            # the transfer is under way once chunks reach the fetcher's store: kill a holder
            wait_for_chunks(fetcher.home, get, "a holder could be killed")
            a.kill()
            out, err = get.communicate(timeout=120)
        assert get.returncode == 0, err.decode()
        assert file_hash(tmp_path / "out") == file_hash(src)
        assert json.loads(out)["sources"].get(b.transfer_address, 0) > 0


def corrupt_all_chunks(home: Path) -> None:
    with Store(home) as store:
        ids = store.chunk_ids()
        for cid in ids:
            corrupt_stored_chunk(store, cid)


def test_lying_peer_is_detected_and_avoided(tmp_path: Path) -> None:
    src = write_file(tmp_path / "f.bin", 16 * MIB, seed=6)
    with LocalSwarm(4) as swarm:
        liar, honest, fetcher = swarm.nodes[1], swarm.nodes[2], swarm.nodes[3]
        mid = seed(liar, src)
        seed(honest, src)
        corrupt_all_chunks(liar.home)
        holders_found(fetcher, mid, 2)
        result = get_json(fetcher, "f.bin", tmp_path / "out")
        assert file_hash(tmp_path / "out") == file_hash(src)
        assert result["sources"].get(liar.transfer_address, 0) == 0
        assert result["sources"][honest.transfer_address] == 16 * MIB
        assert run_cli("verify", home=fetcher.home).returncode == 0


def test_missing_holder_then_resume_without_refetching(tmp_path: Path) -> None:
    src = write_file(tmp_path / "r.bin", 16 * MIB, seed=7)
    with LocalSwarm(3, upload_rate="4MB") as swarm:
        holder, fetcher = swarm.nodes[1], swarm.nodes[2]
        mid = seed(holder, src)
        holders_found(fetcher, mid)
        out = tmp_path / "out"
        with cli_process("get", "r.bin", "-o", str(out), "--home", str(fetcher.home)) as get:
            wait_for_chunks(fetcher.home, get, "the holder could be killed")
            holder.kill()  # the only holder vanishes: the get cannot complete
            _, err = get.communicate(timeout=120)
        assert get.returncode != 0
        line = one_line_error(err.decode())
        assert "chunks could not be fetched" in line, line
        assert not out.exists()
        stat = json.loads(run_cli("stat", mid, "--json", home=fetcher.home, check=True).stdout)
        kept = stat["chunks_present"]
        assert 0 < kept < stat["chunks"]

        # the holder comes back (same home): the get resumes from what the store kept
        back = swarm.start_node([swarm.nodes[0].dht_address], home=holder.home)
        holders_found(fetcher, mid, including=back)
        served_before = node_stats(back)["bytes_served"]
        result = get_json(fetcher, "r.bin", out)
        assert file_hash(out) == file_hash(src)
        assert result["chunks_reused"] == kept
        assert result["chunks_fetched"] == stat["chunks"] - kept
        assert node_stats(back)["bytes_served"] > served_before


def test_get_killed_midway_resumes(tmp_path: Path) -> None:
    src = write_file(tmp_path / "k.bin", 16 * MIB, seed=8)
    with LocalSwarm(3, upload_rate="4MB") as swarm:
        holder, fetcher = swarm.nodes[1], swarm.nodes[2]
        mid = seed(holder, src)
        holders_found(fetcher, mid)
        out = tmp_path / "out"
        # a short-lived get (not through the node) killed with SIGKILL mid-way
        home = tmp_path / "client"
        Store(home).close()  # created here, so the test can watch it from the start
        args = [
            "get",
            "k.bin",
            "-o",
            str(out),
            "--home",
            str(home),
            "--bootstrap",
            swarm.nodes[0].dht_address,
        ]
        with cli_process(*args) as get:
            wait_for_chunks(home, get, "it could be killed")
            get.send_signal(signal.SIGKILL)
            get.wait()
        assert get.returncode == -signal.SIGKILL
        assert not out.exists()
        stat = json.loads(run_cli("stat", mid, "--json", home=home, check=True).stdout)
        kept = stat["chunks_present"]
        assert 0 < kept < stat["chunks"]
        result = json.loads(run_cli(*args, "--json", check=True).stdout)
        assert result["chunks_reused"] == kept
        assert result["chunks_fetched"] + kept == stat["chunks"]
        assert file_hash(out) == file_hash(src)
        assert run_cli("verify", home=home).returncode == 0


def test_garbage_traffic_does_not_take_a_node_down(tmp_path: Path) -> None:
    src = write_file(tmp_path / "g.bin", 2 * MIB, seed=9)
    with LocalSwarm(3) as swarm:
        target, fetcher = swarm.nodes[1], swarm.nodes[2]
        mid = seed(target, src)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for payload in (
            b"",
            b"\x00",
            b"\xff" * 9000,
            b"\x00" + b"A" * 20 + b"\x93\x01",
            bytes(range(256)) * 4,
        ):
            udp.sendto(payload, ("127.0.0.1", target.info.dht_port))
        udp.close()
        for raw in (
            b"\x16\x03\x01\x00garbage\r\n\r\n",
            b"GET /" + b"a" * 100000 + b"\r\n\r\n",
            b"GET /chunks/zz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /chunks/x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\nabc",
        ):
            with socket.create_connection(("127.0.0.1", target.info.transfer_port), 5) as s:
                s.sendall(raw)
                s.settimeout(5)
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    s.recv(1024)
        assert target.proc.poll() is None
        holders_found(fetcher, mid)
        get_json(fetcher, "g.bin", tmp_path / "out")
        assert file_hash(tmp_path / "out") == file_hash(src)


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with LocalSwarm(2) as swarm:
        node = swarm.nodes[1]
        assert swarm.stop_node(node) == 0
        assert not (node.home / "node.json").exists()
        assert (node.home / "contacts.json").exists()  # routing state survives a restart
