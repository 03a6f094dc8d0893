"""Network operations a program calls: serve a node, fetch a file, list holders and peers.

Each picks its way to the DHT: the node already serving the same home if there is one
(through its local API), else a short-lived DHT node joined through `bootstrap`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from chunkstore.dht import DhtNode
from chunkstore.directory import DhtDirectory, Directory, NodeApiDirectory
from chunkstore.download import Progress, fetch_file
from chunkstore.fetchresult import FetchResult
from chunkstore.errors import InputError
from chunkstore.node import Node, NodeInfo, running_node
from chunkstore.objectid import parse_id
from chunkstore.providers import Holder
from chunkstore.store import Store
from chunkstore.transfer import TransferClient


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@asynccontextmanager
async def open_directory(home: Path, bootstrap: list[tuple[str, int]]) -> AsyncIterator[Directory]:
    """The running node's DHT, or a short-lived DHT node joined through `bootstrap`."""
    info = running_node(home)
    if info is not None:
        directory = NodeApiDirectory(info.api_url)
        try:
            yield directory
        finally:
            await directory.close()
        return
    if not bootstrap:
        raise InputError(f"no node is serving {home} and no --bootstrap address was given: "
                         "run `chunkstore serve` or pass --bootstrap HOST:PORT")
    dht = DhtNode()
    # Stay on loopback when every peer is there (tests, the demo); else listen everywhere.
    host = "127.0.0.1" if all(_is_loopback(h) for h, _ in bootstrap) else "0.0.0.0"
    joined = await dht.start(host, 0, bootstrap)
    try:
        if not joined:
            raise InputError("none of the --bootstrap addresses answered: "
                             + ", ".join(f"{h}:{p}" for h, p in bootstrap))
        yield DhtDirectory(dht)
    finally:
        await dht.stop()


async def fetch(store: Store, name_or_id: str, output: Path | BinaryIO | None, *,
                bootstrap: list[tuple[str, int]] | None = None, force: bool = False,
                progress: Progress | None = None,
                on_total: Callable[[int], None] | None = None) -> FetchResult:
    """Fetch a file from the swarm into the store and to `output` (path, stream or None)."""
    async with open_directory(store.home, bootstrap or []) as directory, \
            TransferClient() as client:
        return await fetch_file(store, directory, client, name_or_id, output, force=force,
                                progress=progress, on_total=on_total)


async def providers(home: Path, object_id: str,
                    bootstrap: list[tuple[str, int]] | None = None) -> list[Holder]:
    """Holders the DHT knows for a chunk or manifest id."""
    oid = parse_id(object_id)
    async with open_directory(home, bootstrap or []) as directory:
        return await directory.find_providers(oid)


async def peers(home: Path) -> list[dict]:
    """The routing-table contacts of the node serving `home`."""
    info = running_node(home)
    if info is None:
        raise InputError(f"no node is serving {home}: run `chunkstore serve`")
    directory = NodeApiDirectory(info.api_url)
    try:
        data = await directory.get_json("/peers")
    finally:
        await directory.close()
    return data if isinstance(data, list) else []


async def serve(store: Store, *, host: str, port: int, bootstrap: list[tuple[str, int]],
                upload_rate: float | None, on_ready=None) -> None:
    """Run a node until SIGINT or SIGTERM, then shut it down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = Node(store, host=host, port=port, bootstrap=bootstrap, upload_rate=upload_rate)
    info: NodeInfo = await node.start()
    try:
        if on_ready is not None:
            on_ready(info)
        await stop.wait()
    finally:
        await node.stop()
