"""The swarm benchmark: one file fetched from 1..N holders, against aria2c from N HTTP mirrors.

Every process and network namespace it uses is started here and stopped before it returns:

- chunkstore, capped: H holder nodes (`chunkstore serve --upload-rate R`, a token bucket on
  the *stored* bytes a node sends) and, per measurement, a fresh fetcher node with an empty
  home; the downloader is the `chunkstore get --json` child process, timed (wall clock) and
  measured (peak RSS) from here. The fetcher's node only does DHT lookups for it.
- aria2c, capped: the same file from H nginx mirrors, one process each, `limit_rate R` per
  connection, fetched with `aria2c -s H -x1 -k1M` (one connection per mirror, so the cap is per
  mirror; `-k1M` because aria2c splits nothing under 40 MiB by default).
- uncapped: the same without any cap (CPU-bound on this machine), and `chunkstore get` of the
  file from a home that holds all of it (a local restore) as the ceiling of the pipeline.
- netns mode: each holder and each mirror in a network namespace of its own, linked by a veth
  pair to a bridge in a hub namespace and shaped by `tc tbf` to R on its egress; the fetcher in
  one more namespace. No in-process cap: real per-host links. Rate only: this kernel has no
  netem, so no added delay.

Throughput is always *file* bytes (MB = 10^6 bytes) per second of the downloader's wall time,
its start-up included (what a user waits for; aria2c starts in milliseconds, the chunkstore
CLI in ~0.4 s). chunkstore's cap counts stored bytes, so a compressible file moves fewer bytes
through it than through nginx: the random (incompressible) file is the like-for-like
comparison, the mixed file (half random, half text) shows what compression adds.

The library never prints: progress goes to the `report` callback, results come back as a
`BenchResult` that `render_markdown`, `write_plot` and `write_outputs` turn into files.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import blake3

from chunkstore import __version__
from chunkstore.demo.scenario import generate_file
from chunkstore.errors import ChunkstoreError, InputError
from chunkstore.demo.local_swarm import ServeProcess, LocalSwarm, node_stats, providers_of
from chunkstore.net.node import CONTACTS_FILE, NODE_FILE
from chunkstore.procstats import RssSampler

KiB = 1024
MiB = 1024 * KiB
MB = 1_000_000

MIXED = "mixed"    # first half random bytes, second half compressible text (demo.generate_file)
RANDOM = "random"  # all random: stored raw, so chunkstore moves as many bytes as nginx
CONTENTS = (MIXED, RANDOM)
CHUNKSTORE, ARIA2C, LOCAL = "chunkstore", "aria2c", "local get"
FILE_NAME = "bench.bin"
RSS_GOAL_MIB = 150.0
READY_TIMEOUT = 60.0
NETNS_SUBNET = "10.213.0"  # only ever assigned inside the namespaces a run creates
MIRROR_PORT = 8080         # netns mode: every mirror has an address of its own
APT_PACKAGES = {"aria2c": "aria2", "nginx": "nginx-light"}

Report = Callable[[str], None]


class BenchError(ChunkstoreError):
    """The benchmark could not run or a download was wrong (failed, or bytes differ)."""


class BenchUnavailable(BenchError):
    """The requested mode cannot run on this machine (e.g. --netns without root)."""


class _ProcessFailed(BenchError):
    """A measured process exited non-zero (retried once; a byte mismatch never is)."""

    def __init__(self, argv: Sequence[str], code: int, tail: str) -> None:
        lines = [ln for ln in tail.splitlines() if ln.strip()]
        program = argv[4] if list(argv[:3]) == ["ip", "netns", "exec"] else argv[0]
        self.summary = f"{Path(program).name} exited with {code}: " + \
            (lines[-1][:300] if lines else "no output")
        super().__init__(f"{' '.join(argv)} exited with {code}:\n{tail}")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Rates are bytes per second; sizes bytes."""

    size: int = 512 * MiB
    holders: tuple[int, ...] = (1, 2, 4, 8)
    rate: float = 25 * MB                  # per holder / per mirror (netns: per link)
    repeat: int = 3
    contents: tuple[str, ...] = CONTENTS
    uncapped_holders: tuple[int, ...] = (1, 3)  # loopback only; () skips the uncapped runs
    aria2c: bool = True                    # compare with aria2c + nginx (when installed)
    local_get: bool = True                 # loopback only: the local-restore ceiling
    netns: bool = False
    workdir: Path | None = None            # parent of the temporary directory
    seed: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or self.repeat < 1 or not self.rate > 0:
            raise BenchError("size, repeat and rate must be positive")
        if not self.holders or min(self.holders) < 1 or min(self.uncapped_holders, default=1) < 1:
            raise BenchError("holder counts must be at least 1")
        if not self.contents or set(self.contents) - set(CONTENTS):
            raise BenchError(f"contents must be among {', '.join(CONTENTS)}")


@dataclass
class Measurement:
    """One timed download. Times in seconds, memory in KiB, rates in MB/s of file bytes."""

    tool: str            # CHUNKSTORE, ARIA2C or LOCAL
    content: str
    capped: bool
    holders: int         # 0 for the local get
    rep: int
    size: int
    wall_s: float        # the downloading process, start-up included
    inner_s: float       # chunkstore's own `seconds` (JSON); the wall time for aria2c
    maxrss_kib: int      # peak RSS of the downloading process (see _run_measured)
    maxrss_exact: bool   # True: the kernel's ru_maxrss; False: sampled VmHWM (a lower bound)
    wire_bytes: int      # body bytes the holders / mirrors sent (chunkstore: stored form)
    sources: dict[str, int] = field(default_factory=dict)
    identical: bool = True
    cpu_s: float = 0.0        # user+sys CPU of the downloading process
    peers_cpu_s: float = 0.0  # CPU the holders (or the nginx mirrors) spent during the download
    node_cpu_s: float = 0.0   # CPU of the fetcher's node (DHT lookups for the get)
    load1: float = 0.0   # the machine's 1-minute load average after the run: others' work shows

    @property
    def mbps(self) -> float:
        return self.size / MB / self.wall_s

    @property
    def inner_mbps(self) -> float:
        return self.size / MB / self.inner_s if self.inner_s > 0 else 0.0


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
    cpu_s: float        # medians of the CPU seconds of the run (see Measurement)
    peers_cpu_s: float
    node_cpu_s: float
    wall_s: float


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    goal: float
    detail: str

    @property
    def met(self) -> bool:
        return self.measured < self.goal if self.name.startswith("peak RSS") \
            else self.measured >= self.goal


