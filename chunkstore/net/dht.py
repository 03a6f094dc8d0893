"""The DHT layer: name records and provider records over Kademlia (the `kademlia` package).

Two record kinds travel in the DHT, never chunk bytes:
- name record: a publisher's signed "name -> manifest id" (objects/name_record.py), through
  two added RPCs, `store_name` and `find_names`; records of different publishers of a name
  coexist, and every one is checked wherever it arrives. The stock STORE / FIND_VALUE hold
  nothing (a stock `kademlia.network.Server` can still bootstrap off our nodes);
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
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node

from chunkstore.errors import NetworkError
from chunkstore.net.address_scope import scope_of
from chunkstore.net.announce_sweep import SWEEP_SLICES, SweepReport, sweep_announce
from chunkstore.net.crawl import crawl
from chunkstore.net.datagram_reader import BatchedDatagramReader
from chunkstore.net.handover import HandOver, OwnRecords
from chunkstore.net.name_records import NameRecordStore
from chunkstore.net.protocol import (
    DEFAULT_RPC_TIMEOUT,
    DHT_KEY_SIZE,
    ChunkstoreProtocol,
    LocalHoldings,
    is_ip,
    is_key,
    is_port,
    name_key,
)
from chunkstore.net.providers import Holder, ProviderStore
from chunkstore.objects.ids import ID_BYTES
from chunkstore.objects.name_record import NameRecord

log = logging.getLogger(__name__)

# Upper bound on a whole iterative lookup, whatever the network does.
DEFAULT_LOOKUP_TIMEOUT = 5.0
PROVIDER_CULL_INTERVAL = 600.0
CONTACTS_FORMAT = 1
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
# Bootstrap contacts kept to ask directly when a lookup finds nothing (DhtNode._ask_seeds).
MAX_SEEDS = 8


def dht_key(object_id: bytes) -> bytes:
    """The 20-byte DHT key of a 32-byte chunk or manifest id (its first 20 bytes)."""
    if not isinstance(object_id, bytes) or len(object_id) != ID_BYTES:
        raise ValueError(f"an object id is {ID_BYTES} bytes")
    return object_id[:DHT_KEY_SIZE]


@dataclass(frozen=True, slots=True)
class Contact:
    """A DHT node from the routing table."""

    node_id: bytes
    host: str
    port: int


def keep_newest(found: dict[bytes, NameRecord], record: NameRecord) -> None:
    """Merge `record` into `found` (publisher -> record): a publisher's record replaces the
    one kept only if it supersedes it."""
    held = found.get(record.publisher)
    if held is None or record.supersedes(held):
        found[record.publisher] = record


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
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id)
        self.providers = providers
        self.name_records = NameRecordStore()
        self.rpc_timeout = rpc_timeout
        self.local_holdings = local_holdings
        self.reader: BatchedDatagramReader | None = None

    async def listen(self, port: int, interface: str = "0.0.0.0") -> None:
        await super().listen(port, interface)
        self.reader = BatchedDatagramReader(self.transport, self.protocol)

    def stop(self) -> None:
        super().stop()  # closes the transport, which stops our reading of its socket
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def _create_protocol(self) -> ChunkstoreProtocol:
        return self.protocol_class(
            self.node,
            self.storage,
            self.ksize,
            providers=self.providers,
            wait_timeout=self.rpc_timeout,
            local_holdings=self.local_holdings,
            name_records=self.name_records,
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
        self._handover = HandOver(
            lambda: self._server.protocol,
            self._server.node,
            ksize,
            lambda: self.own_records() if self.own_records is not None else OwnRecords(),
            self._note_contact_gained,
        )
        self._contacts_gained = 0
        self._contact_event: asyncio.Event | None = None
        # Iterative lookups started through _crawl and _closest_nodes (provider, name, node
        # and per-key announce lookups; a batched announce counts its own in last_sweep).
        self.lookups_made = 0
        self.last_sweep: SweepReport | None = None  # what the last announce_many did
        # The bootstrap contacts that answered (at most MAX_SEEDS): asked directly when a
        # lookup finds nothing (see _ask_seeds).
        self._seeds: dict[bytes, Node] = {}

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
    def name_records(self) -> NameRecordStore:
        """The name records this node keeps (its own and those others stored here)."""
        return self._server.name_records

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
            self._learn_own_host(host)
        self._contact_event = asyncio.Event()
        self._server.protocol.on_new_contact = self._handover.contact_joined
        self._culler = asyncio.create_task(self._cull_regularly())
        self._handover.start()
        return await self.bootstrap(bootstrap)

    async def stop(self) -> None:
        """Close the socket and stop background work; pending RPCs settle as failures."""
        if not self._running:
            return
        self._running = False
        self._server.protocol.on_new_contact = None
        if self._culler is not None:
            self._culler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._culler
        await self._handover.stop()
        self._server.stop()
        await asyncio.sleep(0)  # let the transport deliver connection_lost

    async def bootstrap(self, addrs: Sequence[tuple[str, int]]) -> int:
        """Ping `addrs` (host names allowed) and fill the routing table from those that answer;
        returns how many answered."""
        self._require_running()
        resolved = await self._resolve(addrs)
        ids = await asyncio.gather(*(self.protocol.ping_address(a) for a in resolved))
        nodes = [Node(i, a[0], a[1]) for i, a in zip(ids, resolved, strict=True) if i is not None]
        for node in nodes[: max(0, MAX_SEEDS - len(self._seeds))]:
            self._seeds.setdefault(node.id, node)
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
            self._learn_own_host(await self.protocol.observed_address((nodes[0].ip, nodes[0].port)))
        return len(nodes)

    async def announce(self, key: bytes, transfer_port: int) -> int:
        """Record this node as a holder of `key` (a 20-byte DHT key) at `transfer_port`, on the
        k closest nodes and locally (locally only once this node knows its address). Remote
        nodes record the address they see us at. Returns how many remote nodes accepted the
        record; records expire after the store TTL (48 h by default), so re-announce before
        that. The fast path for one key (a new file's manifest); many keys go through
        `announce_many`."""
        self._require_running()
        if not is_key(key):
            raise ValueError(f"a DHT key is {DHT_KEY_SIZE} bytes; use dht_key()")
        if not is_port(transfer_port):
            raise ValueError("transfer port must be in 1..65535")
        closest = await self._closest_with_tokens(key)
        if self._own_host is None and closest:
            node = closest[0][0]
            self._learn_own_host(await self.protocol.observed_address((node.ip, node.port)))
        if self._own_host is not None:
            self.providers.add(key, Holder(self._own_host, transfer_port), time.monotonic())
        results = await asyncio.gather(
            *(self.protocol.call_add_provider(n, key, transfer_port, t) for n, t in closest)
        )
        return sum(1 for ok, accepted in results if ok and accepted)

    async def announce_many(
        self, keys: Iterable[bytes], transfer_port: int, concurrency: int = SWEEP_SLICES
    ) -> set[bytes]:
        """Record this node as a holder of every key (20-byte DHT keys) at `transfer_port`,
        batched by keyspace region (announce_sweep.py): a few lookups find the k closest
        nodes of every key, `concurrency` regions at a time, and each of those nodes gets all
        its keys in add_providers datagrams; locally too, for the keys this node is itself
        among the k closest of (once it knows its address). Returns the keys at least one
        remote node accepted (the others are worth retrying later)."""
        self._require_running()
        keys = list(keys)
        for key in keys:
            if not is_key(key):
                raise ValueError(f"a DHT key is {DHT_KEY_SIZE} bytes; use dht_key()")
        if not is_port(transfer_port):
            raise ValueError("transfer port must be in 1..65535")
        if self._own_host is None:
            for node in self.protocol.router.find_neighbors(self._server.node, k=1):
                self._learn_own_host(await self.protocol.observed_address((node.ip, node.port)))

        def record_locally(mine: list[bytes]) -> None:
            if self._own_host is not None:
                holder, now = Holder(self._own_host, transfer_port), time.monotonic()
                for key in mine:
                    self.providers.add(key, holder, now)

        report = await sweep_announce(
            self.protocol,
            self._server.node,
            keys,
            transfer_port,
            ksize=self._server.ksize,
            alpha=self._server.alpha,
            lookup_timeout=self.lookup_timeout,
            record_locally=record_locally,
            slices=concurrency,
        )
        self.last_sweep = report
        return report.accepted

    async def find_providers(self, key: bytes, limit: int = 20) -> list[Holder]:
        """Up to `limit` holders of `key` (a 20-byte DHT key), without duplicates: the records
        this node stores (its own announcements included), then an iterative lookup that stops
        once `limit` are known. Never raises for network trouble: it returns what it found
        within `lookup_timeout`."""
        self._require_running()
        if not is_key(key):
            raise ValueError(f"a DHT key is {DHT_KEY_SIZE} bytes; use dht_key()")
        found = dict.fromkeys(self.providers.get(key, time.monotonic()))

        def take(node: Node, answer: Any) -> list[Node]:
            holders, closer, _ = answer
            found.update(dict.fromkeys(holders))
            return closer

        if len(found) < limit:
            # stops at the answer that makes `limit` known
            asked = await self._crawl(
                key,
                self.protocol.call_get_providers,
                take,
                "find_providers",
                done=lambda: len(found) >= limit,
            )
            if not found:
                await self._ask_seeds(key, self.protocol.call_get_providers, take, asked)
        return list(found)[:limit]

    async def publish_record(self, record: NameRecord) -> int:
        """Keep a signed name record (this node's own, usually) locally and on the k closest
        nodes of its name's key; returns how many remote nodes accepted it."""
        self._require_running()
        key = name_key(record.name)
        self.name_records.offer(key, record, time.time())
        nodes = await self._closest_nodes(key)
        results = await asyncio.gather(
            *(self.protocol.call_store_name(n, key, record.encoded) for n in nodes)
        )
        return sum(1 for ok, stored in results if ok and stored)

    async def find_name_records(self, name: str) -> list[NameRecord]:
        """Every publisher's newest live record of `name` (removals included) that this node
        keeps or the k closest nodes of the name's key answer within `lookup_timeout`, each
        checked on arrival. Never raises for network trouble."""
        self._require_running()
        key = name_key(name)
        found: dict[bytes, NameRecord] = {}
        for record in self.name_records.get(key, time.time()):
            keep_newest(found, record)

        def take(node: Node, answer: Any) -> list[Node]:
            records, closer = answer
            for record in records:
                keep_newest(found, record)
            return closer

        # Every close node is asked: another publisher, or a newer record, may be on any.
        asked = await self._crawl(key, self.protocol.call_find_names, take, "find_name_records")
        if not found:
            await self._ask_seeds(key, self.protocol.call_find_names, take, asked)
        return [r for r in found.values() if r.name == name]

    async def _ask_seeds(
        self,
        key: bytes,
        rpc: Callable[[Node, Node], Any],
        take: Callable[[Node, Any], list[Node]],
        asked: set[bytes] | None,
    ) -> None:
        """Ask the bootstrap contacts a lookup did not reach (`asked`: the ids that answered
        it; None, no lookup could start), directly. A crowd of new nodes
        joining at once becomes the k closest to every key before any record is handed to
        them, and a lookup then ends among nodes that know nothing yet (50 gets of one name
        through one holder: 2 of 100 failed so); the contacts the user named are the likeliest
        to know, as IPFS's bitswap asks its connected peers before the DHT."""
        target = Node(key)
        seeds = [n for i, n in self._seeds.items() if i not in (asked or ())]
        if not seeds:
            return
        for node in seeds:
            # A busy seed that missed one answer is quarantined (and left out of the routing
            # table) for 30 s: 4 of 100 crowd gets asked 12 times in 42 s and never reached
            # it again. The user named it; asking it costs one datagram per attempt.
            self.protocol.forgive((node.ip, node.port))
        try:
            async with asyncio.timeout(self.lookup_timeout):
                answers = await asyncio.gather(*(rpc(n, target) for n in seeds))
        except TimeoutError:
            return
        for node, (ok, answer) in zip(seeds, answers, strict=True):
            if ok:
                take(node, answer)

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

    def _note_contact_gained(self) -> None:
        self._contacts_gained += 1
        if self._contact_event is not None:
            event, self._contact_event = self._contact_event, asyncio.Event()
            event.set()

    def _learn_own_host(self, host: str | None) -> None:
        """Our address as peers reach us, and with it the scope of the addresses we accept
        from others (address_scope.py)."""
        self._own_host = host
        if host is not None:
            self._server.protocol.own_scope = scope_of(host)

    async def _closest_with_tokens(self, key: bytes) -> list[tuple[Node, bytes | None]]:
        """The k closest nodes to `key` that answered a get_providers, each with the write
        token it gave us (what add_provider must present)."""
        answered: dict[bytes, tuple[Node, bytes | None]] = {}

        def take(node: Node, answer: Any) -> list[Node]:
            _, closer, token = answer
            answered[node.id] = (node, token)
            return closer

        if (
            await self._crawl(key, self.protocol.call_get_providers, take, "announce lookup")
            is None
        ):
            log.info("no known DHT contacts: %s stays local", key.hex())
        target = Node(key)  # on timeout: the closest seen so far
        ranked = sorted(answered.values(), key=lambda entry: target.distance_to(entry[0]))
        return ranked[: self._server.ksize]

    async def _crawl(
        self,
        key: bytes,
        rpc: Callable[[Node, Node], Any],
        take: Callable[[Node, Any], list[Node]],
        what: str,
        done: Callable[[], bool] = lambda: False,
    ) -> set[bytes] | None:
        """Ask the nodes closest to `key` with `rpc(node, target)`, `take` reading each answer
        (crawl.py: never waiting on departed nodes), within `lookup_timeout`. Returns the ids
        of the nodes that answered; None when no contact is known to start from."""
        target = Node(key)
        nearest = self._server.protocol.router.find_neighbors(target)
        if not nearest:
            return None
        answered: set[bytes] = set()

        def noting(node: Node, answer: Any) -> list[Node]:
            answered.add(node.id)
            return take(node, answer)

        self.lookups_made += 1
        ksize, alpha = self._server.ksize, self._server.alpha
        lookup = crawl(target, nearest, ksize, alpha, lambda n: rpc(n, target), noting, done)
        await self._bounded(lookup, what)
        return answered

    async def _closest_nodes(self, key: bytes) -> list[Node]:
        target = Node(key)
        nearest = self._server.protocol.router.find_neighbors(target)
        if not nearest:
            log.info("no known DHT contacts: %s stays local", key.hex())
            return []
        self.lookups_made += 1
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
            dropped_names = self.name_records.cull(time.time())
            log.debug("culled %d provider and %d name records", dropped, dropped_names)

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
