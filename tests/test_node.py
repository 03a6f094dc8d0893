"""`chunkstore.Node` in one process: life cycle, clean-up after a failed start, two nodes of
one program fetching from each other over 127.0.0.1, and what a node announces (and keeps
queued) alone, when a contact joins, and after a restart."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

import chunkstore
from chunkstore.local.add import add_file
from chunkstore.local.store import KIND_CHUNK, KIND_MANIFEST, Store
from chunkstore.net.dht import DhtNode, dht_key
from chunkstore.net.node import NODE_FILE, RetryBackoff
from chunkstore.net.providers import Holder
from chunkstore.objects.chunking import ChunkerParams
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


@pytest.mark.parametrize("host", ["0.0.0.0", HOST], ids=["every-interface", "loopback"])
def test_a_lonely_node_keeps_its_announcements_until_a_contact_accepts_them(
    tmp_path: Path, host: str
) -> None:
    src = write_file(tmp_path / "lonely.bin", 2 * MIB, seed=22)
    first_home, second_home = tmp_path / "first", tmp_path / "second"

    async def main() -> None:
        async with chunkstore.Node(first_home, host=host) as first:
            mid = bytes.fromhex(chunkstore.add(src, home=first_home).manifest_id)
            assert await first.announce_pending() == 0  # nobody to tell...
            assert (mid, KIND_MANIFEST) in first.store.pending_announces(1)  # ...so it stays
            async with chunkstore.Node(
                second_home, host=HOST, bootstrap=[first.dht_address]
            ) as second:
                holder = Holder(HOST, first.transfer_port)
                # the first contact is told at once, not at the next re-announce
                await wait_until_async(
                    lambda: (
                        second.dht.providers.get(dht_key(mid), time.monotonic()) == [holder]
                        and not first.store.pending_announces(1)
                    ),
                    "the first node's queue to reach the second node",
                    timeout=10,
                )

    asyncio.run(main())


def test_a_restart_announces_only_files_held_whole(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fixed = ChunkerParams.fixed(MIB)
    with Store(tmp_path / "origin") as origin, Store(home) as store:
        whole = add_file(store, write_file(tmp_path / "whole", 2 * MIB, seed=23), chunker=fixed)
        whole_id = bytes.fromhex(whole.manifest_id)
        # an interrupted download: the manifest (pinned, not announced) and one of 3 chunks
        part = add_file(origin, write_file(tmp_path / "part", 3 * MIB, seed=24), chunker=fixed)
        part_id = bytes.fromhex(part.manifest_id)
        manifest = origin.get_manifest(part_id)
        held = manifest.chunks[0].chunk_id
        store.put_manifest(manifest, pin=True, announce=False)
        store.put_chunks([(held, origin.get_stored(held))])
        # as a store of an older version left it: no `complete` records, and the partial
        # file's manifest queued for announcing
        store._transact(lambda txn: txn.drop(store._complete, delete=False))
        store.queue_announce([part_id], KIND_MANIFEST)

    async def main() -> None:
        async with chunkstore.Node(home, host=HOST) as node:
            assert node.store.complete_manifests() == [whole_id]
            await node.announce_pending()  # alone: drops what must not go out, keeps the rest
            queued = set(node.store.pending_announces(100))
            assert (whole_id, KIND_MANIFEST) in queued and (held, KIND_CHUNK) in queued
            assert (part_id, KIND_MANIFEST) not in queued
            asker = DhtNode()
            await asker.start(HOST, 0, [(HOST, node.port)])
            try:
                me = [Holder(HOST, node.transfer_port)]
                assert await asker.find_providers(dht_key(whole_id)) == me
                assert await asker.find_providers(dht_key(held)) == me
                assert await asker.find_providers(dht_key(part_id)) == []
            finally:
                await asker.stop()

    asyncio.run(main())


def test_retries_of_refused_announcements_back_off_and_start_over() -> None:
    backoff = RetryBackoff(first=1.0, most=60.0)
    assert backoff.due(0.0)
    waits = []
    now = 0.0
    for _ in range(9):  # every retry refused again
        backoff.refused(now)
        assert not backoff.due(now)
        waits.append(backoff.retry_at - now)
        now = backoff.retry_at
        assert backoff.due(now)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    backoff.progressed()  # something went out: the next refusal waits the shortest delay
    backoff.refused(now)
    assert backoff.retry_at - now == 1.0
    backoff.refused(now)
    backoff.reset()  # a new contact: due at once, from the shortest delay
    assert backoff.due(now)
    backoff.refused(now)
    assert backoff.retry_at - now == 1.0


def test_the_local_api_bounds_a_holder_lookup_by_its_limit(tmp_path: Path) -> None:
    from chunkstore.net.lookup import NodeApiLookup

    src = write_file(tmp_path / "f.bin", MIB, seed=7)

    async def main() -> None:
        async with chunkstore.Node(tmp_path / "home", host=HOST) as node:
            mid = bytes.fromhex(chunkstore.add(src, home=tmp_path / "home").manifest_id)
            api = NodeApiLookup(node.info.api_url)
            try:
                await wait_until_async(
                    lambda: node.store.is_complete(mid), "the add is recorded complete"
                )
                assert await api.find_first_providers(mid, 1) == [Holder(HOST, node.transfer_port)]
                for bad in ("0", "65", "x"):
                    with pytest.raises(chunkstore.NetworkError, match="400"):
                        await api.get_json(f"/dht/providers/{mid.hex()}?limit={bad}")
            finally:
                await api.close()

    asyncio.run(main())
