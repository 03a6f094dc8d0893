"""DHT layer: real nodes on 127.0.0.1 (OS-chosen ports), one event loop per test."""

import asyncio
import contextlib
import os
import time

import pytest
import umsgpack
from kademlia.network import Server
from kademlia.node import Node

from chunkstore.errors import NetworkError
from chunkstore.net.dht import DhtNode, OwnRecords, dht_key, load_contacts, name_key
from chunkstore.net.protocol import (
    INVALID,
    MAX_HOLDERS_PER_ANSWER,
    SELF_HOLDER_HOST,
    ChunkstoreProtocol,
    parse_providers,
)
from chunkstore.net.providers import Holder
from tests.helpers import signed_record, wait_until_async

pytestmark = pytest.mark.timeout(60)

LOCAL = "127.0.0.1"
MANIFEST = "ab" * 32
OTHER_MANIFEST = "cd" * 32


def run(main):
    """Run `main()` in a fresh loop and fail if anything reached the loop's error handler."""
    errors = []

    async def wrapper():
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        await main()

    asyncio.run(wrapper())
    assert errors == []


@contextlib.asynccontextmanager
async def swarm(size, **node_options):
    """`size` nodes bootstrapped off the first; all stopped on exit, whatever happens."""
    nodes = []
    try:
        for _ in range(size):
            node = DhtNode(**node_options)
            nodes.append(node)
            bootstrap = [(LOCAL, nodes[0].port)] if len(nodes) > 1 else []
            await node.start(LOCAL, 0, bootstrap)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


class RawPeer(asyncio.DatagramProtocol):
    """A plain UDP socket that records every datagram it receives: answers in `received`,
    requests (a node pings a newcomer before handing it anything) in `requests`."""

    def __init__(self):
        self.received = asyncio.Queue()
        self.requests = []

    def datagram_received(self, data, addr):
        if data[:1] == b"\x00":
            self.requests.append(data)
        else:
            self.received.put_nowait(data)


@contextlib.asynccontextmanager
async def raw_socket():
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(RawPeer, local_addr=(LOCAL, 0))
    try:
        yield transport, peer
    finally:
        transport.close()


class RpcLog:
    """Every request one node sends from now on: [address, rpc name, answered (None while
    waiting)]. Wraps the protocol's one sending path, so a request skipped without a
    datagram (a quarantined contact) does not appear."""

    def __init__(self, node):
        self.sent = []
        protocol = node.protocol
        send = protocol._request

        async def request(address, rpc, *args):
            entry = [tuple(address), rpc, None]
            self.sent.append(entry)
            ok, answer = await send(address, rpc, *args)
            entry[2] = ok
            return ok, answer

        protocol._request = request

    def to(self, address):
        return [entry for entry in self.sent if entry[0] == address]

    def unanswered(self):
        return [entry for entry in self.sent if not entry[2]]

    def clear(self):
        self.sent.clear()


def request(payload, msg_id=None):
    return b"\x00" + (msg_id or os.urandom(20)) + umsgpack.packb(payload)


async def answer(peer, msg_id=None, timeout=10.0):
    """The decoded next answer the raw socket receives (failing after `timeout` s).

    With `msg_id`, that answer must be to that request: a node answers requests in the order
    they arrive, so an answer to one sent earlier would come first."""
    data = await asyncio.wait_for(peer.received.get(), timeout)
    assert data[:1] == b"\x01"
    if msg_id is not None:
        assert data[1:21] == msg_id, "an earlier request was answered"
    return umsgpack.unpackb(data[21:])


def random_key():
    return dht_key(os.urandom(32))


def test_find_providers_returns_every_announcer_with_its_transfer_port():
    async def main():
        async with swarm(5) as nodes:
            key = random_key()
            assert await nodes[0].announce(key, 9001) > 0
            assert await nodes[1].announce(key, 9002) > 0
            holders = await nodes[2].find_providers(key)
            assert set(holders) == {Holder(LOCAL, 9001), Holder(LOCAL, 9002)}
            assert len(await nodes[3].find_providers(key, limit=1)) == 1
            assert await nodes[3].find_providers(random_key()) == []

    run(main)


def test_announce_many_announces_every_key():
    async def main():
        async with swarm(4) as nodes:
            keys = [random_key() for _ in range(20)]
            assert await nodes[0].announce_many(keys, 9100, concurrency=4) == set(keys)
            for key in keys[:5]:
                assert await nodes[3].find_providers(key) == [Holder(LOCAL, 9100)]

    run(main)


