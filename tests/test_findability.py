"""Content is found whatever the order in which nodes join: real `serve` processes and CLI
gets, each test for a node listening on every interface (the default; peers still reach it
at 127.0.0.1) and for one listening on 127.0.0.1 only.

Every test starts several processes, so all are `slow`. Waits are polls on conditions with
a deadline; every process started is stopped on the way out."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import umsgpack

from chunkstore.demo.local_swarm import LocalSwarm, ServeProcess, node_stats, providers_of
from chunkstore.local.store import Store
from chunkstore.net.dht import dht_key
from chunkstore.net.protocol import SELF_HOLDER_HOST
from tests.helpers import MIB, file_hash, name_records_seen, run_cli, wait_until, write_file

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

LOCAL = "127.0.0.1"
every_host = pytest.mark.parametrize(
    "host", ["0.0.0.0", LOCAL], ids=["every-interface", "loopback"]
)


@contextlib.contextmanager
def serve_processes(tmp_path: Path) -> Iterator[LocalSwarm]:
    """An empty LocalSwarm: the test starts each node itself, on the host it wants."""
    root = tmp_path / "swarm"
    root.mkdir()
    swarm = LocalSwarm(0, root=root)
    try:
        yield swarm
    finally:
        swarm.close()


def add(home: Path, path: Path) -> dict:
    """`chunkstore add PATH --json` on `home`."""
    return json.loads(run_cli("add", str(path), "--json", home=home, check=True).stdout)


def name_published(node: ServeProcess, name: str) -> str:
    """Wait until `node` has put `name` in the DHT (its own copy at least); the manifest id.

    A node publishes a new name within a fraction of a second of the add: the test waits for
    that, so that what follows tests finding, not that race."""

    def lookup() -> str | None:
        found = name_records_seen(node.info.api_url, name)
        return next(iter(found.values()), None)

    return wait_until(lookup, f"{name} to be published by {node.dht_address}", interval=0.1)


def get(name: str, out: Path, *extra: str, home: Path) -> subprocess.CompletedProcess:
    return run_cli("get", name, "-o", str(out), "--json", "--force", *extra, home=home)


def holder_addresses(holders: list[dict]) -> set[str]:
    return {f"{h['host']}:{h['port']}" for h in holders}


def ask_get_providers(node: ServeProcess, key: bytes, timeout: float = 10.0) -> dict:
    """A raw get_providers request to `node`'s DHT port: its answer, as it sent it."""
    msg_id = os.urandom(20)
    request = umsgpack.packb(["get_providers", [os.urandom(20), key]])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((LOCAL, 0))
        udp.settimeout(0.2)
        udp.sendto(b"\x00" + msg_id + request, (LOCAL, node.info.dht_port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = udp.recv(65536)
            except TimeoutError:
                continue
            # the node also pings us (a newcomer) before handing anything over: skip that
            if data[:1] == b"\x01" and data[1:21] == msg_id:
                return umsgpack.unpackb(data[21:])
    raise AssertionError(f"{node.dht_address} did not answer get_providers")


@every_host
def test_a_node_alone_serves_a_get_with_no_node_of_its_own(tmp_path: Path, host: str) -> None:
    src = write_file(tmp_path / "new50.bin", 6 * MIB, seed=31)
    with serve_processes(tmp_path) as swarm:
        a = swarm.start_node(host=host)
        mid = add(a.home, src)["manifest_id"]
        assert name_published(a, "new50.bin") == mid
        out = tmp_path / "out.bin"
        proc = get("new50.bin", out, "--bootstrap", a.dht_address, home=tmp_path / "b")
        assert proc.returncode == 0, proc.stderr.decode()
        assert file_hash(out) == file_hash(src)
        assert json.loads(proc.stdout)["sources"] == {a.transfer_address: 6 * MIB}


@every_host
def test_a_node_joining_later_gets_by_name_within_seconds(tmp_path: Path, host: str) -> None:
    src = write_file(tmp_path / "later.bin", 6 * MIB, seed=32)
    with serve_processes(tmp_path) as swarm:
        a = swarm.start_node(host=host)
        add(a.home, src)
        name_published(a, "later.bin")
        b = swarm.start_node([a.dht_address], host=host)
        joined = time.monotonic()
        out = tmp_path / "out.bin"
        attempts = []

        def got() -> bool:
            attempts.append(get("later.bin", out, home=b.home))
            return attempts[-1].returncode == 0

        wait_until(
            got, "a get on the joining node to succeed", timeout=10 - (time.monotonic() - joined)
        )
        assert file_hash(out) == file_hash(src)


@every_host
def test_a_file_added_before_serve_started_is_found(tmp_path: Path, host: str) -> None:
    src = write_file(tmp_path / "old.bin", 6 * MIB, seed=33)
    a_home = tmp_path / "a"
    add(a_home, src)  # no node runs yet
    with serve_processes(tmp_path) as swarm:
        a = swarm.start_node(host=host, home=a_home)
        name_published(a, "old.bin")
        b = swarm.start_node([a.dht_address], host=host)
        out = tmp_path / "out.bin"
        proc = get("old.bin", out, home=b.home)
        assert proc.returncode == 0, proc.stderr.decode()
        assert file_hash(out) == file_hash(src)
        assert json.loads(proc.stdout)["sources"] == {a.transfer_address: 6 * MIB}


@every_host
def test_a_holder_restarted_on_another_port_is_still_found(tmp_path: Path, host: str) -> None:
    src = write_file(tmp_path / "moved.bin", 6 * MIB, seed=34)
    with serve_processes(tmp_path) as swarm:
        a = swarm.start_node(host=host)
        mid = add(a.home, src)["manifest_id"]
        name_published(a, "moved.bin")
        b = swarm.start_node([a.dht_address], host=host)
        # B learns of A as the holder (and keeps that record when A goes)
        wait_until(
            lambda: a.transfer_address in holder_addresses(providers_of(b, mid)),
            "B to find A as a holder",
        )
        assert swarm.stop_node(a) == 0
        moved = swarm.start_node([b.dht_address], host=host, home=a.home)
        assert moved.info.transfer_port != a.info.transfer_port, "the OS gave the same port"
        out = tmp_path / "out.bin"
        proc = get("moved.bin", out, home=b.home)
        assert proc.returncode == 0, proc.stderr.decode()
        assert file_hash(out) == file_hash(src)
        assert json.loads(proc.stdout)["sources"] == {moved.transfer_address: 6 * MIB}


@every_host
def test_an_interrupted_download_announces_its_chunks_never_the_file(
    tmp_path: Path, host: str
) -> None:
    src = write_file(tmp_path / "cut.bin", 16 * MIB, seed=35)
    with serve_processes(tmp_path) as swarm:
        hub = swarm.start_node(host=host)
        holder = swarm.start_node([hub.dht_address], host=host, upload_rate="2MB")
        mid = add(holder.home, src)["manifest_id"]
        name_published(holder, "cut.bin")
        c = swarm.start_node([hub.dht_address], host=host)
        out = tmp_path / "out.bin"
        cmd = [sys.executable, "-m", "chunkstore_cli", "get", "cut.bin", "-o", str(out)]
        get_proc = subprocess.Popen(
            [*cmd, "--home", str(c.home)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            with Store(c.home) as store:
                wait_until(
                    lambda: get_proc.poll() is not None or store.chunk_ids(),
                    "C's get to store some chunks",
                )
            assert get_proc.poll() is None, "the get ended before the holder could be killed"
            holder.kill()  # the only holder dies mid-way: the get cannot complete
            get_proc.communicate(timeout=120)
        finally:
            if get_proc.poll() is None:
                get_proc.kill()
                get_proc.communicate()
        assert get_proc.returncode != 0
        with Store(c.home) as store:
            held = store.chunk_ids()
            manifest = store.get_manifest(bytes.fromhex(mid))
        assert manifest is not None and 0 < len(held) < len(manifest.chunks)

        assert swarm.stop_node(c) == 0
        c = swarm.start_node([hub.dht_address], host=host, home=c.home)
        # C announces what it holds: the chunks. Manifests go out first, so once the chunks
        # are out a manifest announcement would have been made already.
        wait_until(lambda: node_stats(c)["announced"] >= len(held), "C to announce its chunks")
        proc = run_cli("providers", mid, "--json", home=hub.home, check=True)
        assert c.transfer_address not in holder_addresses(json.loads(proc.stdout))
        for chunk_id in held:
            assert c.transfer_address in holder_addresses(providers_of(hub, chunk_id.hex()))
        # and asked directly, C names itself for a chunk it has, not for the file
        own = [SELF_HOLDER_HOST, c.info.transfer_port]
        assert own in ask_get_providers(c, dht_key(held[0]))["providers"]
        answer = ask_get_providers(c, dht_key(bytes.fromhex(mid)))
        assert own not in answer["providers"]
        assert [LOCAL, c.info.transfer_port] not in answer["providers"]
