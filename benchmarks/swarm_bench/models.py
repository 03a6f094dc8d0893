"""What a swarm benchmark run measures and what it found: BenchConfig in, BenchResult out
(with its Measurements, their medians as Points, the issue's Targets, and its JSON)."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import MB, MIXED, RANDOM, GiB, KiB, MiB, format_size
from benchmarks.swarm_bench.errors import BenchError

# The sample files: mixed is half random, half text; random is stored raw, so chunkstore moves
# as many bytes as nginx (the like-for-like comparison).
CONTENTS = (MIXED, RANDOM)
CHUNKSTORE, ARIA2C, LOCAL = "chunkstore", "aria2c", "local get"  # Measurement.tool
LIBTORRENT = "libtorrent"
# The references: they never look inside the bytes, so each is measured on the first file
# only and compared with chunkstore on every file.
REFERENCES = (ARIA2C, LIBTORRENT)
# How a measured `chunkstore get` reaches the DHT: through a node serving the fetcher's home
# (`serve`, started before the get), or as a fresh machine does, joining through a holder
# with `--bootstrap` from an empty home with no node.
VIA_NODE, VIA_BOOTSTRAP = "node", "bootstrap"
# The preset of `swarm.py --first-byte` (issue 8): a 64 MiB file from 1 and 4 holders capped
# at 8 MB/s each, where 4 holders must reach FIRST_BYTE_GOAL times one holder's throughput.
FIRST_BYTE = "first-byte"
FIRST_BYTE_GOAL = 3.5
# The phases of a network get as `get --json` reports them (chunkstore.net.download
# fetch_file), in the order they usually end; "manifest_holders_all" and "chunk_holders" run
# beside the transfers and may be absent.
PHASES = (
    "join",
    "name",
    "manifest_holders",
    "manifest",
    "first_chunk",
    "manifest_holders_all",
    "chunk_holders",
    "last_chunk",
    "done",
)
RSS_GOAL_MIB = 150.0
# Issue 13: the downloader's CPU per GiB halved. As a ratio to aria2c's in the same run (CPU
# time per byte moves with the machine's load: both doubled between two runs on a busy
# machine): the README's run of 2026-12-01, random file, capped, had chunkstore 2.85 and
# aria2c 0.655 CPU-s per 512 MiB (medians), 4.4x.
DOWNLOADER_CPU_GOAL = 2.2


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Rates are bytes per second; sizes bytes."""

    size: int = 512 * MiB
    holders: tuple[int, ...] = (1, 2, 4, 8)
    rate: float = 25 * MB  # per holder / per mirror (netns: per link)
    repeat: int = 3
    contents: tuple[str, ...] = CONTENTS
    uncapped_holders: tuple[int, ...] = (1, 3)  # loopback only; () skips the uncapped runs
    aria2c: bool = True  # compare with aria2c + nginx (when installed)
    libtorrent: bool = True  # compare with libtorrent seeders and leecher (when importable)
    local_get: bool = True  # loopback only: the local-restore ceiling
    netns: bool = False
    workdir: Path | None = None  # parent of the temporary directory
    seed: int = 1
    ratio_goal: float = 3.6  # the target of 4 holders / 1 holder, capped
    preset: str = ""  # a named configuration (e.g. FIRST_BYTE): part of the output file names
    via: str = VIA_NODE  # VIA_NODE or VIA_BOOTSTRAP
    # Nodes that join the swarm and are killed before each chunkstore get: the contacts of
    # getters that came and went, which every DHT lookup may ask and wait for.
    departed: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or self.repeat < 1 or not self.rate > 0:
            raise BenchError("size, repeat and rate must be positive")
        if not self.holders or min(self.holders) < 1 or min(self.uncapped_holders, default=1) < 1:
            raise BenchError("holder counts must be at least 1")
        if not self.contents or set(self.contents) - set(CONTENTS):
            raise BenchError(f"contents must be among {', '.join(CONTENTS)}")
        if self.via not in (VIA_NODE, VIA_BOOTSTRAP) or self.departed < 0:
            raise BenchError(f"via must be {VIA_NODE} or {VIA_BOOTSTRAP}; departed >= 0")

    @property
    def stem(self) -> str:
        """The base name of the output files: swarm[-PRESET][-bootstrap][-netns]."""
        parts = [
            "swarm",
            self.preset,
            "bootstrap" if self.via == VIA_BOOTSTRAP else "",
            "netns" if self.netns else "",
        ]
        return "-".join(p for p in parts if p)


