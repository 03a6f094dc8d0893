"""Tests of the download scheduler, driven by a discrete-event simulation of a swarm.

Everything runs in simulated time: the scheduler never reads a clock, and neither do these
tests, so the outcomes are exact and repeatable.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from chunkstore.net.scheduler import (
    DownloadScheduler,
    FailureKind,
    PeerState,
    Request,
)

KIB = 1024
MB = 1_000_000


# ----------------------------------------------------------------------------- simulator


@dataclass
class SimPeer:
    """A simulated holder. It sends one response at a time at `bandwidth` bytes/s (requests
    queue behind each other, as on one keep-alive connection); `latency` is the round trip.

    behaviour: "honest"; "dead" (never answers); "lying" (sends the bytes, they never verify);
    "flaky" (a request fails at once with probability `fail_rate`); "busy" (answers retry-later
    while it already has `max_concurrent` requests).
    """

    pid: tuple[str, int]
    bandwidth: float
    latency: float = 0.02
    behaviour: str = "honest"
    fail_rate: float = 0.0
    max_concurrent: int = 0
    holds: set[int] | None = None  # None: every chunk (it served the manifest)
    queue: deque[_Job] = field(default_factory=deque)
    current: _Job | None = None


@dataclass(eq=False)
class _Job:
    req: Request
    cancelled: bool = False


class Simulation:
    """Plays the asyncio layer: starts what the scheduler asks, reports what happens."""

    def __init__(
        self,
        sched: DownloadScheduler,
        sizes: list[int],
        peers: list[SimPeer],
        *,
        seed: int = 0,
        register: bool = True,
    ) -> None:
        self.sched = sched
        self.sizes = sizes
        self.peers = {p.pid: p for p in peers}
        self.rng = random.Random(seed)
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = itertools.count()
        self._jobs: dict[Request, _Job] = {}
        self._wakeups: set[float] = set()
        self._in_flight: Counter[int] = Counter()  # chunk -> jobs in flight
        self._chunks_in_flight = 0
        self._pairs: set[tuple[int, tuple[str, int]]] = set()  # (chunk, peer) in flight
        self.done_chunks: set[int] = set()
        self.issued: list[tuple[float, Request]] = []
        self.successes: Counter[int] = Counter()  # chunk -> successes reported
        self.delivered_by: Counter[tuple[str, int]] = Counter()
        self.failures: list[tuple[float, Request, FailureKind]] = []
        self.cancelled: list[Request] = []
        self.duplicates = 0
        self.duplicates_outside_endgame = 0
        self.reported_bad: set[tuple[str, int]] = set()
        self.finish_time: float | None = None
        if register:  # as the caller does: manifest providers, then the DHT chunk by chunk
            holders: dict[int, list[tuple[str, int]]] = {}
            for p in peers:
                if p.holds is None:
                    sched.add_peer_for_all(p.pid)
                else:
                    for i in p.holds:
                        holders.setdefault(i, []).append(p.pid)
            for i in sorted(holders):
                sched.add_holders(i, holders[i])

    def run(self, max_events: int = 2_000_000) -> Simulation:
        self._pump()
        events = 0
        while self._events and not self.sched.done:
            t, _, fn, args = heapq.heappop(self._events)
            assert t >= self.now
            self.now = t
            fn(*args)
            self._pump()
            events += 1
            assert events < max_events, "simulation did not terminate"
        if self.sched.done:
            self.finish_time = self.now
        return self

    def _at(self, t: float, fn: Callable[..., None], *args: object) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn, args))

    def _pump(self) -> None:
        s = self.sched
        for req in s.overdue(self.now):
            self._cancel(req)
            self._report_failure(req, FailureKind.TIMEOUT)
        for req in s.next_requests(self.now):
            self._start(req)
        wake = s.next_wakeup()
        if wake is not None and wake not in self._wakeups:
            assert wake > self.now, "a wakeup in the past would spin the caller"
            self._wakeups.add(wake)
            self._at(wake, self._wakeups.discard, wake)

    def _start(self, req: Request) -> None:
        peer = self.peers[req.peer]
        assert req.index not in self.done_chunks, f"requested done chunk {req.index}"
        assert peer.holds is None or req.index in peer.holds, "requested from a non-holder"
        assert req.peer not in self.reported_bad, "requested from a peer that sent junk"
        assert (req.index, req.peer) not in self._pairs, "two requests for one chunk on one peer"
        self._pairs.add((req.index, req.peer))
        if self._in_flight[req.index]:
            self.duplicates += 1
            if self._chunks_in_flight < self.sched.remaining:
                self.duplicates_outside_endgame += 1
        else:
            self._chunks_in_flight += 1
        self._in_flight[req.index] += 1
        self.issued.append((self.now, req))
        job = self._jobs[req] = _Job(req)
        if peer.behaviour != "dead":
            self._at(self.now + peer.latency / 2, self._arrive, peer, job)

    def _arrive(self, peer: SimPeer, job: _Job) -> None:
        if job.cancelled:
            return
        if peer.behaviour == "flaky" and self.rng.random() < peer.fail_rate:
            self._at(self.now + peer.latency / 2, self._deliver, job, FailureKind.ERROR)
            return
        load = len(peer.queue) + (peer.current is not None)
        if peer.behaviour == "busy" and load >= peer.max_concurrent:
            self._at(self.now + peer.latency / 2, self._deliver, job, FailureKind.BUSY)
            return
        peer.queue.append(job)
        if peer.current is None:
            self._serve_next(peer)

    def _serve_next(self, peer: SimPeer) -> None:
        while peer.queue:
            job = peer.queue.popleft()
            if not job.cancelled:
                peer.current = job
                size = self.sizes[job.req.index]
                self._at(self.now + size / peer.bandwidth, self._sent, peer, job)
                return
        peer.current = None

    def _sent(self, peer: SimPeer, job: _Job) -> None:
        if peer.current is not job:
            return  # aborted by a cancel
        outcome = FailureKind.CORRUPT if peer.behaviour == "lying" else None
        self._at(self.now + peer.latency / 2, self._deliver, job, outcome)
        self._serve_next(peer)

    def _deliver(self, job: _Job, outcome: FailureKind | None) -> None:
        if job.cancelled:
            return
        req = job.req
        self._end(req)
        if outcome is None:
            self.successes[req.index] += 1
            self.delivered_by[req.peer] += 1
            self.done_chunks.add(req.index)
            for other in self.sched.on_success(req, self.now):
                self._cancel(other)
        else:
            if outcome is FailureKind.CORRUPT:
                self.reported_bad.add(req.peer)
            self._report_failure(req, outcome)

    def _report_failure(self, req: Request, kind: FailureKind) -> None:
        self.failures.append((self.now, req, kind))
        self.sched.on_failure(req, self.now, kind)

    def _end(self, req: Request) -> None:
        del self._jobs[req]
        self._pairs.discard((req.index, req.peer))
        self._in_flight[req.index] -= 1
        if not self._in_flight[req.index]:
            self._chunks_in_flight -= 1

    def _cancel(self, req: Request) -> None:
        job = self._jobs.get(req)
        if job is None:
            return
        self._end(req)
        job.cancelled = True
        self.cancelled.append(req)
        peer = self.peers[req.peer]
        if peer.current is job:  # stop sending it, as closing the stream would
            peer.current = None
            self._serve_next(peer)

    def requests_to(self, pid: tuple[str, int]) -> list[Request]:
        return [r for _, r in self.issued if r.peer == pid]


def peer(n: int, bandwidth: float, **kw: object) -> SimPeer:
    return SimPeer((f"10.0.0.{n}", 4000 + n), bandwidth, **kw)  # type: ignore[arg-type]


def simulate(
    sizes: list[int], peers: list[SimPeer], seed: int = 0, **sched_kw: object
) -> Simulation:
    sched = DownloadScheduler(sizes, **sched_kw)  # type: ignore[arg-type]
    return Simulation(sched, sizes, peers, seed=seed).run()


def assert_complete(sim: Simulation) -> None:
    assert sim.sched.done and sim.sched.remaining == 0 and sim.sched.in_flight == 0
    assert sim.finish_time is not None
    assert set(sim.successes) == set(range(len(sim.sizes)))
    assert all(n == 1 for n in sim.successes.values()), "a chunk was delivered twice"
    stats = sim.sched.peer_stats()
    assert sum(s.chunks_delivered for s in stats.values()) == len(sim.sizes)
    assert sum(s.bytes_delivered for s in stats.values()) == sum(sim.sizes)


# ----------------------------------------------------------------------------- swarms


def test_all_chunks_fetched_once_without_failures() -> None:
    sizes = [256 * KIB] * 300 + [1000]
    peers = [peer(i, 20 * MB) for i in range(4)]
    sim = simulate(sizes, peers)
    assert_complete(sim)
    # Every request is a first fetch, except duplicates made once everything was in flight.
    assert len(sim.issued) == len(sizes) + sim.duplicates
    assert sim.duplicates_outside_endgame == 0
    assert sim.duplicates <= 4 * 16
    assert not sim.failures
    # Equal peers share the work.
    counts = [sim.delivered_by[p.pid] for p in peers]
    assert min(counts) > len(sizes) / 4 * 0.7


def test_chunks_start_in_index_order_when_holders_are_equal() -> None:
    sizes = [64 * KIB] * 100
    sim = simulate(sizes, [peer(1, 10 * MB), peer(2, 10 * MB)])
    first_requests = []
    for _, req in sim.issued:
        if req.index not in first_requests:
            first_requests.append(req.index)
    assert first_requests == sorted(first_requests)


def test_faster_peer_delivers_more() -> None:
    sizes = [256 * KIB] * 400
    fast, slow = peer(1, 8 * MB), peer(2, 2 * MB)
    sim = simulate(sizes, [fast, slow])
    assert_complete(sim)
    assert sim.delivered_by[fast.pid] > 2 * sim.delivered_by[slow.pid]
    stats = sim.sched.peer_stats()
    assert stats[fast.pid].throughput > 2 * stats[slow.pid].throughput  # type: ignore[operator]
    # Both peers delivered bytes: the download really came from several sources.
    assert stats[slow.pid].bytes_delivered > 0


def test_lying_peer_is_dropped_and_download_completes() -> None:
    sizes = [128 * KIB] * 200
    liar = peer(9, 50 * MB, behaviour="lying")
    honest = [peer(1, 10 * MB), peer(2, 10 * MB)]
    sim = simulate(sizes, [liar, *honest])
    assert_complete(sim)
    to_liar = sim.requests_to(liar.pid)
    assert 1 <= len(to_liar) <= 2  # its first window, then never again
    first_corrupt = min(t for t, r, k in sim.failures if k is FailureKind.CORRUPT)
    assert all(t <= first_corrupt for t, r in sim.issued if r.peer == liar.pid)
    stats = sim.sched.peer_stats()
    assert stats[liar.pid].state is PeerState.BAD
    assert stats[liar.pid].chunks_delivered == 0


def test_dead_peer_is_timed_out_and_others_finish() -> None:
    sizes = [128 * KIB] * 1000
    dead = peer(9, 10 * MB, behaviour="dead")
    honest = [peer(1, 10 * MB), peer(2, 10 * MB)]
    sim = simulate(sizes, [dead, *honest], request_timeout=2.0, min_timeout=0.5)
    assert_complete(sim)
    timeouts = [r for _, r, k in sim.failures if k is FailureKind.TIMEOUT]
    assert timeouts and all(r.peer == dead.pid for r in timeouts)
    assert sim.sched.peer_stats()[dead.pid].state is PeerState.DOWN
    # Three strikes, then at most a probe after the back-off.
    assert len(sim.requests_to(dead.pid)) <= 5
    assert sim.finish_time < 30


def test_dead_sole_holder_leaves_exactly_its_chunks_unfetchable() -> None:
    sizes = [128 * KIB] * 100
    only_dead = set(range(10, 20))
    dead = peer(9, 10 * MB, behaviour="dead", holds=set(range(0, 40)))
    others = [peer(i, 10 * MB, holds=set(range(100)) - only_dead) for i in (1, 2)]
    sched = DownloadScheduler(sizes, request_timeout=5.0, down_backoff=2.0, down_retries=2)
    sim = Simulation(sched, sizes, [dead, *others]).run()
    assert not sched.done
    assert sched.in_flight == 0 and sched.next_wakeup() is None
    assert sched.unfetchable() == sorted(only_dead)
    assert sched.remaining == len(only_dead)
    assert set(sim.successes) == set(range(100)) - only_dead
    # The dead peer's other chunks were fetched from the others.
    assert all(sim.delivered_by[p.pid] for p in others)


def test_slow_peer_does_not_stall_the_tail() -> None:
    sizes = [256 * KIB] * 300

    def finish(extra: list[SimPeer], **kw: object) -> float:
        fast = [peer(i, 10 * MB) for i in range(3)]  # fresh peers: they hold run state
        sim = simulate(sizes, fast + extra, **kw)
        assert_complete(sim)
        return sim.finish_time  # type: ignore[return-value]

    without = finish([])
    with_slow = finish([peer(9, 0.2 * MB)])
    assert with_slow <= without * 1.05
    # The same swarm with endgame turned off waits for the slow peer's last chunks: the
    # comparison above is measuring endgame, not luck.
    assert finish([peer(9, 0.2 * MB)], endgame_copies=1) > without * 1.3


def test_flaky_peer_failures_are_retried_on_another_holder() -> None:
    sizes = [128 * KIB] * 300
    flaky = peer(9, 10 * MB, behaviour="flaky", fail_rate=0.3)
    sim = simulate(
        sizes, [flaky, peer(1, 10 * MB), peer(2, 10 * MB)], seed=7, peer_failure_limit=1000
    )
    assert_complete(sim)
    errors = [(t, r) for t, r, k in sim.failures if k is FailureKind.ERROR]
    assert errors
    for t, failed in errors:
        later = [
            r
            for tt, r in sim.issued
            if r.index == failed.index and tt >= t and r.serial > failed.serial
        ]
        assert later and all(r.peer != flaky.pid for r in later)
    assert sim.delivered_by[flaky.pid] > 0  # still used for other chunks


def test_flaky_peer_goes_down_after_failures_in_a_row() -> None:
    sizes = [64 * KIB] * 100
    flaky = peer(9, 10 * MB, behaviour="flaky", fail_rate=1.0)
    sim = simulate(sizes, [flaky, peer(1, 10 * MB)], peer_failure_limit=3, down_retries=0)
    assert_complete(sim)
    assert len(sim.requests_to(flaky.pid)) == 3 + 1  # window 2, then 2 more until strike 3
    assert sim.sched.peer_stats()[flaky.pid].state is PeerState.DOWN


def test_busy_peer_backs_off_without_being_marked_down() -> None:
    sizes = [128 * KIB] * 200
    busy = peer(9, 20 * MB, behaviour="busy", max_concurrent=4)
    sim = simulate(sizes, [busy, peer(1, 5 * MB)])
    assert_complete(sim)
    kinds = Counter(k for _, _, k in sim.failures)
    assert kinds[FailureKind.BUSY] > 0 and kinds[FailureKind.ERROR] == 0
    stats = sim.sched.peer_stats()
    assert stats[busy.pid].state is not PeerState.DOWN
    assert stats[busy.pid].failures == 0
    assert stats[busy.pid].chunks_delivered > 10  # still used after backing off


def test_nothing_to_fetch_is_done_at_once() -> None:
    sched = DownloadScheduler([])
    sched.add_peer_for_all(("h", 1))
    assert sched.done and sched.next_requests(0.0) == [] and sched.next_wakeup() is None


def test_holders_learned_later_from_the_dht() -> None:
    sizes = [64 * KIB] * 50
    a, b = peer(1, 10 * MB, holds=set(range(25))), peer(2, 10 * MB, holds=set(range(50)))
    sched = DownloadScheduler(sizes)
    sim = Simulation(sched, sizes, [a, b], register=False)
    for i in range(25):
        sched.add_holders(i, [a.pid])
    sim.run()
    assert not sched.done and sched.unfetchable() == list(range(25, 50))
    for i in range(50):
        sched.add_holders(i, [b.pid])
    sim.run()
    assert_complete(sim)


def test_scale_10k_chunks_100_peers() -> None:
    rng = random.Random(1)
    n = 10_000
    sizes = [rng.randint(32 * KIB, 96 * KIB) for _ in range(n)]
    peers = []
    for i in range(100):
        bandwidth = rng.choice([1, 2, 5, 10, 20]) * MB
        # A few served the manifest; the rest hold a random tenth of the chunks each.
        holds = None if i < 5 else set(rng.sample(range(n), n // 10))
        peers.append(
            SimPeer(
                (f"10.1.{i // 250}.{i % 250}", 4000),
                bandwidth,
                latency=rng.uniform(0.005, 0.1),
                holds=holds,
            )
        )
    sim = simulate(sizes, peers)
    assert_complete(sim)
    assert len(sim.issued) < n * 1.3


# ----------------------------------------------------------------------------- unit level

A, B, C = ("a", 1), ("b", 1), ("c", 1)


def test_rarest_first_and_only_known_holders() -> None:
    s = DownloadScheduler([100] * 6, window_min=1, window_max=1)
    for i in range(5):
        s.add_holders(i, [A, B])
    s.add_holders(5, [A])
    reqs = {r.peer: r for r in s.next_requests(0.0)}
    assert reqs[A].index == 5  # only A has it: A takes it before the common chunks
    assert reqs[B].index == 0
    s.add_holders(3, [C])  # chunk 3 now has three holders, the others two
    s.on_success(reqs[B], 1.0)
    assert sorted((r.peer, r.index) for r in s.next_requests(1.0)) == [(B, 1), (C, 3)]


def test_window_grows_on_quick_deliveries_and_shrinks_on_failure() -> None:
    s = DownloadScheduler([1000] * 200, window_min=2, window_max=8)
    s.add_peer_for_all(A)
    now = 0.0
    for _ in range(20):
        for r in s.next_requests(now):
            s.on_success(r, now + 0.01)
        now += 0.01
    assert s.peer_stats()[A].window == 8
    reqs = s.next_requests(now)
    s.on_failure(reqs[0], now, FailureKind.ERROR)
    assert s.peer_stats()[A].window == 4
    s.on_failure(reqs[1], now, FailureKind.TIMEOUT)
    assert s.peer_stats()[A].window == 2  # never below window_min


def test_endgame_duplicates_oldest_and_cancels_the_loser() -> None:
    s = DownloadScheduler([100] * 3, window_min=2, window_max=2)
    s.add_peer_for_all(A)
    first = s.next_requests(0.0)
    assert [r.index for r in first] == [0, 1]
    s.add_peer_for_all(B)
    second = s.next_requests(1.0)
    # B starts the last new chunk; no duplicate while it has a request of its own in flight.
    assert [(r.index, r.peer) for r in second] == [(2, B)]
    assert s.on_success(second[0], 1.5) == []
    # Idle now, B duplicates the oldest request in flight: one, though its window has two.
    third = s.next_requests(1.5)
    assert [(r.index, r.peer) for r in third] == [(0, B)]
    cancelled = s.on_success(third[0], 2.0)
    assert cancelled == [first[0]]
    # The loser's late answers change nothing.
    assert s.on_success(first[0], 2.5) == []
    s.on_failure(first[0], 2.5, FailureKind.ERROR)
    stats = s.peer_stats()
    assert stats[A].chunks_delivered == 0 and stats[A].failures == 0
    assert stats[B].chunks_delivered == 2
    assert s.remaining == 1


def test_only_an_idle_peer_duplicates_and_one_request_at_a_time() -> None:
    # A peer's requests share its bandwidth: a duplicate beside its own unfinished request
    # would slow that one down. So a peer with work in flight never duplicates, and an idle
    # peer takes one duplicate, the next only when that one has ended.
    s = DownloadScheduler([100] * 6, window_min=4, window_max=4)
    s.add_peer_for_all(A)
    s.add_peer_for_all(B)
    first = s.next_requests(0.0)
    on_a = [r for r in first if r.peer == A]
    on_b = [r for r in first if r.peer == B]
    assert len(on_a) == 4 and len(on_b) == 2  # every chunk in flight; B has window to spare
    for req in on_b[:-1]:
        s.on_success(req, 1.0)
    assert s.next_requests(1.0) == []  # B still has a request of its own in flight
    s.on_success(on_b[-1], 1.1)
    [dup] = s.next_requests(1.1)
    assert dup.peer == B and dup.index == on_a[0].index  # the oldest of A's
    assert s.next_requests(1.2) == []  # one at a time
    s.on_failure(dup, 1.3, FailureKind.ERROR)
    [dup2] = s.next_requests(1.3)
    # not the chunk that just failed on B while another holder has it in flight
    assert dup2.peer == B and dup2.index == on_a[1].index


def test_at_most_endgame_copies_per_chunk() -> None:
    s = DownloadScheduler([100], endgame_copies=3)
    for p in (A, B, C, ("d", 1)):
        s.add_peer_for_all(p)
    reqs = s.next_requests(0.0)
    assert len(reqs) == 3 and {r.index for r in reqs} == {0}
    assert len({r.peer for r in reqs}) == 3


def test_stale_and_unknown_events_are_ignored() -> None:
    s = DownloadScheduler([100] * 4)
    s.add_peer_for_all(A)
    reqs = s.next_requests(0.0)
    s.on_failure(Request(0, ("nobody", 0), 999), 1.0, FailureKind.TIMEOUT)
    s.on_failure(Request(reqs[0].index, A, 999), 1.0, FailureKind.TIMEOUT)  # old attempt
    assert s.in_flight == 2 and s.peer_stats()[A].failures == 0
    assert s.on_success(reqs[0], 1.0) == []
    assert s.on_success(reqs[0], 1.5) == []  # reported twice
    s.on_failure(reqs[0], 1.5, FailureKind.CORRUPT)  # failure after success
    assert s.peer_stats()[A].state is PeerState.OK
    assert s.peer_stats()[A].chunks_delivered == 1
    assert s.remaining == 3


def test_success_of_a_timed_out_request_still_completes_the_chunk() -> None:
    s = DownloadScheduler([100] * 2, window_min=1, window_max=1, request_timeout=5.0)
    s.add_peer_for_all(A)
    [req] = s.next_requests(0.0)
    assert s.overdue(4.9) == []
    assert s.overdue(5.0) == [req]
    assert s.overdue(6.0) == []  # reported once
    s.on_failure(req, 6.0, FailureKind.TIMEOUT)
    s.on_success(req, 6.1)  # the bytes made it after all
    assert s.remaining == 1 and s.peer_stats()[A].chunks_delivered == 1
    assert [r.index for r in s.next_requests(6.1)] == [1]


def test_programming_errors_raise_value_error() -> None:
    s = DownloadScheduler([100] * 3)
    with pytest.raises(ValueError):
        s.add_holders(3, [A])
    with pytest.raises(ValueError):
        s.on_success(Request(7, A, 1), 0.0)
    with pytest.raises(ValueError):
        s.on_failure(Request(0, A, 1), 0.0, "timeout")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        s.on_success((0, A), 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DownloadScheduler([100, -1])
    with pytest.raises(ValueError):
        DownloadScheduler([100], window_min=4, window_max=2)


def test_busy_backoff_and_next_wakeup() -> None:
    s = DownloadScheduler([100] * 4, window_min=1, window_max=1, busy_backoff=1.0)
    s.add_peer_for_all(A)
    [req] = s.next_requests(0.0)
    s.on_failure(req, 0.1, FailureKind.BUSY)
    assert s.peer_stats()[A].state is PeerState.BUSY
    assert s.next_requests(0.5) == []
    assert s.next_wakeup() == pytest.approx(1.1)
    [again] = s.next_requests(1.1)
    assert again.index == req.index  # BUSY is no reason to avoid the peer for this chunk
    s.on_failure(again, 1.2, FailureKind.BUSY)
    assert s.next_wakeup() == pytest.approx(3.2)  # the back-off doubles


def test_corrupt_peer_requests_become_overdue_at_once() -> None:
    s = DownloadScheduler([100] * 10, request_timeout=30.0)
    s.add_peer_for_all(A)
    s.add_peer_for_all(B)
    reqs = [r for r in s.next_requests(0.0) if r.peer == A]
    s.on_failure(reqs[0], 1.0, FailureKind.CORRUPT)
    assert s.overdue(1.0) == reqs[1:]
    assert all(r.peer == B for r in s.next_requests(1.0))
    assert s.peer_stats()[A].state is PeerState.BAD


def test_down_peer_is_probed_after_backoff_then_given_up() -> None:
    s = DownloadScheduler(
        [100] * 5,
        window_min=1,
        window_max=1,
        peer_failure_limit=2,
        down_backoff=10.0,
        down_retries=1,
    )
    s.add_peer_for_all(A)
    now = 0.0
    for _ in range(2):
        [r] = s.next_requests(now)
        s.on_failure(r, now, FailureKind.ERROR)
    assert s.peer_stats()[A].state is PeerState.DOWN
    assert s.unfetchable() == [0, 1, 2, 3, 4]
    assert s.next_requests(5.0) == [] and s.next_wakeup() == 10.0
    [probe] = s.next_requests(10.0)
    s.on_failure(probe, 10.5, FailureKind.ERROR)
    assert s.next_requests(1e6) == [] and s.next_wakeup() is None  # retries used up


def test_failed_duplicate_leaves_the_other_copy_running() -> None:
    s = DownloadScheduler([100], window_min=1, window_max=1)
    s.add_peer_for_all(A)
    s.add_peer_for_all(B)
    a, b = s.next_requests(0.0)
    assert a.index == b.index == 0 and {a.peer, b.peer} == {A, B}
    s.on_failure(b, 1.0, FailureKind.ERROR)
    assert s.in_flight == 1 and s.next_requests(1.0) == []  # B failed it: B does not retry it
    s.add_peer_for_all(C)
    [c] = s.next_requests(1.5)
    assert c.peer == C and c.index == 0  # the copy slot reopened for a fresh holder
    assert s.on_success(a, 2.0) == [c]
    assert s.done


def test_peer_for_all_after_being_named_for_some_chunks() -> None:
    s = DownloadScheduler([100] * 4, window_min=1, window_max=1)
    s.add_holders(0, [A, B])
    s.add_holders(3, [B])
    s.add_peer_for_all(B)
    s.add_holders(1, [B])  # already known to hold everything
    reqs = {r.peer: r.index for r in s.next_requests(0.0)}
    # Chunk 0 has another holder, so B (counted once, as a holder of everything) leaves it to A.
    assert reqs == {A: 0, B: 1}


def test_global_cap_on_requests_in_flight() -> None:
    sizes = [256 * KIB] * 400
    peers = [peer(i, 20 * MB) for i in range(8)]
    sched = DownloadScheduler(sizes, max_in_flight=10)
    peak = 0
    issue = sched.next_requests

    def recording(now: float) -> list[Request]:
        nonlocal peak
        out = issue(now)
        peak = max(peak, sched.in_flight)
        return out

    sched.next_requests = recording  # type: ignore[method-assign]
    sim = Simulation(sched, sizes, peers).run()
    assert_complete(sim)
    assert 0 < peak <= 10
    assert all(sim.delivered_by[p.pid] > 0 for p in peers)  # the cap starves no peer


def test_a_peer_lacking_a_chunk_is_not_asked_again_for_it_and_keeps_serving_the_rest() -> None:
    s = DownloadScheduler([100] * 6, window_min=1, window_max=1)
    s.add_peer_for_all(A)
    now = 0.0
    asked: list[int] = []
    while not s.done:
        reqs = s.next_requests(now)
        if not reqs:
            break
        for req in reqs:
            asked.append(req.index)
            if req.index in (1, 3):  # 404: the peer does not hold these two
                s.on_failure(req, now, FailureKind.MISSING)
            else:
                s.on_success(req, now)
        now += 0.01
    assert sorted(asked) == list(range(6))  # each chunk asked once, 1 and 3 never again
    assert s.unfetchable() == [1, 3] and s.remaining == 2
    assert s.peer_stats()[A].state is PeerState.OK  # no strike: it served the other four
    assert s.next_wakeup() is None


def test_busy_with_retry_after_waits_as_told() -> None:
    # A busy server's Retry-After is honoured as given, not doubled on every refusal (a
    # doubling back-off left the unluckiest of a crowd waiting longest), and floored so
    # that "Retry-After: 0" for ever cannot make the downloader spin.
    s = DownloadScheduler([100] * 4, window_min=1, window_max=1, busy_backoff=1.0)
    s.add_peer_for_all(A)
    [req] = s.next_requests(0.0)
    s.on_failure(req, 0.0, FailureKind.BUSY, retry_after=3.0)
    assert s.next_requests(2.9) == []
    assert s.next_wakeup() == pytest.approx(3.0)
    [again] = s.next_requests(3.0)
    s.on_failure(again, 3.0, FailureKind.BUSY, retry_after=3.0)
    assert s.next_wakeup() == pytest.approx(6.0)  # not 9.0: as told, no doubling
    [third] = s.next_requests(6.0)
    s.on_failure(third, 6.0, FailureKind.BUSY, retry_after=0.0)
    assert s.next_wakeup() == pytest.approx(6.25)  # a quarter of busy_backoff at least
