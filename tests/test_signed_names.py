"""Signed names across real `serve` processes on 127.0.0.1: the take-over attack of a name
(one stock STORE to every node, and a second publisher of the same name) changes nothing
for a node that fetched the name before, a fresh node is told to choose, NAME@KEY picks
either, and a publisher's update or removal reaches a node that fetched the old version."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import umsgpack
from kademlia.utils import digest

from chunkstore.demo.local_swarm import LocalSwarm, ServeProcess
from chunkstore.net.protocol import name_key
from tests.helpers import MIB, file_hash, name_records_seen, run_cli, wait_until, write_file

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

NAME = "shared.iso"


def publisher_key(node: ServeProcess) -> str:
    return run_cli("key", home=node.home, check=True).stdout.decode().strip()


def manifest_id_of(node: ServeProcess) -> str:
    """The manifest id NAME points at in `node`'s home (`chunkstore stat --json`)."""
    proc = run_cli("stat", NAME, "--json", home=node.home, check=True)
    return json.loads(proc.stdout.decode())["manifest_id"]


def publishers_seen(node: ServeProcess, name: str) -> dict[str, str]:
    return name_records_seen(node.info.api_url, name)


def wait_for_records(node: ServeProcess, name: str, wanted: dict[str, str]) -> None:
    wait_until(
        lambda: all(publishers_seen(node, name).get(k) == v for k, v in wanted.items()),
        f"{node.dht_address} to see the records {wanted} of {name!r}",
        timeout=30,
        interval=0.3,
    )


def stock_store_everywhere(nodes: list[ServeProcess], name: str, value: str) -> list:
    """The attack: a stock kademlia STORE of `value` under the name's keys (kademlia's own
    `digest(name)` and ours) sent to every node; returns the decoded answers."""
    answers = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        for node in nodes:
            for key in (digest(name), name_key(name)):
                msg_id = os.urandom(20)
                payload = umsgpack.packb(["store", [os.urandom(20), key, value]])
                sock.sendto(b"\x00" + msg_id + payload, ("127.0.0.1", node.info.dht_port))
                data, _ = sock.recvfrom(65536)
                assert data[:21] == b"\x01" + msg_id
                answers.append(umsgpack.unpackb(data[21:]))
    return answers


def get_to(node_home: Path, what: str, out: Path, *extra: str):
    return run_cli("get", what, "-o", str(out), "--force", *extra, home=node_home)


def test_a_name_cannot_be_taken_over(tmp_path: Path) -> None:
    original = write_file(tmp_path / "a.iso", 2 * MIB, seed=1)
    other = write_file(tmp_path / "b.iso", 1 * MIB, seed=2)
    with LocalSwarm(4) as swarm:
        first, second, fetcher, bystander = swarm.nodes
        key1, key2 = publisher_key(first), publisher_key(second)
        assert key1 != key2 and len(key1) == 52
        run_cli("add", str(original), "--name", NAME, home=first.home, check=True)
        first_id = manifest_id_of(first)
        wait_for_records(fetcher, NAME, {key1: first_id})
        out = tmp_path / "before.iso"
        assert get_to(fetcher.home, NAME, out).returncode == 0
        assert file_hash(out) == file_hash(original)

        # the attack: a second publisher of the same name, and unsigned STOREs everywhere
        run_cli("add", str(other), "--name", NAME, home=second.home, check=True)
        other_id = manifest_id_of(second)
        assert stock_store_everywhere(swarm.nodes, NAME, other_id) == [False] * 8
        wait_for_records(bystander, NAME, {key1: first_id, key2: other_id})
        assert set(publishers_seen(bystander, NAME)) == {key1, key2}  # the STOREs: nothing

        # the node that fetched the name before keeps getting the original file
        out = tmp_path / "after.iso"
        assert get_to(fetcher.home, NAME, out).returncode == 0
        assert file_hash(out) == file_hash(original)

        # a fresh node (no node of its own, joining through the bystander) must choose
        fresh = tmp_path / "fresh"
        out = tmp_path / "fresh.iso"
        proc = get_to(fresh, NAME, out, "--bootstrap", bystander.dht_address)
        stderr = proc.stderr.decode()
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in stderr, stderr
        assert key1 in lines[0] and key2 in lines[0] and f"{NAME}@KEY" in lines[0]
        assert not out.exists()

        # NAME@KEY fetches either one (a prefix of the key will do)
        for key, source in ((key1[:10], original), (key2, other)):
            out = tmp_path / f"by-{key[:8]}.iso"
            proc = get_to(fresh, f"{NAME}@{key}", out, "--bootstrap", bystander.dht_address)
            assert proc.returncode == 0, proc.stderr.decode()
            assert file_hash(out) == file_hash(source)


def test_an_update_and_an_unpublish_reach_a_node_that_fetched_the_old_version(
    tmp_path: Path,
) -> None:
    old = write_file(tmp_path / "v1.bin", 1 * MIB, seed=3)
    new = write_file(tmp_path / "v2.bin", 1 * MIB, seed=4)
    with LocalSwarm(3) as swarm:
        publisher, fetcher, _ = swarm.nodes
        key = publisher_key(publisher)
        run_cli("add", str(old), "--name", NAME, home=publisher.home, check=True)
        wait_until(lambda: key in publishers_seen(fetcher, NAME), "the first record", timeout=30)
        out = tmp_path / "out.bin"
        assert get_to(fetcher.home, NAME, out).returncode == 0
        assert file_hash(out) == file_hash(old)

        # the publisher's node publishes the update at once: the next get has it
        run_cli("add", str(new), "--name", NAME, home=publisher.home, check=True)
        new_id = manifest_id_of(publisher)
        wait_for_records(fetcher, NAME, {key: new_id})
        assert get_to(fetcher.home, NAME, out).returncode == 0
        assert file_hash(out) == file_hash(new)
        listed = run_cli("ls", home=fetcher.home, check=True).stdout.decode()
        assert new_id[:16] in listed and NAME in listed

        # a signed removal: the fetcher is told, and keeps what it has under the id
        proc = run_cli("rm", NAME, "--unpublish", home=publisher.home, check=True)
        assert b"unpublished" in proc.stdout
        wait_for_records(fetcher, NAME, {key: ""})
        proc = get_to(fetcher.home, NAME, tmp_path / "gone.bin")
        assert proc.returncode != 0 and b"unpublished" in proc.stderr, proc.stderr
        assert get_to(fetcher.home, new_id, tmp_path / "by-id.bin").returncode == 0
