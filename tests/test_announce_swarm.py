"""Region-batched announcing in a real swarm: 80 DhtNodes on 127.0.0.1 in one process."""

from __future__ import annotations

import os
import random
import time

import pytest

from benchmarks.announce_batching import sent_datagrams, start_swarm, stop_swarm
from chunkstore.net.announce_plan import key_int
from chunkstore.net.providers import Holder
from tests.test_dht import run

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

LOCAL = "127.0.0.1"
PORT = 9300


async def settled_swarm(size, seed):
    """`size` nodes (k = 20), each bootstrapped off a random earlier one and then once more off
    a random other (as a periodic table refresh would), so their tables are as a running
    network's, not only as each one's first join left them. RPCs wait 2 s, not 1: on a
    loaded test machine a live node must not pass for a departed one."""
    nodes = await start_swarm(size, seed=seed, rpc_timeout=2.0)
    try:
        rng = random.Random(seed)
        for node in nodes:
            await node.bootstrap([(LOCAL, rng.choice(nodes).port)])
    except BaseException:
        await stop_swarm(nodes)
        raise
    return nodes


def brute_force_closest(nodes, key, k):
    """The k nodes of the whole swarm closest to `key`, by XOR over every node id."""
    return sorted(nodes, key=lambda n: key_int(n.node_id) ^ key_int(key))[:k]


def holding(nodes, key, holder):
    return {n.node_id for n in nodes if holder in n.providers.get(key, time.monotonic())}


def test_batched_announcing_puts_every_key_on_its_k_closest_nodes():
    async def main():
        nodes = await settled_swarm(80, seed=11)
        try:
            announcer = nodes[0]
            keys = [os.urandom(20) for _ in range(600)]
            before = sent_datagrams(nodes)
            accepted = await announcer.announce_many(keys, PORT)
            datagrams = sent_datagrams(nodes) - before
            assert accepted == set(keys)
            me = Holder(LOCAL, PORT)
            wrong = []
            for key in keys:
                expected = {n.node_id for n in brute_force_closest(nodes, key, 20)}
                if holding(nodes, key, me) != expected:
                    wrong.append(key.hex())
            assert wrong == []
            # A few lookups (each node asked about twice) and one datagram to each node with
            # its keys: far below the ~60 datagrams per key of one lookup per key.
            assert datagrams / len(keys) < 2.0
            assert announcer.last_sweep.lookups < 40
        finally:
            await stop_swarm(nodes)

    run(main)


def test_keys_of_a_sparse_region_still_reach_their_closest_nodes():
    """Few keys (a new file's worth) in a larger swarm: each is settled by its own region."""

    async def main():
        nodes = await settled_swarm(60, seed=12)
        try:
            keys = [os.urandom(20) for _ in range(5)]
            assert await nodes[3].announce_many(keys, PORT) == set(keys)
            me = Holder(LOCAL, PORT)
            for key in keys:
                expected = {n.node_id for n in brute_force_closest(nodes, key, 20)}
                assert holding(nodes, key, me) == expected
            assert nodes[3].last_sweep.lookups <= len(keys)
        finally:
            await stop_swarm(nodes)

    run(main)


def test_departed_nodes_are_passed_over_and_the_live_closest_hold_nearly_every_key():
    async def main():
        nodes = await settled_swarm(80, seed=13)
        try:
            announcer = nodes[0]
            # a sixth of the swarm leaves without a word; the others' tables still name them
            gone = random.Random(13).sample(nodes[1:], 13)
            for node in gone:
                await node.stop()
            live = [n for n in nodes if n not in gone]
            keys = [os.urandom(20) for _ in range(300)]
            assert await announcer.announce_many(keys, PORT) == set(keys)
            me = Holder(LOCAL, PORT)
            missed = []
            for key in keys:
                expected = {n.node_id for n in brute_force_closest(live, key, 20)}
                missed.append(len(expected - holding(live, key, me)))
            # The live nodes' tables still list the departed ones. In about 1 run in 5 here a
            # few live nodes of one region (4 of them, for 67-85 keys) were never reached by
            # the sweep's lookups (their neighbours' answers named departed nodes instead), so
            # those keys sit on 16 of their 20 live closest until the next round; every other
            # key is on all 20. Exact placement without departures: the tests above.
            assert announcer.last_sweep.unanswered == 0
            assert max(missed) <= 4, missed
            assert sum(missed) <= 0.05 * 20 * len(keys), missed
        finally:
            await stop_swarm(nodes)

    run(main)