@dataclass
class BenchResult:
    config: BenchConfig
    machine: str
    versions: dict[str, str]
    stored_bytes: dict[str, int]          # content -> bytes in a holder's store
    link: str                             # how the caps were enforced, in words
    measurements: list[Measurement]
    started: float
    seconds: float
    failures: list[str] = field(default_factory=list)  # failed attempts that were retried
    notes: list[str] = field(default_factory=list)

    def points(self) -> list[Point]:
        groups: dict[tuple, list[Measurement]] = {}
        for m in self.measurements:
            groups.setdefault((m.tool, m.content, m.capped, m.holders), []).append(m)
        return [Point(tool, content, capped, holders, len(ms),
                      statistics.median(m.mbps for m in ms), min(m.mbps for m in ms),
                      max(m.mbps for m in ms), statistics.median(m.inner_mbps for m in ms),
                      max(m.maxrss_kib for m in ms) / KiB,
                      statistics.median(m.cpu_s for m in ms),
                      statistics.median(m.peers_cpu_s for m in ms),
                      statistics.median(m.node_cpu_s for m in ms),
                      statistics.median(m.wall_s for m in ms))
                for (tool, content, capped, holders), ms in groups.items()]

    def point(self, tool: str, content: str, capped: bool, holders: int) -> Point | None:
        for p in self.points():
            if (p.tool, p.content, p.capped, p.holders) == (tool, content, capped, holders):
                return p
        return None

    def targets(self) -> list[Target]:
        """The issue's targets, from the medians of this run."""
        out: list[Target] = []
        aria_content = self.config.contents[0]
        for content in self.config.contents:
            one = self.point(CHUNKSTORE, content, True, 1)
            four = self.point(CHUNKSTORE, content, True, 4)
            if one and four:
                out.append(Target(f"4 holders / 1 holder, capped, {content} file",
                                  four.median / one.median, 3.6,
                                  f"{four.median:.1f} / {one.median:.1f} MB/s"))
            for capped, goal, counts in ((True, 1.0, self.config.holders),
                                         (False, 1.5, self.config.uncapped_holders)):
                for h in counts:
                    cs = self.point(CHUNKSTORE, content, capped, h)
                    ar = self.point(ARIA2C, aria_content, capped, h)
                    if cs and ar:
                        out.append(Target(f"chunkstore / aria2c, {h} holder(s), "
                                          f"{'capped' if capped else 'uncapped'}, {content} file",
                                          cs.median / ar.median, goal,
                                          f"{cs.median:.1f} / {ar.median:.1f} MB/s"))
            three = self.point(CHUNKSTORE, content, False, 3)
            local = self.point(LOCAL, content, False, 0)
            if three and local:
                out.append(Target(f"uncapped 3 holders / local get, {content} file",
                                  three.median / local.median, 0.6,
                                  f"{three.median:.1f} / {local.median:.1f} MB/s"))
        gets = [m for m in self.measurements if m.tool == CHUNKSTORE]
        if gets:
            worst = max(gets, key=lambda m: m.maxrss_kib)
            out.append(Target(f"peak RSS of `chunkstore get`, {human_size(self.config.size)} "
                              "file (MiB)", worst.maxrss_kib / KiB, RSS_GOAL_MIB,
                              f"worst of {len(gets)} network gets ({worst.content}, "
                              f"{worst.holders} holder(s), "
                              f"{'capped' if worst.capped else 'uncapped'})"
                              + ("" if worst.maxrss_exact else "; sampled VmHWM")))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "config": {**asdict(self.config), "workdir": None},
            "machine": self.machine, "versions": self.versions,
            "stored_bytes": self.stored_bytes, "link": self.link,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(self.seconds, 1), "notes": self.notes,
            "failures": self.failures,
            "points": [asdict(p) for p in self.points()],
            "targets": [asdict(t) | {"met": t.met} for t in self.targets()],
            "measurements": [asdict(m) | {"mbps": m.mbps, "inner_mbps": m.inner_mbps}
                             for m in self.measurements],
        }


