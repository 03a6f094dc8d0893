"""An iterative DHT lookup that acts on each answer as it arrives.

The `kademlia` package's crawl goes in rounds and each round waits for its slowest request:
every departed contact met costs a full RPC timeout (1 s), round after round. Here up to
`alpha` requests are in flight; one unanswered for a while (its patience: STRAGGLER_SECONDS
until a first answer, then a few times the slowest answer so far) stops counting against
`alpha` (another contact is asked meanwhile; its answer is still used if it comes); and once
every one of the k closest known contacts has been asked and at least one answered, requests
still pending after that patience are given up. Records of one key are stored on all of its
k closest nodes, so a lookup that heard from most of them has what the slowest would have
said.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kademlia.node import Node, NodeHeap

# Before any answer, a request unanswered this long no longer holds a slot: a live node on a
# WAN answers in well under this, so only the departed (or overloaded) are passed over.
STRAGGLER_SECONDS = 0.25
# Once answers come, patience is this many times the slowest one, and at least MIN_PATIENCE
# (loopback answers in ~1 ms; a busy event loop may take tens).
PATIENCE_FACTOR = 4.0
MIN_PATIENCE = 0.05

Ask = Callable[[Node], Awaitable[tuple[bool, Any]]]


async def crawl(
    target: Node,
    start: list[Node],
    ksize: int,
    alpha: int,
    ask: Ask,
    on_answer: Callable[[Node, Any], list[Node]],
    done: Callable[[], bool] = lambda: False,
) -> None:
    """Ask the nodes closest to `target`, from `start` on, with `ask(node)` ->
    (answered, answer); `on_answer(node, answer)` takes each answer and returns the closer
    nodes it names. Ends when the k closest known have all been asked and answered (or
    failed, or been given up as above), or as soon as `done()` is true; requests still out
    then finish in the background (their answers unused). Cancelling it leaves what
    `on_answer` took."""
    nearest = NodeHeap(target, ksize)
    nearest.push(list(start))
    pending: dict[asyncio.Task, tuple[Node, float]] = {}
    answered = 0
    slowest = 0.0
    try:
        while not done():
            now = time.monotonic()
            patience = (
                max(MIN_PATIENCE, PATIENCE_FACTOR * slowest) if answered else STRAGGLER_SECONDS
            )
            active = sum(1 for _, sent in pending.values() if now - sent < patience)
            for node in nearest.get_uncontacted()[: max(0, alpha - active)]:
                nearest.mark_contacted(node)
                pending[asyncio.ensure_future(ask(node))] = (node, now)
            if not pending:
                return
            if nearest.have_contacted_all():
                if answered == 0:
                    timeout = None  # nobody answered yet: wait for what is asked
                else:
                    youngest = max(sent for _, sent in pending.values())
                    timeout = max(0.0, youngest + patience - now)
            else:
                # wake when the youngest active request becomes a straggler
                actives = [sent for _, sent in pending.values() if now - sent < patience]
                timeout = (max(actives) + patience - now) if actives else 0.0
            finished, _ = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not finished and nearest.have_contacted_all() and answered:
                return  # only stragglers left, and we heard from others
            for task in finished:
                node, sent = pending.pop(task)
                ok, answer = task.result()
                if ok:
                    answered += 1
                    slowest = max(slowest, time.monotonic() - sent)
                    nearest.push(on_answer(node, answer))
                else:
                    nearest.remove([node.id])
    finally:
        # Requests given up on are left to finish (within the RPC timeout): their failure is
        # what drops a departed contact from the routing table and quarantines it.
        for task in pending:
            _left_running.add(task)
            task.add_done_callback(_settled)


_left_running: set[asyncio.Task] = set()


def _settled(task: asyncio.Task) -> None:
    _left_running.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a failure was logged where it happened
