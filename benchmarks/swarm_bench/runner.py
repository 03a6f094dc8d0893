"""The run: prepares each sample file (added once, copied into every holder's home), then
measures chunkstore, aria2c, libtorrent and the local get point by point; `run_bench` is the
entry."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import MB, KiB, file_digest, format_size, tool_version, write_sample_file
from benchmarks.swarm_bench.errors import BenchError, ProcessFailed
from benchmarks.swarm_bench.holders import HolderNodes
from benchmarks.swarm_bench.measure import cpu_seconds, run_measured
from benchmarks.swarm_bench.mirrors import NginxMirrors
from benchmarks.swarm_bench.models import (
    ARIA2C,
    CHUNKSTORE,
    LIBTORRENT,
    LOCAL,
    VIA_NODE,
    BenchConfig,
    BenchResult,
    Measurement,
)
from benchmarks.swarm_bench.netns import NetnsLab, netns_prefix
from benchmarks.swarm_bench.tools import chunkstore_command, have_aria2c
from benchmarks.swarm_bench.torrent import (
    TorrentSeeders,
    libtorrent_version,
    make_torrent,
    peer_command,
)
from chunkstore import __version__
from chunkstore.demo.local_swarm import ServeProcess

FILE_NAME = "bench.bin"

Progress = Callable[[str], None]


@dataclass
class PreparedFile:
    """One sample file, added to a store, and the holders' copies of that store."""

    kind: str  # MIXED or RANDOM
    source: Path
    digest: str  # BLAKE3 of the file's bytes
    manifest_id: str
    objects: int  # distinct chunks + the manifest: what a holder announces
    stored_bytes: int
    template: Path  # a home holding the whole file
    homes: list[Path]  # holder homes (copies of the template)


