"""The second reference: BitTorrent with libtorrent (PyPI `libtorrent`). The harness side:
the .torrent of a sample file, the seeders (one `torrent_peer.py seed` process each, as one
nginx process per mirror) and the leecher's command. libtorrent itself is only imported by
those processes (torrent_peer.py says how each is set up to be fair)."""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.swarm_bench.errors import BenchError
from benchmarks.swarm_bench.measure import run_measured
from benchmarks.swarm_bench.netns import netns_prefix

PEER_PROGRAM = Path(__file__).resolve().with_name("torrent_peer.py")
# Pieces of 1 MiB: the size of chunkstore's average chunk, so both move the file in as many
# verified units (chunkstore's chunks vary around it; pieces are fixed).
PIECE_SIZE = 1 << 20
SEEDER_START_TIMEOUT = 60.0


def peer_command() -> list[str]:
    """The torrent_peer.py program with this interpreter (the one libtorrent is installed in)."""
    return [sys.executable, str(PEER_PROGRAM)]


def libtorrent_version() -> str | None:
    """libtorrent's version if this interpreter can import it, else None. Asked of a child
    process, so the harness never loads it."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import libtorrent; print(libtorrent.__version__)"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def make_torrent(source: Path, torrent: Path, log: Path) -> None:
    """Write the v1 .torrent of `source` (pieces of PIECE_SIZE) to `torrent`."""
    run_measured(
        [*peer_command(), "make", str(source), str(torrent), "--piece-size", str(PIECE_SIZE)],
        log,
        timeout=600,
    )


class TorrentSeeders:
    """Seeders of one torrent, one process each; seeder i runs in namespace places[i][0]
    (None: here) and listens on address places[i][1]. Each is capped at `rate` bytes/s of
    upload (its session's global peer class, loopback peers put in it), or uncapped (None).
    `addresses[i]` is seeder i's HOST:PORT; `close()` stops them all."""

    def __init__(
        self,
        torrent: Path,
        data_dir: Path,
        places: list[tuple[str | None, str]],
        rate: float | None,
        log: Path,
    ) -> None:
        self.torrent = torrent
        self.data_dir = data_dir
        self.places = places
        self.rate = rate
        self.log = log
        self.procs: list[subprocess.Popen] = []
        self.addresses: list[str] = []

    def __enter__(self) -> TorrentSeeders:
        try:
            for ns, host in self.places:
                self._start(ns, host)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, ns: str | None, host: str) -> None:
        argv = [*netns_prefix(ns), *peer_command(), "seed", str(self.torrent), str(self.data_dir)]
        argv += ["--host", host]
        if self.rate:
            argv += ["--rate", str(int(self.rate)), "--loopback-limited"]
        with open(self.log, "ab") as err:
            err.write(f"\n$ {' '.join(argv)}\n".encode())
            err.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.procs.append(proc)
        reply = self._reply(proc, SEEDER_START_TIMEOUT)
        self.addresses.append(f"{host}:{reply['port']}")

    def _reply(self, proc: subprocess.Popen, timeout: float) -> dict:
        """The next JSON line of a seeder; BenchError if it exits or says nothing in time."""
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.1)[0]:
                line = proc.stdout.readline()
                break
            if proc.poll() is not None:
                break
        try:
            return json.loads(line)
        except ValueError:
            tail = self.log.read_text(errors="replace")[-800:].strip()
            raise BenchError(f"a libtorrent seeder did not answer: {tail}") from None

    def uploaded(self) -> list[int]:
        """Payload bytes each seeder has sent so far."""
        out = []
        for proc in self.procs:
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            out.append(int(self._reply(proc, 10)["uploaded"]))
        return out

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):  # a seeder that died: its pipe is broken
                proc.stdin.close()  # end of input: the seeder exits
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self.procs.clear()
