#!/usr/bin/env python3
"""Ingest / restore throughput of chunkstore against zstd, cp, restic and borg, plus peak RSS
and the cost of the store's crash-safe durability mode.

Run from the repository root with the project's virtualenv:

    python benchmarks/ingest.py [--size 1GiB] [--repeat 3] [--workdir DIR] [--json OUT.json]
                                [--skip-restic] [--skip-borg] [--rss-size 4GiB | --no-rss]

1. Generates a deterministic file (first half random bytes, second half Zipf-distributed word
   text that zstd -3 compresses to roughly 30%: chunkstore.demo.sample_files' "mixed"),
   streaming in 4 MiB blocks.
2. For each repetition, times as subprocesses, in a fixed order:
     add: `zstd -3 -T2`, `chunkstore add` (fresh store), `chunkstore add` with the store in
          LMDB's old NOSYNC mode (fresh store: what the crash-safe mode costs),
          `restic backup` (fresh repository), `borg create` (fresh repository, no encryption,
          zstd level 3 like chunkstore)
     get: `cp`, `zstd -d`, `chunkstore get`, `restic restore`, `borg extract`
   and checks every restored file is byte-identical to the input (same size and BLAKE3).
3. Runs `chunkstore add` / `get` on a larger file (default 4 GiB) to measure peak RSS against
   the 150 MiB goal.
4. Prints a table (median and min-max MB/s, CPU time, peak RSS, stored size), the
   chunkstore-vs-reference ratios against the project's goals, and a markdown version of the
   table for the README. `--json` writes the same data.

Sizes are the library's: 1GiB = 2^30 bytes, 1G = 1GB = 10^9 bytes. Throughputs are input
bytes (decimal MB = 1e6 bytes) divided by the wall time of the whole command, interpreter
start-up included: that is what a user waits for. Missed goals are reported, not failures:
the exit code is non-zero only when something is actually wrong (a tool failed, or restored
bytes differ from the input).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, Python puts benchmarks/ first on sys.path; the shared helpers are imported
# as `benchmarks.common`, so the repository root goes there too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    MB,
    MIXED,
    GiB,
    KiB,
    MiB,
    RssSampler,
    child_peak_rss,
    file_digest,
    format_size,
    parse_size,
    stop_on_signals,
    tool_version,
    write_sample_file,
)
from chunkstore.errors import InputError

BLOCK = 4 * MiB  # warm-up unit (and the sample files' block): cheap, small in RAM
SEED = 0x636B7374  # fixed: every run benchmarks the same bytes
RSS_GOAL_MIB = 150.0
RESTIC_PASSWORD = "chunkstore-benchmark"  # throwaway repositories inside the temp workdir
# The Debian packages of the reference tools (as root, missing ones are apt-installed).
PACKAGES = {"zstd": "zstd", "restic": "restic", "borg": "borgbackup"}
# `chunkstore` with the store opened as before issue 12 (MDB_NOSYNC, one sync at the end):
# the durability mode's cost is the difference between the two add rows.
NOSYNC_CLI = (
    "import sys; import chunkstore.local.store as store; "
    "store.LMDB_SYNC.clear(); store.LMDB_SYNC['sync'] = False; "
    "from chunkstore_cli.app import main; sys.argv[0] = 'chunkstore'; main()"
)
STORED_NAME = "bench.bin"

# (subject, reference, minimum ratio of subject throughput to reference throughput)
GOALS: list[tuple[str, str, float]] = [
    ("chunkstore add", "zstd add", 1.0),
    ("chunkstore add", "restic add", 1.5),
    ("chunkstore add", "borg add", 1.5),
    ("chunkstore get", "zstd get", 1.0),
    ("chunkstore get", "cp get", 0.5),
    ("chunkstore get", "restic get", 1.5),
    ("chunkstore get", "borg get", 1.5),
]

# Display labels and table order of every measured (tool, operation).
LABELS: dict[str, tuple[str, str]] = {
    "zstd add": ("zstd -3 -T2", "add"),
    "chunkstore add": ("chunkstore add", "add"),
    "chunkstore add nosync": ("chunkstore add, NOSYNC", "add"),
    "restic add": ("restic backup", "add"),
    "borg add": ("borg create", "add"),
    "cp get": ("cp", "get"),
    "zstd get": ("zstd -d", "get"),
    "chunkstore get": ("chunkstore get", "get"),
    "restic get": ("restic restore", "get"),
    "borg get": ("borg extract", "get"),
}


class BenchError(Exception):
    """Something really went wrong (a tool failed, restored bytes differ): exit non-zero."""


# ---------------------------------------------------------------------------------------------
# Input files (write_sample_file's "mixed": first half random, like media or archives, which
# chunkstore should store raw; second half compressible text)
# ---------------------------------------------------------------------------------------------


def warm(paths: Iterable[Path]) -> None:
    """Read files (or every file under directories) so the next tool finds them in page cache.

    Dropping caches is not reliably possible here, so instead every tool starts warm."""
    buf = bytearray(BLOCK)
    for p in paths:
        files = [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]
        for q in files:
            with open(q, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def disk_usage(path: Path) -> int:
    """Allocated bytes of a file or tree (like `du`): LMDB and restic files can be sparse."""
    files = [path] if path.is_file() else [q for q in path.rglob("*") if q.is_file()]
    return sum(q.stat().st_blocks * 512 for q in files)


# ---------------------------------------------------------------------------------------------
# Measuring one subprocess
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured command. Times in seconds, memory in KiB."""

    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int  # peak RSS (file-backed mapped pages included): common.child_peak_rss
    maxrss_exact: bool  # True: the kernel's ru_maxrss; False: sampled VmHWM (a lower bound)
    ru_maxrss_kib: int  # raw ru_maxrss from wait4
    peak_anon_kib: int  # sampled from /proc: heap and other private memory
    peak_file_kib: int  # sampled from /proc: mapped file pages (e.g. LMDB's map) in RSS
    sync_s: float  # time of a `sync` right after the run: the write-back it left behind
    nbytes: int  # input bytes the throughput refers to
    stored_bytes: int | None = None

    @property
    def mbps(self) -> float:
        return self.nbytes / MB / self.wall_s

    @property
    def mbps_synced(self) -> float:
        """Throughput counting the write-back: comparable between tools that fsync and not."""
        return self.nbytes / MB / (self.wall_s + self.sync_s)