def parse_counts(text: str) -> tuple[int, ...]:
    """Holder counts as users write them: '1,2,4,8' -> (1, 2, 4, 8); '' or 'none' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"not a list of holder counts: {text!r} (example: 1,2,4,8)") from None
    if min(values) < 1:
        raise InputError(f"holder counts must be at least 1: {text!r}")
    return values


def parse_contents(choice: str, incompressible: bool = False) -> tuple[str, ...]:
    """'mixed', 'random' or 'both' (`incompressible` wins: random only) to BenchConfig.contents."""
    if incompressible:
        return (RANDOM,)
    if choice == "both":
        return CONTENTS
    if choice not in CONTENTS:
        raise InputError(f"content must be mixed, random or both, not {choice!r}")
    return (choice,)


def result_from_json(data: dict[str, Any]) -> BenchResult:
    """A BenchResult back from `BenchResult.to_json()` (e.g. to redraw the plot)."""
    known = set(Measurement.__dataclass_fields__)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()}
    started = time.mktime(time.strptime(data["started"], "%Y-%m-%dT%H:%M:%SZ"))
    return BenchResult(config=BenchConfig(**cfg), machine=data["machine"],
                       versions=data["versions"], stored_bytes=data["stored_bytes"],
                       link=data["link"],
                       measurements=[Measurement(**{k: v for k, v in m.items() if k in known})
                                     for m in data["measurements"]],
                       started=started, seconds=data["seconds"],
                       failures=data.get("failures", []), notes=data["notes"])


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

def missing_tools(config: BenchConfig) -> list[str]:
    """Programs this configuration needs that are not on PATH (aria2c, nginx, ip, tc)."""
    wanted = (["aria2c", "nginx"] if config.aria2c else []) + (["ip", "tc"] if config.netns
                                                                  else [])
    return [t for t in wanted if shutil.which(t) is None]


def have_aria2c() -> bool:
    """Whether the aria2c comparison can run: aria2c and nginx on PATH."""
    return all(shutil.which(t) for t in ("aria2c", "nginx"))


def install_tools(tools: Sequence[str], report: Report = lambda line: None) -> bool:
    """apt-get install the Debian packages of `tools` (root only); True if all are there after."""
    packages = sorted({APT_PACKAGES.get(t, "iproute2") for t in tools})
    if not packages:
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        report(f"not root or no apt-get: cannot install {' '.join(packages)}")
        return False
    report(f"installing {' '.join(packages)} with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)
    return all(shutil.which(t) for t in tools)


def _version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "?"


def chunkstore_command() -> list[str]:
    """The chunkstore CLI of this interpreter (the same one LocalSwarm starts nodes with)."""
    return [sys.executable, "-m", "chunkstore_cli"]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def generate_random(path: Path, size: int, seed: int) -> Path:
    """`size` random bytes (incompressible: stored raw), written in 1 MiB blocks."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(MiB, size - written)
            f.write(rng.randbytes(n))
            written += n
    return path


def file_hash(path: Path) -> str:
    # Read in blocks, not mmap: mapped pages would count in this process's peak RSS, which
    # Linux folds into every child's ru_maxrss (see _run_measured).
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buf = bytearray(4 * MiB)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Measuring one downloading process
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Run:
    wall_s: float
    cpu_s: float
    maxrss_kib: int
    maxrss_exact: bool
    stdout: str


def _run_measured(argv: Sequence[str], log: Path, timeout: float) -> _Run:
    """Run `argv` to completion; its wall time, peak RSS and stdout. Raises BenchError if it
    fails or outlives `timeout`. stderr goes to `log`."""
    out_path = log.with_suffix(".stdout")
    with open(log, "ab") as err, open(out_path, "wb") as out:
        err.write(f"\n$ {' '.join(argv)}\n".encode())
        err.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        sampler = RssSampler(proc.pid)
        sampler.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM: do not leave the child running
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
            sampler.stop()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    stdout = out_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise _ProcessFailed(argv, proc.returncode, log.read_text(errors="replace")[-1500:])
    # Linux folds the spawning process's peak into a child's ru_maxrss: the kernel figure is
    # the child's own only when it exceeds ours; else the sampled VmHWM of the exec'd image.
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    exact = usage.ru_maxrss > own_peak
    return _Run(wall, usage.ru_utime + usage.ru_stime,
                usage.ru_maxrss if exact else (sampler.hwm or usage.ru_maxrss), exact, stdout)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return []


def cpu_seconds(pids: Sequence[int]) -> float:
    """User+system CPU seconds so far of these processes and their live descendants (Linux
    /proc; a process that is gone counts 0)."""
    total = 0.0
    todo = list(pids)
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
        todo += _children(pid)
    return total


# ---------------------------------------------------------------------------------------------
# Network namespaces
# ---------------------------------------------------------------------------------------------

