"""The DHT layer: name records and provider records over Kademlia (the `kademlia` package).

Two record kinds travel in the DHT, never chunk bytes:
- name record: name -> manifest id hex, through the stock STORE / FIND_VALUE RPCs, so a stock
  `kademlia.network.Server` can bootstrap off our nodes and read names;
- provider record: DHT key -> holders (host + HTTP transfer port), through two added RPCs,
  `add_provider` and `get_providers`, whose records merge instead of overwriting.

A node answers provider queries for what its own store holds (the `local_holdings` callable),
and hands its own records to a contact that joins closer to them than the k closest it knew
(the `own_records` callable): content is found whatever the order in which nodes join.

`DhtNode` is what the rest of chunkstore uses; `ChunkstoreProtocol` (protocol.py) is the wire
layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kademlia.crawling import NodeSpiderCrawl, SpiderCrawl, ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.utils import digest

from chunkstore.errors import InputError, NetworkError
from chunkstore.net.protocol import (
    DEFAULT_RPC_TIMEOUT,
    DHT_KEY_SIZE,
    ChunkstoreProtocol,
    LocalHoldings,
    NameStorage,
    is_ip,
    is_key,
    is_port,
)
from chunkstore.net.providers import Holder, ProviderStore
from chunkstore.net.ratelimit import TokenBucket, acquire
from chunkstore.objects.ids import ID_BYTES, looks_like_id, parse_id

log = logging.getLogger(__name__)

# Upper bound on a whole iterative lookup, whatever the network does.
DEFAULT_LOOKUP_TIMEOUT = 5.0
PROVIDER_CULL_INTERVAL = 600.0
CONTACTS_FORMAT = 1
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
# Hand-over to contacts that join: contacts waiting (more are dropped: a flood of new ids
# must not queue work without bound), contacts served at once, records per contact (its
# share of our keys; a large store's tail waits for the regular re-announce), and one rate
# for every hand-over request of this node.
HANDOVER_QUEUE = 64
HANDOVER_WORKERS = 2
HANDOVER_MAX_RECORDS = 512
HANDOVER_RATE = 100.0
HANDOVER_BURST = 50.0
# A contact handed its records is not handed them again for this long (it dropped out of the
# table and came back, say): the regular announcing keeps them fresh meanwhile.
HANDOVER_REPEAT_SECONDS = 600.0
MAX_RECENT_HANDOVERS = 4096


def dht_key(object_id: bytes) -> bytes:
    """The 20-byte DHT key of a 32-byte chunk or manifest id (its first 20 bytes)."""
    if not isinstance(object_id, bytes) or len(object_id) != ID_BYTES:
        raise ValueError(f"an object id is {ID_BYTES} bytes")
    return object_id[:DHT_KEY_SIZE]


def name_key(name: str) -> bytes:
    """The DHT key of a name record: the stock kademlia `digest` (SHA-1 of the UTF-8 name)."""
    return digest(name)


@dataclass(frozen=True, slots=True)
class Contact:
    """A DHT node from the routing table."""

    node_id: bytes
    host: str
    port: int


@dataclass(frozen=True)
class OwnRecords:
    """The records a node publishes itself, for handing to contacts that join: provider keys
    (the DHT keys of the files it holds whole) at its transfer port, and its names."""

    transfer_port: int | None = None
    provider_keys: Sequence[bytes] = ()
    names: Sequence[tuple[str, str]] = ()  # (name, manifest id hex)


class _ProviderSpiderCrawl(SpiderCrawl):
    """Iterative get_providers lookup that stops as soon as `limit` holders are known."""

    def __init__(
        self,
        protocol: ChunkstoreProtocol,
        node: Node,
        peers: list[Node],
        ksize: int,
        alpha: int,
        limit: int,
        found: dict[Holder, None],
    ) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self.limit = limit
        self.found = found  # an ordered set, shared with the caller so a timeout keeps it

    async def find(self) -> list[Holder]:
        return await self._find(self.protocol.call_get_providers)

    async def _nodes_found(self, responses: dict) -> list[Holder]:
        unreachable = []
        for peer_id, (ok, answer) in responses.items():
            if not ok:
                unreachable.append(peer_id)
                continue
            holders, nodes = answer
            self.found.update(dict.fromkeys(holders))
            self.nearest.push(nodes)
        self.nearest.remove(unreachable)
        if len(self.found) >= self.limit or self.nearest.have_contacted_all():
            return list(self.found)[: self.limit]
        return await self.find()


class _KademliaServer(Server):
    """The stock server, building our protocol with our timeout and provider store."""

    protocol_class = ChunkstoreProtocol

    def __init__(
        self,
        ksize: int,
        alpha: int,
        node_id: bytes | None,
        providers: ProviderStore,
        rpc_timeout: float,
        local_holdings: LocalHoldings | None,
    ) -> None:
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id, storage=NameStorage())
        self.providers = providers
        self.rpc_timeout = rpc_timeout
        self.local_holdings = local_holdings

    def _create_protocol(self) -> ChunkstoreProtocol:
        return self.protocol_class(
            self.node,
            self.storage,
            self.ksize,
            providers=self.providers,
            wait_timeout=self.rpc_timeout,
            local_holdings=self.local_holdings,
        )


class DhtNode:
    """One chunkstore DHT node: names and provider records.

    Every lookup is bounded by `lookup_timeout` seconds and every RPC by `rpc_timeout`; a
    contact that does not answer is dropped from the routing table and skipped for a while.
    Methods other than `start` raise NetworkError if the node is not running.

    `local_holdings(key)` gives this node's transfer port when its own store holds the object
    of `key` whole (None otherwise): the node then answers get_providers with itself, even
    while it does not know its own address. `own_records()` gives what this node publishes:
    when a contact enters the routing table, it is handed the provider keys and names among
    whose k closest known nodes it now is (all of them for a first contact), once it has
    answered a ping from us, at most HANDOVER_MAX_RECORDS of them, at a bounded rate.
    """

    def __init__(
        self,
        *,
        node_id: bytes | None = None,
        ksize: int = 20,
        alpha: int = 3,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
        providers: ProviderStore | None = None,
        local_holdings: LocalHoldings | None = None,
        own_records: Callable[[], OwnRecords] | None = None,
    ) -> None:
        if node_id is not None and not is_key(node_id):
            raise ValueError(f"a node id is {DHT_KEY_SIZE} bytes")
        self.providers = providers if providers is not None else ProviderStore()
        self.lookup_timeout = lookup_timeout
        self.own_records = own_records
        self._server = _KademliaServer(
            ksize, alpha, node_id, self.providers, rpc_timeout, local_holdings
        )
        self._own_host: str | None = None
        self._culler: asyncio.Task | None = None
        self._running = False
        # made in `start`: asyncio primitives belong to the loop that runs the node
        self._joined: asyncio.Queue[tuple[Node, bool]] | None = None
        self._queued: set[bytes] = set()  # ids of the contacts in `_joined`
        self._handover_workers: list[asyncio.Task] = []
        self._handover_rate = TokenBucket(HANDOVER_RATE, HANDOVER_BURST)
        self._recent_handovers: OrderedDict[tuple[bytes, str, int], float] = OrderedDict()
        self._contacts_gained = 0
        self._contact_event: asyncio.Event | None = None

    @property
    def node_id(self) -> bytes:
        """This node's 20-byte DHT id."""
        return self._server.node.id

    @property
    def own_host(self) -> str | None:
        """This node's IP as peers reach it: the host it listens on, or for a wildcard the
        address a peer observed (None until one did)."""
        return self._own_host

    @property
    def port(self) -> int:
        """The UDP port the node listens on (useful after `start(port=0)`)."""
        self._require_running()
        return self._server.transport.get_extra_info("sockname")[1]

    @property
    def protocol(self) -> ChunkstoreProtocol:
        """The wire protocol of the running node (for diagnostics and tests)."""
        self._require_running()
        return self._server.protocol

    @property
    def contacts_gained(self) -> int:
        """How many contacts have entered the routing table having answered us (a reply to
        one of our requests, or to the ping a newcomer that contacted us is sent)."""
        return self._contacts_gained

    async def wait_for_new_contact(self, since: int, timeout: float) -> bool:
        """Wait up to `timeout` s for `contacts_gained` to move past `since`; True if it did."""
        self._require_running()
        if self._contacts_gained != since:
            return True
        event = self._contact_event
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def start(
        self, host: str = "0.0.0.0", port: int = 0, bootstrap: Sequence[tuple[str, int]] = ()
    ) -> int:
        """Listen on host:port (UDP; 0 = any free port) and join via `bootstrap` contacts.

        Returns how many bootstrap contacts answered; 0 is not an error (the node still serves
        and can be bootstrapped later with `bootstrap`).
        """
        if self._running:
            raise NetworkError("the DHT node is already running")
        try:
            await self._server.listen(port, host)
        except OSError as exc:
            raise NetworkError(f"cannot listen for DHT traffic on {host}:{port}: {exc}") from exc
        self._running = True
        if host not in _WILDCARD_HOSTS:
            self._own_host = host
        self._joined = asyncio.Queue(HANDOVER_QUEUE)
        self._queued.clear()
        self._contact_event = asyncio.Event()
        self._server.protocol.on_new_contact = self._contact_joined
        self._culler = asyncio.create_task(self._cull_regularly())
        self._handover_workers = [
            asyncio.create_task(self._hand_over_to_joiners()) for _ in range(HANDOVER_WORKERS)
        ]
        return await self.bootstrap(bootstrap)

    async def stop(self) -> None:
        """Close the socket and stop background work; pending RPCs settle as failures."""
        if not self._running:
            return
        self._running = False
        self._server.protocol.on_new_contact = None
        tasks = [t for t in (self._culler, *self._handover_workers) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._handover_workers = []
        self._joined = None
        self._queued.clear()
        self._server.stop()
        await asyncio.sleep(0)  # let the transport deliver connection_lost

    async def bootstrap(self, addrs: Sequence[tuple[str, int]]) -> int:
        """Ping `addrs` (host names allowed) and fill the routing table from those that answer;
        returns how many answered."""
        self._require_running()
        resolved = await self._resolve(addrs)
        ids = await asyncio.gather(*(self.protocol.ping_address(a) for a in resolved))
        nodes = [Node(i, a[0], a[1]) for i, a in zip(ids, resolved, strict=True) if i is not None]
        if not nodes:
            if addrs:
                # The caller decides whether that matters (serve waits for peers, a get fails).
                log.info("none of %d bootstrap contacts answered", len(addrs))
            return 0
        spider = NodeSpiderCrawl(
            self.protocol, self._server.node, nodes, self._server.ksize, self._server.alpha
        )
        await self._bounded(spider.find(), "bootstrap")
        if self._own_host is None:
            self._own_host = await self.protocol.observed_address((nodes[0].ip, nodes[0].port))
        return len(nodes)

    async def announce(self, key: bytes, transfer_port: int) -> int:
        """Record this node as a holder of `key` (a 20-byte DHT key) at `transfer_port`, on the
        k closest nodes and locally (locally only once this node knows its address). Remote
        nodes record the address they see us at. Returns how many remote nodes accepted the
        record; records expire after the store TTL (24 h by default), so re-announce before
        that."""
        self._require_running()
        if not is_key(key):
            raise ValueError(f"a DHT key is {DHT_KEY_SIZE} bytes; use dht_key()")
        if not is_port(transfer_port):
            raise ValueError("transfer port must be in 1..65535")
        nodes = await self._closest_nodes(key)
        if self._own_host is None and nodes:
            self._own_host = await self.protocol.observed_address((nodes[0].ip, nodes[0].port))
        if self._own_host is not None:
            self.providers.add(key, Holder(self._own_host, transfer_port), time.monotonic())
        results = await asyncio.gather(
            *(self.protocol.call_add_provider(n, key, transfer_port) for n in nodes)
        )
        return sum(1 for ok, accepted in results if ok and accepted)

    async def announce_many(
        self, keys: Iterable[bytes], transfer_port: int, concurrency: int = 8
    ) -> set[bytes]:
        """`announce` every key with at most `concurrency` lookups in flight; returns the keys
        at least one remote node accepted (the others are worth retrying later)."""
        self._require_running()
        keys = list(keys)
        for key in keys:
            if not is_key(key):
                raise ValueError(f"a DHT key is {DHT_KEY_SIZE} bytes; use dht_key()")
        pending = iter(keys)
        accepted: set[bytes] = set()

        async def worker() -> None:
            # one shared iterator: each key is taken by exactly one worker
            for key in pending:
                if await self.announce(key, transfer_port) > 0:
                    accepted.add(key)

        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, len(keys)))):
                group.create_task(worker())
        return accepted

    async def find_providers(self, key: bytes, limit: int = 20) -> list[Holder]:
        """Up to `limit` holders of `key` (a 20-byte DHT key), without duplicates: the records
        this node stores (its own announcements included), then an iterative lookup that stops
        once `limit` are known. Never raises for network trouble: it returns what it found
        within `lookup_timeout`."""
        self._require_running()
        if not is_key(key):
            raise ValueError(f"a DHT key is {DHT_KEY_SIZE} bytes; use dht_key()")
        found = dict.fromkeys(self.providers.get(key, time.monotonic()))
        target = Node(key)
        nearest = self._server.protocol.router.find_neighbors(target)
        if len(found) < limit and nearest:
            spider = _ProviderSpiderCrawl(
                self.protocol,
                target,
                nearest,
                self._server.ksize,
                self._server.alpha,
                limit,
                found,
            )
            await self._bounded(spider.find(), "find_providers")
        return list(found)[:limit]

    async def publish_name(self, name: str, manifest_id_hex: str) -> int:
        """Point `name` at a manifest id (64 hex characters; stored lowercase), locally and on
        the k closest nodes, with the stock STORE so a stock `Server.get(name)` reads it.
        Returns how many remote nodes stored it. Raises InputError for a malformed id."""
        self._require_running()
        if not isinstance(name, str) or not name:
            raise InputError("a name must be a non-empty string")
        # canonical lowercase, so every reader gets the same string back
        manifest_id_hex = parse_id(manifest_id_hex).hex()
        key = name_key(name)
        self._server.storage[key] = manifest_id_hex
        nodes = await self._closest_nodes(key)
        results = await asyncio.gather(
            *(self.protocol.call_store(n, key, manifest_id_hex) for n in nodes)
        )
        return sum(1 for ok, stored in results if ok and stored)

    async def resolve_name(self, name: str) -> str | None:
        """The manifest id hex `name` points at, or None if no node answers with one within
        `lookup_timeout`."""
        self._require_running()
        key = name_key(name)
        value = self._server.storage.get(key)
        if value is None:
            target = Node(key)
            nearest = self._server.protocol.router.find_neighbors(target)
            if not nearest:
                return None
            spider = ValueSpiderCrawl(
                self.protocol, target, nearest, self._server.ksize, self._server.alpha
            )
            value = await self._bounded(spider.find(), "resolve_name")
        if value is None:
            return None
        if not isinstance(value, str) or not looks_like_id(value):
            log.warning("name %r points at %r, which is not a manifest id", name, value)
            return None
        return value.lower()

    def known_peers(self) -> list[Contact]:
        """The contacts in the routing table."""
        self._require_running()
        return [
            Contact(n.id, n.ip, n.port)
            for bucket in self._server.protocol.router.buckets
            for n in bucket.get_nodes()
        ]

    def save_contacts(self, path: str | os.PathLike) -> int:
        """Write the routing-table contacts as JSON (atomically) for `load_contacts` after a
        restart; returns how many were written."""
        contacts = [[c.host, c.port] for c in self.known_peers()]
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"format": CONTACTS_FORMAT, "contacts": contacts}))
        os.replace(tmp, path)
        return len(contacts)

    # -- contacts that join ------------------------------------------------------------------
    def _contact_joined(self, node: Node, answered: bool) -> None:
        """From the protocol, while a datagram is handled: queue the newcomer (never block)."""
        if answered:
            self._note_contact_gained()
        if node.id in self._queued or self._joined is None:
            return
        try:
            self._joined.put_nowait((node, answered))
        except asyncio.QueueFull:
            log.debug("hand-over queue full: %s gets no hand-over", node)
            return
        self._queued.add(node.id)

    def _note_contact_gained(self) -> None:
        self._contacts_gained += 1
        if self._contact_event is not None:
            event, self._contact_event = self._contact_event, asyncio.Event()
            event.set()

    async def _hand_over_to_joiners(self) -> None:
        queue = self._joined
        assert queue is not None, "started by start()"
        while True:
            node, answered = await queue.get()
            self._queued.discard(node.id)
            try:
                await self._welcome(node, answered)
            except asyncio.CancelledError:
                raise
            except Exception:  # one contact's trouble must not end hand-overs for good
                log.exception("hand-over to %s failed", node)

    async def _welcome(self, node: Node, answered: bool) -> None:
        address = (node.id, node.ip, node.port)
        now = time.monotonic()
        handed_lately = (
            self._recent_handovers.get(address, -math.inf) > now - HANDOVER_REPEAT_SECONDS
        )
        names, provider_keys, transfer_port = (
            ([], [], None) if handed_lately else await self._handover_records(node)
        )
        if not answered or names or provider_keys:
            # Proof of address and id before anything is sent or believed: a request's source
            # can be forged, an answer to our ping cannot (its message id is random).
            await acquire(self._handover_rate, 1)
            if await self.protocol.ping_address((node.ip, node.port)) != node.id:
                log.debug("%s did not answer a ping with its id: no hand-over", node)
                return
            if not answered:
                self._note_contact_gained()
        if not names and not provider_keys:
            return
        self._recent_handovers[address] = now
        self._recent_handovers.move_to_end(address)
        while len(self._recent_handovers) > MAX_RECENT_HANDOVERS:
            self._recent_handovers.popitem(last=False)
        sent = 0
        for key, value in names:
            await acquire(self._handover_rate, 1)
            accepted = await self.protocol.offer_value(node, key, value)
            if accepted is None:
                return  # gone
            sent += accepted
        for key in provider_keys if transfer_port is not None else ():
            await acquire(self._handover_rate, 1)
            accepted = await self.protocol.offer_provider(node, key, transfer_port)
            if accepted is None:
                break  # gone, or a stock kademlia node: it ignores add_provider
            sent += accepted
        log.debug("handed %d records to %s", sent, node)

    async def _handover_records(
        self, node: Node
    ) -> tuple[list[tuple[bytes, Any]], list[bytes], int | None]:
        """What a contact that joins should be handed: (name values as (key, value), provider
        keys, our transfer port). Our own names and provider keys where it is among the k
        closest contacts we know; then values others stored here where it is, and we are
        closer than any other contact (the stock kademlia rule). At most
        HANDOVER_MAX_RECORDS in all, our own first."""
        own = self.own_records() if self.own_records is not None else OwnRecords()
        others = [
            n.long_id
            for bucket in self._server.protocol.router.buckets
            for n in bucket.get_nodes()
            if n.id != node.id
        ]
        ksize = self._server.ksize
        me = self._server.node.long_id
        budget = HANDOVER_MAX_RECORDS
        names: dict[bytes, Any] = {}
        provider_keys: list[bytes] = []

        def among_closest(key: bytes) -> bool:
            target = int.from_bytes(key, "big")
            distance = node.long_id ^ target
            closer = 0
            for other in others:
                if other ^ target < distance:
                    closer += 1
                    if closer >= ksize:
                        return False
            return True

        def we_are_closest(key: bytes) -> bool:
            target = int.from_bytes(key, "big")
            return all(me ^ target < other ^ target for other in others)

        own_keys = own.provider_keys if own.transfer_port is not None else ()
        sources = [  # (provider keys?, entries, wanted)
            (False, ((name_key(name), value) for name, value in own.names), among_closest),
            (True, ((key, None) for key in own_keys), among_closest),
            (False, list(self._server.storage), lambda k: among_closest(k) and we_are_closest(k)),
        ]
        examined = 0
        for providing, entries, wanted in sources:
            for key, value in entries:
                if len(names) + len(provider_keys) >= budget:
                    break
                examined += 1
                if examined % 256 == 0:
                    await asyncio.sleep(0)  # a large store: let datagrams through
                if not wanted(key):
                    continue
                if providing:
                    provider_keys.append(key)
                else:
                    names.setdefault(key, value)
        return list(names.items()), provider_keys, own.transfer_port

    async def _closest_nodes(self, key: bytes) -> list[Node]:
        target = Node(key)
        nearest = self._server.protocol.router.find_neighbors(target)
        if not nearest:
            log.info("no known DHT contacts: %s stays local", key.hex())
            return []
        spider = NodeSpiderCrawl(
            self.protocol, target, nearest, self._server.ksize, self._server.alpha
        )
        nodes = await self._bounded(spider.find(), "node lookup")
        # on timeout, the closest nodes seen so far are the best we have
        return nodes if nodes is not None else list(spider.nearest)

    async def _bounded(self, lookup: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(self.lookup_timeout):
                return await lookup
        except TimeoutError:
            log.info("%s did not finish within %.1f s", what, self.lookup_timeout)
            return None

    async def _resolve(self, addrs: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        family = self._server.transport.get_extra_info("socket").family
        loop = asyncio.get_running_loop()
        resolved = []
        for host, port in addrs:
            if is_ip(host):
                resolved.append((host, int(port)))
                continue
            try:
                infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("cannot resolve bootstrap contact %s:%s: %s", host, port, exc)
                continue
            resolved.extend((info[4][0], info[4][1]) for info in infos[:1])
        return resolved

    async def _cull_regularly(self) -> None:
        while True:
            await asyncio.sleep(PROVIDER_CULL_INTERVAL)
            dropped = self.providers.cull(time.monotonic())
            log.debug("culled %d expired provider records", dropped)

    def _require_running(self) -> None:
        if not self._running:
            raise NetworkError("the DHT node is not running")


def load_contacts(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Contacts written by `DhtNode.save_contacts`; [] (with a warning) if the file is missing
    or unreadable, so a damaged file never stops a node from starting."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("format") != CONTACTS_FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        contacts = [
            (host, port) for host, port in data["contacts"] if is_ip(host) and is_port(port)
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring unreadable contacts file %s: %s", path, exc)
        return []
    return contacts
