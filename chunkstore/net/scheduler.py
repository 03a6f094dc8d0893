"""The download scheduler: which chunk to fetch from which peer, and when. Sans-IO.

Plain state fed with events; it never touches a socket, a task or a clock. Time is the
caller's `now` (seconds, e.g. `loop.time()`), so tests drive it with simulated time.

The caller's loop (the asyncio layer carries out the decisions)::

    s = DownloadScheduler(sizes_of_the_chunks_not_yet_in_the_store)
    s.add_peer_for_all(manifest_peer); s.add_holders(i, holders_from_dht) ...
    while not s.done:
        start every request in s.next_requests(now)
        if s.in_flight == 0 and s.next_wakeup() is None:
            break                        # nothing can happen any more: s.unfetchable() is missing
        wait for a response, or until s.next_wakeup()
        on a verified, stored chunk: cancel every request in s.on_success(req, now)
        on a failure:                s.on_failure(req, now, kind)
        for req in s.overdue(now):   abort req, then s.on_failure(req, now, FailureKind.TIMEOUT)

Decisions, in short:
- Each peer has a window of requests in flight. It grows by one per quick delivery (slow
  start), then by one per window; it stops growing and slowly shrinks once deliveries take more
  than twice the peer's best time per byte (requests are queueing at the peer, so more would
  only hoard chunks), and halves on a failure. A faster peer frees its window sooner and so is
  given more chunks.
- New work: the chunk with the fewest known holders, then the lowest index. A chunk is only
  given to a known holder, and a chunk that failed on a peer goes to another usable holder
  when there is one.
- Endgame: a peer with no request in flight and no chunk left that it could start duplicates
  the oldest request still in flight (on another peer) among chunks it holds, one at a time,
  up to `endgame_copies` requests per chunk. The first copy to succeed wins; `on_success`
  returns the others for the caller to cancel. Only an idle peer duplicates: a peer's
  requests share its bandwidth (an upload cap over all its connections, one link), so a
  duplicate next to its own unfinished requests would slow those down and invite more
  duplicates (on 4 holders capped at 8 MB/s, a 64 MiB get sent ~7% more bytes than the
  file's and ended ~0.15 s, a tenth, later than with idle peers only duplicating).
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

PeerId = Hashable
"""Any hashable name for a peer; in practice its transfer address, e.g. `Holder(host, port)`."""


class FailureKind(enum.Enum):
    """Why a request did not deliver a verified chunk."""

    TIMEOUT = "timeout"  # no answer in time (the caller aborted it, usually via `overdue`)
    ERROR = "error"  # connection refused/reset, HTTP 5xx, truncated body
    MISSING = "missing"  # the peer does not hold this chunk (HTTP 404): never ask it again
    #                      for this one, no strike (it may hold the others)
    BUSY = "busy"  # the peer asked us to retry later: back off from it, no strike
    CORRUPT = "corrupt"  # bytes did not verify: the peer is never used again


class PeerState(enum.Enum):
    """How the scheduler currently treats a peer."""

    OK = "ok"
    BUSY = "busy"  # said retry-later; backing off for a short while
    DOWN = "down"  # failed `peer_failure_limit` times in a row; probed again after a back-off
    BAD = "bad"  # sent corrupt data; never used again


@dataclass(frozen=True, slots=True)
class Request:
    """Fetch chunk number `index` from `peer`.

    `serial` tells apart two requests for the same chunk from the same peer made at different
    times, so a late answer to an old one never counts for a newer one. Pass a request back to
    the scheduler exactly as it was received.
    """

    index: int
    peer: PeerId
    serial: int


@dataclass(frozen=True, slots=True)
class PeerStats:
    """What one peer did for this download (a snapshot)."""

    bytes_delivered: int  # raw bytes of the chunks this peer delivered first
    chunks_delivered: int
    failures: int  # requests that failed with TIMEOUT, ERROR or CORRUPT
    state: PeerState
    window: int  # requests it may have in flight now
    throughput: float | None  # bytes/s over the time it had requests in flight; None if unknown


class _Flight:
    """Bookkeeping of one request in flight."""

    __slots__ = ("start", "deadline", "reported")

    def __init__(self, start: float, deadline: float) -> None:
        self.start = start
        self.deadline = deadline
        self.reported = False  # already returned by `overdue`


class _Peer:
    """Mutable per-peer state; never leaves this module."""

    __slots__ = (
        "pid",
        "universal",
        "explicit",
        "window",
        "ssthresh",
        "strikes",
        "downs",
        "busy_streak",
        "bad",
        "down_until",
        "busy_until",
        "requests",
        "srtt",
        "rttvar",
        "base",
        "bytes",
        "chunks",
        "failures",
        "busy_time",
        "busy_since",
        "pending",
        "dups",
    )

    def __init__(self, pid: PeerId, window: float, window_max: float) -> None:
        self.pid = pid
        self.universal = False  # holds every chunk (it served the manifest)
        self.explicit = False  # was named a holder of some chunk by add_holders
        self.window = window
        self.ssthresh = window_max
        self.strikes = 0  # failures in a row
        self.downs = 0  # times marked down in a row
        self.busy_streak = 0
        self.bad = False
        self.down_until = 0.0
        self.busy_until = 0.0
        self.requests: dict[Request, None] = {}  # in flight, in issue order
        # Seconds per byte of a delivery: smoothed mean, mean deviation, best seen.
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.base = math.inf
        self.bytes = 0
        self.chunks = 0
        self.failures = 0
        self.busy_time = 0.0
        self.busy_since = 0.0
        # Heaps of candidate chunks for a peer that is not universal, with lazy deletion:
        # pending = (holder count when pushed, index); dups = (start of oldest copy, index).
        self.pending: list[tuple[int, int]] = []
        self.dups: list[tuple[float, int]] = []


class DownloadScheduler:
    """Decides which chunk to request from which peer; fed events, returns decisions.

    A caller may rely on:
    - a request names a chunk that is not done and a peer that is a known holder of it, not
      BAD and not backing off; a peer never has two requests for the same chunk at once;
    - at most `endgame_copies` requests for one chunk are in flight at any time, and only one
      unless every chunk its peer could start is already in flight (endgame);
    - a peer is given a duplicate only when it has no other request in flight;
    - a chunk counts as done once, and its bytes are credited to one peer, however many
      answers arrive;
    - events about requests it does not know (cancelled, already answered, reported twice,
      never issued) are ignored, never raised; a chunk index outside the file, a non-Request or
      an unknown FailureKind raises ValueError, since those are programming errors.
    """

    def __init__(
        self,
        chunk_sizes: Sequence[int],
        *,
        window_min: int = 2,
        window_max: int = 16,
        peer_failure_limit: int = 3,
        endgame_copies: int = 2,
        request_timeout: float = 30.0,
        min_timeout: float = 2.0,
        busy_backoff: float = 1.0,
        down_backoff: float = 5.0,
        max_backoff: float = 300.0,
        down_retries: int = 3,
        max_in_flight: int | None = None,
    ) -> None:
        """Schedule a file whose chunk `i` has `chunk_sizes[i]` raw bytes; nothing is done yet.

        - window_min/window_max: bounds of each peer's window of requests in flight.
        - peer_failure_limit: failures in a row (TIMEOUT or ERROR) that mark a peer DOWN.
        - endgame_copies: most requests in flight for one chunk; 1 turns endgame off.
        - request_timeout: deadline of a request to a peer with no delivery yet, and the longest
          deadline ever; min_timeout: the shortest deadline however fast the peer.
        - busy_backoff: first back-off after BUSY, doubling while the peer keeps saying it;
          a BUSY reported with the peer's Retry-After waits that long instead (at least a
          quarter of busy_backoff).
        - down_backoff: first back-off of a DOWN peer, doubling each time it fails its probe;
          after `down_retries` failed probes it is not tried again. max_backoff caps both.
        - max_in_flight: most requests in flight over all peers (None: no cap beyond the
          windows). Bounds the caller's memory: with many peers, windows alone would allow
          peers x window_max chunks in flight at once.
        """
        sizes = list(chunk_sizes)
        for size in sizes:
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"chunk sizes must be non-negative integers, got {size!r}")
        if not 1 <= window_min <= window_max:
            raise ValueError("need 1 <= window_min <= window_max")
        if peer_failure_limit < 1 or endgame_copies < 1 or down_retries < 0:
            raise ValueError(
                "peer_failure_limit and endgame_copies must be >= 1, down_retries >= 0"
            )
        if not 0 < min_timeout <= request_timeout:
            raise ValueError("need 0 < min_timeout <= request_timeout")
        if busy_backoff < 0 or down_backoff < 0 or max_backoff < 0:
            raise ValueError("back-offs must be >= 0")
        self._sizes = sizes
        self._window_min = window_min
        self._window_max = window_max
        self._max_in_flight = max_in_flight
        self._failure_limit = peer_failure_limit
        self._copies_max = endgame_copies
        self._request_timeout = request_timeout
        self._min_timeout = min_timeout
        self._busy_backoff = busy_backoff
        self._down_backoff = down_backoff
        self._max_backoff = max_backoff
        self._down_retries = down_retries

        n = len(sizes)
        self._done = bytearray(n)
        self._remaining = n
        # Holders named by add_holders; peers from add_peer_for_all are kept apart so that one
        # such peer costs O(1), not one entry per chunk. Dicts, not sets: iteration order
        # decides who is woken first, and must not depend on hash seeds.
        self._holders: list[dict[PeerId, None] | None] = [None] * n
        self._count = [0] * n  # len(self._holders[i]): the rarity key
        self._copies: dict[int, list[Request]] = {}  # chunks in flight -> requests, oldest first
        self._failed_on: dict[int, set[PeerId]] = {}  # chunk -> peers it failed on
        self._lacking: dict[int, set[PeerId]] = {}  # chunk -> peers that said they lack it
        self._flights: dict[Request, _Flight] = {}
        self._peers: dict[PeerId, _Peer] = {}
        self._universal: dict[PeerId, _Peer] = {}
        # Shared candidate heaps of the universal peers (built when the first one arrives).
        self._pending_all: list[tuple[int, int]] | None = None
        self._dups_all: list[tuple[float, int]] | None = None
        # Peers that may have free window and work (visited by next_requests), and peers with
        # free window but no work, woken only when work for them appears. Dicts keep the
        # order deterministic.
        self._ready: dict[PeerId, _Peer] = {}
        self._starved: dict[PeerId, _Peer] = {}  # holders named by add_holders
        self._starved_universal: dict[PeerId, _Peer] = {}
        self._deadlines: list[tuple[float, int, Request]] = []
        self._wakeups: list[tuple[float, int, PeerId]] = []
        self._serial = 0
        self._now = 0.0

    # ----------------------------------------------------------------- inputs: what we know

    def add_holders(self, index: int, peers: Iterable[PeerId]) -> None:
        """`peers` hold chunk `index` (e.g. from the DHT); may be called any time, repeatedly.

        Holders only accumulate; a peer already known to hold the chunk is not counted twice.
        """
        self._check_index(index)
        if self._done[index]:
            return
        holders = self._holders[index]
        added: list[_Peer] = []
        for pid in peers:
            peer = self._peer(pid)
            if peer.universal:
                continue
            if holders is None:
                holders = self._holders[index] = {}
            if pid in holders:
                continue
            holders[pid] = None
            peer.explicit = True
            added.append(peer)
        if not added:
            return
        count = self._count[index] = len(holders)  # type: ignore[arg-type]
        copies = self._copies.get(index)
        for peer in added:
            if not copies:
                heapq.heappush(peer.pending, (count, index))
            elif len(copies) < self._copies_max:
                heapq.heappush(peer.dups, (self._flights[copies[0]].start, index))
            if peer.pid not in self._ready:
                self._make_ready(peer)

    def add_peer_for_all(self, peer: PeerId) -> None:
        """`peer` holds every chunk of the file (e.g. it served the manifest)."""
        p = self._peer(peer)
        if p.universal:
            return
        p.universal = True
        p.pending, p.dups = [], []
        if p.explicit:
            # It now counts as a holder of everything; keep the rarity keys about the others.
            for i, holders in enumerate(self._holders):
                if holders is not None and peer in holders:
                    del holders[peer]
                    self._count[i] -= 1
        self._universal[peer] = p
        if self._pending_all is None:
            self._pending_all = [
                (self._count[i], i)
                for i in range(len(self._sizes))
                if not self._done[i] and i not in self._copies
            ]
            heapq.heapify(self._pending_all)
            self._dups_all = [
                (self._flights[reqs[0]].start, i)
                for i, reqs in self._copies.items()
                if len(reqs) < self._copies_max
            ]
            heapq.heapify(self._dups_all)
        self._make_ready(p)

    # ---------------------------------------------------------------- outputs: decisions

    def next_requests(self, now: float) -> list[Request]:
        """The requests to start now. Call after every event; returns [] when there is nothing.

        Each returned request is in flight from `now` until the caller reports it with
        `on_success` or `on_failure`, or it is returned for cancellation by `on_success`.
        """
        self._tick(now)
        while self._wakeups and self._wakeups[0][0] <= now:
            _, _, pid = heapq.heappop(self._wakeups)
            self._make_ready(self._peers[pid])
        out: list[Request] = []
        held: dict[PeerId, _Peer] = {}  # peers with free window, waiting for the global cap
        # Issuing can wake starved peers (new duplicate candidates), hence the outer loop; it
        # ends because a woken peer either takes work or goes back to starving.
        while self._ready:
            batch, self._ready = self._ready, {}
            for peer in batch.values():
                if peer.bad or max(peer.busy_until, peer.down_until) > now:
                    continue  # a wakeup entry brings it back when its back-off ends
                free = self._slots(peer) - len(peer.requests)
                if free <= 0:
                    continue  # back to ready when one of its requests ends
                if self._max_in_flight is not None:
                    room = self._max_in_flight - len(self._flights)
                    if room < free:
                        held[peer.pid] = peer  # ready again once requests end
                        if room <= 0:
                            continue
                        free = room
                free -= self._assign_new(peer, free, now, out)
                if free > 0:
                    free -= self._assign_duplicates(peer, free, now, out)
                if free > 0:
                    held.pop(peer.pid, None)
                    starved = self._starved_universal if peer.universal else self._starved
                    starved[peer.pid] = peer
        self._ready.update(held)
        return out

    def overdue(self, now: float) -> list[Request]:
        """Requests in flight past their deadline; each is returned once.

        The caller must abort each one and report it with `on_failure(req, now, TIMEOUT)`
        (or `on_success` if its bytes won the race). A deadline is set when the request is
        issued: `request_timeout` for a peer that has delivered nothing yet, otherwise about
        twice the peer's smoothed time for that many bytes plus four deviations, kept within
        [min_timeout, request_timeout]. When a peer goes DOWN or BAD its other requests become
        overdue at once. Overdue requests are not duplicated here: in endgame the oldest
        requests are the first duplicated anyway.
        """
        self._tick(now)
        out: list[Request] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, _, req = heapq.heappop(heap)
            flight = self._flights.get(req)
            if flight is None or flight.reported or flight.deadline != deadline:
                continue
            flight.reported = True
            out.append(req)
        return out

    def next_wakeup(self) -> float | None:
        """The earliest time at which `overdue` or `next_requests` may have something new
        without any event (a deadline, or the end of a back-off); None if no such time.

        With nothing in flight, None means the download cannot progress unless the caller
        learns new holders: `unfetchable()` lists what is missing.
        """
        heap = self._deadlines
        while heap:
            deadline, _, req = heap[0]
            flight = self._flights.get(req)
            if flight is not None and not flight.reported and flight.deadline == deadline:
                break
            heapq.heappop(heap)
        wakeups = self._wakeups
        while wakeups and self._peers[wakeups[0][2]].bad:
            heapq.heappop(wakeups)
        times = [h[0][0] for h in (heap, wakeups) if h]
        return min(times) if times else None

    # ---------------------------------------------------------------- events: what happened

    def on_success(self, req: Request, now: float) -> list[Request]:
        """The chunk of `req` arrived, verified and is stored.

        Returns the other requests for that chunk still in flight: pointless now, the caller
        should cancel them (their late answers are ignored). A success for a chunk already
        done is ignored and returns []. A success for a request no longer in flight (e.g. it
        was timed out, but the bytes arrived anyway) still completes the chunk and credits the
        peer, without using its timing.
        """
        self._check_request(req)
        self._tick(now)
        index = req.index
        flight = self._flights.pop(req, None)
        peer = self._peers.get(req.peer)
        if flight is not None and peer is not None:
            self._release(req, peer, now)
        if self._done[index]:
            return []
        if peer is not None:
            size = self._sizes[index]
            peer.bytes += size
            peer.chunks += 1
            if flight is not None:
                self._learn_delivery(peer, size, now - flight.start)
        return self._complete(index, now)

    def on_failure(
        self, req: Request, now: float, kind: FailureKind, retry_after: float | None = None
    ) -> None:
        """`req` failed (see FailureKind); the chunk goes back to be fetched, elsewhere if it
        can. Ignored if `req` is not in flight (already reported, cancelled or unknown).
        `retry_after`: with BUSY, the seconds the peer asked us to wait (its Retry-After):
        the back-off is then that (within [busy_backoff / 4, max_backoff]), not the doubling
        one."""
        self._check_request(req)
        if not isinstance(kind, FailureKind):
            raise ValueError(f"unknown failure kind {kind!r}")
        self._tick(now)
        flight = self._flights.pop(req, None)
        if flight is None:
            return
        peer = self._peers[req.peer]
        index = req.index
        self._release(req, peer, now)
        if kind is FailureKind.MISSING:
            self._lacking.setdefault(index, set()).add(peer.pid)
            holders = self._holders[index]
            if holders is not None and peer.pid in holders:
                del holders[peer.pid]
                self._count[index] -= 1
        elif kind is FailureKind.BUSY:
            # Not the peer's fault: back off and ask less of it, but no strike.
            peer.busy_streak += 1
            if retry_after is not None:
                # The peer knows its queue: a crowd that waits as told gets its turn, where
                # a doubling back-off left the unluckiest waiting longest (starving them).
                # Floored: a peer saying "Retry-After: 0" for ever must not make us spin.
                backoff = min(self._max_backoff, max(self._busy_backoff / 4, retry_after))
            else:
                backoff = min(self._max_backoff, self._busy_backoff * 2 ** (peer.busy_streak - 1))
            peer.busy_until = max(peer.busy_until, now + backoff)
            self._shrink(peer)
            self._schedule_wakeup(peer)
        else:
            peer.failures += 1
            self._failed_on.setdefault(index, set()).add(peer.pid)
            if kind is FailureKind.CORRUPT:
                self._mark_bad(peer, now)
            else:
                peer.strikes += 1
                self._shrink(peer)
                # Requests issued before it went down fail late; only the first failure or a
                # failed probe after the back-off (re)starts a back-off.
                if peer.strikes >= self._failure_limit and peer.down_until <= now and not peer.bad:
                    self._mark_down(peer, now)
        reqs = self._copies.get(index)
        if not reqs:
            self._push_pending(index)
        elif len(reqs) == self._copies_max - 1:
            self._push_duplicate(index)

    # ---------------------------------------------------------------- queries

    @property
    def done(self) -> bool:
        """Every chunk is done."""
        return self._remaining == 0

    @property
    def remaining(self) -> int:
        """Number of chunks not done yet."""
        return self._remaining

    @property
    def in_flight(self) -> int:
        """Number of requests in flight (including duplicates)."""
        return len(self._flights)

    def unfetchable(self) -> list[int]:
        """Chunks not done, with nothing in flight, whose every known holder is BAD or DOWN
        (or that have no known holder at all), in index order.

        A DOWN peer may still be probed after its back-off; the caller decides whether to
        wait for that (see `next_wakeup`) or report these chunks as missing now.
        """
        universal = [pid for pid, p in self._universal.items() if self._usable(p)]
        out = []
        for index, holders in enumerate(self._holders):
            if self._done[index] or index in self._copies:
                continue
            lacking = self._lacking.get(index, ())
            if any(pid not in lacking for pid in universal):
                continue
            if not holders or not any(self._usable(self._peers[h]) for h in holders):
                out.append(index)
        return out

    def peer_stats(self) -> dict[PeerId, PeerStats]:
        """A snapshot of every known peer, in the order peers became known."""
        out = {}
        for pid, p in self._peers.items():
            busy = p.busy_time + (self._now - p.busy_since if p.requests else 0.0)
            out[pid] = PeerStats(
                bytes_delivered=p.bytes,
                chunks_delivered=p.chunks,
                failures=p.failures,
                state=self._state(p),
                window=self._slots(p),
                throughput=p.bytes / busy if busy > 0 and p.chunks else None,
            )
        return out

    # ---------------------------------------------------------------- internals

    def _check_index(self, index: int) -> None:
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < len(self._sizes)
        ):
            raise ValueError(f"chunk index {index!r} is not in 0..{len(self._sizes) - 1}")

    def _check_request(self, req: Request) -> None:
        if not isinstance(req, Request):
            raise ValueError(f"expected a Request, got {req!r}")
        self._check_index(req.index)

    def _tick(self, now: float) -> None:
        # A caller's clock going backwards is tolerated: durations are clamped at zero.
        if now > self._now:
            self._now = now

    def _peer(self, pid: PeerId) -> _Peer:
        peer = self._peers.get(pid)
        if peer is None:
            peer = self._peers[pid] = _Peer(pid, float(self._window_min), self._window_max)
        return peer

    def _usable(self, peer: _Peer) -> bool:
        return not peer.bad and peer.strikes < self._failure_limit

    def _state(self, peer: _Peer) -> PeerState:
        if peer.bad:
            return PeerState.BAD
        if peer.strikes >= self._failure_limit:
            return PeerState.DOWN
        if peer.busy_until > self._now:
            return PeerState.BUSY
        return PeerState.OK

    def _slots(self, peer: _Peer) -> int:
        # A DOWN peer whose back-off ended gets one probe request, not a full window.
        return 1 if peer.strikes >= self._failure_limit else int(peer.window)

    def _make_ready(self, peer: _Peer) -> None:
        self._starved.pop(peer.pid, None)
        self._starved_universal.pop(peer.pid, None)
        self._ready[peer.pid] = peer

    def _wake_holders(self, index: int) -> None:
        """New work on chunk `index`: its starved holders look for work again."""
        if self._starved:
            for pid in self._holders[index] or ():
                peer = self._starved.pop(pid, None)
                if peer is not None:
                    self._ready[pid] = peer
        if self._starved_universal:
            self._ready.update(self._starved_universal)
            self._starved_universal.clear()

    def _wake_all(self) -> None:
        for starved in (self._starved, self._starved_universal):
            self._ready.update(starved)
            starved.clear()

    def _schedule_wakeup(self, peer: _Peer) -> None:
        when = max(peer.busy_until, peer.down_until)
        if when != math.inf:
            self._serial += 1
            heapq.heappush(self._wakeups, (when, self._serial, peer.pid))

    def _has_alternative(self, index: int, peer: _Peer) -> bool:
        """Some usable holder other than `peer` has not failed this chunk yet."""
        failed = self._failed_on.get(index, ())
        for pid in self._holders[index] or ():
            if pid != peer.pid and pid not in failed and self._usable(self._peers[pid]):
                return True
        lacking = self._lacking.get(index, ())
        for pid, other in self._universal.items():
            if pid != peer.pid and pid not in failed and pid not in lacking and self._usable(other):
                return True
        return False

    def _assign_new(self, peer: _Peer, free: int, now: float, out: list[Request]) -> int:
        """Start up to `free` chunks that nobody is fetching; returns how many."""
        heap = self._pending_all if peer.universal else peer.pending
        if not heap:
            return 0
        done, copies, count, failed_on = self._done, self._copies, self._count, self._failed_on
        skipped: list[tuple[int, int]] = []
        issued = 0
        while issued < free and heap:
            key, index = heapq.heappop(heap)
            if done[index] or index in copies:
                continue  # pushed again if it ever returns to waiting
            if key != count[index]:
                heapq.heappush(heap, (count[index], index))  # holders changed since the push
                continue
            lacking = self._lacking.get(index)
            if lacking and peer.pid in lacking:
                if peer.universal:
                    skipped.append((key, index))  # the shared heap: other peers may have it
                continue
            failed = failed_on.get(index)
            if failed and peer.pid in failed and self._has_alternative(index, peer):
                skipped.append((key, index))
                continue
            out.append(self._issue(index, peer, now))
            issued += 1
        for entry in skipped:
            heapq.heappush(heap, entry)
        return issued

    def _assign_duplicates(self, peer: _Peer, free: int, now: float, out: list[Request]) -> int:
        """Endgame: an idle peer duplicates the oldest request of another peer; returns how
        many it started (0 or 1; `free` is at least 1 when called)."""
        if self._copies_max < 2 or peer.requests:
            return 0
        free = 1
        heap = self._dups_all if peer.universal else peer.dups
        if not heap:
            return 0
        skipped: list[tuple[float, int]] = []
        issued = 0
        while issued < free and heap:
            start, index = heapq.heappop(heap)
            reqs = self._copies.get(index)
            if not reqs or len(reqs) >= self._copies_max:
                continue  # pushed again if a copy fails while another is still in flight
            failed = self._failed_on.get(index)
            lacking = self._lacking.get(index)
            if (
                (failed and peer.pid in failed)
                or (lacking and peer.pid in lacking)
                or any(r.peer == peer.pid for r in reqs)
            ):
                skipped.append((start, index))
                continue
            out.append(self._issue(index, peer, now))
            issued += 1
            if len(reqs) < self._copies_max:
                skipped.append((start, index))  # still open to a further peer, not this one
        for entry in skipped:
            heapq.heappush(heap, entry)
        return issued

    def _issue(self, index: int, peer: _Peer, now: float) -> Request:
        self._serial += 1
        req = Request(index, peer.pid, self._serial)
        deadline = now + self._timeout(peer, self._sizes[index])
        self._flights[req] = _Flight(now, deadline)
        heapq.heappush(self._deadlines, (deadline, req.serial, req))
        if not peer.requests:
            peer.busy_since = now
        peer.requests[req] = None
        reqs = self._copies.get(index)
        if reqs is None:
            self._copies[index] = [req]
            if self._copies_max > 1:
                self._push_duplicate(index)
        else:
            reqs.append(req)
        return req

    def _timeout(self, peer: _Peer, size: int) -> float:
        if peer.srtt is None:
            return self._request_timeout
        expected = 2.0 * max(size, 1) * (peer.srtt + 4.0 * peer.rttvar)
        return min(self._request_timeout, max(self._min_timeout, expected))

    def _release(self, req: Request, peer: _Peer, now: float) -> None:
        """`req` (just popped from _flights) is no longer in flight."""
        reqs = self._copies[req.index]
        reqs.remove(req)
        if not reqs:
            del self._copies[req.index]
        del peer.requests[req]
        if not peer.requests:
            peer.busy_time += max(0.0, now - peer.busy_since)
        self._make_ready(peer)

    def _complete(self, index: int, now: float) -> list[Request]:
        self._done[index] = 1
        self._remaining -= 1
        self._failed_on.pop(index, None)
        self._lacking.pop(index, None)
        cancelled = self._copies.pop(index, [])
        for req in cancelled:
            del self._flights[req]
            peer = self._peers[req.peer]
            del peer.requests[req]
            if not peer.requests:
                peer.busy_time += max(0.0, now - peer.busy_since)
            self._make_ready(peer)
        return cancelled

    def _push_pending(self, index: int) -> None:
        """Chunk `index` waits again for a peer to start it."""
        entry = (self._count[index], index)
        for pid in self._holders[index] or ():
            heapq.heappush(self._peers[pid].pending, entry)
        if self._pending_all is not None:
            heapq.heappush(self._pending_all, entry)
        self._wake_holders(index)

    def _push_duplicate(self, index: int) -> None:
        """Chunk `index` is in flight with room for another copy."""
        entry = (self._flights[self._copies[index][0]].start, index)
        for pid in self._holders[index] or ():
            heapq.heappush(self._peers[pid].dups, entry)
        if self._dups_all is not None:
            heapq.heappush(self._dups_all, entry)
        self._wake_holders(index)

    def _learn_delivery(self, peer: _Peer, size: int, duration: float) -> None:
        """Update the peer's timing and window after a delivery it was timed for."""
        spb = max(duration, 0.0) / max(size, 1)
        if peer.srtt is None:
            peer.srtt, peer.rttvar = spb, spb / 2
        else:
            # RFC 6298 smoothing, per byte so chunks of different sizes compare.
            peer.rttvar = 0.75 * peer.rttvar + 0.25 * abs(peer.srtt - spb)
            peer.srtt = 0.875 * peer.srtt + 0.125 * spb
        peer.base = min(peer.base, spb)
        peer.strikes = peer.downs = peer.busy_streak = 0
        peer.down_until = 0.0
        if spb <= 2.0 * peer.base:
            # Quick: more requests in flight would still be served at this pace.
            peer.window += 1.0 if peer.window < peer.ssthresh else 1.0 / peer.window
        else:
            # Requests are queueing at the peer: more in flight would only hoard chunks.
            peer.ssthresh = min(peer.ssthresh, peer.window)
            peer.window -= 1.0 / peer.window
        peer.window = min(float(self._window_max), max(float(self._window_min), peer.window))

    def _shrink(self, peer: _Peer) -> None:
        peer.ssthresh = max(float(self._window_min), peer.window / 2)
        peer.window = peer.ssthresh

    def _mark_down(self, peer: _Peer, now: float) -> None:
        peer.downs += 1
        if peer.downs > self._down_retries:
            peer.down_until = math.inf
        else:
            backoff = self._down_backoff * 2 ** (peer.downs - 1)
            peer.down_until = now + min(self._max_backoff, backoff)
        peer.window = peer.ssthresh = float(self._window_min)
        self._expire_requests(peer, now)
        self._schedule_wakeup(peer)
        self._wake_all()  # chunks it held may now go to peers that skipped them

    def _mark_bad(self, peer: _Peer, now: float) -> None:
        peer.bad = True
        self._ready.pop(peer.pid, None)
        self._starved.pop(peer.pid, None)
        self._starved_universal.pop(peer.pid, None)
        self._expire_requests(peer, now)
        self._wake_all()

    def _expire_requests(self, peer: _Peer, now: float) -> None:
        """Make every request of `peer` overdue now, so the caller stops waiting for it."""
        for req in peer.requests:
            flight = self._flights[req]
            if not flight.reported and flight.deadline > now:
                flight.deadline = now
                heapq.heappush(self._deadlines, (now, req.serial, req))
