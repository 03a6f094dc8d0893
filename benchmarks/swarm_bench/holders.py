"""The chunkstore side of one measurement: H holder nodes and the fetcher's node, each a
`chunkstore serve` process on loopback (LocalSwarm) or in a namespace of a NetnsLab."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.swarm_bench.errors import BenchError
from benchmarks.swarm_bench.netns import NetnsLab, http_body, netns_prefix
from chunkstore.demo.local_swarm import LocalSwarm, ServeProcess, node_stats, providers_of
from chunkstore.net.node import CONTACTS_FILE
from chunkstore.net.node_file import NODE_FILE, api_request

READY_TIMEOUT = 60.0


class HolderNodes:
    """The holders of one measurement and the fresh node of its fetcher, on loopback or in
    the lab's namespaces; `close()` stops them all."""

    def __init__(self, root: Path, lab: NetnsLab | None) -> None:
        root.mkdir(parents=True)
        self.local = LocalSwarm(0, root=root)
        self.lab = lab
        self.where: dict[int, str | None] = {}  # node index -> namespace

    def start(
        self, home: Path, bootstrap: list[ServeProcess], upload_rate: float | None, ns: str | None
    ) -> ServeProcess:
        for stale in (CONTACTS_FILE, NODE_FILE):  # a reused home must not recall an old swarm
            (home / stale).unlink(missing_ok=True)
        addresses = [self.dht_address(n) for n in bootstrap]
        rate = str(int(upload_rate)) if upload_rate else None
        if ns is None:
            node = self.local.start_node(addresses, upload_rate=rate, home=home)
        else:  # inside namespace `ns`, listening on its address
            node = self.local.start_node(
                addresses,
                upload_rate=rate,
                home=home,
                host=self.lab.address(ns),
                prefix=netns_prefix(ns),
            )
        self.where[node.index] = ns
        return node

    def dht_address(self, node: ServeProcess) -> str:
        ns = self.where[node.index]
        return node.dht_address if ns is None else f"{self.lab.address(ns)}:{node.info.dht_port}"

    def transfer_address(self, node: ServeProcess) -> str:
        ns = self.where[node.index]
        return (
            node.transfer_address
            if ns is None
            else f"{self.lab.address(ns)}:{node.info.transfer_port}"
        )

    def api(self, node: ServeProcess, path: str) -> Any:
        """GET `path` (/node or /dht/providers/ID) from the node's local API."""
        ns = self.where[node.index]
        if ns is None:
            if path == "/node":
                return node_stats(node)
            return providers_of(node, path.rsplit("/", 1)[1])
        url, headers = api_request(node.info.api_url, path)
        body = http_body(ns, url, headers=headers)
        if body is None:
            raise BenchError(f"the local API of node {node.index} in {ns} does not answer")
        return json.loads(body)

    def wait_ready(
        self, holders: list[ServeProcess], fetcher: ServeProcess, manifest_id: str, objects: int
    ) -> None:
        """Until every holder has announced its `objects` ids and the fetcher's DHT finds all
        holders of the manifest."""
        deadline = time.monotonic() + READY_TIMEOUT
        # A lone holder asked by itself has nobody alive to announce to (a departed node may
        # have taken some records with it, or none): it answers for its own store instead.
        alone = holders == [fetcher]
        while True:
            announced = [self.api(h, "/node")["announced"] for h in holders]
            if alone or min(announced) >= objects:
                found = self.api(fetcher, f"/dht/providers/{manifest_id}")
                if len(found) >= len(holders):
                    return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"holders not ready after {READY_TIMEOUT:g} s: announced "
                    f"{announced} of {objects} ids"
                )
            time.sleep(0.1)

    def close(self) -> None:
        self.local.close()
