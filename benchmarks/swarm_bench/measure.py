"""Measuring one process: its wall time, CPU time and peak RSS (os.wait4), and the CPU time
/proc says other processes (the holders, the mirrors, the fetcher's node) spent meanwhile."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import RssSampler, child_peak_rss
from benchmarks.swarm_bench.errors import ProcessFailed

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class MeasuredRun:
    wall_s: float
    cpu_s: float  # user + system
    maxrss_kib: int
    maxrss_exact: bool  # see common.child_peak_rss
    stdout: str


def run_measured(argv: Sequence[str], log: Path, timeout: float) -> MeasuredRun:
    """Run `argv` to completion; its wall time, CPU time, peak RSS and stdout. Raises
    ProcessFailed if it fails or outlives `timeout` (it is killed then). stderr goes to
    `log`, stdout through `log` with the suffix .stdout."""
    out_path = log.with_suffix(".stdout")
    # The set-up's writes (holder homes copied, files generated) are flushed first, so that
    # no measured run shares the disk with their writeback: a tool that syncs what it writes
    # (chunkstore's store) would wait behind it, one that does not (aria2c) would not.
    os.sync()
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
        raise ProcessFailed(argv, proc.returncode, log.read_text(errors="replace")[-1500:])
    maxrss_kib, exact = child_peak_rss(usage, sampler)
    return MeasuredRun(wall, usage.ru_utime + usage.ru_stime, maxrss_kib, exact, stdout)


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid` (Linux /proc); [] if it is gone."""
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
        todo += child_pids(pid)
    return total
