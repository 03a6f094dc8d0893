"""The demo: a local swarm, one file from one holder, another from several, and the speeds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chunkstore.demo.local_swarm import LocalSwarm, wait_for_providers
from chunkstore.demo.sample_files import MIB, file_digest, write_sample_file
from chunkstore.porcelain import add, get
from chunkstore.results import GetResult
from chunkstore.units import parse_rate

Progress = Callable[[int], None]


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured: throughput from one holder and from several."""

    nodes: int
    holders: int
    size: int
    upload_rate: float | None
    single_source_mbps: float
    multi_source_mbps: float
    speedup: float
    sources: dict[str, int]
    identical: bool


def run_demo(
    *,
    nodes: int = 5,
    size: int = 64 * MIB,
    upload_rate: str | None = "20MB",
    report: Callable[[str], None] = lambda line: None,
    progress: Callable[[str, int], Progress | None] = lambda label, total: None,
) -> DemoResult:
    """Start `nodes` local nodes, seed two files, fetch both on the last node, compare."""
    if nodes < 3:
        raise ValueError("the demo needs at least 3 nodes (holders and a fetcher)")
    holders = nodes - 2  # the first node only bootstraps; the last one fetches
    with LocalSwarm(nodes, upload_rate=upload_rate) as swarm:
        report(
            f"started {nodes} nodes on 127.0.0.1 (upload cap per node: "
            f"{upload_rate or 'none'}), homes under {swarm.root}"
        )
        work = swarm.root / "files"
        work.mkdir()
        single, multi = work / "single.bin", work / "multi.bin"
        digests = {
            "single.bin": write_sample_file(single, size, seed=1),
            "multi.bin": write_sample_file(multi, size, seed=2),
        }
        seeds = swarm.nodes[1 : 1 + holders]
        single_id = add(single, home=seeds[0].home).manifest_id
        for node in seeds:
            multi_id = add(multi, home=node.home).manifest_id
        report(
            f"seeded single.bin on 1 node and multi.bin on {holders} nodes "
            f"({size / MIB:.0f} MiB each)"
        )
        fetcher = swarm.nodes[-1]
        wait_for_providers(fetcher, single_id, 1)
        wait_for_providers(fetcher, multi_id, holders)

        results: dict[str, GetResult] = {}
        for label in ("single.bin", "multi.bin"):
            # Through the fetcher's running node (its home has one), as `chunkstore get` does.
            results[label] = r = get(
                label, work / f"fetched-{label}", home=fetcher.home, progress=progress(label, size)
            )
            report(
                f"fetched {label} from {len(r.sources)} holder(s): {r.throughput / 1e6:.1f} MB/s"
            )
        identical = all(
            file_digest(work / f"fetched-{label}") == digest for label, digest in digests.items()
        )
    one, many = results["single.bin"].throughput, results["multi.bin"].throughput
    return DemoResult(
        nodes=nodes,
        holders=holders,
        size=size,
        upload_rate=parse_rate(upload_rate) if upload_rate else None,
        single_source_mbps=one / 1e6,
        multi_source_mbps=many / 1e6,
        speedup=many / one if one else 0.0,
        sources=results["multi.bin"].sources,
        identical=identical,
    )
