"""Fetching a file from the network: many peers at once, every chunk verified.

name -> manifest id (DHT) -> manifest (from its holders, verified by id) -> holders of every
chunk not already local -> the scheduler's requests, carried out concurrently. Each verified
chunk goes into the store (so a killed get resumes from there) and into the output file at
its offset; the output gets its final name only when complete.

Data starts to flow as early as it can: the manifest is fetched as soon as a few of its
holders are known, from several at once (the first valid answer wins), and chunks are
requested from those holders while further holders are still being looked up; whoever is
found later joins the download at once. The phases of a get (`GetResult.phases`) say where
the time before the first byte went.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from chunkstore.local.output import Output, PartialLog, atomic_output
from chunkstore.local.pipeline import BackgroundWriter
from chunkstore.local.restore import restore
from chunkstore.local.store import Store
from chunkstore.net.lookup import Lookup, first_providers
from chunkstore.net.name_resolution import resolve_target
from chunkstore.net.patience import DEFAULT_PATIENCE, Backoff, retry_until_found, waited
from chunkstore.net.providers import Holder
from chunkstore.net.scheduler import DownloadScheduler, FailureKind, Request
from chunkstore.net.transfer_client import TransferClient
from chunkstore.objects.codec import ChunkCodec
from chunkstore.objects.manifest import Manifest
from chunkstore.results import GetResult

Progress = Callable[[int], None]
# Verified chunks are written to LMDB in batches of about this many bytes (or every
# FLUSH_SECONDS): one transaction per chunk would cost a commit per MiB, and every commit
# flushes its pages (MDB_NOMETASYNC). A slow get (a crowd sharing its holders) commits by
# time, so FLUSH_SECONDS sets its fsync rate; a crash loses at most that much of its work.
FLUSH_BYTES = 8 * 1024 * 1024
FLUSH_SECONDS = 2.0
WINDOW_MAX = 8
MAX_IN_FLIGHT = 24
# A get with no chunk delivered for this long stops, reporting what is missing.
STALL_SECONDS = 120.0
# With this many holders of the manifest, holders of single chunks are not looked up.
ENOUGH_SOURCES = 4
# Holder lookups for single chunks run in the background with this much concurrency.
LOOKUP_CONCURRENCY = 16
# The manifest is fetched once this many of its holders are known (a full lookup goes on
# meanwhile: in a DHT with departed nodes it took 3-4 s, every round that asks one waiting
# a full RPC timeout). The DHT returns no more than this many early, and chunks come from
# those until the full lookup ends, so it is as many as make a download "enough sources".
FIRST_HOLDERS = ENOUGH_SOURCES
# The manifest is asked of this many holders at once, and of one more whenever this long
# passes without an answer. A manifest is small (~40 bytes per chunk), so asking a few at
# once costs little, and a silent holder never holds the get up for the 30 s of a request
# timeout.
MANIFEST_PARALLEL = 3
MANIFEST_STAGGER = 0.5


class PhaseClock:
    """When each phase of a get ended, in seconds since `started` (a time.monotonic(); default:
    now). `phases` keeps the first end of each phase, in the order they ended."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> float:
        """Record that `phase` ended now (unless it already did); the seconds since start."""
        seconds = time.monotonic() - self.started
        self.phases.setdefault(phase, seconds)
        return seconds


class HolderSearch:
    """The holders of one manifest: the first few a lookup finds, then, in the background,
    whatever a full lookup adds.

    Callers may rely on: `known` only grows, in the order found, without duplicates;
    `more` (while not None) is a task giving the holders the full lookup added, which never
    raises NetworkError; `close()` stops the search."""

    def __init__(
        self,
        lookup: Lookup,
        manifest_id: bytes,
        clock: PhaseClock,
        deadline: float | None = None,
    ) -> None:
        self.lookup = lookup
        self.manifest_id = manifest_id
        self.clock = clock
        self.deadline = deadline
        self.known: list[Holder] = []
        self.more: asyncio.Task[list[Holder]] | None = None
        self.asked = 0  # lookups made by start()
        self.asked_seconds = 0.0

    async def start(self) -> None:
        """The first holders (phase "manifest_holders"), asked for again with backoff while
        none is found, until the deadline; a full lookup follows in the background when the
        first answer may not be all (phase "manifest_holders_all")."""
        since = time.monotonic()
        (found, complete), self.asked = await retry_until_found(
            lambda: first_providers(self.lookup, self.manifest_id, FIRST_HOLDERS),
            lambda answer: bool(answer[0]),
            self.deadline,
        )
        self.asked_seconds = time.monotonic() - since
        self._add(found)
        self.clock.mark("manifest_holders")
        if not complete:
            self.more = asyncio.create_task(self._full_lookup())

    @property
    def searching(self) -> bool:
        return self.more is not None and not self.more.done()

    async def _full_lookup(self) -> list[Holder]:
        try:
            found = await self.lookup.find_providers(self.manifest_id)
        except NetworkError:
            found = []
        added = self._add(found)
        self.clock.mark("manifest_holders_all")
        return added

    def _add(self, holders: list[Holder]) -> list[Holder]:
        added = [h for h in dict.fromkeys(holders) if h not in self.known]
        self.known += added
        return added

    async def close(self) -> None:
        if self.searching:
            self.more.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.more