def test_node_listening_on_a_wildcard_records_its_observed_address():
    async def main():
        async with swarm(2) as nodes:
            wildcard = DhtNode()
            try:
                assert await wildcard.start("0.0.0.0", 0, [(LOCAL, nodes[0].port)]) == 1
                key = random_key()
                await wildcard.announce(key, 9200)
                assert wildcard.providers.get(key, time.monotonic()) == [Holder(LOCAL, 9200)]
                assert await nodes[1].find_providers(key) == [Holder(LOCAL, 9200)]
            finally:
                await wildcard.stop()

    run(main)


def test_name_records_of_several_publishers_coexist_and_newer_replace_older():
    async def main():
        async with swarm(5) as nodes:
            first = signed_record("bigfile.iso", MANIFEST, seed=1)
            assert await nodes[0].publish_record(first) > 0
            assert await nodes[3].find_name_records("bigfile.iso") == [first]
            # another publisher of the same name: both are kept, neither overwrites
            other = signed_record("bigfile.iso", OTHER_MANIFEST, seed=2)
            await nodes[1].publish_record(other)
            found = await nodes[4].find_name_records("bigfile.iso")
            assert {r.encoded for r in found} == {first.encoded, other.encoded}
            # the first publisher's update replaces its own record only
            update = signed_record("bigfile.iso", OTHER_MANIFEST, seed=1, seq=2)
            await nodes[0].publish_record(update)
            found = await nodes[2].find_name_records("bigfile.iso")
            assert {r.encoded for r in found} == {update.encoded, other.encoded}
            # and the old record, published again, changes nothing
            await nodes[3].publish_record(first)
            found = await nodes[4].find_name_records("bigfile.iso")
            assert {r.encoded for r in found} == {update.encoded, other.encoded}
            rpcs = RpcLog(nodes[2])
            assert await nodes[2].find_name_records("no-such-name") == []
            # The lookup ended because every node had answered, not on a timeout: each
            # other node was asked once, and every request got its answer.
            asked = sorted(address for address, rpc, _ in rpcs.sent if rpc == "find_names")
            assert asked == sorted((LOCAL, n.port) for n in nodes if n is not nodes[2])
            assert rpcs.unanswered() == []

    run(main)


def test_a_stock_kademlia_server_can_join_but_its_values_decide_nothing():
    async def main():
        async with swarm(3) as nodes:
            await nodes[0].publish_record(signed_record("shared.bin", MANIFEST))
            stock = Server()
            await stock.listen(0, LOCAL)
            try:
                await stock.bootstrap([(LOCAL, nodes[1].port)])
                assert {(c.host, c.port) for c in nodes[1].known_peers()} >= {
                    stock.transport.get_extra_info("sockname")[:2]
                }
                assert await stock.get("shared.bin") is None  # no unsigned value to read
                # (stock `set` reports success whatever the answers: it counts the replies)
                await stock.set("from-stock", OTHER_MANIFEST)
                assert all(list(n.protocol.storage) == [] for n in nodes)  # stored nowhere
                assert await nodes[2].find_name_records("from-stock") == []
            finally:
                stock.stop()

    run(main)


def test_garbage_datagrams_are_dropped_and_the_node_keeps_answering():
    async def main():
        async with swarm(2) as nodes:
            target = (LOCAL, nodes[0].port)
            nid, key = os.urandom(20), os.urandom(20)
            truncated = request(["ping", [nid]])[:-5]
            bad_requests = [
                "ping",
                ["ping"],
                ["ping", 5],
                ["ping", [b"short"]],
                ["ping", {"a": 1}],
                [1, 2],
                [b"ping", [nid]],
                ["stun", [1, 2, 3]],
                ["no_such_rpc", []],
                ["find_node", [nid, "not bytes"]],
                ["find_value", [nid, b"x" * 21]],
                ["store", [nid, key, ["a", "list"]]],
                ["store", [nid, key]],
                ["store_name", [nid, key]],
                ["store_name", [nid, b"short", b"record"]],
                ["find_names", [nid, "not bytes"]],
                ["add_provider", [nid, key, 0]],
                ["add_provider", [nid, key, 70000]],
                ["add_provider", [nid, key, True]],
                ["add_provider", [nid, key, "8080"]],
                ["get_providers", [nid, 5]],
                ["get_providers", [None, key]],
            ]
            garbage = [os.urandom(n) for n in (0, 1, 20, 21, 22, 100, 1500)]
            garbage += [truncated, b"\x00" + os.urandom(20) + b"\x91" * 5000 + b"\xc0"]
            garbage += [b"\x01" + os.urandom(20) + umsgpack.packb([True]), b"\x07" * 40]
            async with raw_socket() as (transport, peer):
                for payload in bad_requests:
                    transport.sendto(request(payload), target)
                for datagram in garbage:
                    transport.sendto(datagram, target)
                # The first answer is to this ping, sent last: no bad request got one.
                ping = os.urandom(20)
                transport.sendto(request(["ping", [nid]], ping), target)
                assert await answer(peer, ping) == nodes[0].node_id
                assert peer.received.empty()
            assert await nodes[1].protocol.ping_address(target) == nodes[0].node_id
            record = signed_record("after-garbage", MANIFEST)
            await nodes[1].publish_record(record)
            assert await nodes[0].find_name_records("after-garbage") == [record]

    run(main)