def run_measured(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    nbytes: int,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Run:
    """Run `cmd`, waiting with os.wait4 to get its wall time, CPU time and peak RSS.

    Output goes to `log` (shown on failure). A `sync` follows, timed separately, so that the
    next tool does not pay for this one's dirty pages."""
    argv = [os.fspath(c) for c in cmd]
    with open(log, "ab") as out:
        out.write(f"\n$ {shlex.join(argv)}\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL, cwd=cwd
        )
        sampler = RssSampler(proc.pid)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM: do not leave the child running
            proc.kill()
            proc.wait()
            sampler.stop()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        sampler.stop()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise BenchError(f"{shlex.join(argv)} exited with {proc.returncode}:\n{tail}")
    start = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - start
    maxrss_kib, exact = child_peak_rss(usage, sampler)
    return Run(
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        maxrss_kib=maxrss_kib,
        maxrss_exact=exact,
        ru_maxrss_kib=usage.ru_maxrss,
        peak_anon_kib=sampler.anon,
        peak_file_kib=sampler.file,
        sync_s=sync_s,
        nbytes=nbytes,
    )


# ---------------------------------------------------------------------------------------------
# Tools and setup
# ---------------------------------------------------------------------------------------------


def chunkstore_cmd() -> list[str]:
    """The chunkstore of the running interpreter's environment, never another one on PATH."""
    script = Path(sys.executable).parent / "chunkstore"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "chunkstore_cli"]