async def fetch_manifest(
    client: TransferClient, manifest_id: bytes, search: HolderSearch
) -> Manifest:
    """The manifest (verified by id) from whichever holder serves it first.

    MANIFEST_PARALLEL holders are asked at once; one more whenever an attempt fails, and
    whenever MANIFEST_STAGGER seconds pass without an answer (so a holder that accepts and
    stays silent delays nothing beyond that); holders the search finds meanwhile are asked
    too. The first valid answer wins and the other attempts are cancelled. Raises NotFound
    when no holder is known, NetworkError when none served a valid manifest."""
    tried: set[Holder] = set()
    attempts: dict[asyncio.Task[Manifest], Holder] = {}
    errors: list[str] = []

    def untried() -> Holder | None:
        return next((h for h in search.known if h not in tried), None)

    def ask(holder: Holder) -> None:
        tried.add(holder)
        attempts[asyncio.create_task(_manifest_from(client, holder, manifest_id))] = holder

    try:
        while True:
            while len(attempts) < MANIFEST_PARALLEL and (holder := untried()) is not None:
                ask(holder)
            more = search.more if search.searching else None
            if not attempts and more is None:
                break
            waiting: set[asyncio.Future] = set(attempts)
            if more is not None:
                waiting.add(more)
            stagger = MANIFEST_STAGGER if untried() is not None else None
            done, _ = await asyncio.wait(
                waiting, timeout=stagger, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                ask(untried())  # nobody answered in time: one more holder beside them
                continue
            for task in done:
                if attempts.pop(task, None) is None:
                    continue  # the search found more holders: asked on the next round
                try:
                    return task.result()
                except (NetworkError, CorruptManifest) as e:
                    errors.append(str(e))
    finally:
        for task in attempts:
            task.cancel()  # closes its connection: a silent holder is not waited for
        await asyncio.gather(*attempts, return_exceptions=True)
    if not tried:
        raise NotFound(
            f"no holder of manifest {manifest_id.hex()} could be found"
            + waited(search.asked, search.asked_seconds)
        )
    raise NetworkError(f"no holder served manifest {manifest_id.hex()}: {'; '.join(errors)}")


async def fetch_manifest_patiently(
    client: TransferClient, manifest_id: bytes, search: HolderSearch
) -> Manifest:
    """`fetch_manifest`, tried again with backoff until the search's deadline while every
    holder fails (busy, silent, refusing): in a flash crowd the holders are busy, not gone.
    Raises as `fetch_manifest` does once the deadline has passed."""
    backoff = Backoff(time.monotonic() if search.deadline is None else search.deadline)
    while True:
        try:
            return await fetch_manifest(client, manifest_id, search)
        except NetworkError as e:
            delay = backoff.next_delay(time.monotonic())
            if delay is None:
                if backoff.attempts > 1:
                    raise NetworkError(f"{e} (tried {backoff.attempts} times)") from None
                raise
        await asyncio.sleep(delay)


async def _manifest_from(client: TransferClient, holder: Holder, manifest_id: bytes) -> Manifest:
    data = await client.fetch_manifest(holder.host, holder.port, manifest_id)
    return Manifest.from_bytes(data, manifest_id)


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
        clock: PhaseClock,
    ) -> None:
        self.clock = clock
        self.first_byte: float | None = None
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
        self.size_of = sizes
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
        # Set when holders are learned while requests are in flight: the loop then issues
        # work to them at once, not when some request next ends (a silent holder's requests
        # may not end for a request timeout).
        self.news = asyncio.Event()

    def add_peer_for_all(self, holders: list[Holder]) -> None:
        for holder in holders:
            self.scheduler.add_peer_for_all(holder)
        if holders:
            self.news.set()

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
            with contextlib.suppress(NetworkError):
                self.add_peer_for_all(await self.lookup.find_providers(self.manifest_id))
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
                if holders:
                    self.news.set()

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(LOOKUP_CONCURRENCY, len(self.units))):
                tg.create_task(worker())
        self.clock.mark("chunk_holders")

    async def discover(self, search: HolderSearch) -> None:
        """In the background: the manifest holders a full lookup adds, then, with fewer than
        ENOUGH_SOURCES of them, the holders of every missing chunk."""
        if search.more is not None:
            self.add_peer_for_all(await search.more)
        # Holders of the manifest hold the whole file (a node announces a manifest only once
        # it has every chunk), so with enough of them the per-chunk lookups are skipped: on
        # a 512 MiB file they cost the local node ~0.5 CPU-s. A refresh does them anyway.
        if len(search.known) < ENOUGH_SOURCES:
            await self.lookup_holders()

    async def fetch_one(
        self, req: Request
    ) -> tuple[Request, FailureKind | None, tuple[bytes, bytes | memoryview] | float | None]:
        """Fetch and verify one chunk; returns the failure (with BUSY, the peer's Retry-After
        in seconds), or (stored, raw) bytes."""
        cid = self.units[req.index]
        holder: Holder = req.peer
        try:
            stored = await self.client.fetch_chunk(
                holder.host, holder.port, cid, max_size=self.sizes[req.index] + 1
            )
        except PeerBusy as e:
            return req, FailureKind.BUSY, e.retry_after
        except PeerMissing:  # it holds other chunks, maybe: only this one is not asked again
            return req, FailureKind.MISSING, None
        except NetworkError:  # refused, reset, timed out, a bad answer
            return req, FailureKind.ERROR, None
        try:
            # Inline on the loop: ~1 ms per MiB, cheaper than a thread hop per chunk here.
            # Bounded by the declared size (a bomb is refused from its frame header, or after
            # size + 1 bytes); any failure to decode, MemoryError included, is a CorruptChunk,
            # so the peer is banned and the chunk asked of another holder.
            raw = self.codec.decode_verified(cid, stored, self.sizes[req.index])
        except CorruptChunk:
            return req, FailureKind.CORRUPT, None
        return req, None, (stored, raw)

    def _accept(self, cid: bytes, stored: bytes, raw: bytes | memoryview) -> int:
        if self.first_byte is None:
            self.first_byte = self.clock.mark("first_chunk")
        self.accepted.add(cid)
        self.pending.append((cid, stored, raw))
        self.pending_bytes += len(raw)
        if self.progress:
            self.progress(len(raw) * len(self.offsets[cid]))
        if self.pending_bytes >= FLUSH_BYTES or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()
        return len(raw)

    async def run(
        self, search: HolderSearch, stall_seconds: float = STALL_SECONDS
    ) -> dict[str, int]:
        """Fetch every missing chunk from the search's holders (more join as they are found);
        the bytes each peer delivered. Raises MissingChunks."""
        loop = asyncio.get_running_loop()
        sched = self.scheduler
        self.add_peer_for_all(search.known)
        lookups = asyncio.create_task(self.discover(search)) if self.units else None
        refreshes_left = 1
        last_progress = loop.time()
        tasks: dict[asyncio.Task, Request] = {}
        by_request: dict[Request, asyncio.Task] = {}
        news: asyncio.Task | None = None
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
                if news is None or news.done():
                    # Every holder known so far was offered work above: wait for newer ones.
                    self.news.clear()
                    news = asyncio.create_task(self.news.wait())
                waiting: set[asyncio.Future] = {*tasks, news}
                if lookups_running:
                    waiting.add(lookups)
                timeout = None if wakeup is None else max(0.0, wakeup - loop.time())
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                now = loop.time()
                for task in done:
                    if task is lookups or task is news:
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
                        retry_after = payload if failure is FailureKind.BUSY else None
                        sched.on_failure(req, now, failure, retry_after)
            if sched.done and self.units:
                self.clock.mark("last_chunk")
        finally:
            for task in tasks:
                task.cancel()
            for task in (lookups, news):
                if task is not None:
                    task.cancel()
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
            raw = self.codec.decode_verified(cid, stored, self.size_of[cid])
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
    started: float | None = None,
    patience: float = DEFAULT_PATIENCE,
    hold_as: tuple[str, bytes] | None = None,
) -> GetResult:
    """Fetch `name_or_id` into the store and to `output`: a path (a regular file is written
    at chunk offsets as chunks arrive and renamed into place when complete), a stream
    (written in order once every chunk is in the store), or None (the store only).

    Raises NotFound (unknown name, no holder of the manifest), MissingChunks (some chunks had
    no reachable holder: what was fetched stays in the store, a retry resumes), InputError
    (output exists without `force`). A get that receives no chunk for `stall_seconds`
    stops with MissingChunks. The name, the manifest's holders and the manifest are asked
    for again, with backoff, while none is found (or every holder fails), until `patience`
    seconds after the start; the error then says how often it asked.

    Times in the result count from `started` (a `time.monotonic()` taken when the caller's
    get began, e.g. before it joined the DHT; default: the call of this function):
    `seconds` in all, `first_byte_seconds` to the first verified chunk from the network
    (None if none was needed), and `phases`, the time each phase ended, in the order they
    ended: "join" (this call began: a lookup opened by the caller is ready), "name" (the
    manifest id is known), "manifest_holders" (its first holders are known), "manifest"
    (it is verified, or was local), "first_chunk", "last_chunk" (every missing chunk is in
    the store), "done"; and, running beside the transfers when they happen,
    "manifest_holders_all" (a full lookup of the manifest's holders) and "chunk_holders"
    (the holders of every missing chunk, looked up with fewer than ENOUGH_SOURCES holders
    of the manifest).

    What holds the file in the store: while the get runs, its lease; from the moment its
    manifest is stored until it ends, a download entry (listed as incomplete, kept if the
    get fails so a retry resumes, dropped by `rm`); once complete, the name it was asked by
    (or `hold_as`: (name, publisher), a share link's), else a pin (a get by id)."""
    clock = PhaseClock(started)
    clock.mark("join")
    deadline = clock.started + patience
    target = await resolve_target(store, lookup, name_or_id, deadline)
    manifest_id = target.manifest_id
    clock.mark("name")
    search = HolderSearch(lookup, manifest_id, clock, deadline)
    name, publisher = hold_as if hold_as is not None else (target.name, target.publisher)
    try:
        await search.start()
        with store.lease() as lease:
            # In a thread: this waits while a gc runs, and the loop must not.
            manifest = await asyncio.to_thread(store.keep_file, lease, manifest_id)
            if manifest is None:
                manifest = await fetch_manifest_patiently(client, manifest_id, search)
            # Held from here by a download entry (announced once complete); storing it counts
            # up the generation, so a gc sweeping now marks its chunks before deleting more.
            store.put_manifest(manifest, announce=False, download=name)
            clock.mark("manifest")
            if on_total:
                on_total(manifest.size)
            if isinstance(output, Path) and _is_file_target(output):
                log = PartialLog(store.home)
                with atomic_output(output, force=force, key=manifest_id, log=log) as f:
                    # Not pre-sized: the file grows only as verified chunks are written at
                    # their offsets (a hostile manifest declaring terabytes made a 1.6 TB
                    # sparse file before any chunk was checked); the final size is set once
                    # every chunk is written.
                    job = _ChunkFetch(
                        store, lookup, client, manifest_id, manifest, f.fileno(), progress, clock
                    )
                    sources = await job.run(search, stall_seconds)
                    job.write_present()
                    os.ftruncate(f.fileno(), manifest.size)
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
                    clock,
                )
                sources = await job.run(search, stall_seconds)
                if output is not None:
                    restore(store, manifest, output, force=force, progress=progress)
            # Held by its name from now on (a get by id: by a pin), like an added file.
            store.put_manifest(manifest, name=name or None, pin=not name, publisher=publisher)
    finally:
        await search.close()
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
        seconds=clock.mark("done"),
        output=shown,
        sources=sources,
        first_byte_seconds=job.first_byte,
        phases=clock.phases,
    )