@dataclass
class Measurement:
    """One timed download. Times in seconds, memory in KiB, rates in MB/s of file bytes."""

    tool: str  # CHUNKSTORE, ARIA2C, LIBTORRENT or LOCAL
    content: str
    capped: bool
    holders: int  # 0 for the local get
    rep: int
    size: int
    wall_s: float  # the downloading process, start-up included
    # chunkstore's own `seconds` (JSON); libtorrent's leecher from adding the torrent to
    # complete; the wall time for aria2c
    inner_s: float
    maxrss_kib: int  # peak RSS of the downloading process (see common.child_peak_rss)
    maxrss_exact: bool  # True: the kernel's ru_maxrss; False: sampled VmHWM (a lower bound)
    wire_bytes: int  # body bytes the holders / mirrors / seeders sent (chunkstore: stored form)
    sources: dict[str, int] = field(default_factory=dict)
    identical: bool = True
    cpu_s: float = 0.0  # user+sys CPU of the downloading process
    # CPU the holders (or the nginx mirrors, or the libtorrent seeders) spent during the download
    peers_cpu_s: float = 0.0
    node_cpu_s: float = 0.0  # CPU of the fetcher's node (DHT lookups for the get)
    load1: float = 0.0  # the machine's 1-minute load average after the run: others' work shows
    # chunkstore: seconds from the start of the library call to the first verified chunk
    # (`first_byte_seconds` of `get --json`), and when each phase of the get ended;
    # libtorrent: from adding the torrent to the first verified piece
    first_byte_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def mbps(self) -> float:
        return self.size / MB / self.wall_s

    @property
    def inner_mbps(self) -> float:
        return self.size / MB / self.inner_s if self.inner_s > 0 else 0.0

    @property
    def outside_s(self) -> float:
        """Wall time outside the library call: process start-up, imports, exit."""
        return max(0.0, self.wall_s - self.inner_s)

    def per_gib(self, cpu_s: float) -> float:
        """CPU seconds per GiB of file."""
        return cpu_s / (self.size / GiB)


@dataclass(frozen=True)
class Point:
    """The repetitions of one (tool, content, capped, holders) point."""

    tool: str
    content: str
    capped: bool
    holders: int
    runs: int
    median: float
    low: float
    high: float
    inner_median: float
    rss_mib: float
    cpu_s: float  # medians of the CPU seconds of the run (see Measurement)
    peers_cpu_s: float
    node_cpu_s: float
    wall_s: float
    first_byte_s: float | None = None  # chunkstore: median `first_byte_seconds`
    outside_s: float = 0.0  # median wall time outside the library call (see Measurement)
    phases: dict[str, float] = field(default_factory=dict)  # phase -> median end (s)
    # medians of CPU seconds per GiB of file: the downloading process, the holders (mirrors,
    # seeders) together, the fetcher's node (chunkstore --via node)
    cpu_per_gib: float = 0.0
    peers_cpu_per_gib: float = 0.0
    node_cpu_per_gib: float = 0.0

    @property
    def total_cpu_per_gib(self) -> float:
        return self.cpu_per_gib + self.peers_cpu_per_gib + self.node_cpu_per_gib


@dataclass(frozen=True)
class Target:
    """One of the issue's goals and what this run measured against it."""

    name: str
    measured: float
    goal: float
    detail: str
    at_most: bool = False  # the goal is a ceiling (memory, CPU), else a floor (a ratio)
    unit: str = "x"

    @property
    def met(self) -> bool:
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal


@dataclass
class BenchResult:
    config: BenchConfig
    machine: str
    versions: dict[str, str]
    stored_bytes: dict[str, int]  # content -> bytes in a holder's store
    link: str  # how the caps were enforced, in words
    measurements: list[Measurement]
    started: float
    seconds: float
    failures: list[str] = field(default_factory=list)  # failed attempts that were retried
    notes: list[str] = field(default_factory=list)

    def points(self) -> list[Point]:
        groups: dict[tuple, list[Measurement]] = {}
        for m in self.measurements:
            groups.setdefault((m.tool, m.content, m.capped, m.holders), []).append(m)
        return [
            Point(
                tool,
                content,
                capped,
                holders,
                len(ms),
                statistics.median(m.mbps for m in ms),
                min(m.mbps for m in ms),
                max(m.mbps for m in ms),
                statistics.median(m.inner_mbps for m in ms),
                max(m.maxrss_kib for m in ms) / KiB,
                statistics.median(m.cpu_s for m in ms),
                statistics.median(m.peers_cpu_s for m in ms),
                statistics.median(m.node_cpu_s for m in ms),
                statistics.median(m.wall_s for m in ms),
                _median([m.first_byte_s for m in ms]),
                statistics.median(m.outside_s for m in ms),
                _median_phases(ms),
                statistics.median(m.per_gib(m.cpu_s) for m in ms),
                statistics.median(m.per_gib(m.peers_cpu_s) for m in ms),
                statistics.median(m.per_gib(m.node_cpu_s) for m in ms),
            )
            for (tool, content, capped, holders), ms in groups.items()
        ]

    def point(self, tool: str, content: str, capped: bool, holders: int) -> Point | None:
        for p in self.points():
            if (p.tool, p.content, p.capped, p.holders) == (tool, content, capped, holders):
                return p
        return None

    def targets(self) -> list[Target]:
        """The issue's targets, from the medians of this run."""
        out: list[Target] = []
        reference_content = self.config.contents[0]
        for content in self.config.contents:
            one = self.point(CHUNKSTORE, content, True, 1)
            four = self.point(CHUNKSTORE, content, True, 4)
            if one and four:
                detail = f"{four.median:.1f} / {one.median:.1f} MB/s"
                if four.first_byte_s is not None and one.first_byte_s is not None:
                    detail += f"; first byte {four.first_byte_s:.2f} / {one.first_byte_s:.2f} s"
                if one.inner_median > 0:
                    # The library's own seconds, without process start-up and exit.
                    detail += f"; in-process {four.inner_median / one.inner_median:.2f}x"
                out.append(
                    Target(
                        f"4 holders / 1 holder, capped, {content} file",
                        four.median / one.median,
                        self.config.ratio_goal,
                        detail,
                    )
                )
            # issue 13: >= 1.0x aria2c capped, 1.5x uncapped (the aim); >= 1.5x libtorrent
            # at 4 capped holders, ahead of it uncapped
            for reference, capped, goal, counts in (
                (ARIA2C, True, 1.0, self.config.holders),
                (ARIA2C, False, 1.5, self.config.uncapped_holders),
                (LIBTORRENT, True, 1.5, (4,)),
                (LIBTORRENT, False, 1.0, self.config.uncapped_holders),
            ):
                for h in counts:
                    cs = self.point(CHUNKSTORE, content, capped, h)
                    ref = self.point(reference, reference_content, capped, h)
                    if cs and ref:
                        out.append(
                            Target(
                                f"chunkstore / {reference}, {h} holder(s), "
                                f"{'capped' if capped else 'uncapped'}, {content} file",
                                cs.median / ref.median,
                                goal,
                                f"{cs.median:.1f} / {ref.median:.1f} MB/s",
                            )
                        )
            three = self.point(CHUNKSTORE, content, False, 3)
            local = self.point(LOCAL, content, False, 0)
            if three and local:
                out.append(
                    Target(
                        f"uncapped 3 holders / local get, {content} file",
                        three.median / local.median,
                        0.6,
                        f"{three.median:.1f} / {local.median:.1f} MB/s",
                    )
                )
        gets = [m for m in self.measurements if m.tool == CHUNKSTORE]
        if gets:
            worst = max(gets, key=lambda m: m.maxrss_kib)
            out.append(
                Target(
                    f"peak RSS of `chunkstore get`, {format_size(self.config.size)} file (MiB)",
                    worst.maxrss_kib / KiB,
                    RSS_GOAL_MIB,
                    f"worst of {len(gets)} network gets ({worst.content}, "
                    f"{worst.holders} holder(s), "
                    f"{'capped' if worst.capped else 'uncapped'})"
                    + ("" if worst.maxrss_exact else "; sampled VmHWM"),
                    at_most=True,
                    unit=" MiB",
                )
            )
        aria = [m for m in self.measurements if m.tool == ARIA2C and m.capped]
        for content in self.config.contents:
            capped = [m for m in gets if m.capped and m.content == content]
            if capped and aria:
                cs = statistics.median(m.per_gib(m.cpu_s) for m in capped)
                ar = statistics.median(m.per_gib(m.cpu_s) for m in aria)
                out.append(
                    Target(
                        f"downloader CPU per GiB, chunkstore / aria2c, capped, {content} file",
                        cs / ar,
                        DOWNLOADER_CPU_GOAL,
                        f"{cs:.2f} / {ar:.2f} CPU-s per GiB, medians; random file at filing: 4.4x",
                        at_most=True,
                    )
                )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "config": {**asdict(self.config), "workdir": None},
            "machine": self.machine,
            "versions": self.versions,
            "stored_bytes": self.stored_bytes,
            "link": self.link,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
            "failures": self.failures,
            "points": [asdict(p) for p in self.points()],
            "targets": [asdict(t) | {"met": t.met} for t in self.targets()],
            "measurements": [
                asdict(m) | {"mbps": m.mbps, "inner_mbps": m.inner_mbps, "outside_s": m.outside_s}
                for m in self.measurements
            ],
        }


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def phase_names(reported: list[dict[str, float]]) -> list[str]:
    """The phases any of these gets reported: those of PHASES first, in its order, then any
    other, by name."""
    names = [p for p in PHASES if any(p in r for r in reported)]
    return names + sorted({p for r in reported for p in r} - set(names))


def _median_phases(ms: list[Measurement]) -> dict[str, float]:
    """Per phase, the median of the runs that reported it (see phase_names)."""
    names = phase_names([m.phases for m in ms])
    return {p: statistics.median(m.phases[p] for m in ms if p in m.phases) for p in names}
