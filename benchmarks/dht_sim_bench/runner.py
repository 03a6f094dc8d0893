"""The simulation: join, announce, look up, churn, look up again, watch records survive.

Node i lives in shard i % processes. Joins go in batches: every node of a batch bootstraps
off a random node of the batches before it, so each is "bootstrapped off a random earlier
node" while a shard joins several at once. The announcer never leaves (it is the holder the
lookups look for); lookups start from random live nodes other than the announcer.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.dht_sim_bench.churn import Weibull, departures, due, stop_at_once
from benchmarks.dht_sim_bench.models import STOP, LookupStats, SimConfig, goals
from benchmarks.dht_sim_bench.shard import (
    HOST,
    JOIN_CONCURRENCY,
    LocalShard,
    RemoteShard,
    quiet_logs,
)

Progress = Callable[[str], None]


class Swarm:
    """The shards and who is alive where."""

    def __init__(self, shards: Sequence[LocalShard | RemoteShard]) -> None:
        self.shards = list(shards)
        self.ports: dict[int, int] = {}
        self.alive: set[int] = set()

    def shard_of(self, index: int) -> LocalShard | RemoteShard:
        return self.shards[index % len(self.shards)]

    def by_shard(self, indices: Sequence[int]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for i in indices:
            groups.setdefault(i % len(self.shards), []).append(i)
        return groups

    async def start(self, specs: Sequence[tuple[int, bytes, tuple[str, int] | None]]) -> None:
        groups: dict[int, list] = {}
        for spec in specs:
            groups.setdefault(spec[0] % len(self.shards), []).append(spec)
        answers = await asyncio.gather(
            *(self.shards[s].call("start_nodes", group) for s, group in groups.items())
        )
        for ports in answers:
            self.ports.update({int(i): p for i, p in ports.items()})
        self.alive.update(spec[0] for spec in specs)

    async def stop(self, indices: Sequence[int]) -> None:
        self.alive.difference_update(indices)
        await asyncio.gather(
            *(self.shards[s].call("stop_nodes", g) for s, g in self.by_shard(indices).items())
        )

    async def datagrams(self) -> int:
        counts = await asyncio.gather(*(s.call("datagrams") for s in self.shards))
        return sum(c["datagrams"] for c in counts)

    async def lookups(
        self, tasks: Sequence[tuple[int, bytes]], concurrency: int, exclude: int
    ) -> list[tuple[bool, float]]:
        """Run (node, object id) lookups, each shard its own at `concurrency`; in order. A
        lookup whose node left before it began is run again from another live node (not
        `exclude`)."""
        results = await self._lookups(tasks, concurrency)
        for _ in range(5):
            lost = [p for p, r in enumerate(results) if r[0] is None]
            askers = sorted(self.alive - {exclude})
            if not lost or not askers:
                break
            retry = [(askers[(p * 7919) % len(askers)], tasks[p][1]) for p in lost]
            for p, r in zip(lost, await self._lookups(retry, concurrency), strict=True):
                results[p] = r
        return [(bool(ok), s) for ok, s in results]

    async def _lookups(
        self, tasks: Sequence[tuple[int, bytes]], concurrency: int
    ) -> list[tuple[bool | None, float]]:
        per_shard: dict[int, list[int]] = {}
        for position, (index, _) in enumerate(tasks):
            per_shard.setdefault(index % len(self.shards), []).append(position)
        answers = await asyncio.gather(
            *(
                self.shards[s].call("lookups", [tasks[p] for p in positions], concurrency)
                for s, positions in per_shard.items()
            )
        )
        results: list[tuple[bool | None, float]] = [(None, 0.0)] * len(tasks)
        for positions, found in zip(per_shard.values(), answers, strict=True):
            for p, (ok, seconds) in zip(positions, found, strict=True):
                results[p] = (ok, float(seconds))
        return results

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.shards), return_exceptions=True)


def _nothing(_: str) -> None:
    pass


async def run_sim(config: SimConfig, progress: Progress = _nothing) -> dict[str, Any]:
    """Run one simulation; returns the report (a JSON-able dict)."""
    config.check()
    quiet_logs()
    rng = random.Random(config.seed)
    started = time.monotonic()
    shards: list[LocalShard | RemoteShard] = []
    if config.processes == 1:
        shards.append(LocalShard())
    else:
        try:
            for _ in range(config.processes):
                shards.append(await RemoteShard.open())
        except BaseException:
            await asyncio.gather(*(s.close() for s in shards), return_exceptions=True)
            raise
    swarm = Swarm(shards)
    try:
        return await _run(config, swarm, rng, started, progress)
    finally:
        await swarm.close()


async def _run(
    config: SimConfig, swarm: Swarm, rng: random.Random, started: float, progress: Progress
) -> dict[str, Any]:
    n = config.nodes
    node_ids = [rng.randbytes(20) for _ in range(n)]
    progress(f"joining {n} nodes in {config.processes} process(es)")
    await swarm.start([(0, node_ids[0], None)])
    batch_max = JOIN_CONCURRENCY * config.processes
    first = 1
    while first < n:
        last = min(n, first + min(first, batch_max))
        await swarm.start(
            [
                (i, node_ids[i], (HOST, swarm.ports[rng.randrange(first)]))
                for i in range(first, last)
            ]
        )
        first = last
    join_s = time.monotonic() - started
    progress(f"joined in {join_s:.1f} s")
    await asyncio.sleep(config.settle_seconds)  # hand-overs and the like die down

    announcer = rng.randrange(n)
    object_ids = [rng.randbytes(32) for _ in range(config.keys)]
    home = swarm.shard_of(announcer)
    all_before = await swarm.datagrams()
    own_before = await home.call("node_datagrams", announcer)
    lookups_before = await home.call("lookups_made", announcer)
    progress(f"node {announcer} announces {config.keys} keys")
    announced = await home.call("announce", announcer, [o[:20] for o in object_ids])
    own = await home.call("node_datagrams", announcer) - own_before
    everyone = await swarm.datagrams() - all_before
    lookups_made = await home.call("lookups_made", announcer) - lookups_before
    if announced["reported_lookups"] is not None:
        lookups_made = max(lookups_made, announced["reported_lookups"])
    announce = {
        **announced,
        "keys": config.keys,
        "datagrams_sent": own,
        "datagrams_per_key": own / config.keys,
        "datagrams_all_nodes": everyone,
        "datagrams_all_nodes_per_key": everyone / config.keys,
        "lookups": lookups_made if lookups_made >= 0 else None,
        "keys_per_lookup": config.keys / lookups_made if lookups_made > 0 else None,
    }
    announce["placement"] = await placement(swarm, node_ids, object_ids[: config.survival_keys])
    progress(
        f"announced in {announced['seconds']:.1f} s: {own / config.keys:.1f} datagrams/key, "
        f"{lookups_made} lookups"
    )

    def tasks(count: int, keys: Sequence[bytes]) -> list[tuple[int, bytes]]:
        askers = sorted(swarm.alive - {announcer})
        return [(rng.choice(askers), keys[i % len(keys)]) for i in range(count)]

    def sample_keys(count: int) -> list[bytes]:
        return rng.sample(object_ids, min(count, len(object_ids)))

    progress(f"{config.lookups} lookups before churn")
    before = LookupStats(
        await swarm.lookups(
            tasks(config.lookups, sample_keys(config.lookups)), config.lookup_concurrency, announcer
        )
    )
    progress(f"before churn: {before.success:.1%} found, p95 {before.latency(95):.2f} s")
    sweeps = {"before": await sweep(swarm, rng, announcer, object_ids)}

    dist = Weibull.gone_by(config.churn, 1.0, config.shape)
    leavers = sorted(set(range(n)) - {announcer})
    checkpoints = sorted(config.checkpoints)
    if config.churn_mode == STOP:
        plan = stop_at_once(leavers, dist, [1.0, *checkpoints], rng)
    else:
        plan = departures(leavers, dist, rng)
    clock = ChurnClock(config, swarm, plan)
    survival = [{"t": 0.0, "gone": 0.0, "alive": n, **_found(before)}]
    try:
        await clock.reach(1.0)
        progress(f"churn: {n - len(swarm.alive)} of {n} nodes gone at T")
        alive_at_t = len(swarm.alive)
        after = LookupStats(
            await swarm.lookups(
                tasks(config.lookups, sample_keys(config.lookups)),
                config.lookup_concurrency,
                announcer,
            )
        )
        progress(f"after churn: {after.success:.1%} found, p95 {after.latency(95):.2f} s")
        sweeps["after"] = await sweep(swarm, rng, announcer, object_ids)
        survival.append(
            {"t": 1.0, "gone": 1 - alive_at_t / n, "alive": alive_at_t, **_found(after)}
        )
        for t in checkpoints:
            await clock.reach(t)
            alive = len(swarm.alive)
            keys = sample_keys(config.survival_keys)
            found = LookupStats(
                await swarm.lookups(tasks(len(keys), keys), config.lookup_concurrency, announcer)
            )
            survival.append({"t": t, "gone": 1 - alive / n, "alive": alive, **_found(found)})
            progress(f"t = {t:g} T: {alive} nodes left, {found.success:.1%} of keys found")
    finally:
        await clock.close()

    report: dict[str, Any] = {
        "config": config.as_dict(),
        "join_seconds": join_s,
        "announcer": announcer,
        "announce": announce,
        "lookups": {"before": before.as_dict(), "after": after.as_dict()},
        "sweeps": sweeps,
        "survival": survival,
        "weibull": {"shape": dist.shape, "scale_T": dist.scale},
        "wall_seconds": time.monotonic() - started,
        "peak_rss_mib": {
            "controller": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "shards_max": max(
                await asyncio.gather(*(s.call("peak_rss_mib") for s in swarm.shards))
            ),
        },
    }
    report["goals"] = goals(report)
    return report


async def sweep(
    swarm: Swarm, rng: random.Random, announcer: int, object_ids: Sequence[bytes]
) -> dict[str, Any]:
    """One random live node looks up every key, as a download looks up its chunks."""
    node = rng.choice(sorted(swarm.alive - {announcer}))
    result = await swarm.shard_of(node).call("sweep", node, list(object_ids))
    return {**result, "node": node, "datagrams_per_key": result["datagrams"] / len(object_ids)}


async def placement(
    swarm: Swarm, node_ids: Sequence[bytes], object_ids: Sequence[bytes], ksize: int = 20
) -> dict[str, Any]:
    """Where the records of `object_ids` are, against a brute-force computation of each key's
    k closest running nodes: the mean fraction of those k that keep the record, and the
    fraction of keys whose closest node keeps it."""
    keys = [o[:20] for o in object_ids]
    holding: dict[int, set[int]] = {k: set() for k in range(len(keys))}
    for part in await asyncio.gather(*(s.call("holding", keys) for s in swarm.shards)):
        for k, nodes in part.items():
            holding[int(k)].update(nodes)
    alive = sorted(swarm.alive)
    on_closest, closest_holds, held_elsewhere = [], 0, 0
    for k, key in enumerate(keys):
        target = int.from_bytes(key, "big")
        closest = sorted(alive, key=lambda i: int.from_bytes(node_ids[i], "big") ^ target)
        truth = set(closest[:ksize])
        on_closest.append(len(holding[k] & truth) / len(truth))
        closest_holds += closest[0] in holding[k]
        held_elsewhere += len(holding[k] - truth)
    return {
        "keys": len(keys),
        "mean_fraction_of_k_closest": sum(on_closest) / len(keys),
        "min_fraction_of_k_closest": min(on_closest),
        "closest_holds": closest_holds / len(keys),
        "records_outside_k_closest_per_key": held_elsewhere / len(keys),
    }


def _found(stats: LookupStats) -> dict[str, Any]:
    return {"asked": stats.count, "found": stats.succeeded, "fraction": stats.success}


class ChurnClock:
    """Plays the departures of `plan` (sorted (time in T, node)). In stop mode time jumps:
    `reach(t)` stops what is due by t at once. In weibull mode departures happen in real
    time (T = config.t_seconds from the first `reach`), in the background, also while
    lookups run."""

    def __init__(self, config: SimConfig, swarm: Swarm, plan: list[tuple[float, int]]) -> None:
        self.live = config.churn_mode != STOP
        self.unit = config.t_seconds
        self.swarm = swarm
        self.plan = plan
        self.next = 0
        self.t0: float | None = None
        self.player: asyncio.Task | None = None

    async def reach(self, t: float) -> None:
        if not self.live:
            await self._stop_due(t)
            return
        loop = asyncio.get_running_loop()
        if self.t0 is None:
            self.t0 = loop.time()
            self.player = asyncio.create_task(self._play())
        await asyncio.sleep(max(0.0, self.t0 + t * self.unit - loop.time()))
        await self._stop_due(t)  # whatever the player has not reached yet

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        while self.next < len(self.plan):
            wake = self.t0 + self.plan[self.next][0] * self.unit
            await asyncio.sleep(max(0.0, wake - loop.time()))
            await self._stop_due((loop.time() - self.t0) / self.unit)

    async def _stop_due(self, t: float) -> None:
        end = due(self.plan, self.next, t)
        if end > self.next:
            leaving = [node for _, node in self.plan[self.next : end]]
            self.next = end
            await self.swarm.stop(leaving)

    async def close(self) -> None:
        if self.player is not None:
            self.player.cancel()
            await asyncio.gather(self.player, return_exceptions=True)