def test_a_request_cannot_register_a_foreign_address():
    async def main():
        async with swarm(3) as nodes:
            target = (LOCAL, nodes[0].port)
            key = random_key()
            async with raw_socket() as (transport, peer):
                nid = os.urandom(20)
                transport.sendto(request(["add_provider", [nid, key, "127.1.2.3", 4242]]), target)
                transport.sendto(request(["add_provider", [nid, key, ["127.1.2.3", 4242]]]), target)
                # The first answer is to the well-formed request sent after them: the two
                # naming a foreign address were dropped unanswered.
                # without a write token (a forged sender never sees one): refused
                add = os.urandom(20)
                transport.sendto(request(["add_provider", [nid, key, 4242]], add), target)
                assert await answer(peer, add) is False
                forged = os.urandom(20)
                bad_token = request(["add_provider", [nid, key, 4242, b"\x00" * 8]], forged)
                transport.sendto(bad_token, target)
                assert await answer(peer, forged) is False
                assert nodes[0].providers.get(key, time.monotonic()) == []
                # with the token get_providers gave this address: recorded
                get = os.urandom(20)
                transport.sendto(request(["get_providers", [nid, key]], get), target)
                token = (await answer(peer, get))["token"]
                add = os.urandom(20)
                transport.sendto(request(["add_provider", [nid, key, 4242, token]], add), target)
                assert await answer(peer, add) is True
                get = os.urandom(20)
                transport.sendto(request(["get_providers", [nid, key]], get), target)
                reply = await answer(peer, get)
            assert reply["providers"] == [[LOCAL, 4242]]
            assert nodes[0].providers.get(key, time.monotonic()) == [Holder(LOCAL, 4242)]
            assert await nodes[1].find_providers(key, limit=1) == [Holder(LOCAL, 4242)]

    run(main)


def test_get_providers_answer_stays_within_one_small_datagram():
    async def main():
        # a node holding the object itself names itself too: the answer stays within bounds
        async with swarm(1, local_holdings=lambda key: 65535) as (node,):
            key = random_key()
            now = time.monotonic()
            for i in range(200):
                # the longest spelling of a loopback address (IPv4-mapped 127.0.x.x)
                holder = Holder(f"0000:0000:0000:0000:0000:ffff:7f00:{i:04x}", 65535)
                node.providers.add(key, holder, now)
            reply = node.protocol.rpc_get_providers((LOCAL, 40000), os.urandom(20), key)
            assert len(reply["providers"]) == MAX_HOLDERS_PER_ANSWER
            assert reply["providers"][0] == [SELF_HOLDER_HOST, 65535]
            assert len(umsgpack.packb(reply)) < 8192 - 21

    run(main)


def test_lookups_skip_a_dead_node_after_one_unanswered_request():
    async def main():
        async with swarm(5) as nodes:
            victim = nodes[4]
            dead = (LOCAL, victim.port)
            # a key right next to the victim's id, so every lookup wants to ask it
            key = victim.node_id[:-1] + bytes([victim.node_id[-1] ^ 1])
            assert await nodes[0].announce(key, 9300) >= 3
            await victim.stop()
            first, other = RpcLog(nodes[1]), RpcLog(nodes[2])

            assert Holder(LOCAL, 9300) in await nodes[1].find_providers(key)
            # the dead node cost one unanswered request, no more; the lookup did not wait
            # for its timeout, which drops the node from the table once it passes
            await wait_until_async(
                lambda: [answered for _, _, answered in first.to(dead)] == [False],
                "the request to the dead node to time out",
            )
            assert first.unanswered() == first.to(dead)
            assert victim.node_id not in {c.node_id for c in nodes[1].known_peers()}
            # the rest of the swarm still advertises the dead node: the next lookup hears of
            # it again, yet sends it nothing
            first.clear()
            assert Holder(LOCAL, 9300) in await nodes[1].find_providers(key)
            assert first.sent and first.to(dead) == [] and first.unanswered() == []
            # another node learns of the death the same way: at most one request to it
            assert await nodes[2].find_name_records("unknown-after-death") == []
            assert len(other.to(dead)) <= 1 and other.unanswered() == other.to(dead)

    run(main)