class BenchRunner:
    def __init__(
        self, config: BenchConfig, work: Path, progress: Progress, lab: NetnsLab | None
    ) -> None:
        self.config = config
        self.work = work
        self.progress = progress
        self.lab = lab
        self.measurements: list[Measurement] = []
        self.count = 0
        self.total = 0
        self.logs = work / "logs"
        self.logs.mkdir()
        self.aria = config.aria2c and have_aria2c()
        self.libtorrent = libtorrent_version() if config.libtorrent else None
        self.torrents: dict[str, Path] = {}  # content -> its .torrent
        self.stored_bytes: dict[str, int] = {}
        self.failures: list[str] = []

    # -- preparation ------------------------------------------------------------------------
    def prepare(self, kind: str) -> PreparedFile:
        cfg = self.config
        files = self.work / f"files-{kind}"
        files.mkdir()
        source = files / FILE_NAME
        self.progress(f"{kind}: generating {format_size(cfg.size)} ...")
        digest = write_sample_file(source, cfg.size, seed=cfg.seed, content=kind)
        template = self.work / f"template-{kind}"
        # The CLI adds in a child process so this one stays small: then the kernel's
        # ru_maxrss of each `get` child is that child's own peak (see common.child_peak_rss).
        run = run_measured(
            [*chunkstore_command(), "add", str(source), "--json", "--home", str(template)],
            self.logs / f"add-{kind}.log",
            timeout=600,
        )
        added = json.loads(run.stdout)
        self.stored_bytes[kind] = added["stored_bytes"]
        homes = []
        for i in range(max((*cfg.holders, *self.uncapped_holders()))):
            homes.append(self.work / f"holder-{kind}-{i}")
            shutil.copytree(template, homes[-1])
        self.progress(
            f"{kind}: added as {added['manifest_id'][:16]}: {added['chunks']} chunks, "
            f"{added['stored_bytes'] / MB:.0f} MB stored "
            f"({added['stored_bytes'] / cfg.size:.0%} of the file), "
            f"{len(homes)} holder homes"
        )
        return PreparedFile(
            kind,
            source,
            digest,
            added["manifest_id"],
            added["new_chunks"] + 1,
            added["stored_bytes"],
            template,
            homes,
        )

    def discard(self, prepared: PreparedFile) -> None:
        for path in (prepared.template, *prepared.homes, prepared.source.parent):
            shutil.rmtree(path, ignore_errors=True)

    # -- one measurement --------------------------------------------------------------------
    def _record(self, m: Measurement) -> None:
        m.load1 = os.getloadavg()[0]
        self.count += 1
        self.measurements.append(m)
        where = f"{m.holders} holder(s)" if m.tool != LOCAL else "local store"
        cap = "capped" if m.capped else "uncapped"
        extra = ""
        if m.tool in (CHUNKSTORE, LIBTORRENT):
            extra = f", in-process {m.inner_mbps:.1f} MB/s"
        if m.first_byte_s is not None:
            extra += f", first byte {m.first_byte_s:.2f} s"
        self.progress(
            f"[{self.count}/{self.total}] {m.tool:<10} {m.content:<6} {cap:<8} "
            f"{where:<12} rep {m.rep + 1}: {m.mbps:7.1f} MB/s (wall {m.wall_s:.2f} s"
            f"{extra}), CPU s: downloader {m.cpu_s:.1f}, peers {m.peers_cpu_s:.1f}"
            + (f", fetcher node {m.node_cpu_s:.1f}" if m.tool == CHUNKSTORE else "")
            + f"; peak RSS {m.maxrss_kib / KiB:.0f} MiB, load {m.load1:.1f}"
            + ("" if m.identical else "  OUTPUT DIFFERS")
        )
        if not m.identical:
            raise BenchError(
                f"{m.tool} wrote a file that differs from the source "
                f"({m.content}, {m.holders} holders)"
            )

    def _verify(self, out: Path, prepared: PreparedFile) -> bool:
        ok = out.stat().st_size == self.config.size and file_digest(out) == prepared.digest
        out.unlink()
        os.sync()  # this download's write-back must not land in the next one's timing
        return ok

    def chunkstore(self, prepared: PreparedFile, holders: int, capped: bool, rep: int) -> None:
        lab = self.lab
        tag = f"cs-{prepared.kind}-{'c' if capped else 'u'}{holders}-r{rep}"
        shutil.rmtree(self.work / tag, ignore_errors=True)  # a failed attempt's leftovers
        nodes = HolderNodes(self.work / tag, lab)
        fetch_home = self.work / tag / "fetcher"
        out = self.work / tag / "out.bin"
        try:
            serving: list[ServeProcess] = []
            for i in range(holders):
                ns = lab.holders[i] if lab else None
                # In netns mode the link is the cap: no token bucket in the node.
                rate = self.config.rate if capped and lab is None else None
                serving.append(nodes.start(prepared.homes[i], serving[:1], rate, ns))
            for i in range(self.config.departed):
                # Joined (serve returns once it has), then gone without a word, as a getter
                # that finished: the holders keep it as a contact.
                nodes.start(
                    self.work / tag / f"departed{i}",
                    serving[:1],
                    None,
                    lab.fetcher if lab else None,
                ).kill()
            fetchers: list[ServeProcess] = []
            extra: list[str] = []
            if self.config.via == VIA_NODE:
                fetcher = nodes.start(fetch_home, serving[:1], None, lab.fetcher if lab else None)
                fetchers.append(fetcher)
                nodes.wait_ready(serving, fetcher, prepared.manifest_id, prepared.objects)
            else:  # an empty home and no node: the get joins the DHT through a holder
                nodes.wait_ready(serving, serving[0], prepared.manifest_id, prepared.objects)
                extra = ["--bootstrap", nodes.dht_address(serving[0])]
            peers_before = cpu_seconds([n.proc.pid for n in serving])
            node_before = cpu_seconds([n.proc.pid for n in fetchers])
            run = run_measured(
                [
                    *netns_prefix(lab.fetcher if lab else None),
                    *chunkstore_command(),
                    "get",
                    FILE_NAME,
                    "-o",
                    str(out),
                    "--json",
                    "--home",
                    str(fetch_home),
                    *extra,
                ],
                self.logs / f"{tag}.log",
                timeout=self._timeout(holders, capped),
            )
            peers_cpu = cpu_seconds([n.proc.pid for n in serving]) - peers_before
            node_cpu = cpu_seconds([n.proc.pid for n in fetchers]) - node_before
            result = json.loads(run.stdout)
            wire = sum(nodes.api(n, "/node")["bytes_served"] for n in serving)
            expected = {nodes.transfer_address(n) for n in serving}
            if set(result["sources"]) - expected:
                raise BenchError(f"unexpected sources {sorted(result['sources'])}")
        finally:
            nodes.close()
        identical = self._verify(out, prepared)
        shutil.rmtree(self.work / tag, ignore_errors=True)
        self._record(
            Measurement(
                CHUNKSTORE,
                prepared.kind,
                capped,
                holders,
                rep,
                self.config.size,
                run.wall_s,
                result["seconds"],
                run.maxrss_kib,
                run.maxrss_exact,
                wire,
                result["sources"],
                identical,
                run.cpu_s,
                peers_cpu,
                node_cpu,
                first_byte_s=result.get("first_byte_seconds"),
                phases=result.get("phases") or {},
            )
        )

    def aria2c(self, prepared: PreparedFile, holders: int, capped: bool, rep: int) -> None:
        lab = self.lab
        tag = f"aria-{prepared.kind}-{'c' if capped else 'u'}{holders}-r{rep}"
        work = self.work / tag
        shutil.rmtree(work, ignore_errors=True)  # a failed attempt's leftovers
        # aria2c's -x1 is one connection per *host name*: on loopback each mirror gets an
        # address of its own (127.0.0.2, .3, ...: all of 127/8 is loopback) so that -x1 means
        # one connection per mirror, as with real hosts.
        places = [
            (lab.holders[i], lab.address(lab.holders[i])) if lab else (None, f"127.0.0.{2 + i}")
            for i in range(holders)
        ]
        rate = self.config.rate if capped and lab is None else None
        client_ns = lab.fetcher if lab else None
        with NginxMirrors(
            work, prepared.source.parent, FILE_NAME, places, rate, client_ns
        ) as mirrors:
            before = cpu_seconds([p.pid for p in mirrors.procs])
            run = run_measured(
                [
                    *netns_prefix(client_ns),
                    "aria2c",
                    "--no-conf",
                    "-d",
                    str(work),
                    "-o",
                    "out.bin",
                    f"-s{holders}",
                    "-x1",
                    "-k1M",
                    "--file-allocation=trunc",
                    "--allow-overwrite=true",
                    "--auto-file-renaming=false",
                    "--summary-interval=0",
                    "--console-log-level=warn",
                    "--download-result=hide",
                    "--max-tries=3",
                    *mirrors.urls[:holders],
                ],
                self.logs / f"{tag}.log",
                timeout=self._timeout(holders, capped),
            )
            mirrors_cpu = cpu_seconds([p.pid for p in mirrors.procs]) - before
        identical = self._verify(work / "out.bin", prepared)
        shutil.rmtree(work, ignore_errors=True)
        self._record(
            Measurement(
                ARIA2C,
                prepared.kind,
                capped,
                holders,
                rep,
                self.config.size,
                run.wall_s,
                run.wall_s,
                run.maxrss_kib,
                run.maxrss_exact,
                self.config.size,
                {},
                identical,
                run.cpu_s,
                mirrors_cpu,
            )
        )

    def torrent(self, prepared: PreparedFile) -> Path:
        """The .torrent of this file, made the first time it is asked for."""
        if prepared.kind not in self.torrents:
            path = self.work / f"{prepared.kind}.torrent"
            make_torrent(prepared.source, path, self.logs / f"torrent-{prepared.kind}.log")
            self.torrents[prepared.kind] = path
        return self.torrents[prepared.kind]

    def libtorrent_get(self, prepared: PreparedFile, holders: int, capped: bool, rep: int) -> None:
        lab = self.lab
        tag = f"lt-{prepared.kind}-{'c' if capped else 'u'}{holders}-r{rep}"
        work = self.work / tag
        shutil.rmtree(work, ignore_errors=True)  # a failed attempt's leftovers
        work.mkdir()
        torrent = self.torrent(prepared)
        places = [
            (lab.holders[i], lab.address(lab.holders[i])) if lab else (None, "127.0.0.1")
            for i in range(holders)
        ]
        rate = self.config.rate if capped and lab is None else None
        client_ns = lab.fetcher if lab else None
        timeout = self._timeout(holders, capped)
        with TorrentSeeders(
            torrent, prepared.source.parent, places, rate, self.logs / f"{tag}-seeders.log"
        ) as seeders:
            before = cpu_seconds([p.pid for p in seeders.procs])
            run = run_measured(
                [
                    *netns_prefix(client_ns),
                    *peer_command(),
                    "leech",
                    str(torrent),
                    str(work),
                    "--host",
                    lab.address(client_ns) if lab else "127.0.0.1",
                    "--timeout",
                    str(timeout - 5),
                    *[f"--peer={a}" for a in seeders.addresses],
                ],
                self.logs / f"{tag}.log",
                timeout=timeout,
            )
            seeders_cpu = cpu_seconds([p.pid for p in seeders.procs]) - before
            sources = dict(zip(seeders.addresses, seeders.uploaded(), strict=True))
        result = json.loads(run.stdout)
        identical = self._verify(work / FILE_NAME, prepared)
        shutil.rmtree(work, ignore_errors=True)
        self._record(
            Measurement(
                LIBTORRENT,
                prepared.kind,
                capped,
                holders,
                rep,
                self.config.size,
                run.wall_s,
                result["seconds"],
                run.maxrss_kib,
                run.maxrss_exact,
                sum(sources.values()),
                sources,
                identical,
                run.cpu_s,
                seeders_cpu,
                first_byte_s=result.get("first_piece"),
            )
        )

    def local_get(self, prepared: PreparedFile, rep: int) -> None:
        out = self.work / f"local-{prepared.kind}-r{rep}.bin"
        run = run_measured(
            [
                *chunkstore_command(),
                "get",
                FILE_NAME,
                "-o",
                str(out),
                "--json",
                "--home",
                str(prepared.template),
            ],
            self.logs / f"local-{prepared.kind}.log",
            timeout=600,
        )
        result = json.loads(run.stdout)
        self._record(
            Measurement(
                LOCAL,
                prepared.kind,
                False,
                0,
                rep,
                self.config.size,
                run.wall_s,
                result["seconds"],
                run.maxrss_kib,
                run.maxrss_exact,
                0,
                {},
                self._verify(out, prepared),
                run.cpu_s,
            )
        )

    def attempt(self, what: str, measure: Callable[..., None], *args: Any) -> None:
        """Run one measurement; a process that fails is noted and tried once more."""
        for attempt in (1, 2):
            try:
                return measure(*args)
            except ProcessFailed as e:
                self.failures.append(f"{what}: {e.summary}")
                self.progress(f"  {what}: attempt {attempt} failed: {e.summary}")
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
        per_content = (len(cfg.holders) + len(uncapped)) * cfg.repeat + (cfg.repeat if local else 0)
        references = [
            (name, measure)
            for name, measure, wanted in (
                (ARIA2C, self.aria2c, self.aria),
                (LIBTORRENT, self.libtorrent_get, self.libtorrent),
            )
            if wanted
        ]
        reference_runs = (len(cfg.holders) + len(uncapped)) * cfg.repeat * len(references)
        self.total = per_content * len(cfg.contents) + reference_runs
        for i, kind in enumerate(cfg.contents):
            prepared = self.prepare(kind)
            # aria2c, nginx and libtorrent never look inside the bytes: measured once, on the
            # first file.
            others = references if i == 0 else []
            try:
                for capped, counts in ((True, cfg.holders), (False, uncapped)):
                    for rep in range(cfg.repeat):
                        for h in counts:
                            what = (
                                f"{kind}, {h} holder(s), "
                                f"{'capped' if capped else 'uncapped'}, rep {rep + 1}"
                            )
                            self.attempt(
                                f"chunkstore {what}", self.chunkstore, prepared, h, capped, rep
                            )
                            for name, measure in others:
                                self.attempt(f"{name} {what}", measure, prepared, h, capped, rep)
                if local:
                    for rep in range(cfg.repeat):
                        self.attempt(f"local get {kind}", self.local_get, prepared, rep)
            finally:
                self.discard(prepared)


