"""A running chunkstore node: DHT, transfer server, announcing, and a local API.

`chunkstore serve` runs one per home. It writes `node.json` in the home so that CLI commands
on the same machine use it (its DHT, through the local API) instead of starting their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web

from chunkstore.dht import DhtNode, dht_key, load_contacts
from chunkstore.errors import ChunkstoreError, InputError
from chunkstore.objectid import looks_like_id
from chunkstore.store import KIND_MANIFEST, Store, pid_alive
from chunkstore.transfer import TransferServer

log = logging.getLogger(__name__)

NODE_FILE = "node.json"
CONTACTS_FILE = "contacts.json"
ANNOUNCE_BATCH = 256
ANNOUNCE_CONCURRENCY = 16
# Provider records live 24 h on other nodes (providers.py): re-announce well before.
REANNOUNCE_SECONDS = 6 * 3600.0
SAVE_CONTACTS_SECONDS = 60.0
IDLE_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class NodeInfo:
    """What `node.json` says about a running node."""

    pid: int
    host: str
    dht_port: int
    transfer_port: int
    api_url: str

    def dht_address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.dht_port}"


def running_node(home: Path) -> NodeInfo | None:
    """The node serving `home`, if one runs (a stale node.json is ignored)."""
    try:
        data = json.loads((home / NODE_FILE).read_text())
        info = NodeInfo(**data)
    except (OSError, ValueError, TypeError):
        return None
    return info if pid_alive(info.pid) else None


class Node:
    """Runs the DHT node, the transfer server and the announce loop for one store."""

    def __init__(self, store: Store, *, host: str = "0.0.0.0", port: int = 0,
                 bootstrap: list[tuple[str, int]] | None = None,
                 upload_rate: float | None = None, max_concurrent: int = 32,
                 reannounce_seconds: float = REANNOUNCE_SECONDS) -> None:
        self.store = store
        self.home = store.home
        self.host = host
        self.port = port
        self.bootstrap = list(bootstrap or [])
        self.reannounce_seconds = reannounce_seconds
        self.dht = DhtNode()
        self.transfer = TransferServer(store, upload_rate=upload_rate,
                                       max_concurrent=max_concurrent)
        self._api_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._published: dict[str, bytes] = {}
        self.info: NodeInfo | None = None
        self.announced = 0

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> NodeInfo:
        other = running_node(self.home)
        if other is not None and other.pid != os.getpid():
            raise InputError(f"a node (pid {other.pid}) already serves {self.home}")
        saved = load_contacts(self.home / CONTACTS_FILE)
        try:
            await self.transfer.start(self.host, self.port)
            joined = await self.dht.start(self.host, self.port, self.bootstrap + saved)
            api_port = await self._start_api()
        except BaseException:
            await self.transfer.stop()  # whatever started: nothing left listening
            await self.dht.stop()
            raise
        if self.bootstrap and not joined:
            log.warning("none of the bootstrap nodes answered; serving alone until peers "
                        "contact this node")
        self.info = NodeInfo(pid=os.getpid(), host=self.host, dht_port=self.dht.port,
                             transfer_port=self.transfer.port,
                             api_url=f"http://127.0.0.1:{api_port}")
        tmp = self.home / (NODE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self.info)))
        os.replace(tmp, self.home / NODE_FILE)
        # Records made by an earlier run name its old transfer port and may have expired:
        # announce everything again, as IPFS reprovides at start.
        self.requeue_everything()
        self._tasks = [asyncio.create_task(self._announce_loop()),
                       asyncio.create_task(self._save_contacts_loop())]
        return self.info

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            self.dht.save_contacts(self.home / CONTACTS_FILE)
        except (OSError, ChunkstoreError):
            log.warning("could not save routing contacts", exc_info=True)
        if self._api_runner is not None:
            await self._api_runner.cleanup()
        await self.transfer.stop()
        await self.dht.stop()
        info = running_node(self.home)
        if info is not None and info.pid == os.getpid():
            (self.home / NODE_FILE).unlink(missing_ok=True)

    # -- announcing -------------------------------------------------------------------------
    async def announce_pending(self) -> int:
        """Announce one batch of the store's announce queue; returns how many ids."""
        items = self.store.pending_announces(ANNOUNCE_BATCH)
        if items:
            await self.dht.announce_many([dht_key(oid) for oid, _ in items],
                                         self.transfer.port, concurrency=ANNOUNCE_CONCURRENCY)
            self.store.ack_announces(items)
            self.announced += len(items)
        await self.publish_names(any(kind == KIND_MANIFEST for _, kind in items))
        return len(items)

    async def publish_names(self, force: bool = False) -> None:
        for name, mid in self.store.names():
            if force or self._published.get(name) != mid:
                await self.dht.publish_name(name, mid.hex())
                self._published[name] = mid

    def requeue_everything(self) -> None:
        """Put every held object back in the announce queue (records expire elsewhere)."""
        self.store.queue_announce((mid for mid, _ in self.store.iter_manifests()), KIND_MANIFEST)
        self.store.queue_announce(self.store.chunk_ids())
        self._published.clear()

    async def _announce_loop(self) -> None:
        next_reannounce = time.monotonic() + self.reannounce_seconds
        while True:
            try:
                if time.monotonic() >= next_reannounce:
                    self.requeue_everything()
                    next_reannounce = time.monotonic() + self.reannounce_seconds
                if not await self.announce_pending():
                    await asyncio.sleep(IDLE_POLL_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad round must not end announcing for good
                log.exception("announce round failed")
                await asyncio.sleep(5)

    async def _save_contacts_loop(self) -> None:
        while True:
            await asyncio.sleep(SAVE_CONTACTS_SECONDS)
            try:
                self.dht.save_contacts(self.home / CONTACTS_FILE)
            except (OSError, ChunkstoreError):
                log.warning("could not save routing contacts", exc_info=True)

    # -- local API (127.0.0.1 only) ---------------------------------------------------------
    async def _start_api(self) -> int:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/dht/names/{name}", self._api_name)
        app.router.add_get("/dht/providers/{oid}", self._api_providers)
        app.router.add_get("/peers", self._api_peers)
        app.router.add_get("/node", self._api_node)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._api_runner = runner
        return runner.addresses[0][1]

    async def _api_name(self, request: web.Request) -> web.Response:
        mid = await self.dht.resolve_name(request.match_info["name"])
        if mid is None:
            raise web.HTTPNotFound()
        return web.json_response({"manifest_id": mid})

    async def _api_providers(self, request: web.Request) -> web.Response:
        oid = request.match_info["oid"]
        if not looks_like_id(oid):
            raise web.HTTPBadRequest()
        holders = await self.dht.find_providers(dht_key(bytes.fromhex(oid)), limit=64)
        return web.json_response([{"host": h.host, "port": h.port} for h in holders])

    async def _api_peers(self, request: web.Request) -> web.Response:
        return web.json_response([{"host": c.host, "port": c.port, "node_id": c.node_id.hex()}
                                  for c in self.dht.known_peers()])

    async def _api_node(self, request: web.Request) -> web.Response:
        return web.json_response({**asdict(self.info), "announced": self.announced,
                                  "bytes_served": self.transfer.bytes_served,
                                  "requests_served": self.transfer.requests_served})
