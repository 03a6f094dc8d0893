"""Fetching a file from the network: many peers at once, every chunk verified.

name -> manifest id (DHT) -> manifest (from its holders, verified by id) -> holders of every
chunk not already local -> the scheduler's requests, carried out concurrently. Each verified
chunk goes into the store (so a killed get resumes from there) and into the output file at
its offset; the output gets its final name only when complete.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from chunkstore.errors import (
    CorruptChunk,
    CorruptManifest,
    MissingChunks,
    NetworkError,
    NotFound,
    PeerBusy,
    PeerMissing,
)
from chunkstore.local.output import Output, atomic_output
from chunkstore.local.pipeline import BackgroundWriter
from chunkstore.local.restore import restore
from chunkstore.local.store import Store
from chunkstore.net.lookup import Lookup
from chunkstore.net.providers import Holder
from chunkstore.net.scheduler import DownloadScheduler, FailureKind, Request
from chunkstore.net.transfer_client import TransferClient
from chunkstore.objects.codec import ChunkCodec
from chunkstore.objects.ids import looks_like_id
from chunkstore.objects.manifest import Manifest
from chunkstore.results import GetResult

Progress = Callable[[int], None]
# Verified chunks are written to LMDB in batches of about this many bytes (or every
# FLUSH_SECONDS): one transaction per chunk would cost a commit per MiB.
FLUSH_BYTES = 8 * 1024 * 1024
FLUSH_SECONDS = 0.5
WINDOW_MAX = 8
MAX_IN_FLIGHT = 24
# A get with no chunk delivered for this long stops, reporting what is missing.
STALL_SECONDS = 120.0
# With this many holders of the manifest, holders of single chunks are not looked up.
ENOUGH_SOURCES = 4
# Holder lookups for single chunks run in the background with this much concurrency.
LOOKUP_CONCURRENCY = 16


async def resolve_manifest_id(store: Store, lookup: Lookup, name_or_id: str) -> bytes:
    """A local name, a hex id, or a name published on the DHT, to a manifest id."""
    local = store.lookup_name(name_or_id)
    if local is not None:
        return local
    if looks_like_id(name_or_id):
        return bytes.fromhex(name_or_id)
    mid = await lookup.resolve_name(name_or_id)
    if mid is None:
        raise NotFound(f"no file named {name_or_id!r} locally or on the network")
    return bytes.fromhex(mid)


async def fetch_manifest(
    store: Store, lookup: Lookup, client: TransferClient, manifest_id: bytes
) -> tuple[Manifest, list[Holder]]:
    """The manifest (local, else from a holder, verified by id) and the holders found."""
    holders = await lookup.find_providers(manifest_id)
    manifest = store.get_manifest(manifest_id)
    if manifest is not None:
        return manifest, holders
    if not holders:
        raise NotFound(f"no holder of manifest {manifest_id.hex()} could be found")
    errors = []
    for holder in holders:
        try:
            data = await client.fetch_manifest(holder.host, holder.port, manifest_id)
            manifest = Manifest.from_bytes(data, manifest_id)
        except (NetworkError, CorruptManifest) as e:
            errors.append(str(e))
            continue
        store.put_manifest(manifest, pin=True, announce=False)  # announced once complete
        return manifest, holders
    raise NetworkError(f"no holder served manifest {manifest_id.hex()}: {'; '.join(errors)}")


class _ChunkFetch:
    """One download of the missing chunks of a manifest into the store and an output fd."""

    def __init__(
        self,
        store: Store,
        lookup: Lookup,
        client: TransferClient,
        manifest_id: bytes,
        manifest: Manifest,
        out_fd: int | None,
        progress: Progress | None,
    ) -> None:
        self.manifest_id = manifest_id
        self.store = store
        self.lookup = lookup
        self.client = client
        self.codec = ChunkCodec()
        self.out_fd = out_fd
        self.progress = progress
        # The scheduler works on distinct chunks: a chunk repeated in a file is fetched once.
        offsets: dict[bytes, list[int]] = {}
        sizes: dict[bytes, int] = {}
        for offset, ref in manifest.offsets():
            offsets.setdefault(ref.chunk_id, []).append(offset)
            sizes[ref.chunk_id] = ref.size
        missing = store.missing_chunks(offsets)
        self.present = [cid for cid in offsets if cid not in missing]
        self.units = [cid for cid in offsets if cid in missing]
        self.offsets = offsets
        self.sizes = [sizes[cid] for cid in self.units]
        # A dead holder is probed twice (after 2 s, then 4 s) before its chunks are given up:
        # a user waiting on a get wants "missing" in seconds, not minutes.
        # At most MAX_IN_FLIGHT chunks in flight over all peers bounds memory (8 peers with
        # full windows held ~150 MiB); a window of 8 matches the client's connections per peer.
        self.scheduler = DownloadScheduler(
            self.sizes,
            down_backoff=2.0,
            down_retries=2,
            window_max=WINDOW_MAX,
            max_in_flight=MAX_IN_FLIGHT,
        )
        self.pending: list[tuple[bytes, bytes, bytes | memoryview]] = []
        # Output writes and LMDB commits run on a thread of their own, a batch at a time:
        # inline they took a third of the event loop's time (a commit blocks for tens of ms,
        # a write costs ~1 ms/MB here), stalling every transfer in flight.
        self.writer = BackgroundWriter(self._write_batch, depth=1)
        self.pending_bytes = 0
        self.last_flush = time.monotonic()
        self.fetched_bytes = 0
        self.accepted: set[bytes] = set()

    def write_out(self, chunk_id: bytes, raw: bytes | memoryview) -> None:
        if self.out_fd is not None:
            for offset in self.offsets[chunk_id]:
                os.pwrite(self.out_fd, raw, offset)

    def _write_batch(self, batch: list[tuple[bytes, bytes, bytes | memoryview]]) -> None:
        """On the writer thread: verified chunks into the output and into the store."""
        for cid, _, raw in batch:
            self.write_out(cid, raw)
        self.store.put_chunks([(cid, stored) for cid, stored, _ in batch])

    def flush(self) -> None:
        if self.pending:
            self.writer.submit(self.pending)
            self.pending, self.pending_bytes = [], 0
        self.last_flush = time.monotonic()

    async def lookup_holders(self, refresh: bool = False) -> None:
        """Ask the DHT for the holders of each missing chunk, a few at a time.

        With `refresh`, first ask again for the manifest's holders: peers that joined or
        came back since the download started."""
        if refresh:
            try:
                for holder in await self.lookup.find_providers(self.manifest_id):
                    self.scheduler.add_peer_for_all(holder)
            except NetworkError:
                pass
        queue = [(i, cid) for i, cid in enumerate(self.units) if cid not in self.accepted]
        queue.reverse()

        async def worker() -> None:
            while queue:
                index, cid = queue.pop()
                try:
                    holders = await self.lookup.find_providers(cid)
                except NetworkError:
                    continue
                self.scheduler.add_holders(index, holders)

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(LOOKUP_CONCURRENCY, len(self.units))):
                tg.create_task(worker())

    async def fetch_one(
        self, req: Request
    ) -> tuple[Request, FailureKind | None, tuple[bytes, bytes | memoryview] | None]:
        """Fetch and verify one chunk; returns the failure, or (stored, raw) bytes."""
        cid = self.units[req.index]
        holder: Holder = req.peer
        try:
            stored = await self.client.fetch_chunk(
                holder.host, holder.port, cid, max_size=self.sizes[req.index] + 1
            )
        except PeerBusy:
            return req, FailureKind.BUSY, None
        except PeerMissing:  # it holds other chunks, maybe: only this one is not asked again
            return req, FailureKind.MISSING, None
        except NetworkError:  # refused, reset, timed out, a bad answer
            return req, FailureKind.ERROR, None
        try:
            # Inline on the loop: ~1 ms per MiB, cheaper than a thread hop per chunk here.
            raw = self.codec.decode_verified(cid, stored)
        except CorruptChunk:
            return req, FailureKind.CORRUPT, None
        if len(raw) != self.sizes[req.index]:
            return req, FailureKind.CORRUPT, None
        return req, None, (stored, raw)

    def _accept(self, cid: bytes, stored: bytes, raw: bytes | memoryview) -> int:
        self.accepted.add(cid)
        self.pending.append((cid, stored, raw))
        self.pending_bytes += len(raw)
        if self.progress:
            self.progress(len(raw) * len(self.offsets[cid]))
        if self.pending_bytes >= FLUSH_BYTES or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()
        return len(raw)

    async def run(
        self, manifest_holders: list[Holder], stall_seconds: float = STALL_SECONDS
    ) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        sched = self.scheduler
        for holder in manifest_holders:
            sched.add_peer_for_all(holder)
        # Holders of the manifest hold the whole file (a node announces a manifest only once
        # it has every chunk), so with enough of them the per-chunk lookups are skipped: on
        # a 512 MiB file they cost the local node ~0.5 CPU-s. A refresh does them anyway.
        wanted = self.units and len(manifest_holders) < ENOUGH_SOURCES
        lookups = asyncio.create_task(self.lookup_holders()) if wanted else None
        refreshes_left = 1
        last_progress = loop.time()
        tasks: dict[asyncio.Task, Request] = {}
        by_request: dict[Request, asyncio.Task] = {}
        try:
            while not sched.done:
                now = loop.time()
                if now - last_progress > stall_seconds:
                    break  # peers answer but deliver nothing (e.g. busy for ever): give up
                for req in sched.overdue(now):
                    task = by_request.pop(req, None)
                    if task is not None:
                        task.cancel()
                        tasks.pop(task, None)
                    sched.on_failure(req, now, FailureKind.TIMEOUT)
                for req in sched.next_requests(now):
                    task = asyncio.create_task(self.fetch_one(req))
                    tasks[task] = req
                    by_request[req] = task
                lookups_running = lookups is not None and not lookups.done()
                wakeup = sched.next_wakeup()
                if not tasks and wakeup is None and not lookups_running:
                    if not refreshes_left:
                        break  # nothing in flight, nothing to wait for: the rest is unfetchable
                    refreshes_left -= 1
                    lookups = asyncio.create_task(self.lookup_holders(refresh=True))
                    continue
                waiting: set[asyncio.Future] = set(tasks)
                if lookups_running:
                    waiting.add(lookups)
                timeout = None if wakeup is None else max(0.0, wakeup - loop.time())
                if not waiting:
                    await asyncio.sleep(timeout)  # a back-off or a deadline: nothing in flight
                    continue
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                now = loop.time()
                for task in done:
                    if task is lookups:
                        continue
                    if tasks.pop(task, None) is None:
                        continue  # a copy cancelled by a success earlier in this batch
                    req, failure, payload = task.result()
                    by_request.pop(req, None)
                    if failure is None:
                        cid = self.units[req.index]
                        if cid not in self.accepted:  # endgame copies may both arrive
                            self.fetched_bytes += self._accept(cid, *payload)
                            last_progress = now
                        for dup in sched.on_success(req, now):
                            dup_task = by_request.pop(dup, None)
                            if dup_task is not None:
                                dup_task.cancel()
                                tasks.pop(dup_task, None)
                    else:
                        sched.on_failure(req, now, failure)
        finally:
            for task in tasks:
                task.cancel()
            if lookups is not None:
                lookups.cancel()
            self.flush()
            self.writer.close()  # every verified chunk is in the store before we go on
        if not sched.done:
            raise MissingChunks(
                len(sched.unfetchable()) or sched.remaining, len(self.units) + len(self.present)
            )
        return {
            f"{peer.host}:{peer.port}": stats.bytes_delivered
            for peer, stats in sched.peer_stats().items()
            if stats.bytes_delivered
        }

    def write_present(self) -> None:
        """Copy the chunks that were already local into the output (a resumed download)."""
        for cid in self.present:
            stored = self.store.get_stored(cid)
            if stored is None:
                raise NotFound(f"chunk {cid.hex()} vanished from the store during the get")
            raw = self.codec.decode_verified(cid, stored)
            self.write_out(cid, raw)
            if self.progress:
                self.progress(len(raw) * len(self.offsets[cid]))


def _is_file_target(path: Path) -> bool:
    """True when `path` is (or will be created as) a regular file we can write at offsets."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


