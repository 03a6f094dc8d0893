"""A DHT node that strangers cannot knock over: oversized datagrams dropped unread, a request
budget per address, few routing-table entries per address, no amplification through
contacts that join, write tokens, address scopes. Real nodes and raw sockets on 127.0.0.1;
every flood is bounded in count and time."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import umsgpack

from chunkstore.demo.local_swarm import LocalSwarm
from chunkstore.net.address_scope import Scope, scope_of, usable
from chunkstore.net.contact_rules import ContactRules
from chunkstore.net.dht import DhtNode
from chunkstore.net.protocol import MAX_DATAGRAM_BYTES, name_key, parse_nodes, parse_providers
from chunkstore.net.providers import Holder
from chunkstore.net.request_budget import ReplyBudget, RequestBudget
from chunkstore.net.write_tokens import ROTATE_SECONDS, WriteTokens
from tests.helpers import signed_record
from tests.test_dht import LOCAL, answer, raw_socket, request, run

pytestmark = pytest.mark.timeout(120)


# -- pure rules ------------------------------------------------------------------------------


def test_address_scopes_keep_narrower_addresses_from_wider_nodes():
    assert scope_of("127.0.0.1") is Scope.LOOPBACK and scope_of("::1") is Scope.LOOPBACK
    for unusable in ("0.0.0.0", "::", "not-an-ip", ""):
        assert scope_of(unusable) is Scope.UNUSABLE and not usable(unusable, None)
    assert usable("127.0.0.5", Scope.LOOPBACK)  # a loopback test swarm keeps working
    assert usable("127.0.0.5", None)  # own address not known yet: no rule beyond that
    for own in (Scope.LINK_LOCAL, Scope.PRIVATE, Scope.PUBLIC):
        assert not usable("127.0.0.5", own)  # a node on a network ignores loopback holders
        assert not usable("::1", own)


def test_write_tokens_are_bound_to_the_ip_and_expire_after_two_periods():
    tokens = WriteTokens(now=0.0)
    token = tokens.token_for("127.0.0.1", 0.0)
    assert tokens.valid("127.0.0.1", token, 1.0)
    assert not tokens.valid("127.0.0.2", token, 1.0)  # another address
    assert not tokens.valid("127.0.0.1", b"\x00" * 8, 1.0)
    assert not tokens.valid("127.0.0.1", None, 1.0) and not tokens.valid("127.0.0.1", "x", 1.0)
    assert tokens.valid("127.0.0.1", token, ROTATE_SECONDS + 1)  # the previous secret
    assert not tokens.valid("127.0.0.1", token, 2 * ROTATE_SECONDS + 1)


def test_the_request_budget_stops_a_flood_from_one_address():
    budget = RequestBudget(rate=10, burst=20, relax_loopback=False)
    allowed = sum(budget.allow("127.0.0.9", 0.0) for _ in range(100))
    assert allowed == 20 and budget.refused == 80
    assert budget.allow("127.0.0.8", 0.0)  # another address has its own bucket
    assert sum(budget.allow("127.0.0.9", 1.0) for _ in range(100)) == 10  # refilled at rate
    assert all(RequestBudget(rate=1, burst=1).allow("127.0.0.9", 0.0) for _ in range(50))


def test_contact_rules_admit_one_id_per_address_and_few_per_ip():
    rules = ContactRules(max_per_ip_per_bucket=2, max_per_ip=3, relax_loopback=False)
    table = [(b"a" * 20, "127.0.0.9", 1000)]
    assert not rules.admits("127.0.0.9", 1000, b"b" * 20, table, table)  # taken address
    assert rules.admits("127.0.0.9", 1000, b"a" * 20, table, table)  # the same contact
    two = table + [(b"c" * 20, "127.0.0.9", 1001)]
    assert not rules.admits("127.0.0.9", 1002, b"d" * 20, two, two)  # bucket has 2 of the IP
    assert rules.admits("127.0.0.9", 1002, b"d" * 20, [], two)  # another bucket: fine
    three = two + [(b"e" * 20, "127.0.0.9", 1003)]
    assert not rules.admits("127.0.0.9", 1004, b"f" * 20, [], three)  # 3 in the table
    relaxed = ContactRules(max_per_ip_per_bucket=2, max_per_ip=3)
    assert relaxed.admits("127.0.0.9", 1004, b"f" * 20, three, three)  # loopback swarm
    assert not relaxed.admits("127.0.0.9", 1000, b"f" * 20, three, three)  # never an address twice


# -- a real node -----------------------------------------------------------------------------


def test_oversized_datagrams_are_dropped_before_decoding():
    async def main():
        node = DhtNode()
        await node.start(LOCAL, 0)
        try:
            target = (LOCAL, node.port)
            big = b"\x00" + os.urandom(20) + umsgpack.packb(["ping", [b"x" * 60_000]])
            assert len(big) > MAX_DATAGRAM_BYTES
            async with raw_socket() as (transport, peer):
                for _ in range(100):
                    transport.sendto(big, target)
                    await asyncio.sleep(0.002)  # paced: the socket buffer holds a few only
                ping = os.urandom(20)
                transport.sendto(request(["ping", [os.urandom(20)]], ping), target)
                assert await answer(peer, ping) == node.node_id
            # every one dropped unread (decoding cost 14.7 ms each, measured before the check)
            assert node.protocol.dropped_datagrams == 100
        finally:
            await node.stop()

    run(main)


def test_a_flood_from_one_address_gets_its_budget_of_answers_and_no_more():
    async def main():
        node = DhtNode()
        await node.start(LOCAL, 0)
        node.protocol.budget = RequestBudget(rate=50, burst=100, relax_loopback=False)
        try:
            target = (LOCAL, node.port)
            async with raw_socket() as (transport, peer):
                nid = os.urandom(20)
                started = time.monotonic()
                for _ in range(1000):
                    transport.sendto(request(["ping", [nid]]), target)
                await asyncio.sleep(0.5)
                elapsed = time.monotonic() - started
                answered = peer.received.qsize()
            assert 100 <= answered <= 100 + 50 * elapsed + 1, (answered, elapsed)
            # another address still gets answers
            async with raw_socket() as (transport, peer):
                ping = os.urandom(20)
                transport.sendto(request(["ping", [os.urandom(20)]], ping), target)
                assert await answer(peer, ping) == node.node_id
        finally:
            await node.stop()

    run(main)


def test_a_thousand_ids_from_one_socket_hold_one_routing_table_entry():
    async def main():
        node = DhtNode()
        await node.start(LOCAL, 0)
        try:
            target = (LOCAL, node.port)
            async with raw_socket() as (transport, peer):
                for _ in range(1000):
                    transport.sendto(request(["ping", [os.urandom(20)]]), target)
                await asyncio.sleep(0.5)
                mine = transport.get_extra_info("sockname")[:2]
            held = [c for c in node.known_peers() if (c.host, c.port) == tuple(mine)]
            assert len(held) <= 1, len(held)
        finally:
            await node.stop()

    run(main)


def test_the_per_ip_limits_apply_beyond_loopback_swarms():
    async def main():
        node = DhtNode()
        await node.start(LOCAL, 0)
        node.protocol.contact_rules = ContactRules(relax_loopback=False)
        try:
            target = (LOCAL, node.port)
            loop = asyncio.get_running_loop()
            sockets = []
            try:
                for _ in range(30):  # 30 sockets of one IP, 10 random ids each
                    transport, _ = await loop.create_datagram_endpoint(
                        asyncio.DatagramProtocol, local_addr=(LOCAL, 0)
                    )
                    sockets.append(transport)
                for transport in sockets:
                    for _ in range(10):
                        transport.sendto(request(["ping", [os.urandom(20)]]), target)
                await asyncio.sleep(0.5)
            finally:
                for transport in sockets:
                    transport.close()
            assert len(node.known_peers()) <= ContactRules().max_per_ip
        finally:
            await node.stop()

    run(main)


@pytest.mark.slow
def test_a_fresh_id_ping_brings_back_little_and_the_transfer_port_stays_quick(
    tmp_path: Path,
) -> None:
    """The amplification of issue 10 (item 4): after thousands of STOREs (stock ones, now
    refused, and valid name records), a ping with a fresh id from an address that never
    answers gets back at most 10x its size, and 20 of them leave /health quick."""
    with LocalSwarm(1) as swarm:
        node = swarm.nodes[0]
        target = ("127.0.0.1", node.info.dht_port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
            nid = os.urandom(20)
            for i in range(3000):
                key = os.urandom(20)
                stock = ["store", [nid, key, "v" * 4000]]
                sock.sendto(b"\x00" + os.urandom(20) + umsgpack.packb(stock), target)
                record = signed_record(f"flood-{i}", "ab" * 32, seed=i % 7)
                store = ["store_name", [nid, name_key(record.name), record.encoded]]
                sock.sendto(b"\x00" + os.urandom(20) + umsgpack.packb(store), target)
                if i % 100 == 99:
                    time.sleep(0.01)  # bounded pace: the flood stops by itself
        # fresh ids, from sockets that never answer what the node sends them
        listeners = []
        try:
            sent = received = 0
            for _ in range(20):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                listeners.append(s)
                ping = b"\x00" + os.urandom(20) + umsgpack.packb(["ping", [os.urandom(20)]])
                s.sendto(ping, target)
                sent += len(ping)
            started = time.monotonic()
            worst = 0.0
            url = f"http://127.0.0.1:{node.info.transfer_port}/health"
            while time.monotonic() - started < 3.0:
                t = time.monotonic()
                with urllib.request.urlopen(url, timeout=5) as resp:
                    assert resp.status == 200
                worst = max(worst, time.monotonic() - t)
                for s in listeners:
                    while True:
                        try:
                            received += len(s.recv(65536))
                        except BlockingIOError:
                            break
                time.sleep(0.05)
        finally:
            for s in listeners:
                s.close()
        print(f"fresh-id pings: {sent} bytes sent, {received} back; /health worst {worst:.3f} s")
        assert received <= 10 * sent, (received, sent)
        assert worst < 0.3, worst


def test_answers_to_an_unproven_address_stay_within_its_byte_budget():
    """The largest answer (find_names with 12 records, ~5 KB for a ~80-byte request) asked
    for from a socket that never answered the node: what it sends that address is bounded by
    the reply budget, while a proven address (one that answered the node) is not limited."""

    async def main():
        node = DhtNode()
        await node.start(LOCAL, 0)
        node.protocol.reply_budget = ReplyBudget(rate=10_000, burst=20_000, relax_loopback=False)
        try:
            name = "popular.iso"
            for seed in range(12):
                node.name_records.offer(
                    name_key(name), signed_record(name, "ab" * 32, seed=seed), time.time()
                )
            target = (LOCAL, node.port)
            async with raw_socket() as (transport, peer):
                started = time.monotonic()
                for _ in range(100):
                    ask = ["find_names", [os.urandom(20), name_key(name)]]
                    transport.sendto(request(ask), target)
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.3)
                elapsed = time.monotonic() - started
                received = 0
                while not peer.received.empty():
                    received += len(peer.received.get_nowait())
            assert 0 < received <= 20_000 + 10_000 * elapsed + 6000, (received, elapsed)
            assert node.protocol.reply_budget.refused > 0
            # a node that answered us (a proven address) gets every answer
            other = DhtNode()
            await other.start(LOCAL, 0, [target])
            try:
                for _ in range(20):
                    assert len(await other.find_name_records(name)) == 12
            finally:
                await other.stop()
        finally:
            await node.stop()

    run(main)


def test_answers_naming_narrower_addresses_are_not_followed():
    # A node on a LAN (or the internet) is told of loopback holders and contacts: it drops
    # them, but still counts the node it asked (the "" marker) as a holder.
    answer = {
        "providers": [["", 4100], ["127.0.0.2", 4200]],
        "nodes": [[b"n" * 20, "127.0.0.3", 4400]],
        "token": b"t" * 8,
    }
    holders, nodes, _ = parse_providers(answer, "127.0.0.1", 20, own_scope=Scope.PRIVATE)
    assert holders == [Holder("127.0.0.1", 4100)] and nodes == []
    assert parse_nodes([[b"n" * 20, "127.0.0.3", 4400]], 20, Scope.PUBLIC) == []
    # a loopback node (or one that does not know its address yet) keeps them
    holders, nodes, _ = parse_providers(answer, "127.0.0.1", 20, own_scope=Scope.LOOPBACK)
    assert len(holders) == 2 and len(nodes) == 1
    assert len(parse_providers(answer, "127.0.0.1", 20)[0]) == 2
