"""Lookups that do not wait for the slowest (net/crawl.py through DhtNode): real nodes on
127.0.0.1, and contacts that are bound but never answer. Requests are counted, never timed."""

import asyncio
import contextlib
import os
import time

import pytest

from chunkstore.net.providers import Holder
from tests.helpers import wait_until_async
from tests.test_dht import LOCAL, RpcLog, random_key, request, run, swarm

pytestmark = pytest.mark.timeout(60)


class Silent(asyncio.DatagramProtocol):
    """A bound UDP socket that takes every datagram and never answers one (a node that
    hung, or whose answers are lost): unlike a closed port, nothing tells the sender."""

    def __init__(self):
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    @property
    def address(self):
        return self.transport.get_extra_info("sockname")[:2]


@contextlib.asynccontextmanager
async def silent_contacts(ids, nodes):
    """One Silent socket per id, each made known to every node of `nodes` the way any newcomer
    is (it sends them a find_node request, so they add it to their routing table)."""
    loop = asyncio.get_running_loop()
    made = []
    try:
        for node_id in ids:
            _, silent = await loop.create_datagram_endpoint(Silent, local_addr=(LOCAL, 0))
            made.append(silent)
            for node in nodes:
                silent.transport.sendto(
                    request(["find_node", [node_id, os.urandom(20)]]), (LOCAL, node.port)
                )
        wanted = set(ids)
        await wait_until_async(
            lambda: all(wanted <= {c.node_id for c in n.known_peers()} for n in nodes),
            "every node to know the silent contacts",
        )
        yield made
    finally:
        for silent in made:
            silent.transport.close()


def near(key, count):
    """`count` ids closer to `key` than almost any random id (they differ in the last byte)."""
    return [key[:-1] + bytes([key[-1] ^ i]) for i in range(1, count + 1)]


def test_a_provider_lookup_finishes_while_the_closest_contacts_never_answer():
    async def main():
        key = random_key()
        async with swarm(8) as nodes, silent_contacts(near(key, 5), nodes) as silent:
            holder, asker = nodes[1], nodes[6]
            assert await holder.announce(key, 9400) >= 3  # the honest ones accept it
            log = RpcLog(asker)

            found = await asker.find_providers(key)

            assert found == [Holder(LOCAL, 9400)]
            # the five closest never answered; each was asked once, and the lookup ended
            # on the answers of the others
            for s in silent:
                assert [rpc for _, rpc, _ in log.to(tuple(s.address))] == ["get_providers"]
            lookup = [entry for entry in log.sent if entry[1] == "get_providers"]
            assert sum(1 for entry in lookup if entry[2]) >= 3  # the honest ones answered
            # each unanswered request ends as a failure (after the lookup): the silent
            # contacts leave the routing table, as kademlia has it
            await wait_until_async(
                lambda: all(entry[2] is not None for entry in lookup),
                "the requests to the silent contacts to time out",
            )
            assert sorted(e[0] for e in lookup if not e[2]) == sorted(
                tuple(s.address) for s in silent
            )
            silent_ids = set(near(key, 5))
            assert not silent_ids & {c.node_id for c in asker.known_peers()}

            # The other nodes still name them in their answers; the next lookup from this
            # node sends them nothing (quarantined), and finds the holder again.
            log.clear()
            assert await asker.find_providers(key) == [Holder(LOCAL, 9400)]
            lookup = [entry for entry in log.sent if entry[1] == "get_providers"]
            assert lookup and all(answered for _, _, answered in lookup)
            assert not {tuple(s.address) for s in silent} & {e[0] for e in lookup}

    run(main)


def test_a_provider_lookup_stops_once_enough_holders_are_known():
    async def main():
        key = random_key()
        async with swarm(24) as nodes:
            for node, port in ((nodes[1], 9501), (nodes[2], 9502)):
                assert await node.announce(key, port) >= 20
            # the node farthest from the key holds no record itself: it must ask
            asker = max(
                nodes[3:],
                key=lambda n: int.from_bytes(n.node_id, "big") ^ int.from_bytes(key, "big"),
            )
            assert asker.providers.get(key, time.monotonic()) == []
            both = {Holder(LOCAL, 9501), Holder(LOCAL, 9502)}
            log = RpcLog(asker)

            assert set(await asker.find_providers(key, limit=20)) == both
            full = len(log.sent)
            assert full >= 20  # fewer than the limit exist: every close node is asked

            log.clear()
            assert set(await asker.find_providers(key, limit=2)) == both
            # the first answer (any of the 20 closest holds both records) ended it: the
            # first alpha requests are all that was sent
            assert 1 <= len(log.sent) <= 3

    run(main)
