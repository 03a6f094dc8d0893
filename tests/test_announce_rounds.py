"""The re-announce round: pacing (pure, a simulated clock), its progress in the store, and a
real node restarted in the middle of a round going on from where it stopped."""

from __future__ import annotations

import asyncio
import hashlib
import math
from pathlib import Path

import pytest

import chunkstore
from chunkstore.local.store import KIND_CHUNK, Store
from chunkstore.net.announce_pacing import (
    SPREAD_SHARE,
    AnnounceRound,
    due_now,
    next_due_at,
    next_round,
    round_to_run,
)
from chunkstore.net.dht import DhtNode, dht_key
from chunkstore.net.node import REANNOUNCE_SECONDS
from chunkstore.net.providers import DEFAULT_TTL
from tests.helpers import port_free_for_tcp_and_udp, wait_until_async

HOST = "127.0.0.1"
HOUR = 3600.0
INTERVAL = 22 * HOUR


def test_record_lifetimes_are_kubos():
    assert DEFAULT_TTL == 48 * HOUR and REANNOUNCE_SECONDS == 22 * HOUR
    # a record outlives one missed round
    assert 2 * REANNOUNCE_SECONDS < DEFAULT_TTL


def walk(current, batch, start, end, step):
    """Drive a round with a simulated clock from `start` to `end`: take what is due at each
    step; returns [(time, taken)] and the final round."""
    taken = []
    now = start
    while now <= end:
        count = due_now(current, now, INTERVAL, batch)
        if count:
            taken.append((now, count))
            current = current.advanced(b"x", count, exhausted=False)
        now += step
    return taken, current