def test_routing_contacts_survive_a_restart(tmp_path):
    async def main():
        path = tmp_path / "contacts.json"
        async with swarm(3) as nodes:
            kept = signed_record("kept.iso", MANIFEST)
            await nodes[1].publish_record(kept)
            assert nodes[0].save_contacts(path) == 2
            await nodes[0].stop()
            contacts = load_contacts(path)
            assert sorted(contacts) == sorted((LOCAL, n.port) for n in nodes[1:])
            restarted = DhtNode()
            try:
                assert await restarted.start(LOCAL, 0, contacts) == 2
                assert await restarted.find_name_records("kept.iso") == [kept]
            finally:
                await restarted.stop()

    run(main)
    assert load_contacts(tmp_path / "missing.json") == []
    (tmp_path / "bad.json").write_text('{"format": 1, "contacts": [["a"]')
    assert load_contacts(tmp_path / "bad.json") == []
    (tmp_path / "odd.json").write_text(
        '{"format": 1, "contacts": [["not-an-ip", 1], ["127.0.0.1", 5]]}'
    )
    assert load_contacts(tmp_path / "odd.json") == [("127.0.0.1", 5)]


def test_a_lonely_node_serves_its_own_records():
    async def main():
        async with swarm(1) as (node,):
            key = random_key()
            assert await node.announce(key, 9400) == 0  # nobody else to tell
            assert await node.find_providers(key) == [Holder(LOCAL, 9400)]
            alone = signed_record("alone", MANIFEST)
            assert await node.publish_record(alone) == 0
            assert await node.find_name_records("alone") == [alone]
            assert node.known_peers() == []

    run(main)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        dht_key(b"\x00" * 20)
    assert dht_key(bytes(range(32))) == bytes(range(20))
    assert len(name_key("x")) == 20

    async def main():
        node = DhtNode()
        with pytest.raises(NetworkError):
            await node.find_providers(b"\x00" * 20)
        async with swarm(1) as (node,):
            with pytest.raises(ValueError):
                await node.announce(os.urandom(32), 9000)
            with pytest.raises(ValueError):
                await node.announce(os.urandom(20), 0)
            with pytest.raises(ValueError):
                await node.announce_many([os.urandom(20), b"short"], 9000)
        # Nothing answers on port 9, whatever the timeout: a short one keeps the test quick.
        unreachable = DhtNode(rpc_timeout=0.2)
        try:
            # a bootstrap contact that does not answer is not an error...
            assert await unreachable.start(LOCAL, 0, [(LOCAL, 9)]) == 0
            # ...and costs one unanswered ping (one RPC timeout): no lookup follows it
            rpcs = RpcLog(unreachable)
            assert await unreachable.bootstrap([(LOCAL, 9)]) == 0
            assert rpcs.sent == [[(LOCAL, 9), "ping", False]]
            assert unreachable.known_peers() == []
        finally:
            await unreachable.stop()

    run(main)


def decoded_requests(peer):
    """The requests a raw socket received, as (message id, rpc name, arguments)."""
    found = []
    for data in peer.requests:
        rpc, args = umsgpack.unpackb(data[21:])
        found.append((data[1:21], rpc, args))
    return found


def test_the_self_marker_reads_as_the_address_asked():
    answer = {
        "providers": [
            [SELF_HOLDER_HOST, 4100],
            ["127.0.0.1", 4100],  # the node's own record, as it knows its address: merged
            ["127.0.0.2", 4200],
            ["", 0],
            ["not-an-ip", 4300],
            [SELF_HOLDER_HOST],
        ],
        "nodes": [[b"n" * 20, "127.0.0.3", 4400], [b"short", "127.0.0.4", 4500]],
    }
    holders, nodes, token = parse_providers(answer, "127.0.0.1", 20)
    assert holders == [Holder("127.0.0.1", 4100), Holder("127.0.0.2", 4200)]
    assert [tuple(n) for n in nodes] == [(b"n" * 20, "127.0.0.3", 4400)]
    assert token is None  # none given
    assert parse_providers({**answer, "token": b"t" * 8}, "127.0.0.1", 20)[2] == b"t" * 8
    # the marker always means the node asked, never an address it chose
    holders, _, _ = parse_providers({"providers": [["", 4100]], "nodes": []}, "127.0.0.9", 20)
    assert holders == [Holder("127.0.0.9", 4100)]
    for bad in (None, [], {"providers": "x", "nodes": []}, {"providers": []}):
        assert parse_providers(bad, "127.0.0.1", 20) is INVALID


