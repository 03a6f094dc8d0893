"""A running chunkstore node: DHT, transfer server, announcing, and a local API.

One runs per home (`chunkstore serve`, or `chunkstore.Node` in a program). It writes
`node.json` in the home so that commands on the same machine use it (its DHT, through the
local API on 127.0.0.1) instead of starting a DHT node of their own.

Announcing: the store's queue (new objects: complete files' manifests first, one lookup each,
then chunks in region batches), the re-announce round (every chunk held, in id order, spread
over the interval and resumed after a restart: announce_pacing.py), and this home's own
signed name records (re-signed before they expire; never names fetched from others). An id
leaves the queue only once a remote node accepted it; the rest is retried with backoff
(RetryBackoff), at once when a contact joins; ids of the round nobody accepted join the
queue. Meanwhile the node answers provider queries for what its store holds whole, and hands
its records to contacts that join (dht.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

from aiohttp import BasicAuth, web

from chunkstore.errors import ChunkstoreError, InputError, NetworkError
from chunkstore.local.identity import Identity, load_identity
from chunkstore.local.output import as_output
from chunkstore.local.own_names import read_own_record, record_own_name, refreshed
from chunkstore.local.store import KIND_CHUNK, KIND_MANIFEST, Store
from chunkstore.net.addresses import parse_addresses
from chunkstore.net.announce_pacing import AnnounceRound, due_now, next_round, round_to_run
from chunkstore.net.dht import Contact, DhtNode, OwnRecords, dht_key, load_contacts
from chunkstore.net.download import Progress, fetch_file
from chunkstore.net.lookup import DhtLookup
from chunkstore.net.node_file import (
    API_USER,
    NODE_FILE,  # noqa: F401 - re-exported: node.json is named through this module too
    NodeInfo,
    NodeLock,
    api_url,
    new_api_token,
    read_node_file,
    remove_node_file,
    running_node,  # noqa: F401 - re-exported, as NODE_FILE
    write_node_file,
)
from chunkstore.net.providers import Holder
from chunkstore.net.transfer_client import TransferClient
from chunkstore.net.transfer_server import TransferServer
from chunkstore.objects.ids import looks_like_id, parse_id
from chunkstore.objects.name_record import NameRecord
from chunkstore.results import GetResult

log = logging.getLogger(__name__)

CONTACTS_FILE = "contacts.json"
# Ids taken from the announce queue, or from the re-announce round, per batched announce: a
# batch costs a few lookups per keyspace region whatever its size (announce_sweep.py), so
# larger batches cost fewer datagrams per key; 16,384 DHT keys are ~330 KB in memory.
ANNOUNCE_BATCH = 16_384
# New files' manifests are announced one lookup each (the fast path), this many at once.
MANIFEST_CONCURRENCY = 16
# Provider records are valid 48 h (providers.py) and re-announced every 22 h: kubo's figures,
# chosen from measured DHT churn (a record stored on the k closest nodes is still on enough of
# them a day later). A record then outlives one missed round with 4 h to spare. Name records
# are re-signed on the same timer and valid 48 h too (objects/name_record.py).
REANNOUNCE_SECONDS = 22 * 3600.0
SAVE_CONTACTS_SECONDS = 60.0
IDLE_POLL_SECONDS = 0.25
# An announcement no remote node accepted stays queued and is retried after a delay doubling
# from the first to the second figure, and at once when the routing table gains a contact.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


class RetryBackoff:
    """When to retry announcements that no remote node accepted. Pure: time is passed in.

    Callers may rely on: `due` until the first `refused`; after each `refused` with no
    progress in between, not due for RETRY_FIRST_SECONDS, then twice that, and so on up to
    RETRY_MAX_SECONDS; `progressed` (something was accepted) starts the delays over, and
    `reset` (a new contact, a re-announce) also makes it due at once."""

    def __init__(self, first: float = RETRY_FIRST_SECONDS, most: float = RETRY_MAX_SECONDS) -> None:
        self.first = first
        self.most = most
        self.delay = first
        self.retry_at = -math.inf

    def due(self, now: float) -> bool:
        return now >= self.retry_at

    def refused(self, now: float) -> None:
        self.retry_at = now + self.delay
        self.delay = min(2 * self.delay, self.most)

    def progressed(self) -> None:
        self.delay = self.first

    def reset(self) -> None:
        self.delay = self.first
        self.retry_at = -math.inf


def _home_key(home: Path) -> Path:
    return home.resolve()


# The nodes running in this process, by home: a fetch on the same home goes through its DHT.
_running: dict[Path, Node] = {}


class Node:
    """A chunkstore node: the DHT, the transfer server, announcing, and a local API.

    Use as `async with chunkstore.Node(home, port=0) as node:`. While it runs, other nodes
    join through `node.dht_address` (`node.port` is its DHT port; with `port=0` the OS picks
    it), what the home holds is served and announced, and `await node.fetch(...)` gets a file
    through this node's own DHT. `home` is a path (str or PathLike, `~` expanded), a Store,
    or None for the default home. It installs no signal handlers: stopping it is the
    program's business (the CLI's `serve` stops it on SIGINT / SIGTERM).
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | Store | None = None,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        bootstrap: Iterable[str | tuple[str, int]] = (),
        upload_rate: float | None = None,
        max_concurrent: int = 32,
        reannounce_seconds: float = REANNOUNCE_SECONDS,
        announce_batch: int = ANNOUNCE_BATCH,
    ) -> None:
        if not 0 <= port < 65536:
            raise InputError(f"port must be 0..65535, not {port}")
        self._own_store = not isinstance(home, Store)
        self.store = home if isinstance(home, Store) else Store(home)
        self.home = self.store.home
        self.host = host
        self.requested_port = port
        self.bootstrap = parse_addresses(bootstrap)
        self.reannounce_seconds = reannounce_seconds
        if announce_batch < 1:
            raise InputError("announce_batch must be positive")
        self.announce_batch = announce_batch
        self._round: AnnounceRound | None = None  # set by start()
        self.dht = DhtNode(local_holdings=self._held_here, own_records=self._own_records)
        self.transfer = TransferServer(
            self.store, upload_rate=upload_rate, max_concurrent=max_concurrent
        )
        self._api_runner: web.AppRunner | None = None
        self._api_token = new_api_token()
        self._api_hosts: frozenset[str] = frozenset()  # Host headers the local API accepts
        self._lock: NodeLock | None = None
        self._tasks: list[asyncio.Task] = []
        self._published: dict[str, bytes] = {}  # records (encoded) some remote node stored
        self._tried: dict[str, bytes] = {}  # records (encoded) sent out at least once
        self._identity: Identity | None = None
        self._decoded: dict[bytes, NameRecord] = {}
        self.info: NodeInfo | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop it runs in
        self.announced = 0

    @classmethod
    def serving(cls, home: str | os.PathLike[str]) -> Node | None:
        """The node running in this process on `home`, if any."""
        return _running.get(_home_key(Path(home).expanduser()))

    # -- life cycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The DHT's UDP port: what other nodes give as bootstrap `HOST:PORT`."""
        return self._started().dht_port

    @property
    def transfer_port(self) -> int:
        """The TCP port chunks are served on."""
        return self._started().transfer_port

    @property
    def dht_address(self) -> str:
        """`HOST:PORT` for other nodes to bootstrap from (127.0.0.1 for a wildcard host)."""
        return self._started().dht_address()

    def _started(self) -> NodeInfo:
        if self.info is None:
            raise NetworkError("the node is not running")
        return self.info

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> NodeInfo:
        """Listen, join the DHT through `bootstrap` (and the contacts saved by an earlier
        run), and start announcing. Raises InputError when another node serves the home,
        NetworkError when a port cannot be bound; on any failure nothing is left running."""
        if Node.serving(self.home):
            raise InputError(f"a node (pid {os.getpid()}) already serves {self.home}")
        lock = await NodeLock.take(self.home)
        if lock is None:
            other = read_node_file(self.home)  # written by the holder once it listens
            pid = f" (pid {other.pid})" if other is not None else ""
            raise InputError(f"a node{pid} already serves {self.home}")
        self._lock = lock
        try:
            remove_node_file(self.home)  # left by a node that died: nobody holds the lock
            saved = load_contacts(self.home / CONTACTS_FILE)
            self._identity = load_identity(self.home)
            # Before the DHT answers anything: a store made before the `complete` table (or
            # a download stopped after its last chunk) learns which files it holds whole.
            self.store.record_complete_manifests()
            await self.transfer.start(self.host, self.requested_port)
            joined = await self.dht.start(self.host, self.requested_port, self.bootstrap + saved)
            api_port = await self._start_api()
            self.info = NodeInfo(
                pid=os.getpid(),
                host=self.host,
                dht_port=self.dht.port,
                transfer_port=self.transfer.port,
                api_url=api_url(api_port, self._api_token),
                advertised_host=self.dht.own_host or "",
            )
            self._write_node_file()
        except BaseException:
            await self._stop_listening()  # whatever started: nothing left listening
            self.info = None
            self._release_lock()
            if self._own_store:
                self.store.close()
            raise
        if self.bootstrap and not joined:
            log.warning(
                "none of the bootstrap nodes answered; serving alone until peers contact this node"
            )
        _running[_home_key(self.home)] = self
        self.loop = asyncio.get_running_loop()
        # The re-announce round of an earlier run goes on where it stopped if its records
        # still live and name this transfer port; otherwise everything held is announced
        # again at once (as IPFS reprovides at start).
        saved = self.store.announce_progress()
        current, new = round_to_run(
            AnnounceRound.decode(saved) if saved is not None else None,
            time.time(),
            self.transfer.port,
            self.reannounce_seconds,
            self.store.chunk_count(),
        )
        if new:
            self._begin_round(current)
        self._round = current
        self._tasks = [
            asyncio.create_task(self._announce_loop()),
            asyncio.create_task(self._save_contacts_loop()),
        ]
        return self.info

    async def stop(self) -> None:
        """Stop announcing, save the routing contacts, close every socket (idempotent)."""
        if self.info is None:
            return
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            self.dht.save_contacts(self.home / CONTACTS_FILE)
        except (OSError, ChunkstoreError):
            log.warning("could not save routing contacts", exc_info=True)
        await self._stop_listening()
        if _running.get(_home_key(self.home)) is self:
            del _running[_home_key(self.home)]
        self._release_lock()
        self.info = None
        if self._own_store:
            self.store.close()

    def _release_lock(self) -> None:
        """Remove node.json, then let go of the home's lock (in that order: a reader that
        sees the lock held may trust the node.json it read)."""
        if self._lock is not None:
            remove_node_file(self.home)
            self._lock.release()
            self._lock = None

    def _write_node_file(self) -> None:
        write_node_file(self.home, self.info)

    def _note_advertised_host(self) -> None:
        """Record in node.json the address peers observed, once the DHT has learnt it."""
        learnt = self.dht.own_host or ""
        if self.info is not None and learnt != self.info.advertised_host:
            self.info = dataclasses.replace(self.info, advertised_host=learnt)
            self._write_node_file()

    async def _stop_listening(self) -> None:
        if self._api_runner is not None:
            await self._api_runner.cleanup()
            self._api_runner = None
        await self.transfer.stop()
        await self.dht.stop()

    # -- what a program asks of a running node ----------------------------------------------
    async def fetch(
        self,
        name_or_id: str,
        output: str | os.PathLike[str] | BinaryIO | None,
        *,
        force: bool = False,
        progress: Progress | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> GetResult:
        """Get a file through this node's DHT into its store and to `output` (a path, written
        atomically, a binary stream, or None for the store only); this node then serves it.
        Raises what `chunkstore.fetch` raises."""
        self._started()
        async with TransferClient() as client:
            return await fetch_file(
                self.store,
                DhtLookup(self.dht),
                client,
                name_or_id,
                None if output is None else as_output(output),
                force=force,
                progress=progress,
                on_total=on_total,
            )

    async def providers(self, object_id: str, limit: int = 64) -> list[Holder]:
        """The holders the DHT knows for a chunk or manifest id (hex)."""
        self._started()
        return await self.dht.find_providers(dht_key(parse_id(object_id)), limit=limit)

    def peers(self) -> list[Contact]:
        """The contacts in this node's routing table."""
        self._started()
        return self.dht.known_peers()

    # -- announcing -------------------------------------------------------------------------
    def _held_here(self, key: bytes) -> int | None:
        """For the DHT: our transfer port if this home holds the object of `key` whole."""
        port = self.transfer.port
        if port is None:
            return None
        try:
            return port if self.store.holds(key) else None
        except Exception:  # a closed or failing store answers "not here", never drops the query
            log.warning("cannot read the store to answer a provider query", exc_info=True)
            return None

    def _own_records(self) -> OwnRecords:
        """For the DHT: what this node publishes, handed to contacts that join near it."""
        return OwnRecords(
            transfer_port=self.transfer.port,
            provider_keys=[dht_key(mid) for mid in self.store.complete_manifests()],
            names=self._own_name_records(),
        )

    def _own_name_records(self) -> list[NameRecord]:
        """This home's records, decoded once each (the announce loop asks every round)."""
        records = []
        decoded: dict[bytes, NameRecord] = {}
        for name, data in self.store.own_records():
            record = self._decoded.get(data) or read_own_record(self.store, name)
            if record is not None and record.encoded == data:
                decoded[data] = record
                records.append(record)
        self._decoded = decoded
        return records

    async def announce_pending(self) -> int:
        """Announce one batch of the store's announce queue, the round's chunks now due, and
        the names not yet stored by any remote node; returns how many ids a remote node
        accepted. Those none accepted stay queued (the background loop retries them with
        backoff); queued manifests whose file is not complete here are dropped from the
        queue, never announced."""
        accepted, _ = await self._announce_round(retry=True)
        return accepted

    async def _announce_round(self, retry: bool) -> tuple[int, int]:
        """New or changed names; with `retry`, also one batch of the queue, the round's due
        chunks and the names no remote node stored yet. Returns (ids accepted, ids and names
        nobody accepted)."""
        refused = await self.publish_names(retry=retry)
        if not retry:
            return 0, refused
        queued, queued_refused = await self._announce_queued()
        walked, walked_refused = await self._announce_round_due()
        return queued + walked, refused + queued_refused + walked_refused

    async def _announce_queued(self) -> tuple[int, int]:
        """One batch of the queue: manifests one lookup each (a new file is findable at
        once), chunks batched by region. Returns (accepted, refused)."""
        items = self.store.pending_announces(self.announce_batch)
        # Queued by an older version, or made incomplete since: a manifest is announced only
        # by a node holding the whole file (a get with enough manifest holders skips chunk
        # lookups).
        partial = [
            (oid, kind)
            for oid, kind in items
            if kind == KIND_MANIFEST and not self.store.is_complete(oid)
        ]
        if partial:
            self.store.ack_announces(partial)
            items = [item for item in items if item not in partial]
        if not items:
            return 0, 0
        port = self.transfer.port
        manifests = [oid for oid, kind in items if kind == KIND_MANIFEST]
        chunks = [oid for oid, kind in items if kind == KIND_CHUNK]
        slots = asyncio.Semaphore(MANIFEST_CONCURRENCY)

        async def one(mid: bytes) -> int:
            async with slots:
                return await self.dht.announce(dht_key(mid), port)

        counts = await asyncio.gather(*(one(mid) for mid in manifests))
        done = [(mid, KIND_MANIFEST) for mid, n in zip(manifests, counts, strict=True) if n > 0]
        if chunks:
            accepted = await self.dht.announce_many([dht_key(c) for c in chunks], port)
            done += [(cid, KIND_CHUNK) for cid in chunks if dht_key(cid) in accepted]
        self.store.ack_announces(done)
        self.announced += len(done)
        return len(done), len(items) - len(done)

    async def _announce_round_due(self) -> tuple[int, int]:
        """The re-announce round's chunks due now (announce_pacing.py), batched by region;
        progress saved in the store after each batch, ids nobody accepted queued for retry.
        Returns (accepted, refused)."""
        current = self._round
        if current is None:
            return 0, 0
        count = due_now(current, time.time(), self.reannounce_seconds, self.announce_batch)
        if count == 0:
            return 0, 0
        ids = self.store.chunk_ids_after(current.cursor, count)
        accepted: set[bytes] = set()
        if ids:
            accepted = await self.dht.announce_many([dht_key(c) for c in ids], current.port)
        refused = [cid for cid in ids if dht_key(cid) not in accepted]
        if refused:
            self.store.queue_announce(refused)
        self._round = current.advanced(ids[-1] if ids else b"", len(ids), len(ids) < count)
        self.store.save_announce_progress(self._round.encode())
        self.announced += len(ids) - len(refused)
        return len(ids) - len(refused), len(refused)

    async def flush_announcements(self) -> int:
        """Announce everything queued now (manifests and names first) instead of waiting for
        the background loop, e.g. right after adding files; returns how many ids went out.
        Stops when a batch is accepted by no remote node (what is left stays queued)."""
        self._started()
        total = 0
        while count := await self.announce_pending():
            total += count
        return total

    async def publish_names(self, force: bool = False, retry: bool = True) -> int:
        """Publish this home's own name records on the DHT: those new or changed since they
        were last sent, those no remote node stored yet (with `retry`), or all (with
        `force`). Records signed longer ago than the re-announce interval are re-signed
        first, removals are dropped once expired, and local names of no publisher (made by
        an older chunkstore) become this home's own. Names fetched from other publishers
        are never published. Returns how many of those sent no remote node stored."""
        identity = self._identity
        assert identity is not None, "set by start()"
        for name in self.store.unpinned_names():
            mid = self.store.lookup_name(name)
            if mid is not None and self.store.own_record(name) is None:
                record_own_name(self.store, identity, name, mid)
        refused = 0
        now = time.time()
        for record in self._own_name_records():
            if record.removed and record.expires <= now:
                self.store.drop_own_record(record.name, record.encoded)
                continue
            record = refreshed(self.store, identity, record, self.reannounce_seconds, now)
            name = record.name
            changed = self._tried.get(name) != record.encoded
            unpublished = self._published.get(name) != record.encoded
            if force or changed or (retry and unpublished):
                self._tried[name] = record.encoded
                if await self.dht.publish_record(record) > 0:
                    self._published[name] = record.encoded
                else:
                    refused += 1
        return refused

    def requeue_everything(self) -> None:
        """Announce every object held whole again from now on, as fast as batches allow:
        complete files' manifests through the queue, and every chunk (those of an
        interrupted download too) in a new re-announce round."""
        self._begin_round(
            AnnounceRound(
                started=time.time(),
                port=self.transfer.port,
                total=self.store.chunk_count(),
                paced=False,
            )
        )

    def _begin_round(self, current: AnnounceRound) -> None:
        """Start a re-announce round: saved at once (a restart resumes it), complete
        manifests queued (the fast path), names published again."""
        self._round = current
        self.store.save_announce_progress(current.encode())
        self.store.queue_announce(self.store.complete_manifests(), KIND_MANIFEST)
        self._published.clear()
        self._tried.clear()

    async def _announce_loop(self) -> None:
        backoff = RetryBackoff()
        gained = self.dht.contacts_gained
        while True:
            try:
                follow = next_round(
                    self._round, time.time(), self.reannounce_seconds, self.store.chunk_count()
                )
                if follow is not None:
                    self._begin_round(follow)
                    backoff.reset()
                now = time.monotonic()
                if self.dht.contacts_gained != gained:
                    gained = self.dht.contacts_gained
                    backoff.reset()  # someone new to tell: retry at once
                retrying = backoff.due(now)
                accepted, refused = await self._announce_round(retry=retrying)
                self._note_advertised_host()
                if retrying and refused and not accepted:
                    backoff.refused(time.monotonic())
                elif accepted:
                    backoff.progressed()
                    continue  # more may be queued
                await self.dht.wait_for_new_contact(gained, IDLE_POLL_SECONDS)
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
    # Listening on 127.0.0.1 keeps other machines out, not other local users nor web pages
    # (a page may send requests to 127.0.0.1, and DNS rebinding lets it read the answers):
    # every request must carry the token of node.json (readable by the home's owner only)
    # and name 127.0.0.1 or localhost as its Host.
    @web.middleware
    async def _api_guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.headers.get("Host", "") not in self._api_hosts:
            # A rebinding page's requests name its own host: refused before any work.
            raise web.HTTPForbidden(text="the local API answers only 127.0.0.1 or localhost")
        try:
            auth = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            auth = None
        if auth is None or not (
            auth.login == API_USER
            and hmac.compare_digest(auth.password.encode(), self._api_token.encode())
        ):
            raise web.HTTPUnauthorized(
                text="the local API needs the token in node.json (use its api_url)",
                headers={"WWW-Authenticate": 'Basic realm="chunkstore"'},
            )
        return await handler(request)

    async def _start_api(self) -> int:
        app = web.Application(client_max_size=1024, middlewares=[self._api_guard])
        app.router.add_get("/dht/names/{name}", self._api_name)
        app.router.add_get("/dht/providers/{oid}", self._api_providers)
        app.router.add_get("/peers", self._api_peers)
        app.router.add_get("/node", self._api_node)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._api_runner = runner  # before binding: a failed bind is cleaned up by stop
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        self._api_hosts = frozenset({f"127.0.0.1:{port}", f"localhost:{port}"})
        return port

    async def _api_name(self, request: web.Request) -> web.Response:
        records = await self.dht.find_name_records(request.match_info["name"])
        return web.json_response({"records": [r.encoded.hex() for r in records]})

    async def _api_providers(self, request: web.Request) -> web.Response:
        oid = request.match_info["oid"]
        if not looks_like_id(oid):
            raise web.HTTPBadRequest()
        try:
            limit = int(request.query.get("limit", "64"))
        except ValueError:
            raise web.HTTPBadRequest() from None
        if not 1 <= limit <= 64:
            raise web.HTTPBadRequest()
        # A small limit ends the lookup as soon as that many holders are known.
        holders = await self.dht.find_providers(dht_key(bytes.fromhex(oid)), limit=limit)
        return web.json_response([{"host": h.host, "port": h.port} for h in holders])

    async def _api_peers(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"host": c.host, "port": c.port, "node_id": c.node_id.hex()}
                for c in self.dht.known_peers()
            ]
        )

    async def _api_node(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                **asdict(self.info),
                "announced": self.announced,
                "bytes_served": self.transfer.bytes_served,
                "requests_served": self.transfer.requests_served,
            }
        )
