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

import umsgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from rpcudp.exceptions import MalformedMessage
from rpcudp.protocol import RPCProtocol

from chunkstore.net.address_scope import Scope, usable
from chunkstore.net.contact_rules import ContactRules
from chunkstore.net.name_records import MAX_PUBLISHERS_PER_NAME, NameRecordStore
from chunkstore.net.providers import Holder, ProviderStore
from chunkstore.net.request_budget import AddressBudget, ReplyBudget, RequestBudget
from chunkstore.net.write_tokens import WriteTokens
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
# rpcudp refuses to send a request whose payload exceeds 8 KB; anything much larger is not a
# message of ours, and decoding one costs ~15 ms per 64 KiB before any check: dropped unread.
MAX_DATAGRAM_BYTES = 8192 + 64
MAX_PROVEN_ADDRESSES = 4096
# Closer nodes a get_providers answer may be asked for (`want`): 48 of ~40 bytes each keep
# the answer (with its 32 holders at most) near 3 KB, within one datagram. Region-batched
# announcing asks for 2 k = 40, so that a lookup proves twice the usual neighbourhood.
MAX_NODES_PER_ANSWER = 48
# Keys in one add_providers request: 22 bytes each in msgpack (20 + a 2-byte header), so 320
# make ~7 KB, under rpcudp's 8 KB request limit with room for the other arguments.
MAX_KEYS_PER_ADD = 320
# Provider records one source IP may have stored here, per second (bursts of the second
# figure). One add_providers datagram carries up to 320 of them where add_provider carried
# one: without this, a single address could churn the whole provider store (200,000 keys,
# least recently added evicted first) in seconds. An honest announcer gives one node a few
# hundred keys per batch (20 copies of each key spread over the network); loopback is exempt
# as for the request budget.
PROVIDER_RECORDS_PER_SECOND = 200.0
PROVIDER_RECORDS_BURST = 2000.0
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


def parse_nodes(
    raw: object, limit: int, own_scope: Scope | None = None
) -> list[tuple[bytes, str, int]] | object:
    """Node triples from an answer, dropping malformed entries and addresses out of this
    node's scope (`address_scope.usable`); INVALID if not a list."""
    if not isinstance(raw, list):
        return INVALID
    nodes = []
    for item in raw[:limit]:
        if isinstance(item, list) and len(item) == 3:
            node_id, ip, port = item
            if is_key(node_id) and is_ip(ip) and is_port(port) and usable(ip, own_scope):
                nodes.append((node_id, ip, port))
    return nodes


