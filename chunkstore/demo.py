"""The demo: a local swarm, one file from one holder, another from several, and the speeds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chunkstore.download import Progress
from chunkstore.fetchresult import FetchResult
from chunkstore.ingest import add_file
from chunkstore.localswarm import LocalSwarm, wait_for_providers
from chunkstore.store import Store
from chunkstore.swarm import fetch
from chunkstore.units import parse_rate

MIB = 1024 * 1024


@dataclass(frozen=True)
class DemoResult:
    nodes: int
    holders: int
    size: int
    upload_rate: float | None
    single_source_mbps: float
    multi_source_mbps: float
    speedup: float
    sources: dict[str, int]
    identical: bool


def generate_file(path: Path, size: int, seed: int) -> Path:
    """Half random, half compressible text, written in 1 MiB blocks."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10)))
             for _ in range(2000)]
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(MIB, size - written)
            if written < size // 2:
                block = rng.randbytes(n)
            else:
                block = b" ".join(rng.choices(words, k=n // 5 + 1))[:n]
            f.write(block)
            written += n
    return path


def same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            if x != y:
                return False
            if not x:
                return True


def run_demo(*, nodes: int = 5, size: int = 64 * MIB, upload_rate: str | None = "20MB",
             report: Callable[[str], None] = lambda line: None,
             progress: Callable[[str, int], Progress | None] = lambda label, total: None,
             ) -> DemoResult:
    """Start `nodes` local nodes, seed two files, fetch both on the last node, compare."""
    if nodes < 3:
        raise ValueError("the demo needs at least 3 nodes (holders and a fetcher)")
    holders = nodes - 2  # the first node only bootstraps; the last one fetches
    with LocalSwarm(nodes, upload_rate=upload_rate) as swarm:
        report(f"started {nodes} nodes on 127.0.0.1 (upload cap per node: "
               f"{upload_rate or 'none'}), homes under {swarm.root}")
        work = swarm.root / "files"
        work.mkdir()
        single = generate_file(work / "single.bin", size, seed=1)
        multi = generate_file(work / "multi.bin", size, seed=2)
        seeds = swarm.nodes[1:1 + holders]
        for node in seeds[:1]:
            with Store(node.home) as store:
                single_id = add_file(store, single).manifest_id
        for node in seeds:
            with Store(node.home) as store:
                multi_id = add_file(store, multi).manifest_id
        report(f"seeded single.bin on 1 node and multi.bin on {holders} nodes "
               f"({size / MIB:.0f} MiB each)")
        fetcher = swarm.nodes[-1]
        wait_for_providers(fetcher, single_id, 1)
        wait_for_providers(fetcher, multi_id, holders)

        results: dict[str, FetchResult] = {}
        with Store(fetcher.home) as store:
            for label in ("single.bin", "multi.bin"):
                out = work / f"fetched-{label}"
                results[label] = asyncio.run(fetch(store, label, out,
                                                   progress=progress(label, size)))
                r = results[label]
                report(f"fetched {label} from {len(r.sources)} holder(s): "
                       f"{r.throughput / 1e6:.1f} MB/s")
        identical = same_content(single, work / "fetched-single.bin") and \
            same_content(multi, work / "fetched-multi.bin")
    one, many = results["single.bin"].throughput, results["multi.bin"].throughput
    return DemoResult(nodes=nodes, holders=holders, size=size,
                      upload_rate=parse_rate(upload_rate) if upload_rate else None,
                      single_source_mbps=one / 1e6,
                      multi_source_mbps=many / 1e6, speedup=many / one if one else 0.0,
                      sources=results["multi.bin"].sources, identical=identical)
