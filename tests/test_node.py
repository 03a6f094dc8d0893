"""`chunkstore.Node` in one process: life cycle, clean-up after a failed start, and two
nodes of one program fetching from each other over 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

import chunkstore
from chunkstore.net.node import NODE_FILE
from tests.helpers import MIB, file_hash, wait_until_async, write_file

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


def udp_port_taken_with_tcp_free() -> tuple[socket.socket, int]:
    """A UDP socket bound to 127.0.0.1:P (the caller closes it), P being free for TCP."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((HOST, 0))
        port = udp.getsockname()[1]
        with socket.socket() as tcp:
            try:
                tcp.bind((HOST, port))
            except OSError:
                udp.close()
                continue
        return udp, port
    raise AssertionError("found no port free for TCP whose UDP twin could be taken")


def test_node_addresses_are_refused_before_start_and_after_stop(home: Path) -> None:
    node = chunkstore.Node(home, host=HOST)
    for attribute in ("port", "transfer_port", "dht_address"):
        with pytest.raises(chunkstore.NetworkError, match="not running"):
            getattr(node, attribute)

    async def main() -> None:
        async with node:
            assert node.port > 0 and node.transfer_port > 0
            assert node.dht_address == f"{HOST}:{node.port}"
            assert chunkstore.Node.serving(home) is node
            assert (home / NODE_FILE).exists()
        with pytest.raises(chunkstore.NetworkError):
            _ = node.port
        assert chunkstore.Node.serving(home) is None
        assert not (home / NODE_FILE).exists()

    asyncio.run(main())


def test_a_failed_start_leaves_nothing_running(home: Path) -> None:
    # Regression: the transfer server (TCP P) stayed listening when the DHT (UDP P) failed.
    udp, port = udp_port_taken_with_tcp_free()
    try:
        node = chunkstore.Node(home, host=HOST, port=port)

        async def main() -> None:
            with pytest.raises(chunkstore.NetworkError, match="DHT"):
                async with node:
                    pytest.fail("the node started on a taken UDP port")

        asyncio.run(main())
    finally:
        udp.close()
    with socket.socket() as tcp:
        tcp.bind((HOST, port))  # the transfer server let go of TCP P
    assert not (home / NODE_FILE).exists()
    assert chunkstore.Node.serving(home) is None
    with pytest.raises(chunkstore.NetworkError, match="not running"):
        _ = node.port

    async def again() -> None:  # and the home is usable again: a node starts on it
        async with chunkstore.Node(home, host=HOST) as node:
            assert node.port > 0

    asyncio.run(again())


def test_two_nodes_in_one_process_fetch_from_each_other(tmp_path: Path) -> None:
    src = write_file(tmp_path / "shared.bin", 3 * MIB, seed=21)
    first_home, second_home = tmp_path / "first", tmp_path / "second"
    out = tmp_path / "out.bin"

    async def main() -> None:
        async with (
            chunkstore.Node(first_home, host=HOST) as first,
            chunkstore.Node(second_home, host=HOST, bootstrap=[first.dht_address]) as second,
        ):
            # added while the first node runs: it announces what its home now holds
            added = chunkstore.add(src, home=first_home)
            mid = added.manifest_id
            await wait_until_async(
                lambda: second.providers(mid), "the second node to find the first as a holder"
            )
            result = await second.fetch(mid, out)
            assert result.chunks_fetched == added.chunks
            assert result.sources == {f"{HOST}:{first.transfer_port}": 3 * MIB}
            assert first.transfer.requests_served == added.chunks + 1  # and the manifest
            # the second node now holds the file: a local get needs no network
            chunkstore.get(mid, tmp_path / "again.bin", home=second.store)

    asyncio.run(main())
    assert file_hash(out) == file_hash(src)
    assert file_hash(tmp_path / "again.bin") == file_hash(src)
