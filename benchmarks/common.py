"""What the benchmarks share: sizes as users write them and as people read them, the sample
files they measure with, a child process's peak memory, tool versions and clean exits.

Sizes, sample files and the size format are the library's own (chunkstore.units,
chunkstore.demo.sample_files), re-exported here so the benchmarks have one place to take
them from: "512MiB" is 536,870,912 bytes and "512M" or "512MB" 512,000,000.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import threading

from chunkstore.demo.sample_files import MIXED, RANDOM, TEXT, file_digest, write_sample_file
from chunkstore.units import format_size, parse_rate, parse_size

__all__ = [
    "GiB",
    "KiB",
    "MB",
    "MIXED",
    "MiB",
    "RANDOM",
    "TEXT",
    "RssSampler",
    "child_peak_rss",
    "file_digest",
    "format_size",
    "parse_rate",
    "parse_size",
    "stop_on_signals",
    "tool_version",
    "write_sample_file",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000  # throughputs are MB/s of 10^6 bytes


class RssSampler(threading.Thread):
    """Polls /proc/PID/status (Linux) for a child's VmHWM and its anonymous / file-backed split.

    The split tells whether memory is the process's own buffers or pages of a mapped file
    (which the kernel can drop at will). VmHWM belongs to the exec'd program's own address
    space, so it is a clean (if up to one interval late) peak when ru_maxrss is not usable."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.path = f"/proc/{pid}/status"
        self.interval = interval
        self.hwm = self.anon = self.file = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                with open(self.path) as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                return
            self.hwm = max(self.hwm, int(fields.get("VmHWM", "0 kB").split()[0]))
            self.anon = max(self.anon, int(fields.get("RssAnon", "0 kB").split()[0]))
            self.file = max(self.file, int(fields.get("RssFile", "0 kB").split()[0]))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def child_peak_rss(usage: resource.struct_rusage, sampler: RssSampler) -> tuple[int, bool]:
    """A reaped child's peak RSS in KiB, and whether it is exact (the kernel's ru_maxrss) or
    the sampled VmHWM (a lower bound).

    Linux records the pre-exec address space's peak in the child's ru_maxrss, and subprocess
    spawns with vfork: that is the benchmark's own peak RSS. So ru_maxrss is the child's
    figure only when it exceeds the benchmark's own peak; otherwise the sampled VmHWM is."""
    exact = usage.ru_maxrss > resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (usage.ru_maxrss if exact else (sampler.hwm or usage.ru_maxrss)), exact


def tool_version(cmd: list[str]) -> str:
    """The first line a program prints for its version (stdout, else stderr: `nginx -v`);
    "?" if it does not run."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "?"


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit so a program's `finally` blocks still clean up
    (its temporary files, and the nodes, mirrors and namespaces a run started). For a
    program's main thread."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
