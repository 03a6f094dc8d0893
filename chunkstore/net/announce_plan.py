"""Region-batched announcing: which nodes must hold which keys, from a few lookups. Pure.

Announcing one key at a time costs a full lookup per key (~30 requests) to find the k nodes
closest to it. The keys of a large store are dense in the keyspace, so the lookups of
neighbouring keys find the same nodes over and over. kubo's "sweep" provider instead finds all
the nodes of a keyspace region once and gives each of them every key of the region it is
responsible for; this module is that decision, without I/O.

The plan walks the keys in keyspace order. `next_target` names the first key not yet settled;
the caller looks it up (asking `width` >= k closest nodes) and reports the nodes that answered
with `learn`. A lookup that finished proves it knows every live node within the distance of
its `width`-th closest answer (its *ball*; fewer answers than `width` means it saw the whole
network). A key is *settled* once every point within the distance of its k-th closest known
node lies in some proven ball: then no unknown node can be closer, and its k closest known
nodes are its k closest nodes, exactly. The next lookup aims at the next unsettled key, so the
balls tile the keyspace in order, each lookup settling a region of keys at once.

Keys and node ids are 160-bit integers (big-endian bytes on the wire). XOR distance makes a
ball a union of at most 161 aligned blocks, which are intervals in plain integer order:
coverage is kept as a sorted list of disjoint intervals.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

KEY_BITS = 160
KEY_BYTES = KEY_BITS // 8
LAST_KEY = (1 << KEY_BITS) - 1


def key_int(key: bytes) -> int:
    return int.from_bytes(key, "big")


def key_bytes(value: int) -> bytes:
    return value.to_bytes(KEY_BYTES, "big")


def ball_blocks(center: int, radius: int) -> list[tuple[int, int]]:
    """{y : y XOR center <= radius} as inclusive intervals (aligned blocks), ascending."""
    blocks = []
    for bit in range(radius.bit_length() - 1, -1, -1):
        if radius >> bit & 1:
            # distances with radius's bits above `bit`, a 0 at `bit`, anything below
            low = ((radius >> (bit + 1) << (bit + 1)) ^ center) >> bit << bit
            blocks.append((low, low + (1 << bit) - 1))
    blocks.append((radius ^ center, radius ^ center))
    blocks.sort()
    return blocks


class Coverage:
    """A union of inclusive integer intervals, kept merged and sorted."""

    def __init__(self) -> None:
        self._lows: list[int] = []
        self._highs: list[int] = []

    def add(self, low: int, high: int) -> None:
        # every interval touching [low, high] (adjacent ones too) merges into it
        start = bisect.bisect_left(self._highs, low - 1)
        end = bisect.bisect_right(self._lows, high + 1)
        if start < end:
            low = min(low, self._lows[start])
            high = max(high, self._highs[end - 1])
        self._lows[start:end] = [low]
        self._highs[start:end] = [high]

    def covers(self, low: int, high: int) -> bool:
        at = bisect.bisect_right(self._lows, low) - 1
        return at >= 0 and self._highs[at] >= high

    def __len__(self) -> int:
        return len(self._lows)


def ball_within(inner: tuple[int, int], outer: tuple[int, int]) -> bool:
    """Whether ball (centre, radius) `inner` lies inside ball `outer`."""
    coverage = Coverage()
    for low, high in ball_blocks(*outer):
        coverage.add(low, high)
    return all(coverage.covers(low, high) for low, high in ball_blocks(*inner))


def answer_serves(asked: int, answer: Sequence[int], k: int, target: int) -> bool:
    """Whether a node's answer to a lookup of `asked` (the ids of the k closest nodes it
    knows to `asked`) also says everything it would answer for `target`: true when the ball
    around `target` holding the k closest nodes of the answer lies inside the ball the answer
    covers around `asked` (the node knows no other node there), or when the answer named
    fewer than k nodes (the node knows no other node at all)."""
    if len(answer) < k:
        return True
    radius = max(n ^ asked for n in answer)
    wanted = sorted(n ^ target for n in answer)[k - 1]
    return ball_within((target, wanted), (asked, radius))


class AnnouncePlan:
    """Which of the nodes found must hold which of `keys` (20-byte DHT keys).

    Callers may rely on:
    - `next_target` is the lowest key not yet settled (None once every key is), so a caller
      that looks up each target and `learn`s the result settles every key in at most
      len(keys) finished lookups, usually far fewer (a lookup settles a region);
    - a settled key's holders (`holders`, `assignments`) are its k closest nodes among every
      node `learn` or `learn_node` was told of, and, when the lookups were right about
      their balls, its k closest nodes in the network;
    - `settle_rest` gives the keys left unsettled (a lookup failed or timed out) their k
      closest known nodes: best effort, never silently dropped.
    """

    def __init__(self, keys: Iterable[bytes], k: int) -> None:
        if k < 1:
            raise ValueError("k must be positive")
        self.k = k
        self._keys = sorted({key_int(key) for key in keys})
        self._next = 0  # keys before this index are settled
        self._settled: set[int] = set()
        self._node_ids: list[int] = []  # sorted
        self._known: set[int] = set()
        self._coverage = Coverage()
        self.lookups = 0

    # -- what the caller reports -----------------------------------------------------------
    def learn_node(self, node_id: bytes) -> None:
        """A node that may hold records without having answered a lookup (the announcer
        itself): a candidate holder, proving nothing about coverage."""
        value = key_int(node_id)
        if value not in self._known:
            self._known.add(value)
            bisect.insort(self._node_ids, value)

    def learn(self, target: bytes, answered: Iterable[bytes], width: int, finished: bool) -> None:
        """The nodes that answered a lookup of `target` that tracked its `width` closest;
        `finished` when it ended by itself (every one of those closest asked), not on a
        timeout. Settles what it can."""
        self.lookups += 1
        centre = key_int(target)
        ids = sorted({key_int(n) for n in answered}, key=lambda n: n ^ centre)
        for node_id in ids:
            self.learn_node(key_bytes(node_id))
        if not finished or not ids:
            return  # a lookup nobody answered proves nothing, not an empty network
        radius = LAST_KEY if len(ids) < width else ids[width - 1] ^ centre
        for low, high in ball_blocks(centre, radius):
            self._coverage.add(low, high)
        # Settle eagerly the unsettled keys inside the ball's enclosing block; any other key
        # it helped is settled when it becomes the next target.
        span = 1 << radius.bit_length()
        low = centre >> radius.bit_length() << radius.bit_length()
        start = max(self._next, bisect.bisect_left(self._keys, low))
        end = bisect.bisect_right(self._keys, low + span - 1)
        for key in self._keys[start:end]:
            if key not in self._settled:
                self._try_settle(key)

    def settle_key(self, key: bytes) -> None:
        """Give `key` (one of the plan's) its k closest known nodes now, settled or not: its
        lookup failed, and looking it up again would likely fail too."""
        self._settled.add(key_int(key))

    def settle_rest(self) -> None:
        """Give every unsettled key its k closest known nodes (best effort)."""
        for key in self._keys[self._next :]:
            self._settled.add(key)
        self._next = len(self._keys)

    # -- what the caller asks --------------------------------------------------------------
    def next_target(self) -> bytes | None:
        """The lowest key not yet settled, or None when all are."""
        while self._next < len(self._keys):
            key = self._keys[self._next]
            if key in self._settled or self._try_settle(key):
                self._next += 1
                continue
            return key_bytes(key)
        return None

    @property
    def unsettled(self) -> int:
        return sum(1 for key in self._keys[self._next :] if key not in self._settled)

    def holders(self, key: bytes) -> list[bytes]:
        """The k closest known nodes of a settled key, closest first ([] if not settled):
        chosen now, so a node learnt after the key was settled (an answer that came late)
        counts too."""
        value = key_int(key)
        return [key_bytes(n) for n in self._closest(value)] if value in self._settled else []

    def assignments(self) -> dict[bytes, list[bytes]]:
        """Node id -> the settled keys it must hold (in key order), as `holders`."""
        by_node: dict[int, list[bytes]] = {}
        for key in self._keys:
            if key in self._settled:
                for node_id in self._closest(key):
                    by_node.setdefault(node_id, []).append(key_bytes(key))
        return {key_bytes(n): keys for n, keys in by_node.items()}

    # -- the decision ----------------------------------------------------------------------
    def _closest(self, key: int) -> list[int]:
        """The k known nodes closest to `key`, closest first."""
        ids = self._node_ids
        if len(ids) <= self.k:
            return sorted(ids, key=lambda n: n ^ key)
        # The smallest aligned block around `key` holding k known nodes: every node in it is
        # closer to `key` than any node outside, so the k closest are among its nodes.
        low_bits, high_bits = 0, KEY_BITS
        while low_bits < high_bits:
            bits = (low_bits + high_bits) // 2
            start, end = self._block(key, bits)
            if end - start >= self.k:
                high_bits = bits
            else:
                low_bits = bits + 1
        start, end = self._block(key, low_bits)
        inside = ids[start:end]
        return sorted(inside, key=lambda n: n ^ key)[: self.k]

    def _block(self, key: int, bits: int) -> tuple[int, int]:
        """The index range in the sorted node ids of those sharing all but the low `bits`
        bits with `key`."""
        base = key >> bits << bits
        ids = self._node_ids
        return bisect.bisect_left(ids, base), bisect.bisect_right(ids, base + (1 << bits) - 1)

    def _try_settle(self, key: int) -> bool:
        closest = self._closest(key)
        if not closest:
            return False
        radius = LAST_KEY if len(closest) < self.k else closest[-1] ^ key
        # Quick test: the aligned block holding the whole ball; then the exact ball.
        bits = radius.bit_length()
        base = key >> bits << bits
        if not self._coverage.covers(base, base + (1 << bits) - 1) and not all(
            self._coverage.covers(low, high) for low, high in ball_blocks(key, radius)
        ):
            return False
        self._settled.add(key)
        return True
