"""Datagrams per announced key: region-batched announcing against one lookup per key.

Starts N DhtNodes on 127.0.0.1 in this process (OS-chosen ports, each bootstrapped off a
random earlier node), has one announce `--keys` random keys with `announce_many` (batched by
keyspace region), and counts every UDP datagram every node sends meanwhile (requests and
answers). For reference in the same run, another node announces as many other keys one
lookup each (`announce`, 16 in flight: what announce_many did before). Prints both figures
and their ratio.

    python -m benchmarks.announce_batching --nodes 150 --keys 800
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from typing import Any

from chunkstore.net.dht import DhtNode

LOCAL = "127.0.0.1"


class CountingTransport:
    """Wraps a node's datagram transport and counts what it sends."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.sent = 0

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent += 1
        self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def start_swarm(size: int, seed: int = 0, **options: Any) -> list[DhtNode]:
    """`size` nodes on 127.0.0.1, each bootstrapped off a random earlier one; every node's
    transport counts the datagrams it sends (`sent_datagrams(nodes)`). The caller stops them
    (`stop_swarm`), also when this raises."""
    rng = random.Random(seed)
    nodes: list[DhtNode] = []
    try:
        for _ in range(size):
            node = DhtNode(**options)
            bootstrap = [(LOCAL, rng.choice(nodes).port)] if nodes else []
            nodes.append(node)
            await node.start(LOCAL, 0, bootstrap)
            node.protocol.transport = CountingTransport(node.protocol.transport)
    except BaseException:
        await stop_swarm(nodes)
        raise
    return nodes


async def stop_swarm(nodes: list[DhtNode]) -> None:
    for node in nodes:
        await node.stop()


def sent_datagrams(nodes: list[DhtNode]) -> int:
    return sum(n.protocol.transport.sent for n in nodes if n.protocol.transport is not None)


async def measure(size: int, key_count: int, seed: int = 0) -> dict[str, float]:
    nodes = await start_swarm(size, seed)
    try:
        await asyncio.sleep(0.5)  # let bootstrap traffic and hand-overs settle
        batched_keys = [os.urandom(20) for _ in range(key_count)]
        before, started = sent_datagrams(nodes), time.monotonic()
        accepted = await nodes[0].announce_many(batched_keys, 9000)
        batched = sent_datagrams(nodes) - before
        batched_seconds = time.monotonic() - started
        sweep = nodes[0].last_sweep

        single_keys = [os.urandom(20) for _ in range(key_count)]
        slots = asyncio.Semaphore(16)

        async def one(key: bytes) -> None:
            async with slots:
                await nodes[1].announce(key, 9001)

        before, started = sent_datagrams(nodes), time.monotonic()
        await asyncio.gather(*(one(key) for key in single_keys))
        single = sent_datagrams(nodes) - before
        single_seconds = time.monotonic() - started
    finally:
        await stop_swarm(nodes)
    return {
        "nodes": size,
        "keys": key_count,
        "accepted": len(accepted),
        "batched_per_key": batched / key_count,
        "batched_seconds": batched_seconds,
        "lookups": sweep.lookups if sweep else 0,
        "asked": sweep.asked if sweep else 0,
        "batches": sweep.batches if sweep else 0,
        "single_per_key": single / key_count,
        "single_seconds": single_seconds,
        "ratio": single / max(1, batched),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=150)
    parser.add_argument("--keys", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 2 <= args.nodes <= 2000 or not 1 <= args.keys <= 100_000:
        parser.error("--nodes must be 2..2000 and --keys 1..100000")
    result = asyncio.run(measure(args.nodes, args.keys, args.seed))
    for name, value in result.items():
        print(f"{name:>16}: {value:.2f}" if isinstance(value, float) else f"{name:>16}: {value}")


if __name__ == "__main__":
    main()
