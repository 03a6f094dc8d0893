"""Hand-over: the records a contact that joins the routing table should hold, handed to it.

Kademlia's join procedure has a node give a newcomer the values it should now hold; the
`kademlia` package does that for STORE values in `welcome_if_new`, for any sender id and at
once. Here: a newcomer is queued (bounded), must answer a ping with its own id before it is
sent anything or counted (a request's source address can be forged, an answer to our random
message id cannot), and is handed this node's own name records and complete manifests for
which it is now among the k closest contacts known (everything, for a first contact), then
name records other nodes stored here under the stock rule (it is among the k closest and we
are the closest; they are signed, so handing them on is safe) — at most
HANDOVER_MAX_RECORDS, at one shared rate for the whole node.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kademlia.node import Node

from chunkstore.net.protocol import ChunkstoreProtocol, name_key
from chunkstore.net.ratelimit import TokenBucket, acquire
from chunkstore.objects.name_record import NameRecord

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class OwnRecords:
    """The records a node publishes itself, for handing to contacts that join: provider keys
    (the DHT keys of the files it holds whole) at its transfer port, and its names."""

    transfer_port: int | None = None
    provider_keys: Sequence[bytes] = ()
    names: Sequence[NameRecord] = ()  # its own signed name records


class HandOver:
    """Hands records to contacts that join, in the background (`start` / `stop`).

    Callers may rely on: at most HANDOVER_QUEUE contacts wait (more are dropped, never
    blocking the datagram handler), HANDOVER_WORKERS are served at once, each gets at most
    HANDOVER_MAX_RECORDS records and not again within HANDOVER_REPEAT_SECONDS, all requests
    share HANDOVER_RATE per second, and nothing is sent before the contact answered a ping
    with its own id."""

    def __init__(
        self,
        protocol: Callable[[], ChunkstoreProtocol],
        me: Node,
        ksize: int,
        own_records: Callable[[], OwnRecords],
        contact_gained: Callable[[], None],
    ) -> None:
        self._protocol = protocol
        self._me = me
        self._ksize = ksize
        self._own_records = own_records
        self._contact_gained = contact_gained
        # made in `start`: asyncio primitives belong to the loop that runs the node
        self._joined: asyncio.Queue[tuple[Node, bool]] | None = None
        self._queued: set[bytes] = set()  # ids of the contacts in `_joined`
        self._workers: list[asyncio.Task] = []
        self._rate = TokenBucket(HANDOVER_RATE, HANDOVER_BURST)
        self._recent: OrderedDict[tuple[bytes, str, int], float] = OrderedDict()

    def start(self) -> None:
        self._joined = asyncio.Queue(HANDOVER_QUEUE)
        self._queued.clear()
        self._workers = [asyncio.create_task(self._serve_queue()) for _ in range(HANDOVER_WORKERS)]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._joined = None
        self._queued.clear()

    def contact_joined(self, node: Node, answered: bool) -> None:
        """From the protocol, while a datagram is handled: queue the newcomer (never block)."""
        if answered:
            self._contact_gained()
        if node.id in self._queued or self._joined is None:
            return
        try:
            self._joined.put_nowait((node, answered))
        except asyncio.QueueFull:
            log.debug("hand-over queue full: %s gets no hand-over", node)
            return
        self._queued.add(node.id)

    async def _serve_queue(self) -> None:
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
        handed_lately = self._recent.get(address, -math.inf) > now - HANDOVER_REPEAT_SECONDS
        names, provider_keys, transfer_port = (
            ([], [], None) if handed_lately else await self.records_for(node)
        )
        if not answered or names or provider_keys:
            # Proof of address and id before anything is sent or believed: a request's source
            # can be forged, an answer to our ping cannot (its message id is random).
            await acquire(self._rate, 1)
            if await self._protocol().ping_address((node.ip, node.port)) != node.id:
                log.debug("%s did not answer a ping with its id: no hand-over", node)
                return
            if not answered:
                self._contact_gained()
        if not names and not provider_keys:
            return
        self._recent[address] = now
        self._recent.move_to_end(address)
        while len(self._recent) > MAX_RECENT_HANDOVERS:
            self._recent.popitem(last=False)
        sent = 0
        for key, record in names:
            await acquire(self._rate, 1)
            accepted = await self._protocol().offer_name_record(node, key, record)
            if accepted is None:
                return  # gone
            sent += accepted
        token = None
        if provider_keys and transfer_port is not None:
            # one write token per contact: it is made for our IP, whatever the key
            await acquire(self._rate, 1)
            token = await self._protocol().write_token(node, provider_keys[0])
        for key in provider_keys if token is not None else ():
            await acquire(self._rate, 1)
            accepted = await self._protocol().offer_provider(node, key, transfer_port, token)
            if accepted is None:
                break  # gone, or a stock kademlia node: it ignores add_provider
            sent += accepted
        log.debug("handed %d records to %s", sent, node)

    async def records_for(
        self, node: Node
    ) -> tuple[list[tuple[bytes, bytes]], list[bytes], int | None]:
        """What a contact that joins should be handed: (name records as (key, encoded),
        provider keys, our transfer port). Our own name records and provider keys where it is
        among the k closest contacts we know; then records others stored here where it is,
        and we are closer than any other contact (the stock kademlia rule). At most
        HANDOVER_MAX_RECORDS in all, our own first."""
        own = self._own_records()
        others = [
            n.long_id
            for bucket in self._protocol().router.buckets
            for n in bucket.get_nodes()
            if n.id != node.id
        ]
        ksize = self._ksize
        me = self._me.long_id
        budget = HANDOVER_MAX_RECORDS
        names: dict[bytes, bytes] = {}  # encoded record -> key: each record once
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
            (False, ((name_key(r.name), r.encoded) for r in own.names), among_closest),
            (True, ((key, None) for key in own_keys), among_closest),
            (
                False,
                [(k, r.encoded) for k, r in self._protocol().name_records.items(time.time())],
                lambda k: among_closest(k) and we_are_closest(k),
            ),
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
                    names.setdefault(value, key)
        return [(k, v) for v, k in names.items()], provider_keys, own.transfer_port