def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchUnavailable(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


class NetnsLab:
    """A hub namespace with a bridge, one namespace per holder (its veth shaped by `tc tbf` to
    `rate` bytes/s on egress) and one for the fetcher, addresses in NETNS_SUBNET.0/24 inside
    them only. `close()` (also run at exit) deletes every namespace it made."""

    def __init__(self, holders: int, rate: float) -> None:
        tag = f"csb{os.getpid()}"
        self.hub = f"{tag}-hub"
        self.holders = [f"{tag}-h{i}" for i in range(holders)]
        self.fetcher = f"{tag}-f"
        self.rate = rate
        self.made: list[str] = []

    def __enter__(self) -> "NetnsLab":
        if os.geteuid() != 0:
            raise BenchUnavailable("--netns needs root (network namespaces and tc)")
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise BenchUnavailable(f"--netns needs `{tool}` (Debian package iproute2)")
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add(self, name: str) -> None:
        _ip("netns", "add", name)
        self.made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate([self.fetcher, *self.holders]):
            self._add(ns)
            port = f"p{i}"
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                "netns", self.hub)
            _ip("-n", self.hub, "link", "set", port, "master", "br0")
            _ip("-n", self.hub, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(ns)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        bits = int(self.rate * 8)
        burst = max(32 * KiB, int(self.rate / 100))  # 10 ms at the rate, at least 32 KiB
        for ns in self.holders:
            proc = subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "tbf",
                                   "rate", f"{bits}bit", "burst", str(burst), "latency", "50ms"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise BenchUnavailable(f"tc tbf is not available: {proc.stderr.strip()}")

    def address(self, ns: str) -> str:
        if ns == self.fetcher:
            return f"{NETNS_SUBNET}.2"
        return f"{NETNS_SUBNET}.{10 + self.holders.index(ns)}"

    @staticmethod
    def prefix(ns: str | None) -> list[str]:
        return ["ip", "netns", "exec", ns] if ns else []

    def describe(self) -> str:
        return (f"tc tbf rate {int(self.rate * 8)}bit on each holder's / mirror's veth "
                f"(egress), {len(self.holders)} holder namespaces + 1 fetcher namespace on a "
                "bridge in a hub namespace; no in-process cap; rate only (netem delay is not "
                "in this kernel)")

    def close(self) -> None:
        while self.made:
            subprocess.run(["ip", "netns", "del", self.made.pop()], capture_output=True)
        atexit.unregister(self.close)


# ---------------------------------------------------------------------------------------------
# Processes: chunkstore nodes, nginx mirrors
# ---------------------------------------------------------------------------------------------

_HTTP_SNIPPET = ("import sys, urllib.request\n"
                 "r = urllib.request.Request(sys.argv[1], method=sys.argv[2])\n"
                 "sys.stdout.buffer.write(urllib.request.urlopen(r, timeout=15).read())\n")


def _http(ns: str | None, url: str, method: str = "GET") -> bytes | None:
    """The body at `url` as seen from namespace `ns` (None: this one); None if unreachable."""
    if ns is None:
        try:
            req = urllib.request.Request(url, method=method)
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.read()
        except (urllib.error.URLError, OSError):
            return None
    proc = subprocess.run([*NetnsLab.prefix(ns), sys.executable, "-c", _HTTP_SNIPPET, url,
                           method], capture_output=True, timeout=30)
    return proc.stdout if proc.returncode == 0 else None


class _Swarm:
    """H holders and one fresh fetcher, on loopback (LocalSwarm) or in the lab's namespaces."""

    def __init__(self, root: Path, lab: NetnsLab | None) -> None:
        root.mkdir(parents=True)
        self.local = LocalSwarm(0, root=root)
        self.lab = lab
        self.where: dict[int, str | None] = {}  # node index -> namespace

    def start(self, home: Path, bootstrap: list[ServeProcess], upload_rate: float | None,
              ns: str | None) -> ServeProcess:
        for stale in (CONTACTS_FILE, NODE_FILE):  # a reused home must not recall an old swarm
            (home / stale).unlink(missing_ok=True)
        addresses = [self.dht_address(n) for n in bootstrap]
        rate = str(int(upload_rate)) if upload_rate else None
        if ns is None:
            node = self.local.start_node(addresses, upload_rate=rate, home=home)
        else:
            node = self._start_in(ns, home, addresses, rate)
        self.where[node.index] = ns
        return node

    def dht_address(self, node: ServeProcess) -> str:
        ns = self.where[node.index]
        return node.dht_address if ns is None else f"{self.lab.address(ns)}:{node.info.dht_port}"

    def transfer_address(self, node: ServeProcess) -> str:
        ns = self.where[node.index]
        return (node.transfer_address if ns is None
                else f"{self.lab.address(ns)}:{node.info.transfer_port}")

    def _start_in(self, ns: str, home: Path, bootstrap: list[str], rate: str | None) -> ServeProcess:
        """LocalSwarm.start_node, inside namespace `ns` and listening on its address."""
        return self.local.start_node(bootstrap, upload_rate=rate, home=home,
                                     host=self.lab.address(ns), prefix=NetnsLab.prefix(ns))

    def api(self, node: ServeProcess, path: str) -> Any:
        ns = self.where[node.index]
        if ns is None:
            if path == "/node":
                return node_stats(node)
            return providers_of(node, path.rsplit("/", 1)[1])
        body = _http(ns, node.info.api_url + path)
        if body is None:
            raise BenchError(f"the local API of node {node.index} in {ns} does not answer")
        return json.loads(body)

    def wait_ready(self, holders: list[ServeProcess], fetcher: ServeProcess, manifest_id: str,
                   objects: int) -> None:
        """Until every holder has announced its `objects` ids and the fetcher's DHT finds all
        holders of the manifest."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            announced = [self.api(h, "/node")["announced"] for h in holders]
            if min(announced) >= objects:
                found = self.api(fetcher, f"/dht/providers/{manifest_id}")
                if len(found) >= len(holders):
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"swarm not ready after {READY_TIMEOUT:g} s: announced "
                                 f"{announced} of {objects} ids")
            time.sleep(0.1)

    def close(self) -> None:
        self.local.close()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60;
    default_type application/octet-stream;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    server {{
        listen {host}:{port};
        root {root};
        {limit}
    }}
}}
"""


class _Mirrors:
    """HTTP mirrors of one directory: one nginx master (+1 worker) per mirror, each capped at
    `rate` bytes/s per connection (`limit_rate`, exact bytes) or uncapped."""

    def __init__(self, work: Path, root: Path, places: list[tuple[str | None, str]],
                 rate: float | None, check_from: str | None) -> None:
        self.work = work
        self.root = root
        self.places = places          # (namespace, host) of each mirror
        self.rate = rate
        self.check_from = check_from  # the namespace aria2c runs in
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def __enter__(self) -> "_Mirrors":
        try:
            for i, (ns, host) in enumerate(self.places):
                self._start(i, ns, host)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, i: int, ns: str | None, host: str) -> None:
        d = self.work / f"mirror{i}"
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        port = MIRROR_PORT if ns else _free_port(host)
        limit = f"limit_rate {int(self.rate)};" if self.rate else ""
        user = "user root;" if os.geteuid() == 0 else ""
        (d / "nginx.conf").write_text(_NGINX_CONF.format(dir=d, user=user, host=host,
                                                         port=port, root=self.root,
                                                         limit=limit))
        with open(d / "stderr.log", "ab") as log:
            proc = subprocess.Popen([*NetnsLab.prefix(ns), "nginx", "-p", str(d), "-c",
                                     str(d / "nginx.conf"), "-e", str(d / "error.log")],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.procs.append(proc)
        url = f"http://{host}:{port}/{FILE_NAME}"
        deadline = time.monotonic() + 10
        while _http(self.check_from, url, "HEAD") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = ((d / "error.log").read_text(errors="replace")
                        if (d / "error.log").exists() else "")[-1500:]
                raise BenchError(f"nginx mirror {i} did not start: {tail.strip()}")
            time.sleep(0.05)
        self.urls.append(url)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()  # nginx: fast shutdown of the master and its worker
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                workers = _children(proc.pid)
                proc.kill()
                proc.wait()
                for pid in workers:  # a killed master leaves its worker behind
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.procs.clear()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@dataclass
class _Content:
    kind: str
    source: Path
    digest: str
    manifest_id: str
    objects: int        # distinct chunks + the manifest: what a holder announces
    stored_bytes: int
    template: Path      # a home holding the whole file
    homes: list[Path]   # holder homes (copies of the template)


class _Runner:
    def __init__(self, config: BenchConfig, work: Path, report: Report,
                 lab: NetnsLab | None) -> None:
        self.config = config
        self.work = work
        self.report = report
        self.lab = lab
        self.measurements: list[Measurement] = []
        self.count = 0
        self.total = 0
        self.logs = work / "logs"
        self.logs.mkdir()
        self.aria = config.aria2c and have_aria2c()
        self.stored_bytes: dict[str, int] = {}
        self.failures: list[str] = []

    # -- preparation ------------------------------------------------------------------------
    def prepare(self, kind: str) -> _Content:
        cfg = self.config
        files = self.work / f"files-{kind}"
        files.mkdir()
        source = files / FILE_NAME
        self.report(f"{kind}: generating {human_size(cfg.size)} ...")
        if kind == MIXED:
            generate_file(source, cfg.size, seed=cfg.seed)
        else:
            generate_random(source, cfg.size, seed=cfg.seed)
        template = self.work / f"template-{kind}"
        # The CLI adds in a child process so this one stays small: then the kernel's
        # ru_maxrss of each `get` child is that child's own peak (see _run_measured).
        run = _run_measured([*chunkstore_command(), "add", str(source), "--json", "--home",
                             str(template)], self.logs / f"add-{kind}.log", timeout=600)
        added = json.loads(run.stdout)
        self.stored_bytes[kind] = added["stored_bytes"]
        homes = []
        for i in range(max((*cfg.holders, *self.uncapped_holders()))):
            homes.append(self.work / f"holder-{kind}-{i}")
            shutil.copytree(template, homes[-1])
        self.report(f"{kind}: added as {added['manifest_id'][:16]}: {added['chunks']} chunks, "
                    f"{added['stored_bytes'] / MB:.0f} MB stored "
                    f"({added['stored_bytes'] / cfg.size:.0%} of the file), "
                    f"{len(homes)} holder homes")
        return _Content(kind, source, file_hash(source), added["manifest_id"],
                        added["new_chunks"] + 1, added["stored_bytes"], template, homes)

    def discard(self, content: _Content) -> None:
        for path in (content.template, *content.homes, content.source.parent):
            shutil.rmtree(path, ignore_errors=True)

    # -- one measurement --------------------------------------------------------------------
    def _record(self, m: Measurement) -> None:
        m.load1 = os.getloadavg()[0]
        self.count += 1
        self.measurements.append(m)
        where = f"{m.holders} holder(s)" if m.tool != LOCAL else "local store"
        cap = "capped" if m.capped else "uncapped"
        extra = (f", in-process {m.inner_mbps:.1f} MB/s" if m.tool == CHUNKSTORE else "")
        self.report(f"[{self.count}/{self.total}] {m.tool:<10} {m.content:<6} {cap:<8} "
                    f"{where:<12} rep {m.rep + 1}: {m.mbps:7.1f} MB/s (wall {m.wall_s:.2f} s"
                    f"{extra}), CPU s: downloader {m.cpu_s:.1f}, peers {m.peers_cpu_s:.1f}"
                    + (f", fetcher node {m.node_cpu_s:.1f}" if m.tool == CHUNKSTORE else "")
                    + f"; peak RSS {m.maxrss_kib / KiB:.0f} MiB, load {m.load1:.1f}"
                    + ("" if m.identical else "  OUTPUT DIFFERS"))
        if not m.identical:
            raise BenchError(f"{m.tool} wrote a file that differs from the source "
                             f"({m.content}, {m.holders} holders)")

    def _verify(self, out: Path, content: _Content) -> bool:
        ok = out.stat().st_size == self.config.size and file_hash(out) == content.digest
        out.unlink()
        os.sync()  # this download's write-back must not land in the next one's timing
        return ok

    def chunkstore(self, content: _Content, holders: int, capped: bool, rep: int) -> None:
        lab = self.lab
        tag = f"cs-{content.kind}-{'c' if capped else 'u'}{holders}-r{rep}"
        shutil.rmtree(self.work / tag, ignore_errors=True)  # a failed attempt's leftovers
        swarm = _Swarm(self.work / tag, lab)
        fetch_home = self.work / tag / "fetcher"
        out = self.work / tag / "out.bin"
        try:
            nodes: list[ServeProcess] = []
            for i in range(holders):
                ns = lab.holders[i] if lab else None
                # In netns mode the link is the cap: no token bucket in the node.
                rate = self.config.rate if capped and lab is None else None
                nodes.append(swarm.start(content.homes[i], nodes[:1], rate, ns))
            fetcher = swarm.start(fetch_home, nodes[:1], None, lab.fetcher if lab else None)
            swarm.wait_ready(nodes, fetcher, content.manifest_id, content.objects)
            peers_before = cpu_seconds([n.proc.pid for n in nodes])
            node_before = cpu_seconds([fetcher.proc.pid])
            run = _run_measured([*NetnsLab.prefix(lab.fetcher if lab else None),
                                 *chunkstore_command(), "get", FILE_NAME, "-o", str(out),
                                 "--json", "--home", str(fetch_home)],
                                self.logs / f"{tag}.log", timeout=self._timeout(holders, capped))
            peers_cpu = cpu_seconds([n.proc.pid for n in nodes]) - peers_before
            node_cpu = cpu_seconds([fetcher.proc.pid]) - node_before
            result = json.loads(run.stdout)
            wire = sum(swarm.api(n, "/node")["bytes_served"] for n in nodes)
            expected = {swarm.transfer_address(n) for n in nodes}
            if set(result["sources"]) - expected:
                raise BenchError(f"unexpected sources {sorted(result['sources'])}")
        finally:
            swarm.close()
        identical = self._verify(out, content)
        shutil.rmtree(self.work / tag, ignore_errors=True)
        self._record(Measurement(CHUNKSTORE, content.kind, capped, holders, rep,
                                 self.config.size, run.wall_s, result["seconds"],
                                 run.maxrss_kib, run.maxrss_exact, wire, result["sources"],
                                 identical, run.cpu_s, peers_cpu, node_cpu))

    def aria2c(self, content: _Content, holders: int, capped: bool, rep: int) -> None:
        lab = self.lab
        tag = f"aria-{content.kind}-{'c' if capped else 'u'}{holders}-r{rep}"
        work = self.work / tag
        shutil.rmtree(work, ignore_errors=True)  # a failed attempt's leftovers
        # aria2c's -x1 is one connection per *host name*: on loopback each mirror gets an
        # address of its own (127.0.0.2, .3, ...: all of 127/8 is loopback) so that -x1 means
        # one connection per mirror, as with real hosts.
        places = [(lab.holders[i], lab.address(lab.holders[i])) if lab
                  else (None, f"127.0.0.{2 + i}") for i in range(holders)]
        rate = self.config.rate if capped and lab is None else None
        client_ns = lab.fetcher if lab else None
        with _Mirrors(work, content.source.parent, places, rate, client_ns) as mirrors:
            before = cpu_seconds([p.pid for p in mirrors.procs])
            run = _run_measured([*NetnsLab.prefix(client_ns), "aria2c", "--no-conf",
                                 "-d", str(work), "-o", "out.bin",
                                 f"-s{holders}", "-x1", "-k1M", "--file-allocation=trunc",
                                 "--allow-overwrite=true", "--auto-file-renaming=false",
                                 "--summary-interval=0", "--console-log-level=warn",
                                 "--download-result=hide", "--max-tries=3",
                                 *mirrors.urls[:holders]],
                                self.logs / f"{tag}.log", timeout=self._timeout(holders, capped))
            mirrors_cpu = cpu_seconds([p.pid for p in mirrors.procs]) - before
        identical = self._verify(work / "out.bin", content)
        shutil.rmtree(work, ignore_errors=True)
        self._record(Measurement(ARIA2C, content.kind, capped, holders, rep, self.config.size,
                                 run.wall_s, run.wall_s, run.maxrss_kib, run.maxrss_exact,
                                 self.config.size, {}, identical, run.cpu_s, mirrors_cpu))

    def local_get(self, content: _Content, rep: int) -> None:
        out = self.work / f"local-{content.kind}-r{rep}.bin"
        run = _run_measured([*chunkstore_command(), "get", FILE_NAME, "-o", str(out), "--json",
                             "--home", str(content.template)],
                            self.logs / f"local-{content.kind}.log", timeout=600)
        result = json.loads(run.stdout)
        self._record(Measurement(LOCAL, content.kind, False, 0, rep, self.config.size,
                                 run.wall_s, result["seconds"], run.maxrss_kib,
                                 run.maxrss_exact, 0, {}, self._verify(out, content),
                                 run.cpu_s))

    def attempt(self, what: str, measure: Callable[..., None], *args: Any) -> None:
        """Run one measurement; a process that fails is noted and tried once more."""
        for attempt in (1, 2):
            try:
                return measure(*args)
            except _ProcessFailed as e:
                self.failures.append(f"{what}: {e.summary}")
                self.report(f"  {what}: attempt {attempt} failed: {e.summary}")
                if attempt == 2:
                    raise

    def _timeout(self, holders: int, capped: bool) -> float:
        """Generous: 3x the capped ideal, plus start-up; a wedged download fails the run."""
        ideal = self.config.size / (self.config.rate * holders) if capped else 10.0
        return 60.0 + 3 * ideal

    # -- the plan ---------------------------------------------------------------------------
    def uncapped_holders(self) -> tuple[int, ...]:
        return () if self.lab else self.config.uncapped_holders

    def run(self) -> None:
        cfg = self.config
        uncapped = self.uncapped_holders()
        local = cfg.local_get and self.lab is None
        per_content = (len(cfg.holders) + len(uncapped)) * cfg.repeat + (cfg.repeat if local
                                                                        else 0)
        aria_runs = (len(cfg.holders) + len(uncapped)) * cfg.repeat if self.aria else 0
        self.total = per_content * len(cfg.contents) + aria_runs
        for i, kind in enumerate(cfg.contents):
            content = self.prepare(kind)
            # aria2c and nginx never look inside the bytes: measured once, on the first file.
            aria = self.aria and i == 0
            try:
                for capped, counts in ((True, cfg.holders), (False, uncapped)):
                    for rep in range(cfg.repeat):
                        for h in counts:
                            what = (f"{kind}, {h} holder(s), "
                                    f"{'capped' if capped else 'uncapped'}, rep {rep + 1}")
                            self.attempt(f"chunkstore {what}", self.chunkstore, content, h,
                                         capped, rep)
                            if aria:
                                self.attempt(f"aria2c {what}", self.aria2c, content, h, capped,
                                             rep)
                if local:
                    for rep in range(cfg.repeat):
                        self.attempt(f"local get {kind}", self.local_get, content, rep)
            finally:
                self.discard(content)


def run_bench(config: BenchConfig, report: Report = lambda line: None) -> BenchResult:
    """Run the benchmark described by `config`; progress lines go to `report`.

    Raises BenchUnavailable when netns mode cannot run here (not root, no `ip`/`tc`), and
    BenchError when a download fails or writes bytes that differ from the source. Every
    process, file and namespace it made is gone when it returns or raises."""
    started = time.time()
    clock = time.perf_counter()
    if config.aria2c and not have_aria2c():
        report("aria2c or nginx not found: the aria2c rows are skipped "
               "(Debian: apt-get install aria2 nginx-light)")
    work = Path(tempfile.mkdtemp(prefix="chunkstore-bench-", dir=config.workdir)).resolve()
    versions = {"python": platform.python_version(), "chunkstore": __version__}
    lab = NetnsLab(max(config.holders), config.rate) if config.netns else None
    try:
        if lab is not None:
            lab.__enter__()
            report(f"netns: {len(lab.made)} namespaces up; {lab.describe()}")
            link = lab.describe()
        else:
            link = (f"loopback; chunkstore: `serve --upload-rate {int(config.rate)}` per holder "
                    "(token bucket over all its connections, counting stored bytes); aria2c: "
                    f"nginx `limit_rate {int(config.rate)}` per connection, aria2c -x1 = one "
                    "connection per mirror")
        runner = _Runner(config, work, report, lab)
        if runner.aria:
            versions["aria2c"] = _version(["aria2c", "--version"])
            versions["nginx"] = _version(["nginx", "-v"])
        runner.run()
    finally:
        if lab is not None:
            lab.close()
        shutil.rmtree(work, ignore_errors=True)
    result = BenchResult(
        config=config,
        machine=f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}",
        versions=versions, stored_bytes=runner.stored_bytes, link=link,
        measurements=runner.measurements, started=started, seconds=time.perf_counter() - clock,
        failures=runner.failures)
    result.notes = _notes(result)
    return result


