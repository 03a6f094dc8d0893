"""The batched add_providers RPC on the wire: the write-token rule, validation of every key,
the per-IP limits, one datagram. Real nodes and raw sockets on 127.0.0.1."""

from __future__ import annotations

import os
import time

import pytest
import umsgpack

from chunkstore.net.dht import DhtNode
from chunkstore.net.protocol import MAX_KEYS_PER_ADD, MAX_NODES_PER_ANSWER
from chunkstore.net.providers import Holder, ProviderStore
from chunkstore.net.request_budget import AddressBudget
from tests.test_dht import LOCAL, answer, raw_socket, request, run, swarm

pytestmark = pytest.mark.timeout(60)


def keys(count):
    return [os.urandom(20) for _ in range(count)]


async def ask(transport, peer, target, rpc, args):
    msg_id = os.urandom(20)
    transport.sendto(request([rpc, args], msg_id), target)
    return await answer(peer, msg_id)


def test_a_batch_needs_a_token_bound_to_the_ip_not_to_a_key():
    async def main():
        async with swarm(2) as nodes:
            target = (LOCAL, nodes[0].port)
            batch = keys(50)
            nid = os.urandom(20)
            async with raw_socket() as (transport, peer):
                for token in (None, b"\x00" * 8, "text"):
                    reply = await ask(
                        transport, peer, target, "add_providers", [nid, batch, 4300, token]
                    )
                    assert reply["stored"] == 0 and reply["busy"] is False
                assert all(nodes[0].providers.get(k, time.monotonic()) == [] for k in batch)
                # the refusal carried a fresh token for this address: it works, for any key
                fresh = reply["token"]
                reply = await ask(
                    transport, peer, target, "add_providers", [nid, batch, 4300, fresh]
                )
                assert reply["stored"] == 50
                # as does the token of a get_providers about some other key
                other = await ask(transport, peer, target, "get_providers", [nid, os.urandom(20)])
                more = keys(10)
                reply = await ask(
                    transport, peer, target, "add_providers", [nid, more, 4301, other["token"]]
                )
                assert reply["stored"] == 10
            now = time.monotonic()
            # only the observed source address is recorded
            assert all(nodes[0].providers.get(k, now) == [Holder(LOCAL, 4300)] for k in batch)
            assert all(nodes[0].providers.get(k, now) == [Holder(LOCAL, 4301)] for k in more)
            assert await nodes[1].find_providers(more[3]) == [Holder(LOCAL, 4301)]

    run(main)


def test_malformed_batches_are_dropped_unanswered_and_record_nothing():
    async def main():
        async with swarm(1) as nodes:
            target = (LOCAL, nodes[0].port)
            nid = os.urandom(20)
            async with raw_socket() as (transport, peer):
                token = (await ask(transport, peer, target, "get_providers", [nid, nid]))["token"]
                good = keys(3)
                bad = [
                    [nid, [], 4300, token],  # no key
                    [nid, keys(MAX_KEYS_PER_ADD + 1), 4300, token],  # too many
                    [nid, good + [b"short"], 4300, token],  # one bad key spoils the batch
                    [nid, good + ["x" * 20], 4300, token],
                    [nid, good[0], 4300, token],  # not a list
                    [nid, good, 0, token],  # no port
                    [nid, good, "4300", token],
                    [b"short", good, 4300, token],
                ]
                for args in bad:
                    transport.sendto(request(["add_providers", args]), target)
                # the first answer is to the well-formed request sent after them
                reply = await ask(
                    transport, peer, target, "add_providers", [nid, keys(1), 9, token]
                )
                assert reply["stored"] == 1
            assert all(nodes[0].providers.get(k, time.monotonic()) == [] for k in good)

    run(main)


def test_a_full_batch_fits_one_datagram():
    args = [os.urandom(20), keys(MAX_KEYS_PER_ADD), 65535, os.urandom(8)]
    datagram = request(["add_providers", args])
    assert len(datagram) < 8192  # rpcudp's request limit; the node drops more unread

    async def main():
        async with swarm(2) as nodes:
            batch = keys(MAX_KEYS_PER_ADD)
            assert await nodes[1].announce_many(batch, 4400) == set(batch)
            now = time.monotonic()
            assert all(Holder(LOCAL, 4400) in nodes[0].providers.get(k, now) for k in batch)
            assert nodes[1].last_sweep.batches == 1  # the whole batch in one request

    run(main)


def test_the_per_ip_limits_hold_for_every_key_of_a_batch():
    async def main():
        # no loopback exemptions: this node treats 127.0.0.1 as any stranger
        store = ProviderStore(relax_loopback=False, max_per_ip=4)
        async with swarm(1, providers=store) as nodes:
            node = nodes[0]
            node.protocol.record_budget = AddressBudget(rate=1.0, burst=300, relax_loopback=False)
            target = (LOCAL, node.port)
            nid = os.urandom(20)
            batch = keys(60)
            replies = []
            for port in range(4500, 4506):  # six holders of one IP, each sending 60 keys
                async with raw_socket() as (transport, peer):
                    token = (await ask(transport, peer, target, "get_providers", [nid, nid]))[
                        "token"
                    ]
                    replies.append(
                        await ask(
                            transport, peer, target, "add_providers", [nid, batch, port, token]
                        )
                    )
            # 300 records per IP in a burst: the sixth batch is refused as busy
            assert [r["stored"] for r in replies] == [60] * 5 + [0]
            assert replies[-1]["busy"] is True
            # and at most 4 holders of one IP per key, whatever the batches
            now = time.monotonic()
            assert all(len(store.get(k, now)) == 4 for k in batch)

    run(main)


def test_get_providers_gives_as_many_closer_nodes_as_asked_within_a_bound():
    async def main():
        async with swarm(30) as nodes:
            target = (LOCAL, nodes[0].port)
            nid = os.urandom(20)
            async with raw_socket() as (transport, peer):
                default = await ask(transport, peer, target, "get_providers", [nid, nid])
                assert len(default["nodes"]) == 20  # k
                fewer = await ask(transport, peer, target, "get_providers", [nid, nid, 5])
                assert len(fewer["nodes"]) == 5
                for want in (0, MAX_NODES_PER_ANSWER + 1, "5", 5.0):
                    transport.sendto(request(["get_providers", [nid, nid, want]]), target)
                wide = await ask(
                    transport, peer, target, "get_providers", [nid, nid, MAX_NODES_PER_ANSWER]
                )
                # every contact but the asker itself, the 30 nodes being fewer than the bound
                assert len(wide["nodes"]) == len(nodes) - 1 > 20
                assert len(umsgpack.packb(wide)) < 8192

    run(main)


def test_a_lonely_node_batches_nothing_and_reports_no_key_accepted():
    async def main():
        alone = DhtNode()
        await alone.start(LOCAL, 0)
        try:
            assert await alone.announce_many(keys(30), 4600) == set()
        finally:
            await alone.stop()

    run(main)