def test_get_providers_names_the_node_itself_for_what_its_store_holds():
    held = random_key()
    protocol = ChunkstoreProtocol(
        Node(os.urandom(20)),
        None,
        20,
        local_holdings=lambda key: 4100 if key == held else None,
    )
    protocol.providers.add(held, Holder("127.0.0.2", 4200), time.monotonic())
    reply = protocol.rpc_get_providers((LOCAL, 40000), os.urandom(20), held)
    assert reply["providers"] == [[SELF_HOLDER_HOST, 4100], ["127.0.0.2", 4200]]
    reply = protocol.rpc_get_providers((LOCAL, 40000), os.urandom(20), random_key())
    assert reply["providers"] == []


def test_a_lonely_node_on_every_interface_is_found_as_a_holder_of_its_own_objects():
    async def main():
        held = random_key()
        alone = DhtNode(local_holdings=lambda key: 4100 if key == held else None)
        asker = DhtNode()
        try:
            await alone.start("0.0.0.0", 0)
            assert alone.own_host is None  # nobody told it its address yet
            await asker.start(LOCAL, 0, [(LOCAL, alone.port)])
            assert await asker.find_providers(held) == [Holder(LOCAL, 4100)]
            assert await asker.find_providers(random_key()) == []
        finally:
            await asker.stop()
            await alone.stop()

    run(main)


def test_announce_many_reports_the_keys_nobody_accepted():
    async def main():
        async with swarm(1) as (alone,):
            keys = [random_key() for _ in range(3)]
            assert await alone.announce_many(keys, 9500) == set()  # no remote node
            # it still records itself locally, knowing its address
            assert await alone.find_providers(keys[0]) == [Holder(LOCAL, 9500)]

    run(main)


def test_records_are_handed_to_the_first_contact_once_it_answers_a_ping():
    film, port = random_key(), 4100
    film_record = signed_record("film.iso", MANIFEST)

    async def main():
        alone = DhtNode(
            own_records=lambda: OwnRecords(port, [film], [film_record]),
        )
        async with swarm(0):
            await alone.start(LOCAL, 0)
            try:
                rpcs = RpcLog(alone)
                target = (LOCAL, alone.port)
                async with raw_socket() as (liar_t, liar), raw_socket() as (peer_t, peer):
                    # a newcomer that answers our ping with another id is handed nothing
                    liar_t.sendto(request(["ping", [os.urandom(20)]]), target)
                    await wait_until_async(lambda: liar.requests, "a ping to the newcomer")
                    ((msg_id, rpc, args),) = decoded_requests(liar)
                    assert (rpc, args) == ("ping", [alone.node_id])
                    liar_t.sendto(b"\x01" + msg_id + umsgpack.packb(os.urandom(20)), target)
                    # one that answers with its id is handed the name, then (once the name
                    # is acknowledged) asked for a write token, then given the provider record
                    nid = os.urandom(20)
                    peer_t.sendto(request(["ping", [nid]]), target)
                    handed = []
                    token = b"w" * 8
                    replies = (
                        ("ping", nid),
                        ("store_name", True),
                        ("get_providers", {"providers": [], "nodes": [], "token": token}),
                        ("add_provider", True),
                    )
                    for what, reply in replies:
                        wanted = len(handed) + 1
                        await wait_until_async(
                            lambda wanted=wanted: len(peer.requests) >= wanted, f"a {what}"
                        )
                        msg_id, rpc, args = decoded_requests(peer)[len(handed)]
                        handed.append((rpc, args))
                        peer_t.sendto(b"\x01" + msg_id + umsgpack.packb(reply), target)
                    assert handed == [
                        ("ping", [alone.node_id]),
                        ("store_name", [alone.node_id, name_key("film.iso"), film_record.encoded]),
                        ("get_providers", [alone.node_id, film]),
                        ("add_provider", [alone.node_id, film, port, token]),
                    ]
                    liar_address = liar_t.get_extra_info("sockname")
                assert [rpc for _, rpc, _ in rpcs.to(liar_address)] == ["ping"]
                assert alone.contacts_gained == 1
            finally:
                await alone.stop()

    run(main)