def run_bench(config: BenchConfig, progress: Progress = lambda line: None) -> BenchResult:
    """Run the benchmark described by `config`; progress lines go to `progress`.

    Raises BenchUnavailable when netns mode cannot run here (not root, no `ip`/`tc`), and
    BenchError when a download fails or writes bytes that differ from the source. Every
    process, file and namespace it made is gone when it returns or raises."""
    started = time.time()
    clock = time.perf_counter()
    if config.aria2c and not have_aria2c():
        progress(
            "aria2c or nginx not found: the aria2c rows are skipped "
            "(Debian: apt-get install aria2 nginx-light)"
        )
    work = Path(tempfile.mkdtemp(prefix="chunkstore-bench-", dir=config.workdir)).resolve()
    versions = {"python": platform.python_version(), "chunkstore": __version__}
    lab = NetnsLab(max(config.holders), config.rate) if config.netns else None
    try:
        if lab is not None:
            lab.__enter__()
            progress(f"netns: {len(lab.made)} namespaces up; {lab.describe()}")
        runner = BenchRunner(config, work, progress, lab)
        link = lab.describe() if lab is not None else _loopback_caps(config, runner)
        if runner.aria:
            versions["aria2c"] = tool_version(["aria2c", "--version"])
            versions["nginx"] = tool_version(["nginx", "-v"])
        if runner.libtorrent:
            versions["libtorrent"] = runner.libtorrent
        elif config.libtorrent:
            progress(
                "libtorrent cannot be imported: the libtorrent rows are skipped "
                "(pip install libtorrent, or the project's `bench` extra)"
            )
        runner.run()
    finally:
        if lab is not None:
            lab.close()
        shutil.rmtree(work, ignore_errors=True)
    result = BenchResult(
        config=config,
        machine=f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}",
        versions=versions,
        stored_bytes=runner.stored_bytes,
        link=link,
        measurements=runner.measurements,
        started=started,
        seconds=time.perf_counter() - clock,
        failures=runner.failures,
    )
    result.notes = _notes(result)
    return result


