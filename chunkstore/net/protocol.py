"""The DHT wire protocol: kademlia's RPCs plus provider records and signed name records.

`ChunkstoreProtocol` subclasses kademlia's protocol (as the package invites) and keeps the
stock RPCs wire-compatible; every argument from the network is validated, and a request
that fails validation is logged and dropped unanswered. `DhtNode` (dht.py) drives it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from rpcudp.exceptions import MalformedMessage
from rpcudp.protocol import RPCProtocol

from chunkstore.net.name_records import MAX_PUBLISHERS_PER_NAME, NameRecordStore
from chunkstore.net.providers import Holder, ProviderStore
from chunkstore.objects.name_record import MAX_RECORD_BYTES, InvalidRecord, NameRecord

log = logging.getLogger(__name__)

DHT_KEY_SIZE = 20
# Stock rpcudp waits 5 s per request; every dead contact a lookup meets then costs 5 s. 1 s
# is still several round trips on a slow WAN link.
DEFAULT_RPC_TIMEOUT = 1.0
# Keeps a get_providers answer far below the 8 KB datagram budget (~40 bytes per entry).
MAX_HOLDERS_PER_ANSWER = 32
# How long a node that did not answer is skipped without sending to it: live nodes keep
# advertising dead ones, and each would otherwise cost a full RPC timeout per lookup.
FAILED_NODE_QUARANTINE = 30.0
MAX_QUARANTINED = 4096
# Name records already checked, by their bytes: the same record comes back from most of the
# nodes a lookup asks, and a signature check costs ~50 us.
VERIFIED_RECORDS_CACHE = 1024
NAME_KEY_DOMAIN = b"chunkstore name\x00"
# The host of a get_providers entry meaning "the answering node itself, at the address you
# sent the question to": a node listening on every interface may not know its own address,
# and the asker knows one that reaches it. Never a valid IP, so a peer that predates it
# drops the entry (as any malformed one) and keeps the others.
SELF_HOLDER_HOST = ""

INVALID = object()


class BadRequest(Exception):
    """A request whose arguments are refused; it is logged and dropped unanswered."""


def name_key(name: str) -> bytes:
    """The DHT key of a name's records: SHA-1 of a domain tag and the UTF-8 name (not the
    stock kademlia `digest(name)`, so stock STOREs and our records never share a key)."""
    return hashlib.sha1(NAME_KEY_DOMAIN + name.encode()).digest()


def is_key(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == DHT_KEY_SIZE


def is_port(value: object) -> bool:
    return type(value) is int and 1 <= value <= 65535


def is_ip(value: object) -> bool:
    # Hostnames are refused: sendto() would resolve them with a blocking DNS call on the loop.
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def parse_nodes(raw: object, limit: int) -> list[tuple[bytes, str, int]] | object:
    """Node triples from an answer, dropping malformed entries; INVALID if not a list."""
    if not isinstance(raw, list):
        return INVALID
    nodes = []
    for item in raw[:limit]:
        if isinstance(item, list) and len(item) == 3:
            node_id, ip, port = item
            if is_key(node_id) and is_ip(ip) and is_port(port):
                nodes.append((node_id, ip, port))
    return nodes


def parse_providers(raw: object, asked_ip: str, node_limit: int) -> tuple | object:
    """(holders, node triples) from a get_providers answer given by the node at `asked_ip`,
    dropping malformed entries and duplicates; INVALID if the answer is not one at all.

    An entry whose host is SELF_HOLDER_HOST is the answering node itself: it becomes a holder
    at `asked_ip`, the address we reach it at (never one it chose)."""
    if not isinstance(raw, dict):
        return INVALID
    raw_holders = raw.get("providers")
    nodes = parse_nodes(raw.get("nodes"), node_limit)
    if not isinstance(raw_holders, list) or nodes is INVALID:
        return INVALID
    holders: dict[Holder, None] = {}
    for item in raw_holders[:MAX_HOLDERS_PER_ANSWER]:
        if isinstance(item, list) and len(item) == 2:
            host, port = item
            if host == SELF_HOLDER_HOST:
                host = asked_ip
            if is_ip(host) and is_port(port):
                holders[Holder(host, port)] = None
    return list(holders), [Node(*n) for n in nodes]


# What a node holds itself: given a DHT key, its transfer port if its own store holds the
# object whole (a chunk, or a manifest with every chunk), else None.
LocalHoldings = Callable[[bytes], int | None]


class ChunkstoreProtocol(KademliaProtocol):
    """Kademlia's protocol plus provider records and name records, with hardened request
    handling.

    Stock RPCs (ping, find_node) keep their wire format; stock store and find_value keep it
    too but hold nothing: a STORE is answered False and stored nowhere, a FIND_VALUE is
    answered with nodes only. Names are never decided by unsigned values, the stock hourly
    republish has nothing to republish, and "the most common value wins" never applies.
    Added RPCs:
    - store_name(nodeid, key, record) -> bool: keeps a signed name record (see
      objects/name_record.py) under `key` when it is valid, live, made for that key
      (`name_key` of its name) and allowed by the merge rules of NameRecordStore; False
      otherwise, and nothing changes;
    - find_names(nodeid, key) -> {"records": [record, ...], "nodes": [[id, ip, port]]}: the
      records kept under `key`, at most one per publisher;
    - add_provider(nodeid, key, transfer_port) -> True: records the *sender's observed address*
      with `transfer_port` as a holder of `key`;
    - get_providers(nodeid, key) -> {"providers": [[host, port], ...], "nodes": [[id, ip, port]]}:
      the records stored here, led by ["", transfer_port] (SELF_HOLDER_HOST) when this node's
      own store holds the object whole; the asker reads "" as the address it asked.
    A request with malformed arguments is dropped unanswered; a datagram that does not decode
    is dropped; neither ever raises into the event loop.

    A contact entering the routing table is reported to `on_new_contact` instead of being sent
    every stored value at once (the stock `welcome_if_new`): whoever owns the protocol hands
    records over, bounded and to contacts that proved their address.
    """

    def __init__(
        self,
        source_node: Node,
        storage: Any,
        ksize: int,
        providers: ProviderStore | None = None,
        wait_timeout: float = DEFAULT_RPC_TIMEOUT,
        local_holdings: LocalHoldings | None = None,
        name_records: NameRecordStore | None = None,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        # KademliaProtocol calls RPCProtocol.__init__() without arguments, i.e. with rpcudp's
        # 5 s default; run it again with ours (nothing is connected or pending yet).
        RPCProtocol.__init__(self, wait_timeout=wait_timeout)
        self.providers = providers if providers is not None else ProviderStore()
        self.name_records = name_records if name_records is not None else NameRecordStore()
        self._verified: OrderedDict[bytes, NameRecord] = OrderedDict()
        # key -> this node's transfer port when its own store holds that object whole
        self.local_holdings = local_holdings
        # Told of every contact that enters the routing table, and whether it got there by
        # answering one of our requests (True) or by sending us one (False: its source
        # address may be spoofed). Must not block: it runs while a datagram is handled.
        self.on_new_contact: Callable[[Node, bool], None] | None = None
        self._quarantine: dict[tuple[str, int], float] = {}

    # --- incoming datagrams -------------------------------------------------------------

    async def _solve_datagram(self, datagram: bytes, address: tuple) -> None:
        # rpcudp decodes in a fire-and-forget task: garbage would end it with an exception
        # nobody retrieves. Log and drop instead.
        try:
            await super()._solve_datagram(datagram, address)
        except Exception as exc:  # noqa: BLE001 - any decoding failure means "drop it"
            log.debug("dropped undecodable datagram from %s: %r", address, exc)

    async def _accept_request(self, msg_id: bytes, data: Any, address: tuple) -> None:
        try:
            await super()._accept_request(msg_id, data, address)
        except Exception as exc:  # noqa: BLE001 - wrong arity/types from a peer: drop it
            log.debug("dropped bad request from %s: %r", address, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        # rpcudp leaves pending requests to their timers; once the socket is closed nobody
        # can answer, so settle them now rather than leave timers behind a stopped node.
        for future, timer in list(self._outstanding.values()):
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()

    def _check_request(self, sender: tuple, nodeid: object, key: object = None) -> Node:
        if not is_key(nodeid):
            raise BadRequest("node id must be 20 bytes")
        if key is not None and not is_key(key):
            raise BadRequest("key must be 20 bytes")
        # it talks to us, so it is alive whatever an earlier timeout said
        self._quarantine.pop((sender[0], sender[1]), None)
        return Node(nodeid, sender[0], sender[1])

    def rpc_ping(self, sender: tuple, nodeid: bytes) -> bytes:
        self._check_request(sender, nodeid)
        return super().rpc_ping(sender, nodeid)

    def rpc_store(self, sender: tuple, nodeid: bytes, key: bytes, value: Any) -> bool:
        # Unsigned values decide nothing here: a stock STORE is answered False and stored
        # nowhere (a malformed one, as any bad request, is dropped unanswered).
        self._check_request(sender, nodeid, key)
        if type(value) not in (int, float, bool, str, bytes):
            raise BadRequest("a stock STORE value is int, float, bool, str or bytes")
        log.debug("refused a stock STORE from %s", sender)
        return False

    def rpc_find_node(self, sender: tuple, nodeid: bytes, key: bytes) -> list:
        self._check_request(sender, nodeid, key)
        return super().rpc_find_node(sender, nodeid, key)

    def rpc_find_value(self, sender: tuple, nodeid: bytes, key: bytes) -> Any:
        # Nothing is stored with the stock STORE: always the closest nodes.
        self._check_request(sender, nodeid, key)
        return super().rpc_find_node(sender, nodeid, key)

    def rpc_store_name(self, sender: tuple, nodeid: bytes, key: bytes, record: Any) -> bool:
        source = self._check_request(sender, nodeid, key)
        checked = self.check_record(record, key)
        if checked is None:
            return False
        self.welcome_if_new(source)
        return self.name_records.offer(key, checked, time.time())

    def rpc_find_names(self, sender: tuple, nodeid: bytes, key: bytes) -> dict:
        source = self._check_request(sender, nodeid, key)
        self.welcome_if_new(source)
        records = self.name_records.get(key, time.time())[:MAX_PUBLISHERS_PER_NAME]
        neighbors = self.router.find_neighbors(Node(key), exclude=source)
        return {"records": [r.encoded for r in records], "nodes": [list(n) for n in neighbors]}

    def check_record(self, data: object, key: bytes) -> NameRecord | None:
        """The name record `data` encodes if it is valid, live now and made for `key`; else
        None (logged). Every record from the network goes through here before it is kept,
        answered, handed on or used."""
        if not isinstance(data, bytes) or len(data) > MAX_RECORD_BYTES:
            log.debug("refused a name record that is not bytes of a record's size")
            return None
        record = self._verified.get(data)
        if record is None:
            try:
                record = NameRecord.decode(data)
            except InvalidRecord as e:
                log.debug("refused a name record: %s", e)
                return None
            self._verified[data] = record
            while len(self._verified) > VERIFIED_RECORDS_CACHE:
                self._verified.popitem(last=False)
        if name_key(record.name) != key:
            log.debug("refused a record of %r sent under another key", record.name)
            return None
        if not record.is_live(time.time()):
            log.debug("refused an expired name record of %r", record.name)
            return None
        return record

    def rpc_add_provider(
        self, sender: tuple, nodeid: bytes, key: bytes, transfer_port: int
    ) -> bool:
        source = self._check_request(sender, nodeid, key)
        if not is_port(transfer_port):
            raise BadRequest("transfer port must be an int in 1..65535")
        self.welcome_if_new(source)
        # Only the observed source address is recorded: a request cannot name another host,
        # so nobody can aim downloaders at a third party.
        self.providers.add(key, Holder(sender[0], transfer_port), time.monotonic())
        return True

    def rpc_get_providers(self, sender: tuple, nodeid: bytes, key: bytes) -> dict:
        source = self._check_request(sender, nodeid, key)
        self.welcome_if_new(source)
        entries = []
        own_port = self.local_holdings(key) if self.local_holdings is not None else None
        if own_port is not None:
            entries.append([SELF_HOLDER_HOST, own_port])
        # Our own record may follow the marker (a node that knows its address records
        # itself): the asker merges the two.
        holders = self.providers.get(key, time.monotonic())
        entries += [[h.host, h.port] for h in holders[: MAX_HOLDERS_PER_ANSWER - len(entries)]]
        neighbors = self.router.find_neighbors(Node(key), exclude=source)
        return {"providers": entries, "nodes": [list(n) for n in neighbors]}

    # --- the routing table ----------------------------------------------------------------

    def welcome_if_new(self, node: Node) -> None:
        """Add a contact that sent us a request to the routing table (as stock kademlia does),
        then report it; unlike stock, send it nothing here."""
        self._welcome(node, answered=False)

    def handle_call_response(self, result: tuple[bool, Any], node: Node) -> tuple[bool, Any]:
        if not result[0]:
            return super().handle_call_response(result, node)  # drops it from the table
        self._welcome(node, answered=True)
        return result

    def _welcome(self, node: Node, answered: bool) -> None:
        if not self.router.is_new_node(node):
            return
        self.router.add_contact(node)
        # A full bucket keeps the newcomer aside as a replacement: only a real entry counts.
        if self.on_new_contact is not None and not self.router.is_new_node(node):
            self.on_new_contact(node, answered)

    # --- outgoing requests --------------------------------------------------------------

    async def _request(self, address: tuple[str, int], rpc: str, *args: Any) -> tuple[bool, Any]:
        """Send one request; (False, None) on timeout or when the socket is closed."""
        if self.transport is None or self.transport.is_closing():
            return (False, None)
        # rpcudp's __getattr__ turns an unknown attribute into a remote call of rpc_<name>.
        try:
            future = getattr(self, rpc)(address, *args)
        except MalformedMessage as exc:  # request over 8 KB: a bug or an oversized value
            log.warning("not sending %s to %s: %s", rpc, address, exc)
            return (False, None)
        # The shield keeps a cancelled lookup from cancelling rpcudp's future, whose timer
        # would then fail setting a result on it.
        return await asyncio.shield(future)

    async def _call(
        self, node: Node, rpc: str, args: tuple, parse: Callable[[Any], Any]
    ) -> tuple[bool, Any]:
        address = (node.ip, node.port)
        expiry = self._quarantine.get(address)
        if expiry is not None:
            if expiry > time.monotonic():
                log.debug("skipping %s: no answer recently", node)
                return (False, None)
            del self._quarantine[address]
        ok, answer = await self._request(address, rpc, self.source_node.id, *args)
        if ok:
            answer = parse(answer)
            if answer is INVALID:
                log.info("malformed %s answer from %s", rpc, node)
                ok, answer = False, None
        if not ok:
            self._quarantine[address] = time.monotonic() + FAILED_NODE_QUARANTINE
            while len(self._quarantine) > MAX_QUARANTINED:
                # insertion order is expiry order: drop the oldest entry
                del self._quarantine[next(iter(self._quarantine))]
        # stock behaviour: add the node to the routing table on success, remove it on failure
        return self.handle_call_response((ok, answer), node)

    def _parse_node_list(self, answer: Any) -> Any:
        return parse_nodes(answer, self.router.ksize)

    def _parse_find_names(self, answer: Any, key: bytes) -> Any:
        """(records, node triples) from a find_names answer: each record checked as if it
        were stored here (invalid ones dropped, the others kept); INVALID if not an answer."""
        if not isinstance(answer, dict) or not isinstance(answer.get("records"), list):
            return INVALID
        nodes = parse_nodes(answer.get("nodes"), self.router.ksize)
        if nodes is INVALID:
            return INVALID
        records = []
        for item in answer["records"][:MAX_PUBLISHERS_PER_NAME]:
            record = self.check_record(item, key)
            if record is not None:
                records.append(record)
        return records, [Node(*n) for n in nodes]

    async def call_ping(self, node_to_ask: Node) -> tuple[bool, Any]:
        return await self._call(node_to_ask, "ping", (), lambda a: a if is_key(a) else INVALID)

    async def call_store_name(
        self, node_to_ask: Node, key: bytes, record: bytes
    ) -> tuple[bool, bool]:
        """Ask `node_to_ask` to keep a name record; (answered, accepted)."""
        return await self._call(node_to_ask, "store_name", (key, record), lambda a: a is True)

    async def call_find_names(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        """(True, (checked records, closer nodes)) from `node_to_ask`, or (False, None)."""
        key = node_to_find.id
        return await self._call(
            node_to_ask, "find_names", (key,), lambda a: self._parse_find_names(a, key)
        )

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        return await self._call(node_to_ask, "find_node", (node_to_find.id,), self._parse_node_list)

    async def call_add_provider(
        self, node_to_ask: Node, key: bytes, transfer_port: int
    ) -> tuple[bool, bool]:
        """Ask `node_to_ask` to record us as a holder of `key`; (answered, accepted)."""
        return await self._call(
            node_to_ask, "add_provider", (key, transfer_port), lambda a: a is True
        )

    async def call_get_providers(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        """(True, (holders, closer nodes)) from `node_to_ask`, or (False, None). A holder
        `node_to_ask` names as itself is given at the address it was asked at."""
        return await self._call(
            node_to_ask,
            "get_providers",
            (node_to_find.id,),
            lambda answer: parse_providers(answer, node_to_ask.ip, self.router.ksize),
        )

    async def offer_provider(self, node: Node, key: bytes, transfer_port: int) -> bool | None:
        """Hand `node` our holder record of `key` (add_provider) without touching the routing
        table: True if it accepted, False if it refused, None if it did not answer (gone, or
        a stock kademlia node, which ignores add_provider)."""
        ok, answer = await self._request(
            (node.ip, node.port), "add_provider", self.source_node.id, key, transfer_port
        )
        return (answer is True) if ok else None

    async def offer_name_record(self, node: Node, key: bytes, record: bytes) -> bool | None:
        """Hand `node` a name record (store_name) without touching the routing table; as
        `offer_provider`."""
        ok, answer = await self._request(
            (node.ip, node.port), "store_name", self.source_node.id, key, record
        )
        return (answer is True) if ok else None

    async def ping_address(self, address: tuple[str, int]) -> bytes | None:
        """The node id of whoever answers a ping at `address`, or None."""
        ok, answer = await self._request(address, "ping", self.source_node.id)
        return answer if ok and is_key(answer) else None

    async def observed_address(self, address: tuple[str, int]) -> str | None:
        """Our IP as the node at `address` sees it (stock `stun` RPC), or None."""
        ok, answer = await self._request(address, "stun")
        if ok and isinstance(answer, list) and len(answer) >= 2 and is_ip(answer[0]):
            return answer[0]
        return None