def _notes(result: BenchResult) -> list[str]:
    cfg = result.config
    notes = [f"MB/s = 10^6 bytes of the {human_size(cfg.size)} file per second of the "
             "downloading process's wall time (chunkstore CLI start-up ~0.4 s included); "
             f"median of {cfg.repeat} (min–max).",
             f"caps: {result.link}."]
    for content, stored in result.stored_bytes.items():
        notes.append(f"{content} file: chunkstore holders send its stored form, "
                     f"{stored / MB:.0f} MB (zstd where it pays) for {cfg.size / MB:.0f} MB of "
                     f"file ({stored / cfg.size:.0%}); nginx always sends the file's bytes.")
    if cfg.aria2c and any(m.tool == ARIA2C for m in result.measurements):
        notes.append(f"aria2c and nginx never look inside the bytes: measured once, on the "
                     f"{cfg.contents[0]} file, and compared with both.")
    if result.failures:
        notes.append(f"{len(result.failures)} attempt(s) failed and were run again "
                     "(details in the JSON): " + "; ".join(f[:160] for f in result.failures))
    if cfg.netns:
        notes.append("netns: only the rate is shaped (tc tbf); no added delay, since netem "
                     "is not in this kernel. Uncapped runs and the local get are loopback-only.")
    return notes


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def _cell(p: Point | None) -> str:
    if p is None:
        return "–"
    return f"{p.median:.1f} ({p.low:.0f}–{p.high:.0f})" if p.runs > 1 else f"{p.median:.1f}"