def parse_providers(
    raw: object, asked_ip: str, node_limit: int, own_scope: Scope | None = None
) -> tuple | object:
    """(holders, node triples, write token or None) from a get_providers answer given by the
    node at `asked_ip`, dropping malformed entries, duplicates and addresses out of this
    node's scope; INVALID if the answer is not one at all.

    An entry whose host is SELF_HOLDER_HOST is the answering node itself: it becomes a holder
    at `asked_ip`, the address we reach it at (never one it chose)."""
    if not isinstance(raw, dict):
        return INVALID
    raw_holders = raw.get("providers")
    nodes = parse_nodes(raw.get("nodes"), node_limit, own_scope)
    if not isinstance(raw_holders, list) or nodes is INVALID:
        return INVALID
    holders: dict[Holder, None] = {}
    for item in raw_holders[:MAX_HOLDERS_PER_ANSWER]:
        if isinstance(item, list) and len(item) == 2:
            host, port = item
            if host == SELF_HOLDER_HOST:
                host = asked_ip
            elif not usable(host, own_scope):
                continue
            if is_ip(host) and is_port(port):
                holders[Holder(host, port)] = None
    token = raw.get("token")
    return list(holders), [Node(*n) for n in nodes], token if isinstance(token, bytes) else None


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
    - add_provider(nodeid, key, transfer_port, token) -> bool: records the *sender's observed
      address* with `transfer_port` as a holder of `key` if `token` is a write token this node
      made for the sender's IP (write_tokens.py), else answers False and records nothing;
    - add_providers(nodeid, keys, transfer_port, token) -> {"stored": int, "token": bytes,
      "busy": bool}: add_provider for each of `keys` (1..MAX_KEYS_PER_ADD DHT keys, one
      datagram) under the same token rule; "stored" is how many were recorded (all or none),
      "token" a fresh write token for the sender's IP (so a stale one costs one retry, not a
      lookup), "busy" true when the sender's IP is over its provider-record budget;
    - get_providers(nodeid, key[, want]) -> {"providers": [[host, port], ...], "nodes":
      [[id, ip, port]], "token": bytes}: the `want` (default k, at most
      MAX_NODES_PER_ANSWER) closest nodes known; the records stored here, led by ["",
      transfer_port] (SELF_HOLDER_HOST) when this node's own store holds the object whole
      (the asker reads "" as the address it asked); and a write token for the asker's IP.
    A request with malformed arguments is dropped unanswered; a datagram that does not decode
    is dropped; neither ever raises into the event loop. A datagram over MAX_DATAGRAM_BYTES,
    or a request beyond its sender IP's budget (request_budget.py), is dropped before it is
    decoded. Addresses other nodes give (contacts, holders) out of this node's scope are
    never used (address_scope.py); the routing table admits few contacts per address
    (contact_rules.py).

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
        self.tokens = WriteTokens(time.monotonic())
        self.budget = RequestBudget()
        self.record_budget = AddressBudget(PROVIDER_RECORDS_PER_SECOND, PROVIDER_RECORDS_BURST)
        self.contact_rules = ContactRules()
        # This node's address scope once it knows its address (set by DhtNode): addresses
        # learnt from others that are narrower are never contacted (address_scope.py).
        self.own_scope: Scope | None = None
        self.dropped_datagrams = 0
        self.reply_budget = ReplyBudget()
        self._proven: OrderedDict[tuple[str, int], None] = OrderedDict()
        # key -> this node's transfer port when its own store holds that object whole
        self.local_holdings = local_holdings
        # Told of every contact that enters the routing table, and whether it got there by
        # answering one of our requests (True) or by sending us one (False: its source
        # address may be spoofed). Must not block: it runs while a datagram is handled.
        self.on_new_contact: Callable[[Node, bool], None] | None = None
        self._quarantine: dict[tuple[str, int], float] = {}

    # --- incoming datagrams -------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        # Checked before anything is decoded or scheduled: size, then the sender's budget.
        if len(data) > MAX_DATAGRAM_BYTES or (
            data[:1] == b"\x00" and not self.budget.allow(addr[0], time.monotonic())
        ):
            self.dropped_datagrams += 1
            return
        super().datagram_received(data, addr)

    def _accept_response(self, msg_id: bytes, data: Any, address: tuple) -> None:
        # rpcudp logs a WARNING for every answer to no request: a flood of them would flood
        # the log. Dropped quietly instead.
        if msg_id not in self._outstanding:
            log.debug("answer to no request from %s dropped", address)
            return
        # It answered our random message id from this address: the address is real.
        self._proven[(address[0], address[1])] = None
        self._proven.move_to_end((address[0], address[1]))
        while len(self._proven) > MAX_PROVEN_ADDRESSES:
            self._proven.popitem(last=False)
        super()._accept_response(msg_id, data, address)

    def _timeout(self, msg_id: bytes) -> None:
        # rpcudp logs an ERROR per unanswered request: routine with departed peers.
        future, _ = self._outstanding.pop(msg_id, (None, None))
        if future is not None and not future.done():
            future.set_result((False, None))

    async def _solve_datagram(self, datagram: bytes, address: tuple) -> None:
        # rpcudp decodes in a fire-and-forget task: garbage would end it with an exception
        # nobody retrieves. Log and drop instead.
        try:
            await super()._solve_datagram(datagram, address)
        except Exception as exc:  # noqa: BLE001 - any decoding failure means "drop it"
            log.debug("dropped undecodable datagram from %s: %r", address, exc)

    async def _accept_request(self, msg_id: bytes, data: Any, address: tuple) -> None:
        # rpcudp's, plus: a bad request is dropped quietly, and the answer to an address
        # that never answered us (its source may be forged) is sent only within that IP's
        # reply budget in bytes, so a forged request cannot make us flood its victim.
        try:
            if not isinstance(data, list) or len(data) != 2:
                raise MalformedMessage(f"not a request: {data!r}"[:200])
            name, args = data
            handler = getattr(self, f"rpc_{name}", None) if isinstance(name, str) else None
            if handler is None or not callable(handler) or not isinstance(args, list):
                raise MalformedMessage(f"no RPC {name!r}"[:200])
            response = handler(address, *args)
            if asyncio.iscoroutine(response):
                response = await response
            reply = b"\x01" + msg_id + umsgpack.packb(response)
        except Exception as exc:  # noqa: BLE001 - wrong arity/types from a peer: drop it
            log.debug("dropped bad request from %s: %r", address, exc)
            return
        if (address[0], address[1]) not in self._proven and not self.reply_budget.allow(
            address[0], time.monotonic(), len(reply)
        ):
            log.debug("answer to unproven %s over its reply budget: not sent", address)
            return
        # A handler that awaited may finish after the node stopped: a closed transport
        # would raise from sendto in a task nobody awaits (a traceback on a get's stderr).
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, address)

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
        self, sender: tuple, nodeid: bytes, key: bytes, transfer_port: int, token: Any = None
    ) -> bool:
        source = self._check_request(sender, nodeid, key)
        if not is_port(transfer_port):
            raise BadRequest("transfer port must be an int in 1..65535")
        if not self.tokens.valid(sender[0], token, time.monotonic()):
            # no token made for this source IP: perhaps forged (write_tokens.py)
            log.debug("add_provider from %s without a valid token refused", sender)
            return False
        self.welcome_if_new(source)
        # Only the observed source address is recorded: a request cannot name another host,
        # so nobody can aim downloaders at a third party.
        self.providers.add(key, Holder(sender[0], transfer_port), time.monotonic())
        return True

    def rpc_add_providers(
        self, sender: tuple, nodeid: bytes, keys: Any, transfer_port: int, token: Any = None
    ) -> dict:
        source = self._check_request(sender, nodeid)
        if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS_PER_ADD:
            raise BadRequest(f"keys must be a list of 1..{MAX_KEYS_PER_ADD} DHT keys")
        if not all(is_key(key) for key in keys):
            raise BadRequest("every key must be 20 bytes")
        if not is_port(transfer_port):
            raise BadRequest("transfer port must be an int in 1..65535")
        now = time.monotonic()
        answer = {"stored": 0, "token": self.tokens.token_for(sender[0], now), "busy": False}
        if not self.tokens.valid(sender[0], token, now):
            log.debug("add_providers from %s without a valid token refused", sender)
            return answer
        if not self.record_budget.allow(sender[0], now, len(keys)):
            log.debug("add_providers from %s over its record budget refused", sender)
            answer["busy"] = True
            return answer
        self.welcome_if_new(source)
        # As add_provider: only the observed source address is recorded.
        holder = Holder(sender[0], transfer_port)
        for key in keys:
            self.providers.add(key, holder, now)
        answer["stored"] = len(keys)
        return answer

    def rpc_get_providers(self, sender: tuple, nodeid: bytes, key: bytes, want: Any = None) -> dict:
        source = self._check_request(sender, nodeid, key)
        if want is None:
            want = self.router.ksize
        elif type(want) is not int or not 1 <= want <= MAX_NODES_PER_ANSWER:
            raise BadRequest(f"want must be an int in 1..{MAX_NODES_PER_ANSWER}")
        self.welcome_if_new(source)
        entries = []
        own_port = self.local_holdings(key) if self.local_holdings is not None else None
        if own_port is not None:
            entries.append([SELF_HOLDER_HOST, own_port])
        # Our own record may follow the marker (a node that knows its address records
        # itself): the asker merges the two.
        holders = self.providers.get(key, time.monotonic())
        entries += [[h.host, h.port] for h in holders[: MAX_HOLDERS_PER_ANSWER - len(entries)]]
        neighbors = self.router.find_neighbors(Node(key), k=want, exclude=source)
        return {
            "providers": entries,
            "nodes": [list(n) for n in neighbors],
            "token": self.tokens.token_for(sender[0], time.monotonic()),
        }

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
        table = [n for bucket in self.router.buckets for n in bucket.get_nodes()]
        if answered:
            # it answered from this address with this id: an older id there is gone
            for other in table:
                if (other.ip, other.port) == (node.ip, node.port) and other.id != node.id:
                    self.router.remove_contact(other)
            table = [n for n in table if (n.ip, n.port) != (node.ip, node.port)]
        bucket = self.router.buckets[self.router.get_bucket_for(node)].get_nodes()
        if not self.contact_rules.admits(
            node.ip,
            node.port,
            node.id,
            ((n.id, n.ip, n.port) for n in bucket),
            ((n.id, n.ip, n.port) for n in table),
        ):
            log.debug("%s not admitted to the routing table (address diversity)", node)
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

    def forgive(self, address: tuple[str, int]) -> None:
        """Let requests reach `address` again though it failed to answer lately (it is skipped
        for FAILED_NODE_QUARANTINE s otherwise): for contacts worth a second chance, such as
        the bootstrap contacts a user named."""
        self._quarantine.pop(address, None)

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
        return parse_nodes(answer, self.router.ksize, self.own_scope)

    def _parse_find_names(self, answer: Any, key: bytes) -> Any:
        """(records, node triples) from a find_names answer: each record checked as if it
        were stored here (invalid ones dropped, the others kept); INVALID if not an answer."""
        if not isinstance(answer, dict) or not isinstance(answer.get("records"), list):
            return INVALID
        nodes = parse_nodes(answer.get("nodes"), self.router.ksize, self.own_scope)
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
        self, node_to_ask: Node, key: bytes, transfer_port: int, token: bytes | None
    ) -> tuple[bool, bool]:
        """Ask `node_to_ask` to record us as a holder of `key`, presenting the write token it
        gave us in a get_providers answer; (answered, accepted)."""
        return await self._call(
            node_to_ask, "add_provider", (key, transfer_port, token), lambda a: a is True
        )

    async def call_add_providers(
        self, node_to_ask: Node, keys: list[bytes], transfer_port: int, token: bytes | None
    ) -> tuple[bool, Any]:
        """Ask `node_to_ask` to record us as a holder of every one of `keys` (at most
        MAX_KEYS_PER_ADD), presenting its write token; (True, (stored, fresh token or None,
        busy)) if it answered, else (False, None)."""
        count = len(keys)

        def parse(answer: Any) -> Any:
            if not isinstance(answer, dict):
                return INVALID
            stored, fresh, busy = answer.get("stored"), answer.get("token"), answer.get("busy")
            if type(stored) is not int or not 0 <= stored <= count:
                return INVALID
            return stored, fresh if isinstance(fresh, bytes) else None, busy is True

        return await self._call(node_to_ask, "add_providers", (keys, transfer_port, token), parse)

    async def call_get_providers(
        self, node_to_ask: Node, node_to_find: Node, want: int | None = None
    ) -> tuple[bool, Any]:
        """(True, (holders, closer nodes, write token)) from `node_to_ask`, or (False, None).
        A holder `node_to_ask` names as itself is given at the address it was asked at.
        `want`: how many closer nodes to ask for (1..MAX_NODES_PER_ANSWER; default k)."""
        args = (node_to_find.id,) if want is None else (node_to_find.id, want)
        return await self._call(
            node_to_ask,
            "get_providers",
            args,
            lambda answer: parse_providers(
                answer, node_to_ask.ip, want or self.router.ksize, self.own_scope
            ),
        )

    async def write_token(self, node: Node, key: bytes) -> bytes | None:
        """The write token `node` gives us (from a get_providers of `key`), without touching
        the routing table; None if it did not answer or gave none."""
        ok, answer = await self._request(
            (node.ip, node.port), "get_providers", self.source_node.id, key
        )
        token = answer.get("token") if ok and isinstance(answer, dict) else None
        return token if isinstance(token, bytes) else None

    async def offer_provider(
        self, node: Node, key: bytes, transfer_port: int, token: bytes | None
    ) -> bool | None:
        """Hand `node` our holder record of `key` (add_provider, with its write token)
        without touching the routing table: True if it accepted, False if it refused, None if
        it did not answer (gone, or a stock kademlia node, which ignores add_provider)."""
        ok, answer = await self._request(
            (node.ip, node.port), "add_provider", self.source_node.id, key, transfer_port, token
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