def test_a_large_store_is_spread_evenly_over_the_interval():
    batch = 1000
    current = AnnounceRound(started=0.0, port=9000, total=800_000)
    taken, current = walk(current, batch, 0.0, INTERVAL, 60.0)
    assert current.finished
    assert sum(n for _, n in taken) == 800_000
    assert all(n <= batch for _, n in taken)
    # done within the spread share of the interval, and evenly: about the same each hour
    assert taken[-1][0] <= SPREAD_SHARE * INTERVAL
    per_hour = [0] * 20
    for when, n in taken:
        per_hour[int(when // HOUR)] += n
    full_hours = per_hour[: int(SPREAD_SHARE * INTERVAL // HOUR)]  # the last one is partial
    assert max(full_hours) - min(full_hours) <= 2 * batch
    # nothing is due early: at a quarter of the spread, about a quarter is done
    early = sum(n for when, n in taken if when < SPREAD_SHARE * INTERVAL / 4)
    assert abs(early - 200_000) <= batch


def test_a_small_store_goes_out_when_the_round_begins():
    current = AnnounceRound(started=100.0, port=9000, total=800)
    assert due_now(current, 100.0, INTERVAL, 16_384) == 800
    assert next_due_at(current, INTERVAL, 16_384) == 100.0
    assert due_now(current.advanced(b"x", 800, exhausted=False), 101.0, INTERVAL, 16_384) == 0


def test_an_unpaced_round_is_due_at_once_a_batch_at_a_time():
    current = AnnounceRound(started=0.0, port=9000, total=2500, paced=False)
    counts = []
    while not current.finished:
        count = due_now(current, 0.0, INTERVAL, 1000)
        counts.append(count)
        current = current.advanced(b"x", count, exhausted=False)
    assert counts == [1000, 1000, 500]
    assert next_due_at(current, INTERVAL, 1000) == math.inf


def test_a_walk_that_reaches_the_end_of_the_ids_finishes_the_round():
    current = AnnounceRound(started=0.0, port=9000, total=1000)  # chunks were deleted since
    current = current.advanced(b"last", 300, exhausted=True)
    assert current.finished and current.cursor == b"last"


def test_a_saved_round_resumes_only_for_the_same_port_within_the_interval():
    saved = AnnounceRound(started=1000.0, port=9000, total=50, done=20, cursor=b"c" * 32)
    assert round_to_run(saved, 2000.0, 9000, INTERVAL, 60) == (saved, False)
    for now, port in [(2000.0, 9001), (1000.0 + INTERVAL, 9000), (500.0, 9000)]:
        fresh, new = round_to_run(saved, now, port, INTERVAL, 60)
        assert new and fresh == AnnounceRound(started=now, port=port, total=60, paced=False)
    fresh, new = round_to_run(None, 5.0, 9000, INTERVAL, 7)
    assert new and fresh.total == 7 and not fresh.paced


def test_the_next_round_is_paced_and_begins_after_the_interval():
    current = AnnounceRound(started=0.0, port=9000, total=10, done=10, paced=False)
    assert next_round(current, INTERVAL - 1, INTERVAL, 12) is None
    follow = next_round(current, INTERVAL, INTERVAL, 12)
    assert follow == AnnounceRound(started=INTERVAL, port=9000, total=12, paced=True)


def test_a_round_survives_encoding_and_damage_is_refused():
    current = AnnounceRound(started=12.5, port=65535, total=9, done=3, cursor=b"\x01" * 32)
    assert AnnounceRound.decode(current.encode()) == current
    assert AnnounceRound.decode(b"") is None
    assert AnnounceRound.decode(current.encode()[:-40]) is None
    assert AnnounceRound.decode(current.encode() + b"x" * 64) is None


def chunk_id(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(4, "big"), digest_size=32).digest()


def fill(store: Store, count: int) -> list[bytes]:
    """`count` chunks of one byte under made-up ids (the store does not re-hash), with the
    announce queue emptied as a node that announced them earlier leaves it."""
    ids = [chunk_id(n) for n in range(count)]
    store.put_chunks([(cid, b"\x00x") for cid in ids])
    store.ack_announces([(cid, KIND_CHUNK) for cid in ids])
    return sorted(ids)


def test_the_store_walks_chunk_ids_in_order_and_keeps_the_progress(tmp_path: Path):
    with Store(tmp_path / "home") as store:
        ids = fill(store, 50)
        assert store.chunk_count() == 50
        assert store.chunk_ids_after(b"", 20) == ids[:20]
        assert store.chunk_ids_after(ids[19], 100) == ids[20:]
        assert store.chunk_ids_after(ids[-1], 10) == []
        assert store.announce_progress() is None
        store.save_announce_progress(b"progress")
        assert store.pending_announces(100) == []  # the progress is not an id to announce
    with Store(tmp_path / "home") as store:
        assert store.announce_progress() == b"progress"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_restarted_node_resumes_its_announce_round(tmp_path: Path):
    home = tmp_path / "home"
    with Store(home) as store:
        ids = fill(store, 3000)

    async def main() -> None:
        peers = []
        try:
            for _ in range(8):
                peer = DhtNode()
                await peer.start(HOST, 0, [(HOST, peers[0].port)] if peers else [])
                peers.append(peer)
            bootstrap = [f"{HOST}:{peers[0].port}"]
            announced: list[list[bytes]] = []

            def record(node: chunkstore.Node) -> None:
                real = node.dht.announce_many

                async def announce_many(keys, transfer_port, *args, **kwargs):
                    keys = list(keys)
                    announced.append(keys)
                    return await real(keys, transfer_port, *args, **kwargs)

                node.dht.announce_many = announce_many

            def progress(node: chunkstore.Node) -> AnnounceRound:
                return AnnounceRound.decode(node.store.announce_progress())

            # The second node must take the first one's port (its records name it). A port
            # found free can still be taken by another process before the node binds it (CI
            # met that once): then another one is tried.
            for _ in range(5):
                port = port_free_for_tcp_and_udp()
                first = chunkstore.Node(
                    home, host=HOST, port=port, bootstrap=bootstrap, announce_batch=100
                )
                record(first)
                try:
                    await first.start()
                    break
                except chunkstore.NetworkError as exc:
                    if "in use" not in str(exc):
                        raise
            else:
                raise AssertionError("found no port that stayed free until the node bound it")
            try:
                began = progress(first)
                assert began.total == 3000 and began.done == 0 and not began.paced
                await wait_until_async(
                    lambda: progress(first).done >= 500, "a part of the round", timeout=60
                )
            finally:
                await first.stop()
            with Store(home) as store:  # what was saved when the node stopped
                stopped = AnnounceRound.decode(store.announce_progress())
            assert 0 < stopped.done < 3000, "stopped in the middle of the round"
            first_keys = {k for batch in announced for k in batch}
            assert {dht_key(c) for c in ids[: stopped.done]} <= first_keys
            announced.clear()

            second = chunkstore.Node(
                home, host=HOST, port=port, bootstrap=bootstrap, announce_batch=100
            )
            record(second)
            async with second:
                assert progress(second).started == began.started  # the same round
                await wait_until_async(
                    lambda: progress(second).finished, "the rest of the round", timeout=60
                )
            second_keys = [k for batch in announced for k in batch]
            # only the rest: from the chunk after the saved cursor to the last, each once
            rest = ids[ids.index(stopped.cursor) + 1 :]
            assert sorted(second_keys) == [dht_key(c) for c in rest]
            holders = await peers[-1].find_providers(dht_key(ids[-1]))
            assert [h.port for h in holders] == [port]
        finally:
            for peer in peers:
                await peer.stop()

    asyncio.run(main())