def test_a_contact_joining_closer_is_handed_the_records_it_should_hold():
    async def main():
        async with swarm(4) as nodes:
            publisher = DhtNode(ksize=2)
            keys = [random_key() for _ in range(30)]
            publisher.own_records = lambda: OwnRecords(4100, keys, ())
            try:
                await publisher.start(LOCAL, 0, [(LOCAL, n.port) for n in nodes])
                # An id in the publisher's own bucket, which splits rather than refuses: with
                # k = 2 a random id could land in a full bucket and never be counted (seen in
                # 2 full runs).
                mine = publisher.node_id
                joiner = DhtNode(node_id=mine[:-1] + bytes([mine[-1] ^ 1]))
                await joiner.start(LOCAL, 0, [(LOCAL, publisher.port)])
                try:
                    # with k = 2, the joiner should hold the keys where it is among the 2
                    # closest of the publisher's contacts, and only those
                    # the publisher counts the joiner once it answered the publisher's ping
                    await wait_until_async(
                        lambda: joiner.node_id in [c.node_id for c in publisher.known_peers()],
                        "the publisher to count the joiner",
                    )
                    contacts = [c.node_id for c in publisher.known_peers()]

                    def among_two_closest(key):
                        target = int.from_bytes(key, "big")
                        order = sorted(contacts, key=lambda c: int.from_bytes(c, "big") ^ target)
                        return joiner.node_id in order[:2]

                    expected = {k for k in keys if among_two_closest(k)}
                    assert expected and expected != set(keys)

                    def handed():
                        now = time.monotonic()
                        return {k for k in keys if joiner.providers.get(k, now)}

                    await wait_until_async(lambda: handed() == expected, "the hand-over")
                    assert all(
                        joiner.providers.get(k, time.monotonic()) == [Holder(LOCAL, 4100)]
                        for k in expected
                    )
                finally:
                    await joiner.stop()
            finally:
                await publisher.stop()

    run(main)


def test_a_stock_server_joining_stays_a_contact_though_it_ignores_our_records():
    async def main():
        record = signed_record("n", MANIFEST)
        publisher = DhtNode(own_records=lambda: OwnRecords(4100, [random_key()], [record]))
        await publisher.start(LOCAL, 0)
        rpcs = RpcLog(publisher)
        stock = Server()
        await stock.listen(0, LOCAL)
        try:
            await stock.bootstrap([(LOCAL, publisher.port)])
            address = stock.transport.get_extra_info("sockname")[:2]
            await wait_until_async(
                lambda: (
                    [answered for _, rpc, answered in rpcs.to(address) if rpc == "store_name"]
                    == [False]
                ),
                "the store_name offer to go unanswered",
            )
            # stock kademlia ignores our RPCs: the node is not dropped for it
            assert [(c.host, c.port) for c in publisher.known_peers()] == [address]
        finally:
            stock.stop()
            await publisher.stop()

    run(main)


def test_a_lookup_that_finds_nothing_asks_the_bootstrap_contacts():
    # A crowd joins at once: the 25 nodes closest to a key know nothing of it, and the one
    # contact that holds its record, the bootstrap contact, is the farthest of all from the
    # key, so no lookup reaches it. A node that joined through it asks it directly; a node
    # that joined through another one finds nothing (the lookup alone does not get there).
    async def main():
        key = random_key()
        holder = Holder(LOCAL, 4242)
        seed = DhtNode(node_id=bytes(b ^ 0xFF for b in key))
        crowd = []
        try:
            await seed.start(LOCAL, 0)
            seed.providers.add(key, holder, time.monotonic())
            joiner = DhtNode()
            crowd.append(joiner)
            assert await joiner.start(LOCAL, 0, [(LOCAL, seed.port)]) == 1
            for _ in range(24):
                node = DhtNode()
                crowd.append(node)
                await node.start(LOCAL, 0, [(LOCAL, joiner.port)])
            await wait_until_async(
                lambda: len(joiner.known_peers()) >= 21, "the joiner to know the crowd"
            )
            stranger = DhtNode()
            crowd.append(stranger)
            await stranger.start(LOCAL, 0, [(LOCAL, crowd[5].port)])
            assert await stranger.find_providers(key) == []
            assert await joiner.find_providers(key) == [holder]
        finally:
            for node in crowd:
                await node.stop()
            await seed.stop()

    run(main)