async def fetch_file(
    store: Store,
    lookup: Lookup,
    client: TransferClient,
    name_or_id: str,
    output: Output | None,
    *,
    force: bool = False,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    stall_seconds: float = STALL_SECONDS,
) -> GetResult:
    """Fetch `name_or_id` into the store and to `output`: a path (a regular file is written
    at chunk offsets as chunks arrive and renamed into place when complete), a stream
    (written in order once every chunk is in the store), or None (the store only).

    Raises NotFound (unknown name, no holder of the manifest), MissingChunks (some chunks had
    no reachable holder: what was fetched stays in the store, a retry resumes), InputError
    (output exists without `force`). A get that receives no chunk for `stall_seconds`
    stops with MissingChunks."""
    started = time.monotonic()
    manifest_id = await resolve_manifest_id(store, lookup, name_or_id)
    manifest, holders = await fetch_manifest(store, lookup, client, manifest_id)
    if on_total:
        on_total(manifest.size)
    name = name_or_id if not looks_like_id(name_or_id) else ""
    with store.lease():
        if isinstance(output, Path) and _is_file_target(output):
            with atomic_output(output, force=force) as f:
                os.ftruncate(f.fileno(), manifest.size)
                job = _ChunkFetch(
                    store, lookup, client, manifest_id, manifest, f.fileno(), progress
                )
                sources = await job.run(holders, stall_seconds)
                job.write_present()
        else:
            # Offsets cannot be used (a pipe, a device, stdout): fill the store, then stream.
            job = _ChunkFetch(
                store,
                lookup,
                client,
                manifest_id,
                manifest,
                None,
                progress if output is None else None,
            )
            sources = await job.run(holders, stall_seconds)
            if output is not None:
                restore(store, manifest, output, force=force, progress=progress)
        store.put_manifest(manifest, name=name or None, pin=True)
    store.sync()
    shown = "" if output is None else str(output) if isinstance(output, Path) else "-"
    return GetResult(
        name=name,
        manifest_id=manifest_id.hex(),
        size=manifest.size,
        chunks=len(manifest.chunks),
        chunks_fetched=len(job.units),
        chunks_reused=len(job.present),
        bytes_fetched=job.fetched_bytes,
        seconds=time.monotonic() - started,
        output=shown,
        sources=sources,
    )
