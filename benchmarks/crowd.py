#!/usr/bin/env python3
"""A flash crowd: N fresh downloaders fetch one file from H holders at the same moment.

Run from the repository root with the project's virtualenv:

    .venv/bin/python benchmarks/crowd.py                       # N = 10, 50, 100; 32 MiB
    .venv/bin/python benchmarks/crowd.py --downloaders 50 --size 1MiB   # CI's smoke size

H holder nodes (`chunkstore serve` on 127.0.0.1) hold a generated file; for each N, N
`chunkstore get NAME --bootstrap HOLDER0` processes, each from an empty home, start at once.
Reported per N: how many completed byte-identical, completion times (min, median, p95, max),
the errors of those that failed, and the holders' DHT reply latency meanwhile (a ping to
every holder every 100 ms from a separate socket: p50, p95, max, and pings unanswered within
3 s). Writes crowd.json and crowd.md to --out. Exit code 1 if any downloader failed or wrote
wrong bytes (after the whole sweep), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import file_digest, format_size, parse_size, write_sample_file
from chunkstore.demo.local_swarm import LocalSwarm, ServeProcess, wait_for_providers

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
FILE_NAME = "crowd.bin"
PING_INTERVAL = 0.1
PING_TIMEOUT = 3.0
GET_TIMEOUT = 600.0  # a bound on each downloader, far beyond any expected completion


def ping_request(node_id: bytes) -> tuple[bytes, bytes]:
    """An rpcudp ping datagram and its message id (the DHT's wire format, umsgpack)."""
    import umsgpack

    msg_id = os.urandom(20)
    return msg_id, b"\x00" + msg_id + umsgpack.packb(["ping", [node_id]])


class DhtPinger(threading.Thread):
    """Pings the DHT port of each holder every PING_INTERVAL until stopped; keeps the RTTs."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.rtts: list[float] = []
        self.lost = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        node_id = os.urandom(20)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            while not self._stop_event.is_set():
                for port in self.ports:
                    self._ping(sock, port, node_id)
                self._stop_event.wait(PING_INTERVAL)

    def _ping(self, sock: socket.socket, port: int, node_id: bytes) -> None:
        msg_id, datagram = ping_request(node_id)
        started = time.monotonic()
        sock.sendto(datagram, ("127.0.0.1", port))
        deadline = started + PING_TIMEOUT
        while True:
            # Past the deadline, one more look without waiting (a timeout of 0): this thread
            # shares the cores with the crowd, so it may only look late at an answer that
            # came in time.
            sock.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue  # the deadline passed: the look without waiting follows
            except BlockingIOError:
                break  # nothing waiting past the deadline
            if data[1:21] == msg_id:
                self.rtts.append(time.monotonic() - started)
                return
        self.lost += 1

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        rtts = sorted(self.rtts)
        return {
            "pings": len(rtts) + self.lost,
            "unanswered": self.lost,
            "p50_ms": percentile(rtts, 0.5) * 1000 if rtts else None,
            "p95_ms": percentile(rtts, 0.95) * 1000 if rtts else None,
            "max_ms": rtts[-1] * 1000 if rtts else None,
        }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def chunkstore_command() -> list[str]:
    return [sys.executable, "-m", "chunkstore_cli"]


def run_crowd(
    work: Path, holders: list[ServeProcess], count: int, digest: str, wait: float, nice: int = 0
) -> dict:
    """N downloaders at once; their outcomes and the holders' DHT latency meanwhile."""
    root = work / f"crowd-{count}"
    root.mkdir()
    boot = holders[0].dht_address
    pinger = DhtPinger([h.info.dht_port for h in holders])
    pinger.start()
    procs = []
    started = time.monotonic()
    for i in range(count):
        home, out = root / f"home{i}", root / f"out{i}.bin"
        cmd = [*chunkstore_command(), "get", FILE_NAME, "--home", str(home), "-o", str(out)]
        cmd += ["--bootstrap", boot, "--wait", str(wait), "--json"]
        procs.append(
            subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )
        )
    outcomes = []
    for i, proc in enumerate(procs):
        try:
            left = GET_TIMEOUT - (time.monotonic() - started)
            stdout, stderr = proc.communicate(timeout=max(1.0, left))
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        ended = time.monotonic() - started
        out = root / f"out{i}.bin"
        ok = proc.returncode == 0 and out.exists() and file_digest(out) == digest
        error = ""
        if not ok:
            lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
            error = lines[-1] if lines else f"exit code {proc.returncode}"
        seconds = json.loads(stdout)["seconds"] if ok else None
        outcomes.append({"ok": ok, "seconds": seconds, "ended": ended, "error": error})
    latency = pinger.stop()
    shutil.rmtree(root, ignore_errors=True)
    done = [o["seconds"] for o in outcomes if o["ok"]]
    return {
        "downloaders": count,
        "completed": len(done),
        "seconds_min": min(done, default=None),
        "seconds_median": statistics.median(done) if done else None,
        "seconds_p95": percentile(done, 0.95) if done else None,
        "seconds_max": max(done, default=None),
        "wall_seconds": max(o["ended"] for o in outcomes),
        "errors": sorted({o["error"] for o in outcomes if not o["ok"]}),
        "dht_latency": latency,
    }


