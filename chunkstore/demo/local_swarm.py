"""A swarm of chunkstore nodes on this machine: one `serve` process per node, 127.0.0.1 only.

Used by `chunkstore demo`, the swarm benchmark and the integration tests. Every process it
starts is stopped when the context exits, whatever happened.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chunkstore.errors import ChunkstoreError
from chunkstore.net.node_file import NodeInfo, api_get_json, running_node

START_TIMEOUT = 20.0


@dataclass
class ServeProcess:
    """One `chunkstore serve` process of a LocalSwarm, with what its node.json says."""

    index: int
    home: Path
    proc: subprocess.Popen
    info: NodeInfo

    @property
    def dht_address(self) -> str:
        return f"127.0.0.1:{self.info.dht_port}"

    @property
    def transfer_address(self) -> str:
        return f"127.0.0.1:{self.info.transfer_port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def serve_command(
    home: Path, bootstrap: list[str], upload_rate: str | None, host: str = "127.0.0.1"
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "chunkstore_cli",
        "serve",
        "--home",
        str(home),
        "--host",
        host,
        "--port",
        "0",
    ]
    for address in bootstrap:
        cmd += ["--bootstrap", address]
    if upload_rate:
        cmd += ["--upload-rate", upload_rate]
    return cmd


class LocalSwarm:
    """Start with `with LocalSwarm(n) as swarm:`; nodes are `swarm.nodes[i]`."""

    def __init__(
        self,
        count: int,
        *,
        root: Path | None = None,
        upload_rate: str | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.count = count
        self.upload_rate = upload_rate
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="chunkstore-swarm-")) if root is None else root
        self.log_dir = log_dir or self.root
        self.nodes: list[ServeProcess] = []

    def __enter__(self) -> LocalSwarm:
        try:
            first = self.start_node()
            for _ in range(self.count - 1):
                self.start_node([first.dht_address])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_node(
        self,
        bootstrap: list[str] | None = None,
        *,
        upload_rate: str | None = None,
        home: Path | None = None,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> ServeProcess:
        """Start one more `serve` process listening on `host` and wait until it is up.

        `prefix` goes before the command, e.g. `ip netns exec NAME` to run it elsewhere."""
        index = len(self.nodes)
        home = home or self.root / f"node{index}"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        cmd = serve_command(home, bootstrap or [], upload_rate or self.upload_rate, host)
        with open(self.log_dir / f"node{index}.log", "ab") as log:
            proc = subprocess.Popen(
                [*prefix, *cmd], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            info = running_node(home)
            if info is not None and info.pid == proc.pid:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                tail = (self.log_dir / f"node{index}.log").read_text(errors="replace")[-2000:]
                raise ChunkstoreError(f"node {index} did not start: {tail.strip()}")
            time.sleep(0.05)
        node = ServeProcess(index, home, proc, info)
        self.nodes.append(node)
        return node

    def stop_node(self, node: ServeProcess, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        return node.proc.returncode

    def close(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def node_stats(node: ServeProcess) -> dict:
    """The node's own counters (bytes served...), from its local API."""
    return api_get_json(node.info.api_url, "/node", timeout=5)  # type: ignore[return-value]


def providers_of(node: ServeProcess, object_id: str) -> list[dict]:
    return api_get_json(node.info.api_url, f"/dht/providers/{object_id}")  # type: ignore[return-value]


def wait_for_providers(
    node: ServeProcess,
    object_id: str,
    count: int = 1,
    *,
    including: ServeProcess | None = None,
    timeout: float = 30.0,
) -> list[dict]:
    """Poll `node`'s DHT until `object_id` has at least `count` holders (and `including`
    among them, when given); returns the holders found, even on time-out."""
    deadline = time.monotonic() + timeout
    while True:
        holders = providers_of(node, object_id)
        found = {f"{h['host']}:{h['port']}" for h in holders}
        if len(holders) >= count and (including is None or including.transfer_address in found):
            return holders
        if time.monotonic() > deadline:
            return holders
        time.sleep(0.2)