def _ratio(a: Point | None, b: Point | None) -> str:
    return f"{a.median / b.median:.2f}x" if a and b else "–"


def render_markdown(result: BenchResult) -> str:
    """The result as markdown: capped and uncapped tables, the targets, and the notes."""
    cfg = result.config
    contents = cfg.contents
    aria_c = contents[0]
    has_aria = any(m.tool == ARIA2C for m in result.measurements)
    mode = "netns, shaped links" if cfg.netns else "loopback"
    lines = [f"**Capped ({mode}): {cfg.rate / MB:g} MB/s per holder / mirror**, "
             f"{human_size(cfg.size)} file, MB/s of file bytes, median (min–max) of "
             f"{cfg.repeat}", ""]
    header = ["holders", "ideal H×R"] + [f"chunkstore, {c} file" for c in contents]
    if has_aria:
        header += ["aria2c"] + [f"chunkstore/aria2c ({c})" for c in contents]
    lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for h in cfg.holders:
        row = [str(h), f"{h * cfg.rate / MB:.0f}"]
        row += [_cell(result.point(CHUNKSTORE, c, True, h)) for c in contents]
        if has_aria:
            ar = result.point(ARIA2C, aria_c, True, h)
            row += [_cell(ar)] + [_ratio(result.point(CHUNKSTORE, c, True, h), ar)
                                  for c in contents]
        lines.append("| " + " | ".join(row) + " |")
    uncapped = [p for p in result.points() if not p.capped]
    if uncapped:
        lines += ["", f"**Uncapped (loopback, CPU-bound on {os.cpu_count()} cores)**", ""]
        header = ["holders"] + [f"chunkstore, {c} file" for c in contents]
        if has_aria:
            header += ["aria2c"] + [f"chunkstore/aria2c ({c})" for c in contents]
        lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        for h in cfg.uncapped_holders:
            row = [str(h)] + [_cell(result.point(CHUNKSTORE, c, False, h)) for c in contents]
            if has_aria:
                ar = result.point(ARIA2C, aria_c, False, h)
                row += [_cell(ar)] + [_ratio(result.point(CHUNKSTORE, c, False, h), ar)
                                      for c in contents]
            lines.append("| " + " | ".join(row) + " |")
        if any(p.tool == LOCAL for p in uncapped):
            row = ["local get (ceiling)"] + [_cell(result.point(LOCAL, c, False, 0))
                                             for c in contents]
            row += ["–"] * (len(header) - len(row))
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"**Where the CPU goes**: median CPU seconds per download "
                  f"({os.cpu_count()} cores: at most {os.cpu_count()} CPU-s per wall second)", "",
              "| tool | file | cap | holders | wall s | downloader | holders / mirrors "
              "| fetcher node | CPU / wall |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    order = {CHUNKSTORE: 0, ARIA2C: 1, LOCAL: 2}
    for p in sorted(result.points(), key=lambda p: (not p.capped, order[p.tool], p.content,
                                                    p.holders)):
        total = p.cpu_s + p.peers_cpu_s + p.node_cpu_s
        lines.append(f"| {p.tool} | {p.content if p.tool != ARIA2C else 'any'} | "
                     f"{'capped' if p.capped else 'none'} | {p.holders or '–'} | "
                     f"{p.wall_s:.2f} | {p.cpu_s:.2f} | "
                     f"{p.peers_cpu_s:.2f} | {p.node_cpu_s:.2f} | {total / p.wall_s:.2f} |")
    targets = result.targets()
    if targets:
        lines += ["", "| target | measured | goal | |", "|---|---:|---:|---|"]
        for t in targets:
            rss = t.name.startswith("peak RSS")
            measured = f"{t.measured:.1f}" if rss else f"{t.measured:.3f}x"
            goal = f"< {t.goal:g}" if rss else f">= {t.goal:g}x"
            lines.append(f"| {t.name} ({t.detail}) | {measured} | {goal} | "
                         f"{'met' if t.met else 'missed'} |")
    lines += ["", *[f"- {n}" for n in result.notes]]
    return "\n".join(lines) + "\n"