def ensure_tools(want_restic: bool, want_borg: bool) -> dict[str, bool]:
    """Which reference tools are usable; installs missing ones with apt-get when root."""
    wanted = ["zstd"] + (["restic"] if want_restic else []) + (["borg"] if want_borg else [])
    missing = [t for t in wanted if shutil.which(t) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = [PACKAGES[t] for t in missing]
        print(f"setup: installing {' '.join(packages)} with apt-get ...", flush=True)
        ok = (
            subprocess.run(
                ["apt-get", "update"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(
                ["apt-get", "install", "-y", *packages],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
    have = {t: shutil.which(t) is not None for t in ("zstd", "restic", "borg", "cp")}
    have["restic"] = have["restic"] and want_restic
    have["borg"] = have["borg"] and want_borg
    for tool in wanted:
        if not have[tool]:
            print(
                f"setup: {tool} is not available (install it, e.g. "
                f"`apt-get install {PACKAGES[tool]}`); its rows are skipped",
                flush=True,
            )
    if not have["cp"]:
        raise BenchError("cp not found")
    return have


@dataclass
class Context:
    work: Path
    input: Path
    size: int
    digest: str  # BLAKE3 of the input
    have: dict[str, bool]
    chunkstore: list[str]
    log: Path
    restic_env: dict[str, str] = field(default_factory=dict)
    borg_env: dict[str, str] = field(default_factory=dict)


def check_output(ctx: Context, path: Path, what: str) -> None:
    """A benchmark that restores garbage is worthless: every restored file is compared."""
    if not path.is_file():
        raise BenchError(f"{what}: expected output {path} was not written")
    if path.stat().st_size != ctx.size or file_digest(path) != ctx.digest:
        raise BenchError(f"{what}: restored bytes differ from the input ({path})")


# ---------------------------------------------------------------------------------------------
# The benchmarks
# ---------------------------------------------------------------------------------------------


def bench_add(ctx: Context, rep: int, results: dict[str, list[Run]]) -> dict[str, Path]:
    """Store the input with every tool into fresh targets; return what each get will read."""
    made: dict[str, Path] = {}
    if ctx.have["zstd"]:
        zst = ctx.work / f"input.{rep}.zst"
        warm([ctx.input])
        run = run_measured(
            ["zstd", "-3", "-T2", "-q", "-f", ctx.input, "-o", zst], nbytes=ctx.size, log=ctx.log
        )
        run.stored_bytes = disk_usage(zst)
        results["zstd add"].append(run)
        made["zstd"] = zst

    home = ctx.work / f"store.{rep}"  # fresh per repetition: every add stores every chunk
    warm([ctx.input])
    run = run_measured(
        [*ctx.chunkstore, "add", ctx.input, "--name", STORED_NAME, "--home", home, "--json"],
        nbytes=ctx.size,
        log=ctx.log,
    )
    run.stored_bytes = disk_usage(home)
    results["chunkstore add"].append(run)
    made["chunkstore"] = home

    # The same add with the store as it was opened before (MDB_NOSYNC): the durability cost.
    nosync_home = ctx.work / f"store-nosync.{rep}"
    warm([ctx.input])
    run = run_measured(
        [sys.executable, "-c", NOSYNC_CLI, "add", ctx.input, "--name", STORED_NAME]
        + ["--home", nosync_home, "--json"],
        nbytes=ctx.size,
        log=ctx.log,
    )
    run.stored_bytes = disk_usage(nosync_home)
    results["chunkstore add nosync"].append(run)
    made["chunkstore nosync"] = nosync_home

    if ctx.have["restic"]:
        repo = ctx.work / f"restic.{rep}"
        env = {**ctx.restic_env, "RESTIC_REPOSITORY": str(repo)}
        init = subprocess.run(["restic", "init"], env=env, capture_output=True, text=True)
        if init.returncode != 0:
            raise BenchError(f"restic init failed:\n{init.stdout}{init.stderr}")
        warm([ctx.input])
        run = run_measured(
            ["restic", "backup", "--quiet", ctx.input], env=env, nbytes=ctx.size, log=ctx.log
        )
        run.stored_bytes = disk_usage(repo)
        results["restic add"].append(run)
        made["restic"] = repo

    if ctx.have["borg"]:
        repo = ctx.work / f"borg.{rep}"
        init = subprocess.run(
            ["borg", "init", "--encryption=none", repo],
            env=ctx.borg_env,
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            raise BenchError(f"borg init failed:\n{init.stdout}{init.stderr}")
        warm([ctx.input])
        run = run_measured(
            ["borg", "create", "--compression", "zstd,3", f"{repo}::bench", ctx.input],
            env=ctx.borg_env,
            nbytes=ctx.size,
            log=ctx.log,
        )
        run.stored_bytes = disk_usage(repo)
        results["borg add"].append(run)
        made["borg"] = repo
    return made


def bench_get(ctx: Context, rep: int, made: dict[str, Path], results: dict[str, list[Run]]) -> None:
    """Restore with every tool to a new file on the same filesystem, verify, delete."""
    out = ctx.work / f"out.{rep}"

    warm([ctx.input])
    results["cp get"].append(
        run_measured(["cp", "--reflink=never", ctx.input, out], nbytes=ctx.size, log=ctx.log)
    )
    check_output(ctx, out, "cp")
    out.unlink()

    if "zstd" in made:
        warm([made["zstd"]])
        results["zstd get"].append(
            run_measured(
                ["zstd", "-d", "-q", "-f", made["zstd"], "-o", out], nbytes=ctx.size, log=ctx.log
            )
        )
        check_output(ctx, out, "zstd -d")
        out.unlink()

    warm([made["chunkstore"]])
    results["chunkstore get"].append(
        run_measured(
            [
                *ctx.chunkstore,
                "get",
                STORED_NAME,
                "-o",
                out,
                "--home",
                made["chunkstore"],
                "--json",
            ],
            nbytes=ctx.size,
            log=ctx.log,
        )
    )
    check_output(ctx, out, "chunkstore get")
    out.unlink()

    if "restic" in made:
        target = ctx.work / f"restic-restore.{rep}"
        env = {**ctx.restic_env, "RESTIC_REPOSITORY": str(made["restic"])}
        warm([made["restic"]])
        results["restic get"].append(
            run_measured(
                ["restic", "restore", "latest", "--target", target],
                env=env,
                nbytes=ctx.size,
                log=ctx.log,
            )
        )
        # restic recreates the absolute path of the backed-up file under the target
        check_output(ctx, target / ctx.input.relative_to(ctx.input.anchor), "restic restore")
        shutil.rmtree(target)

    if "borg" in made:
        target = ctx.work / f"borg-extract.{rep}"
        target.mkdir()
        warm([made["borg"]])
        results["borg get"].append(
            run_measured(
                ["borg", "extract", f"{made['borg']}::bench"],
                env=ctx.borg_env,
                nbytes=ctx.size,
                log=ctx.log,
                cwd=target,
            )
        )
        # borg extracts into the current directory, the path without its leading /
        check_output(ctx, target / ctx.input.relative_to(ctx.input.anchor), "borg extract")
        shutil.rmtree(target)


def bench_rss(ctx: Context, size: int) -> dict[str, Any]:
    """Peak RSS of chunkstore add and get on a large file: memory must not grow with size."""
    big = ctx.work / "rss-input.bin"
    print(f"rss: generating {format_size(size)} (streaming) ...", flush=True)
    digest = write_sample_file(big, size, seed=SEED + 1, content=MIXED)
    home = ctx.work / "rss-store"
    out = ctx.work / "rss-out.bin"
    try:
        warm([big])
        print("rss: chunkstore add ...", flush=True)
        add = run_measured(
            [*ctx.chunkstore, "add", big, "--name", STORED_NAME, "--home", home, "--json"],
            nbytes=size,
            log=ctx.log,
        )
        add.stored_bytes = disk_usage(home)
        print("rss: chunkstore get ...", flush=True)
        get = run_measured(
            [*ctx.chunkstore, "get", STORED_NAME, "-o", out, "--home", home, "--json"],
            nbytes=size,
            log=ctx.log,
        )
        if out.stat().st_size != size or file_digest(out) != digest:
            raise BenchError(
                f"chunkstore get of the {format_size(size)} file restored different bytes"
            )
    finally:
        for p in (big, out):
            p.unlink(missing_ok=True)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "size": size,
        "goal_mib": RSS_GOAL_MIB,
        "add": asdict(add) | {"mbps": add.mbps},
        "get": asdict(get) | {"mbps": get.mbps},
    }


def cli_startup(ctx: Context) -> float:
    """Best-of-3 wall time of `chunkstore --help`: the fixed cost inside every timing."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([*ctx.chunkstore, "--help"], stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def input_size(text: str) -> int:
    """An argparse type: a size as the library reads it, at least two blocks (the input's
    random half and its text half must each be at least one)."""
    try:
        size = parse_size(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if size < 2 * BLOCK:
        raise argparse.ArgumentTypeError(f"size must be at least {format_size(2 * BLOCK)}")
    return size


def summarise(results: dict[str, list[Run]]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for key, runs in results.items():
        if not runs:
            continue
        speeds = [r.mbps for r in runs]
        stored = [r.stored_bytes for r in runs if r.stored_bytes is not None]
        rows[key] = {
            "tool": LABELS[key][0],
            "operation": LABELS[key][1],
            "mbps_median": statistics.median(speeds),
            "mbps_min": min(speeds),
            "mbps_max": max(speeds),
            "mbps_synced_median": statistics.median(r.mbps_synced for r in runs),
            "cpu_s_median": statistics.median(r.user_s + r.sys_s for r in runs),
            "sys_s_median": statistics.median(r.sys_s for r in runs),
            "wall_s_median": statistics.median(r.wall_s for r in runs),
            "peak_rss_mib": max(r.maxrss_kib for r in runs) / KiB,
            "peak_rss_exact": max(runs, key=lambda r: r.maxrss_kib).maxrss_exact,
            "peak_anon_mib": max(r.peak_anon_kib for r in runs) / KiB,
            "peak_file_mib": max(r.peak_file_kib for r in runs) / KiB,
            "stored_bytes": statistics.median(stored) if stored else None,
        }
    return rows


def ratios(results: dict[str, list[Run]]) -> list[dict[str, Any]]:
    """chunkstore vs each reference: ratio of medians, and the range of per-repetition ratios
    (each repetition ran both tools back to back, so its ratio shares that moment's noise)."""
    out = []
    for subject, ref, goal in GOALS:
        a, b = results.get(subject, []), results.get(ref, [])
        if not a or not b:
            continue
        paired = [x.mbps / y.mbps for x, y in zip(a, b, strict=True)]
        ratio = statistics.median(x.mbps for x in a) / statistics.median(y.mbps for y in b)
        out.append(
            {
                "subject": LABELS[subject][0],
                "reference": LABELS[ref][0],
                "goal": goal,
                "ratio": ratio,
                "paired_min": min(paired),
                "paired_max": max(paired),
                "met": ratio >= goal,
            }
        )
    return out


def durability_cost(results: dict[str, list[Run]]) -> dict[str, float] | None:
    """What the crash-safe mode (MDB_NOMETASYNC: data flushed at every commit) costs add
    against the old NOSYNC mode, both with their final sync, from the same repetitions."""
    safe, fast = results.get("chunkstore add", []), results.get("chunkstore add nosync", [])
    if not safe or not fast:
        return None
    safe_mbps = statistics.median(r.mbps for r in safe)
    fast_mbps = statistics.median(r.mbps for r in fast)
    paired = [a.mbps / b.mbps for a, b in zip(safe, fast, strict=True)]
    return {
        "nometasync_mbps": safe_mbps,
        "nosync_mbps": fast_mbps,
        "ratio": safe_mbps / fast_mbps,
        "paired_min": min(paired),
        "paired_max": max(paired),
        "nometasync_synced_mbps": statistics.median(r.mbps_synced for r in safe),
        "nosync_synced_mbps": statistics.median(r.mbps_synced for r in fast),
    }


def table_rows(rows: dict[str, dict[str, Any]], size: int) -> tuple[list[str], list[list[str]]]:
    header = [
        "tool",
        "op",
        "MB/s median",
        "MB/s min–max",
        "MB/s incl. sync",
        "CPU s",
        "peak RSS MiB",
        "stored",
    ]
    body = []
    for key in LABELS:
        if key not in rows:
            continue
        r = rows[key]
        stored = "" if r["stored_bytes"] is None else f"{r['stored_bytes'] / size:.1%}"
        body.append(
            [
                r["tool"],
                r["operation"],
                f"{r['mbps_median']:.0f}",
                f"{r['mbps_min']:.0f}–{r['mbps_max']:.0f}",
                f"{r['mbps_synced_median']:.0f}",
                f"{r['cpu_s_median']:.2f}",
                f"{'' if r['peak_rss_exact'] else '~'}{r['peak_rss_mib']:.0f}",
                stored,
            ]
        )
    return header, body


def render_text(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    numeric = {i for i in range(2, len(header))}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def render_markdown(header: list[str], body: list[list[str]]) -> str:
    align = ["---", "---"] + ["---:"] * (len(header) - 2)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *body])


def report(data: dict[str, Any]) -> str:
    size = data["size"]
    rows = data["summary"]
    lines = [
        "",
        f"chunkstore ingest benchmark: {format_size(size)} input (half random, half text), "
        f"{data['repeat']} repetition(s); MB = 10^6 bytes of input per second of wall time",
        f"  {data['machine']}",
        f"  chunkstore CLI start-up (included in every chunkstore timing): "
        f"{data['cli_startup_s'] * 1000:.0f} ms",
        "",
    ]
    header, body = table_rows(rows, size)
    if body:
        lines.append(render_text(header, body))
        lines += [
            "",
            "  MB/s incl. sync counts the `sync` after each command too: chunkstore fsyncs "
            "before it returns, zstd and cp do not.",
            "  stored = bytes on disk after add / input size. peak RSS includes "
            "file-backed mapped pages; ~ = sampled VmHWM",
            "  (the tool peaked below this script's own RSS, which Linux folds into ru_maxrss).",
            "",
        ]
    lines.append("ratios (chunkstore / reference, median MB/s; per-repetition range in brackets):")
    for r in data["ratios"]:
        verdict = "ok" if r["met"] else "MISSED"
        lines.append(
            f"  {r['subject'].split()[1]:<3} / {r['reference']:<15} = {r['ratio']:.2f}x "
            f"[{r['paired_min']:.2f}–{r['paired_max']:.2f}]  (goal >= {r['goal']:.1f}x)"
            f"  {verdict}"
        )
    cost = data.get("durability")
    if cost:
        lines += [
            "",
            "durability mode (median MB/s of the same repetitions):",
            f"  add, NOMETASYNC (crash-safe, now) {cost['nometasync_mbps']:.0f}"
            f" / NOSYNC (before) {cost['nosync_mbps']:.0f} = {cost['ratio']:.2f}x "
            f"[{cost['paired_min']:.2f}–{cost['paired_max']:.2f}]; incl. the `sync` after: "
            f"{cost['nometasync_synced_mbps']:.0f} / {cost['nosync_synced_mbps']:.0f}",
        ]
    rss = data.get("rss")
    if rss:
        lines += [
            "",
            f"peak RSS on a {format_size(rss['size'])} file (goal < {rss['goal_mib']:.0f} MiB):",
        ]
        for op in ("add", "get"):
            r = rss[op]
            peak = r["maxrss_kib"] / KiB
            verdict = "ok" if peak < rss["goal_mib"] else "MISSED"
            lines.append(
                f"  chunkstore {op}: {'' if r['maxrss_exact'] else '~'}{peak:6.1f} MiB"
                f"  (sampled peaks: anon "
                f"{r['peak_anon_kib'] / KiB:.0f} MiB, file-backed "
                f"{r['peak_file_kib'] / KiB:.0f} MiB; {r['mbps']:.0f} MB/s)  {verdict}"
            )
    if body:
        lines += ["", "markdown:", "", render_markdown(header, body), ""]
        md_ratios = [
            f"| {r['subject']} / {r['reference']} | {r['ratio']:.2f}x | "
            f">= {r['goal']:.1f}x | {'ok' if r['met'] else 'missed'} |"
            for r in data["ratios"]
        ]
        if cost:
            md_ratios.append(
                f"| chunkstore add, NOMETASYNC / NOSYNC (durability cost) | "
                f"{cost['ratio']:.2f}x | | |"
            )
        if md_ratios:
            lines += ["| ratio | measured | goal | |", "|---|---:|---:|---|", *md_ratios, ""]
        if rss:
            lines += [f"| {format_size(rss['size'])} file | peak RSS | goal |", "|---|---:|---:|"]
            lines += [
                f"| chunkstore {op} | {rss[op]['maxrss_kib'] / KiB:.0f} MiB | "
                f"< {rss['goal_mib']:.0f} MiB |"
                for op in ("add", "get")
            ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=input_size, default=1 * GiB, help="comparison file size (1GiB)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of the comparison (3)")
    p.add_argument(
        "--workdir",
        type=Path,
        help="make the temporary directory inside DIR "
        "(same filesystem as the outputs; default: the system temp dir)",
    )
    p.add_argument("--json", type=Path, metavar="OUT.json", help="also write the data as JSON")
    p.add_argument("--skip-restic", action="store_true", help="do not compare with restic")
    p.add_argument("--skip-borg", action="store_true", help="do not compare with borg")
    rss = p.add_mutually_exclusive_group()
    rss.add_argument(
        "--rss-size", type=input_size, default=4 * GiB, help="file size for the peak-RSS run (4GiB)"
    )
    rss.add_argument("--no-rss", action="store_true", help="skip the peak-RSS run")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def run_benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    have = ensure_tools(not args.skip_restic, not args.skip_borg)
    chunkstore = chunkstore_cmd()
    if (
        subprocess.run(
            [*chunkstore, "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ).returncode
        != 0
    ):
        raise BenchError(f"{shlex.join(chunkstore)} does not run: is the project installed?")
    ctx = Context(
        work=work,
        input=work / "input.bin",
        size=args.size,
        digest="",
        have=have,
        chunkstore=chunkstore,
        log=work / "commands.log",
        restic_env={
            **os.environ,
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_CACHE_DIR": str(work / "restic-cache"),
        },
        borg_env={
            **os.environ,
            "BORG_BASE_DIR": str(work / "borg-home"),  # its cache, config and keys
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        },
    )

    print(f"generating {format_size(args.size)} input in {work} ...", flush=True)
    start = time.perf_counter()
    ctx.digest = write_sample_file(ctx.input, args.size, seed=SEED, content=MIXED)
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)

    results: dict[str, list[Run]] = {key: [] for key in LABELS}
    for rep in range(args.repeat):
        print(f"repetition {rep + 1}/{args.repeat} ...", flush=True)
        made = bench_add(ctx, rep, results)
        bench_get(ctx, rep, made, results)
        for path in made.values():  # this repetition's stores: the next one starts fresh
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        line = "  ".join(
            f"{LABELS[k][0]} {runs[-1].mbps:.0f}"
            for k, runs in results.items()
            if len(runs) == rep + 1
        )
        print(f"  MB/s: {line}", flush=True)
    ctx.input.unlink()

    data: dict[str, Any] = {
        "size": args.size,
        "repeat": args.repeat,
        "seed": SEED,
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "versions": {
            "zstd": tool_version(["zstd", "--version"]) if have["zstd"] else None,
            "restic": tool_version(["restic", "version"]) if have["restic"] else None,
            "borg": tool_version(["borg", "--version"]) if have["borg"] else None,
            "cp": tool_version(["cp", "--version"]),
        },
        "cli_startup_s": cli_startup(ctx),
        "runs": {k: [asdict(r) | {"mbps": r.mbps} for r in v] for k, v in results.items() if v},
        "summary": summarise(results),
        "ratios": ratios(results),
        "durability": durability_cost(results),
    }
    if not args.no_rss:
        data["rss"] = bench_rss(ctx, args.rss_size)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()  # SIGTERM / SIGHUP: the `finally` below still removes the workdir
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chunkstore-bench-", dir=args.workdir)).resolve()
    try:
        data = run_benchmark(args, work)
        print(report(data))
        if args.json:
            args.json.write_text(json.dumps(data, indent=2) + "\n")
            print(f"\nwrote {args.json}")
        return 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
