"""netns mode: real per-host links. NetnsLab makes the network namespaces, veth pairs, bridge
and `tc tbf` shaping, and removes them; `netns_prefix` and `http_body` run things inside."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

from benchmarks.common import KiB
from benchmarks.swarm_bench.errors import BenchUnavailable

NETNS_SUBNET = "10.213.0"  # only ever assigned inside the namespaces a run creates


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchUnavailable(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def netns_prefix(ns: str | None) -> list[str]:
    """What goes before a command to run it in namespace `ns` (None: this one)."""
    return ["ip", "netns", "exec", ns] if ns else []


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

    def __enter__(self) -> NetnsLab:
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
            _ip(
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.hub,
            )
            _ip("-n", self.hub, "link", "set", port, "master", "br0")
            _ip("-n", self.hub, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(ns)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        bits = int(self.rate * 8)
        burst = max(32 * KiB, int(self.rate / 100))  # 10 ms at the rate, at least 32 KiB
        for ns in self.holders:
            proc = subprocess.run(
                [
                    "tc",
                    "-n",
                    ns,
                    "qdisc",
                    "add",
                    "dev",
                    "eth0",
                    "root",
                    "tbf",
                    "rate",
                    f"{bits}bit",
                    "burst",
                    str(burst),
                    "latency",
                    "50ms",
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise BenchUnavailable(f"tc tbf is not available: {proc.stderr.strip()}")

    def address(self, ns: str) -> str:
        if ns == self.fetcher:
            return f"{NETNS_SUBNET}.2"
        return f"{NETNS_SUBNET}.{10 + self.holders.index(ns)}"

    def describe(self) -> str:
        return (
            f"tc tbf rate {int(self.rate * 8)}bit on each holder's / mirror's / seeder's veth "
            f"(egress), {len(self.holders)} holder namespaces + 1 fetcher namespace on a "
            "bridge in a hub namespace; no in-process cap; rate only (netem delay is not "
            "in this kernel)"
        )

    def close(self) -> None:
        while self.made:
            subprocess.run(["ip", "netns", "del", self.made.pop()], capture_output=True)
        atexit.unregister(self.close)


_HTTP_SNIPPET = (
    "import json, sys, urllib.request\n"
    "h = json.loads(sys.stdin.read() or '{}')\n"
    "r = urllib.request.Request(sys.argv[1], method=sys.argv[2], headers=h)\n"
    "sys.stdout.buffer.write(urllib.request.urlopen(r, timeout=15).read())\n"
)


def http_body(
    ns: str | None, url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> bytes | None:
    """The body at `url` as seen from namespace `ns` (None: this one); None if unreachable.
    `headers` reach the namespace's process on stdin, never its command line (other users
    can read that, and a header may carry the local API's token)."""
    if ns is None:
        try:
            req = urllib.request.Request(url, method=method, headers=headers or {})
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.read()
        except (urllib.error.URLError, OSError):
            return None
    proc = subprocess.run(
        [*netns_prefix(ns), sys.executable, "-c", _HTTP_SNIPPET, url, method],
        input=json.dumps(headers or {}).encode(),
        capture_output=True,
        timeout=30,
    )
    return proc.stdout if proc.returncode == 0 else None
