"""Region-batched announcing over the network: the asyncio shell of announce_plan.py.

`sweep_announce` announces many keys at once. The keys, sorted, are cut into a few
contiguous slices swept side by side; each slice's plan names the next unsettled key, a
lookup (crawl.py) asks the nodes closest to it with get_providers (whose answers carry the
write token each node wants), and the plan settles every key whose k closest nodes that
lookup proved. A node is asked again only when none of its answers so far says what it would
answer now (announce_plan.answer_serves): the lookups of neighbouring regions cost little
more than the nodes they add. Then each chosen node gets all of its keys in add_providers
datagrams (MAX_KEYS_PER_ADD keys each).

Measured with benchmarks/announce_batching.py: see docs/design.md, "Announcing".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kademlia.node import Node

from chunkstore.net.announce_plan import AnnouncePlan, answer_serves, key_int
from chunkstore.net.crawl import crawl
from chunkstore.net.protocol import MAX_KEYS_PER_ADD, MAX_NODES_PER_ANSWER, ChunkstoreProtocol

log = logging.getLogger(__name__)

# A region lookup tracks this many times k closest nodes: the plan settles the keys whose k
# closest nodes lie inside what a lookup proved, so a wider lookup settles a wider region
# (pure simulation, 500 nodes, 800 keys, k = 20: 232 lookups at 1 k, 28 at 1.5 k, 17 at 2 k,
# 12 at 3 k); with answers reused, a wider lookup costs little more.
LOOKUP_WIDTH_FACTOR = 2
# Contiguous slices of the keys swept side by side, and add_providers requests in flight.
SWEEP_SLICES = 4
SENDS_IN_FLIGHT = 16


@dataclass
class SweepReport:
    """What one sweep did: the keys at least one remote node accepted, lookups made, nodes
    asked (get_providers sent), add_providers requests sent, those never answered (after a
    second try) and those refused as busy."""

    accepted: set[bytes] = field(default_factory=set)
    lookups: int = 0
    asked: int = 0
    batches: int = 0
    unanswered: int = 0
    busy: int = 0


class _Sweep:
    """The nodes asked during one sweep, shared by its slices."""

    def __init__(self, protocol: ChunkstoreProtocol, me: Node, width: int) -> None:
        self.protocol = protocol
        self.me = me
        self.width = width  # closer nodes asked of each node
        # node id -> [(key asked for, future of (ok, parsed answer))]
        self.answers: dict[bytes, list[tuple[int, asyncio.Future]]] = {}
        self.seen: dict[bytes, Node] = {}  # every node heard of, answered or not
        self.tokens: dict[bytes, tuple[Node, bytes | None]] = {}  # answered: node, token

    async def ask(self, node: Node, target: Node) -> tuple[bool, Any]:
        """get_providers to `node`, unless an answer it gave this sweep already says all it
        would answer for `target` (announce_plan.answer_serves): that answer then."""
        asked = self.answers.setdefault(node.id, [])
        goal = key_int(target.id)
        for aim, pending in list(asked):
            ok, answer = await asyncio.shield(pending)
            if not ok:
                return False, None  # did not answer this sweep: not asked again
            if answer_serves(aim, [key_int(n.id) for n in answer[1]], self.width, goal):
                return ok, answer
        pending = asyncio.ensure_future(self.protocol.call_get_providers(node, target, self.width))
        asked.append((goal, pending))
        ok, answer = await asyncio.shield(pending)
        if ok:
            self.tokens[node.id] = (node, answer[2])
        return ok, answer

    def start_nodes(self, target: Node, count: int) -> list[Node]:
        """The `count` nodes closest to `target` among the routing table and those heard of,
        leaving out those that did not answer."""
        table = self.protocol.router.find_neighbors(target, k=count)
        candidates = {n.id: n for n in table}
        candidates.update(self.seen)
        failed = {i for i, asked in self.answers.items() if any(_failed(f) for _, f in asked)}
        usable = [n for i, n in candidates.items() if i not in failed and i != self.me.id]
        return sorted(usable, key=target.distance_to)[:count]


def _failed(pending: asyncio.Future) -> bool:
    return pending.done() and not pending.result()[0]


async def sweep_announce(
    protocol: ChunkstoreProtocol,
    me: Node,
    keys: Sequence[bytes],
    transfer_port: int,
    *,
    ksize: int,
    alpha: int,
    lookup_timeout: float,
    record_locally: Callable[[list[bytes]], None],
    slices: int = SWEEP_SLICES,
) -> SweepReport:
    """Put a holder record of this node (at `transfer_port`) for every one of `keys` on the
    k nodes closest to it; `record_locally(keys)` is called with the keys this node is
    itself among the k closest of. Never raises for network trouble: keys no remote node
    accepted are left out of the report's `accepted`."""
    report = SweepReport()
    ordered = sorted(set(keys))
    if not ordered:
        return report
    sweep = _Sweep(protocol, me, min(LOOKUP_WIDTH_FACTOR * ksize, MAX_NODES_PER_ANSWER))
    step = -(-len(ordered) // max(1, slices))
    plans = [AnnouncePlan(ordered[i : i + step], ksize) for i in range(0, len(ordered), step)]
    for plan in plans:
        plan.learn_node(me.id)
    async with asyncio.TaskGroup() as group:
        for plan in plans:
            group.create_task(_settle(sweep, plan, alpha, lookup_timeout))
    # Answers that came after their lookup ended (the crawl gives up on slow nodes) still
    # count: every plan chooses holders among every node that answered the sweep.
    await asyncio.gather(*(f for asked in sweep.answers.values() for _, f in asked))
    for plan in plans:
        for node_id in sweep.tokens:
            plan.learn_node(node_id)
    report.lookups = sum(plan.lookups for plan in plans)
    report.asked = sum(len(asked) for asked in sweep.answers.values())
    by_node: dict[bytes, list[bytes]] = {}
    for plan in plans:
        for node_id, node_keys in plan.assignments().items():
            by_node.setdefault(node_id, []).extend(node_keys)
    mine = by_node.pop(me.id, [])
    if mine:
        record_locally(mine)
    await _send(sweep, by_node, transfer_port, report)
    return report


async def _settle(sweep: _Sweep, plan: AnnouncePlan, alpha: int, lookup_timeout: float) -> None:
    """Look up the plan's targets until every key is settled; a lookup that times out or
    that nobody answered settles its target on what is known (best effort), so this ends
    after at most one lookup per key."""
    width = sweep.width
    while (key := plan.next_target()) is not None:
        target = Node(key)
        start = sweep.start_nodes(target, width)
        if not start:
            log.info("no known DHT contacts: %d keys stay local", plan.unsettled)
            break
        answered: list[bytes] = []
        take = _answer_reader(sweep, answered)
        finished = True
        try:
            async with asyncio.timeout(lookup_timeout):
                await crawl(
                    target,
                    start,
                    width,
                    alpha,
                    lambda node, t=target: sweep.ask(node, t),
                    take,
                )
        except TimeoutError:
            log.info("region lookup toward %s did not finish", key.hex())
            finished = False
        plan.learn(key, answered, width, finished)
        if not finished or not answered:
            plan.settle_key(key)  # looking it up again would fail again: best effort
    plan.settle_rest()


def _answer_reader(sweep: _Sweep, answered: list[bytes]) -> Callable[[Node, Any], list[Node]]:
    """The crawl's `on_answer`: notes who answered and every node heard of."""

    def take(node: Node, answer: Any) -> list[Node]:
        answered.append(node.id)
        closer = answer[1]
        for other in closer:
            if other.id != sweep.me.id:
                sweep.seen.setdefault(other.id, other)
        return closer

    return take


async def _send(
    sweep: _Sweep, by_node: dict[bytes, list[bytes]], transfer_port: int, report: SweepReport
) -> None:
    """add_providers to every chosen node, MAX_KEYS_PER_ADD keys per request; a request
    unanswered is sent once more, a refused token retried once with the fresh one the
    refusal carries."""
    slots = asyncio.Semaphore(SENDS_IN_FLIGHT)

    async def send(node: Node, token: bytes | None, batch: list[bytes]) -> None:
        async with slots:
            timed_out = stale = False
            while True:
                report.batches += 1
                ok, answer = await sweep.protocol.call_add_providers(
                    node, batch, transfer_port, token
                )
                if not ok:
                    if not timed_out:
                        # It answered this sweep's lookup moments ago: a lost datagram or a
                        # busy moment, not a departure. Ask once more, or every key of its
                        # region misses it until the next round.
                        timed_out = True
                        continue
                    report.unanswered += 1
                    return
                stored, fresh, busy = answer
                if stored:
                    report.accepted.update(batch)
                    return
                if busy:
                    report.busy += 1
                if busy or stale or fresh is None or fresh == token:
                    return
                stale, token = True, fresh

    async with asyncio.TaskGroup() as group:
        for node_id, node_keys in by_node.items():
            node, token = sweep.tokens[node_id]
            for i in range(0, len(node_keys), MAX_KEYS_PER_ADD):
                group.create_task(send(node, token, node_keys[i : i + MAX_KEYS_PER_ADD]))