def write_plot(result: BenchResult, path: Path) -> Path:
    """A PNG (matplotlib, headless). Left: throughput against holders with every tool capped,
    min–max bars, and the ideal H×R line. Right (loopback runs): the uncapped throughputs
    and the local-get ceiling as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    uncapped = [p for p in result.points() if not p.capped]
    fig, axes = plt.subplots(1, 2 if uncapped else 1, figsize=(12 if uncapped else 7.5, 5.2),
                             dpi=120, gridspec_kw={"width_ratios": [3, 2]} if uncapped else None,
                             squeeze=False)
    ax = axes[0][0]
    colors = {(CHUNKSTORE, MIXED): "tab:blue", (CHUNKSTORE, RANDOM): "tab:green",
              (ARIA2C, None): "tab:red", (LOCAL, MIXED): "lightsteelblue",
              (LOCAL, RANDOM): "darkseagreen"}
    series = [(CHUNKSTORE, c, f"chunkstore, {c} file", "o") for c in cfg.contents]
    series.append((ARIA2C, cfg.contents[0], "aria2c + nginx", "s"))
    xs = list(cfg.holders)
    ax.plot(xs, [h * cfg.rate / MB for h in xs], "k--", lw=1, label="ideal H×R")
    for tool, content, name, marker in series:
        pts = sorted((p for p in result.points()
                      if (p.tool, p.content, p.capped) == (tool, content, True)),
                     key=lambda p: p.holders)
        if pts:
            ax.errorbar([p.holders for p in pts], [p.median for p in pts],
                        yerr=[[p.median - p.low for p in pts], [p.high - p.median for p in pts]],
                        color=colors[(tool, None if tool == ARIA2C else content)],
                        marker=marker, capsize=3, label=name)
    how = ("links shaped by tc in network namespaces" if cfg.netns
           else "loopback, cap per process")
    ax.set_title(f"capped at {cfg.rate / MB:g} MB/s per holder ({how})", fontsize=10)
    ax.set_xticks(xs)
    ax.set_xlabel("holders (chunkstore nodes / nginx mirrors)")
    ax.set_ylabel("MB/s of file bytes (10^6 B/s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if uncapped:
        ax = axes[0][1]
        groups = [str(h) for h in cfg.uncapped_holders] + ["local"]
        bars = [(CHUNKSTORE, c, f"chunkstore, {c}") for c in cfg.contents]
        bars.append((ARIA2C, cfg.contents[0], "aria2c + nginx"))
        width = 0.8 / len(bars)
        for i, (tool, content, name) in enumerate(bars):
            heights, lows, highs, at = [], [], [], []
            for g, label in enumerate(groups):
                p = (result.point(LOCAL, content, False, 0) if label == "local"
                     else result.point(tool, content, False, int(label)))
                if p is None or (label == "local" and tool == ARIA2C):
                    continue
                at.append(g + (i - (len(bars) - 1) / 2) * width)
                heights.append(p.median)
                lows.append(p.median - p.low)
                highs.append(p.high - p.median)
            color = colors[(tool, None if tool == ARIA2C else content)]
            ax.bar(at, heights, width, yerr=[lows, highs], capsize=3, color=color, label=name)
            for x, h in zip(at, heights):
                ax.annotate(f"{h:.0f}", (x, h), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(groups)),
                      [f"{g} holder{'s' if g != '1' else ''}" if g != "local"
                       else "local get\n(ceiling)" for g in groups])
        ax.set_title("uncapped, loopback (CPU-bound)", fontsize=10)
        ax.set_ylabel("MB/s of file bytes")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"chunkstore get vs aria2c: {human_size(cfg.size)} file, median of "
                 f"{cfg.repeat} (bars: min–max)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(result: BenchResult, out_dir: Path, *, plot: bool = True) -> dict[str, Path]:
    """Write STEM.json, STEM.md and (with matplotlib) STEM.png into `out_dir`; STEM is
    `swarm` or `swarm-netns`. Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "swarm-netns" if result.config.netns else "swarm"
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(result.to_json(), indent=2) + "\n")
    paths["markdown"].write_text(render_markdown(result))
    if plot:
        paths["png"] = write_plot(result, out_dir / f"{stem}.png")
    return paths


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit so a program's `finally` blocks still clean up
    (the nodes, mirrors and namespaces a run started). For a program's main thread."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
