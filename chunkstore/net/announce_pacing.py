"""When to re-announce what: a round over every chunk held, spread over the interval. Pure.

Provider records expire (providers.py), so every chunk a node holds is announced again every
REANNOUNCE_SECONDS (node.py). Doing a large store at once would send its whole round in a
burst and then nothing for hours; instead a round walks the chunk ids in order (which is
keyspace order: a DHT key is the id's first 20 bytes, so each batch is a region of the
keyspace, as announce_sweep.py likes) in `slots` of one batch each, spread evenly over the
round's time. Its progress (`AnnounceRound`) is kept in the store, so a node restarted in the
middle of a round goes on from where it was rather than starting over. Time is wall-clock
seconds, passed in.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace

# A round finishes within this share of the interval, so a slow batch or a short outage does
# not push a chunk's re-announce past the interval.
SPREAD_SHARE = 0.9
_FORMAT = struct.Struct(">dHQQ?")  # started, port, total, done, paced; then the cursor


@dataclass(frozen=True)
class AnnounceRound:
    """One pass over the chunks held: begun at `started` (wall clock) for records naming
    transfer `port`, over `total` chunks (as many as were held then), `done` of them taken
    so far, the last being `cursor` (b"" before the first). A `paced` round is spread over
    the interval; an unpaced one (records may have expired: nothing was announced for a
    while) goes as fast as batches allow."""

    started: float
    port: int
    total: int
    done: int = 0
    cursor: bytes = b""
    paced: bool = True

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def advanced(self, last: bytes, taken: int, exhausted: bool) -> AnnounceRound:
        """After `taken` more chunks, the last one `last`; `exhausted` when the walk reached
        the end of the chunk ids (the store may hold fewer than `total` by now)."""
        done = self.total if exhausted else min(self.total, self.done + taken)
        return replace(self, done=done, cursor=last or self.cursor)

    def encode(self) -> bytes:
        return _FORMAT.pack(self.started, self.port, self.total, self.done, self.paced) + (
            self.cursor
        )

    @classmethod
    def decode(cls, data: bytes) -> AnnounceRound | None:
        """The round `encode` wrote, or None for bytes that are not one (a damaged or
        foreign value: the caller starts a new round)."""
        if len(data) < _FORMAT.size or len(data) > _FORMAT.size + 64:
            return None
        started, port, total, done, paced = _FORMAT.unpack_from(data)
        if not math.isfinite(started) or done > total:
            return None
        return cls(started, port, total, done, data[_FORMAT.size :], paced)


def round_to_run(
    saved: AnnounceRound | None, now: float, port: int, interval: float, total: int
) -> tuple[AnnounceRound, bool]:
    """At start-up: the round to go on with, and whether it is a new one. The saved round
    goes on if it was for the same transfer port and began less than `interval` ago (its
    records, and those of the round before, are still live); otherwise a new, unpaced round
    begins: what was announced may have expired, or names a port nobody listens on now."""
    if saved is not None and saved.port == port and 0 <= now - saved.started < interval:
        return saved, False
    return AnnounceRound(started=now, port=port, total=total, paced=False), True


def next_round(
    current: AnnounceRound, now: float, interval: float, total: int
) -> AnnounceRound | None:
    """While running: the paced round that follows `current` once `interval` has passed
    since it began (None before)."""
    if now - current.started < interval:
        return None
    return AnnounceRound(started=now, port=current.port, total=total, paced=True)


def due_now(current: AnnounceRound, now: float, interval: float, batch: int) -> int:
    """How many chunks of the round to take now (0: wait). The round is cut in slots of
    `batch` chunks, the i-th due at `started + i * slot` where the slots share
    SPREAD_SHARE of the interval evenly; an unpaced round has every slot due at once. A
    store of at most `batch` chunks is one slot, due when the round begins."""
    if current.finished:
        return 0
    if not current.paced:
        return min(batch, current.total - current.done)
    slots = math.ceil(current.total / batch)
    slot_seconds = SPREAD_SHARE * interval / slots
    elapsed = max(0.0, now - current.started)
    due = min(current.total, batch * (int(elapsed // slot_seconds) + 1))
    return max(0, min(batch, due - current.done))


def next_due_at(current: AnnounceRound, interval: float, batch: int) -> float:
    """When the round's next slot is due (math.inf once it is finished)."""
    if current.finished:
        return math.inf
    if not current.paced:
        return current.started
    slots = math.ceil(current.total / batch)
    return current.started + (current.done // batch) * SPREAD_SHARE * interval / slots