def render(results: list[dict], size: int, holders: int, nice: int = 0) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        f"{holders} holders, {format_size(size)} file, every downloader a fresh home joining "
        "through holder 0 (`get --bootstrap`); times in seconds from each get's start"
        + (f"; downloaders at nice {nice}" if nice else ""),
        "",
        "| downloaders | completed | min | median | p95 | max | holders' DHT ping p50 / p95 / "
        "max (ms) | pings unanswered in 3 s |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        lat = r["dht_latency"]
        lines.append(
            f"| {r['downloaders']} | {r['completed']} | {s(r['seconds_min'])} | "
            f"{s(r['seconds_median'])} | {s(r['seconds_p95'])} | {s(r['seconds_max'])} | "
            f"{ms(lat['p50_ms'])} / {ms(lat['p95_ms'])} / {ms(lat['max_ms'])} | "
            f"{lat['unanswered']} of {lat['pings']} |"
        )
    for r in results:
        for error in r["errors"]:
            lines.append(f"\nN={r['downloaders']}: {error}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--downloaders",
        default="10,50,100",
        help="comma-separated crowd sizes, each run in turn (10,50,100)",
    )
    p.add_argument("--holders", type=int, default=2, help="holder nodes (2)")
    p.add_argument("--size", default="32MiB", help="file size (32MiB)")
    p.add_argument(
        "--wait", type=float, default=60.0, help="each get's --wait: seconds it keeps looking"
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the downloaders (0): 10 lets the holders' latency show their own "
        "loop rather than N downloaders sharing this machine's cores with them",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = p.parse_args(argv)
    try:
        args.downloaders = [int(v) for v in args.downloaders.split(",")]
        args.size = parse_size(args.size)
    except Exception as e:  # noqa: BLE001 - argparse reports it as a usage error
        p.error(str(e))
    if args.holders < 1 or min(args.downloaders) < 1:
        p.error("--holders and --downloaders must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="chunkstore-crowd-"))
    try:
        source = work / FILE_NAME
        digest = write_sample_file(source, args.size, seed=7, content="random")
        template = work / "template"
        subprocess.run(
            [*chunkstore_command(), "add", str(source), "--home", str(template), "--json"],
            check=True,
            capture_output=True,
        )
        manifest_id = json.loads(
            subprocess.run(
                [*chunkstore_command(), "ls", "--home", str(template), "--json"],
                check=True,
                capture_output=True,
            ).stdout
        )[0]["manifest_id"]
        results = []
        with LocalSwarm(0, root=work / "swarm") as swarm:
            holders: list[ServeProcess] = []
            for i in range(args.holders):
                home = work / "swarm" / f"holder{i}"
                shutil.copytree(template, home)
                holders.append(
                    swarm.start_node([holders[0].dht_address] if holders else [], home=home)
                )
            t0 = time.monotonic()
            for holder in holders[1:]:  # every holder announced before the crowd arrives
                wait_for_providers(holders[0], manifest_id, args.holders, including=holder)
            print(f"holders ready in {time.monotonic() - t0:.1f} s", flush=True)
            for count in args.downloaders:
                print(f"{count} downloaders ...", flush=True)
                results.append(run_crowd(work, holders, count, digest, args.wait, args.nice))
        table = render(results, args.size, args.holders, args.nice)
        print()
        print(table)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "crowd.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "crowd.md").write_text(table + "\n")
        failed = sum(r["downloaders"] - r["completed"] for r in results)
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