def _loopback_caps(config: BenchConfig, runner: BenchRunner) -> str:
    """How each tool of this run is capped on loopback, in words."""
    rate = int(config.rate)
    caps = [
        f"loopback; chunkstore: `serve --upload-rate {rate}` per holder (token bucket over all "
        "its connections, counting stored bytes)"
    ]
    if runner.aria:
        caps.append(
            f"aria2c: nginx `limit_rate {rate}` per connection, aria2c -x1 = one connection "
            "per mirror"
        )
    if runner.libtorrent:
        caps.append(
            f"libtorrent: `upload_rate_limit {rate}` per seeder session on its global peer "
            "class, loopback peers filtered into it, IP overhead not counted"
        )
    return "; ".join(caps)


def _notes(result: BenchResult) -> list[str]:
    """What a reader of the tables needs to know about this run."""
    cfg = result.config
    notes = [
        f"MB/s = 10^6 bytes of the {format_size(cfg.size)} file per second of the "
        "downloading process's wall time (chunkstore CLI start-up ~0.4 s included); "
        f"median of {cfg.repeat} (min–max).",
        f"caps: {result.link}.",
    ]
    for content, stored in result.stored_bytes.items():
        notes.append(
            f"{content} file: chunkstore holders send its stored form, "
            f"{stored / MB:.0f} MB (zstd where it pays) for {cfg.size / MB:.0f} MB of "
            f"file ({stored / cfg.size:.0%}); nginx always sends the file's bytes."
        )
    if cfg.aria2c and any(m.tool == ARIA2C for m in result.measurements):
        notes.append(
            f"aria2c and nginx never look inside the bytes: measured once, on the "
            f"{cfg.contents[0]} file, and compared with both."
        )
    if any(m.tool == LIBTORRENT for m in result.measurements):
        notes.append(
            f"libtorrent {result.versions.get('libtorrent', '')}: a v1 torrent of the "
            f"{cfg.contents[0]} file with 1 MiB pieces (chunkstore's average chunk), "
            "compared with chunkstore on each file; one seeder process per holder, each "
            "with every piece marked present (no hashing while serving), a fresh leecher "
            "process given the "
            "seeders' addresses (no tracker, DHT or discovery), TCP only, timed from adding "
            "the torrent to complete; its first byte is its first verified piece."
        )
    elif cfg.libtorrent:
        notes.append("libtorrent could not be imported: its rows are skipped.")
    if result.failures:
        notes.append(
            f"{len(result.failures)} attempt(s) failed and were run again "
            "(details in the JSON): " + "; ".join(f[:160] for f in result.failures)
        )
    if cfg.via == VIA_NODE:
        notes.append(
            "chunkstore gets go through a node serving the fetcher's home (started, joined "
            "and finding every holder before the get)."
        )
    else:
        notes.append(
            "chunkstore gets run as on a fresh machine: an empty home, no node, "
            "`--bootstrap` to a holder; joining the DHT is part of each get (in its phases "
            "only when the porcelain passes the get's start to fetch_file, else in the time "
            "outside the call)."
        )
    if cfg.departed:
        notes.append(
            f"{cfg.departed} node(s) joined the swarm and were killed before each get: "
            "contacts that no longer answer, as getters that came and went leave behind."
        )
    if cfg.netns:
        notes.append(
            "netns: only the rate is shaped (tc tbf); no added delay, since netem "
            "is not in this kernel. Uncapped runs and the local get are loopback-only."
        )
    return notes
