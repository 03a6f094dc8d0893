"""Crash test (issue 12): real `chunkstore` add, get and gc processes killed with SIGKILL at
random moments, on one store; after every kill the store verifies, and a resumed get fetches
from the network exactly the chunks the store does not hold (none of those it holds).

Bounded: 20 kills, each process waited for with a deadline. The random moments come from a
seeded generator (CHUNKSTORE_CRASH_SEED, default 12), named in every failure message."""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chunkstore.demo.local_swarm import LocalSwarm
from chunkstore.local.add import add_file
from chunkstore.local.output import PARTIAL_SUFFIX
from chunkstore.local.store import Store
from tests.helpers import MIB, TEXT, file_hash, run_cli, write_file
from tests.test_serve_and_get import holders_found

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

KILLS = {"get": 8, "add": 6, "gc": 6}  # 20 in all
FILE_SIZE = 8 * MIB  # about 7 chunks of the default chunker (CLI adds use it too)
RATE = 8_000_000  # bytes/s the holder sends: a get's transfer lasts about a second
# An add reads its file followed by this much text (zstd work), so it runs long enough to be
# killed mid-way; the file's own chunks come first and a resumed get of it reuses them.
ADD_TAIL = 24 * MIB
PROCESS_DEADLINE = 60.0  # a process that has not ended by then fails the test


def chunkstore(*args: str) -> list[str]:
    return [sys.executable, "-m", "chunkstore_cli", *args]


def timed(argv: list[str]) -> float:
    """Wall time of `argv` run to its end (it must succeed)."""
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=PROCESS_DEADLINE)
    return time.monotonic() - start


def kill_at_random(argv: list[str], delay: float, after: Callable[[], object] | None) -> bool:
    """Run `argv` and SIGKILL it `delay` seconds after it started, or after `after()` first
    held; True if it was still running then."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + PROCESS_DEADLINE
        while after is not None and proc.poll() is None and not after():
            assert time.monotonic() < deadline, f"{argv} never got to the moment to kill it"
            time.sleep(0.005)
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=PROCESS_DEADLINE)


def stored_chunks(home: Path, chunk_ids: set[bytes]) -> set[bytes]:
    """Which of `chunk_ids` the store of `home` holds now."""
    with Store(home) as store:
        return chunk_ids - store.missing_chunks(chunk_ids)


def partials(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]


def test_random_sigkills_of_add_get_gc_never_corrupt_nor_refetch(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHUNKSTORE_CRASH_SEED", "12"))
    rng = random.Random(seed)
    ops = [op for op, n in KILLS.items() for _ in range(n)]
    rng.shuffle(ops)
    # A file of its own for every get and add step (a get of a file already complete would
    # test nothing), and one more that times an uncut get and add. A gc step works on the
    # previous step's file.
    count = KILLS["get"] + KILLS["add"] + 1
    sources = [write_file(tmp_path / f"f{i}.bin", FILE_SIZE, seed=100 + i) for i in range(count)]
    tail = write_file(tmp_path / "tail.txt", ADD_TAIL, seed=99, content=TEXT).read_bytes()
    client = tmp_path / "client"
    Store(client).close()
    outputs = tmp_path / "out"
    outputs.mkdir()
    killed_running = cut_mid_file = 0
    with LocalSwarm(2, upload_rate=str(RATE)) as swarm:
        boot, holder = swarm.nodes
        manifests = []
        with Store(holder.home) as store:
            for path in sources:
                result = add_file(store, path, name=path.name)
                manifests.append(store.resolve(result.manifest_id))
        for mid, _ in manifests:
            holders_found(boot, mid.hex())

        def add_input(i: int) -> Path:
            path = tmp_path / f"add{i}.bin"
            path.write_bytes(sources[i].read_bytes() + tail)
            return path

        spare_mid, _ = manifests.pop()
        durations = {
            "get": timed(chunkstore(
                "get", spare_mid.hex(), "-o", str(tmp_path / "spare.bin"),
                "--home", str(client), "--bootstrap", boot.dht_address,
            )),
            "add": timed(chunkstore(
                "add", str(add_input(count - 1)), "--home", str(tmp_path / "scratch"),
            )),
            "gc": timed(chunkstore("gc", "--home", str(client))),
        }  # fmt: skip

        fresh = 0  # the next file no step has worked on
        for step, op in enumerate(ops):
            i = max(fresh - 1, 0) if op == "gc" else fresh  # the file this step works on
            fresh += op != "gc"
            mid, manifest = manifests[i]
            ids = {r.chunk_id for r in manifest.chunks}
            where = f"step {step} ({op} of {sources[i].name}, seed {seed})"
            out = outputs / f"{i}.bin"
            get_args = chunkstore(
                "get", mid.hex(), "-o", str(out), "--force", "--json",
                "--home", str(client), "--bootstrap", boot.dht_address,
            )  # fmt: skip
            # When to kill: a random moment of the whole run; for every other get, a random
            # moment of its transfer (after its first chunk is stored), where it is most
            # likely to leave a half-fetched file.
            after = None
            delay = durations[op] * rng.uniform(0.05, 1.1)
            if op == "get":
                argv = get_args
                if rng.random() < 0.5:
                    after = functools.partial(stored_chunks, client, ids)
                    delay = rng.uniform(0, 0.3 * FILE_SIZE / RATE)  # a burst comes first
            elif op == "add":
                argv = chunkstore("add", str(add_input(i)), "--name", f"added-{i}")
                argv += ["--home", str(client)]
            else:
                argv = chunkstore("gc", "--home", str(client))
            killed_running += kill_at_random(argv, delay, after)

            # the store verifies
            proc = run_cli("verify", "--json", home=client, timeout=PROCESS_DEADLINE)
            assert proc.returncode == 0, f"{where}: {proc.stdout.decode()} {proc.stderr.decode()}"
            assert json.loads(proc.stdout)["corrupt"] == [], where
            assert len(partials(outputs)) <= 1, f"{where}: {partials(outputs)}"

            # a resumed get fetches what the store lacks, and nothing it holds
            held = stored_chunks(client, ids)
            cut_mid_file += 0 < len(held) < len(ids)
            proc = subprocess.run(get_args, capture_output=True, timeout=PROCESS_DEADLINE)
            assert proc.returncode == 0, f"{where}: {proc.stderr.decode()}"
            result = json.loads(proc.stdout)
            assert result["chunks_reused"] == len(held), where
            assert result["chunks_fetched"] == len(ids - held), where
            assert file_hash(out) == file_hash(sources[i]), where
            assert partials(outputs) == [], where
            out.unlink()

        assert run_cli("verify", home=client, timeout=PROCESS_DEADLINE).returncode == 0
    # Not timing assertions: kills that all came after the end, or never left a file half
    # stored, would test nothing.
    assert killed_running >= len(ops) // 2, f"{killed_running} kills hit a running process"
    assert cut_mid_file >= 2, f"{cut_mid_file} kills left a file partly stored (seed {seed})"
