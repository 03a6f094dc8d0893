"""The local content-addressed store: one LMDB environment per node home.

Named databases:
  chunks     chunk id -> stored form (codec byte + payload)
  chunk_index chunk id -> stored length (u32 LE), written in the same transaction as the chunk:
             existence and size checks read this small table, because py-lmdb pre-faults
             every page of each value it returns (even for a key-only cursor), so asking
             `chunks` whether a 1 MiB chunk exists would read a MiB
  manifests  manifest id -> manifest bytes
  names      name (utf-8) -> manifest id
  pins       manifest id -> b"" : held by the user's `pin` (and files fetched by id, which
             have no name to hold them)
  downloads  manifest id -> the name or id a get asked for (utf-8): a network get in
             progress or interrupted; holds the manifest and the chunks fetched so far until
             the get completes (the file is then held by its name, or a pin) or `rm` drops it
  complete   manifest id -> b"" : manifests whose every chunk is stored (the file is held
             whole), written in the transaction that makes it so: a node answers "I hold
             it" from this small table instead of reading the manifest's chunk list
  announce   kind byte + object id -> b"" : ids to announce on the DHT when a node runs;
             the kind leads the key so manifests (b"m") are read before chunks (b"c");
             and b"r" -> the progress of the running re-announce round (net/announce_pacing.py
             encodes it), so a restarted node resumes the round
  meta       b"generation" -> u64 LE, counted up by every stored manifest: gc notices a
             manifest stored while it sweeps and reads it before deleting anything more;
             b"holds" once the pins of earlier versions were upgraded (`_upgrade_holds`)
  published  name (utf-8) -> this home's latest signed name record of it (a removal too)
  name_pins  name (utf-8) -> publisher key of the file fetched under it (trust on first use;
             b"": fetched through a link that named no publisher, never published here)
  trusted    publisher key -> b"" : publishers the user trusts for every name

LMDB serialises writers across processes and gives readers consistent snapshots, so the CLI
and a running node can share one store. Durability (LMDB_SYNC): every commit flushes its data
pages and writes the meta page without flushing it (MDB_NOMETASYNC), so a killed process loses
nothing and a system crash can undo the last committed transaction but never corrupts the
store; `sync()` (which flushes the meta page too) is called before success is reported.
MDB_NOSYNC, used before, flushes nothing at commit: LMDB documents that a system crash can then
corrupt the database unless the filesystem preserves write order.

What is kept: a file (its manifest and chunks) is kept while a name, a pin or a download
entry holds it, or a live lease (local/leases.py) covers it; releasing the last hold drops
the manifest at once (so the node stops announcing and serving it) unless a lease covers
it, and `gc` frees every chunk nothing kept references, then gives the space back to the
filesystem by compacting the LMDB file when no other process has the store open (every
process holding the store open holds `store.lock` shared).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import lmdb

from chunkstore.errors import ChunkstoreError, InputError, NotFound, StoreFull
from chunkstore.local.leases import (
    COVER_CHUNK,
    COVER_MANIFEST,
    Lease,
    LeaseScan,
    gc_exclusive,
    live_manifests,
    only_gc,
    try_flock,
)
from chunkstore.local.memory import MappedFile
from chunkstore.objects.ids import looks_like_id
from chunkstore.objects.manifest import Manifest
from chunkstore.objects.name_syntax import validate_name
from chunkstore.results import GcResult

# The map is virtual address space, not disk: Linux files stay sparse. Start large so growth
# (which needs every transaction of this process closed) is rare, and double when full.
INITIAL_MAP_SIZE = 1 << 40
# Below this much free space a failed write is taken to be a full disk.
LOW_DISK_BYTES = 64 * 1024 * 1024
KIND_CHUNK = b"c"
KIND_MANIFEST = b"m"
ANNOUNCE_ROUND_KEY = b"r"  # in the announce table: never a kind + id (ids are 32 bytes)
DATABASES = (
    "chunks",
    "chunk_index",
    "manifests",
    "names",
    "pins",
    "complete",
    "announce",
    "downloads",
    "meta",
    "published",
    "name_pins",
    "trusted",
)
# py-lmdb's names for MDB_NOMETASYNC: flush data at every commit, the meta page at the next
# commit or `sync()`. (benchmarks/ingest.py swaps in the old {"sync": False} to show the cost.)
LMDB_SYNC: dict[str, bool] = {"sync": True, "metasync": False}
T = TypeVar("T")
log = logging.getLogger(__name__)
_LENGTH = struct.Struct("<I")
_GENERATION = struct.Struct("<Q")
GENERATION_KEY = b"generation"
HOLDS_KEY = b"holds"  # present once pins made by earlier versions were upgraded
STORE_LOCK = "store.lock"


def default_home() -> Path:
    """$CHUNKSTORE_HOME, else ~/.chunkstore."""
    return Path(os.environ.get("CHUNKSTORE_HOME") or "~/.chunkstore").expanduser()


def _tighten(path: Path, mode: int) -> None:
    """Take group and other permissions off `path` if it is ours and has any.

    Homes and stores made by earlier versions were 0755 / 0644: every local user could read
    every stored file. They are tightened once, at open, rather than left as they are: the
    home is chunkstore's own directory and holds the API token (node.json) and the
    publisher key, so no setup wants them shared; one owned by someone else is left alone."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            path.chmod(mode)
    except FileNotFoundError:
        pass


def _private_directory(path: Path, parents: bool = False) -> None:
    """Make directory `path` (mode 0700) if missing, else tighten it to 0700."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    _tighten(path, 0o700)


class _Environment:
    """The LMDB environment of one store directory and its named databases."""

    def __init__(self, path: Path) -> None:
        # readahead=False: lookups touch a few pages each; the kernel's readahead would
        # map 64 KiB around every one (more I/O, and RSS that grows with the store).
        self.env = lmdb.open(
            str(path),
            map_size=INITIAL_MAP_SIZE,
            max_dbs=12,
            **LMDB_SYNC,
            max_readers=256,
            readahead=False,
            mode=0o600,  # the files of a new store: every stored file is in them
        )
        for name in ("data.mdb", "lock.mdb"):
            _tighten(path / name, 0o600)
        self.mapped = MappedFile(str(path / "data.mdb"))
        self.dbs = {name: self.env.open_db(name.encode()) for name in DATABASES}
        self.handles = 0
        self.lock_fd = -1  # store.lock, held shared while this environment is open


# LMDB must not open one environment twice in a process (closing either copy would drop the
# other's locks), yet a program may hold a Node and call chunkstore.add on the same home:
# every Store of a directory in this process shares one environment, closed with the last.
_environments: dict[Path, _Environment] = {}
_environments_lock = threading.Lock()


def _hold_store_open(path: Path) -> int:
    """Take `store.lock` shared, for as long as this process has the environment open: gc
    compacts (replaces the data file) only when it alone holds it. Waits while a compaction
    runs, so nobody opens the file being replaced."""
    fd = os.open(path / STORE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Store:
    """A handle on the LMDB store of one home. Thread-safe for concurrent readers and one
    writer thread; several processes may open the same home, and several handles in one
    process share one environment. `~` in `home` is expanded."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        path = self.home / "store"
        with _environments_lock:
            try:
                _private_directory(self.home, parents=True)
                _private_directory(path)
                key = path.resolve()
                shared = _environments.get(key)
                if shared is None:
                    lock_fd = _hold_store_open(path)
                    try:
                        shared = _Environment(path)
                    except BaseException:
                        os.close(lock_fd)
                        raise
                    shared.lock_fd = lock_fd
                    _environments[key] = shared
                    fresh = True
                else:
                    fresh = False
            except (OSError, lmdb.Error) as e:
                raise InputError(f"cannot open the store at {path}: {e}") from None
            shared.handles += 1
        self._key: Path | None = key
        self._bind(shared)
        if fresh:
            self._upgrade_holds()

    def _upgrade_holds(self) -> None:
        """Once per store: turn the pins earlier versions made on every network get (there
        was no `pin` command) into what holds such a file now: its name, or (no name) a
        download entry while it is incomplete; a pinned complete file fetched by id stays
        pinned, as a get by id leaves it now."""
        with self._read() as txn:
            if txn.get(HOLDS_KEY, db=self._meta) is not None:
                return

        def body(txn: lmdb.Transaction) -> None:
            if txn.get(HOLDS_KEY, db=self._meta) is not None:
                return  # another process did it meanwhile
            named = {bytes(v) for v in txn.cursor(db=self._names).iternext(keys=False)}
            for mid in [bytes(k) for k in txn.cursor(db=self._pins).iternext(values=False)]:
                if mid in named:
                    txn.delete(mid, db=self._pins)
                elif txn.get(mid, db=self._complete) is None:
                    txn.delete(mid, db=self._pins)
                    txn.put(mid, b"", db=self._downloads)
            txn.put(HOLDS_KEY, b"1", db=self._meta)

        with contextlib.suppress(ChunkstoreError):  # a full disk: the old pins keep holding
            self._transact(body)

    def _bind(self, shared: _Environment) -> None:
        self.env = shared.env
        self._mapped = shared.mapped
        self._chunks = shared.dbs["chunks"]
        self._index = shared.dbs["chunk_index"]
        self._manifests = shared.dbs["manifests"]
        self._names = shared.dbs["names"]
        self._pins = shared.dbs["pins"]
        self._complete = shared.dbs["complete"]
        self._announce = shared.dbs["announce"]
        self._downloads = shared.dbs["downloads"]
        self._meta = shared.dbs["meta"]
        self._published = shared.dbs["published"]
        self._name_pins = shared.dbs["name_pins"]
        self._trusted = shared.dbs["trusted"]

    # -- life cycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Let go of this handle (closing twice is harmless); the environment closes with the
        last handle of this process."""
        with _environments_lock:
            key, self._key = self._key, None
            if key is None:
                return
            shared = _environments[key]
            shared.handles -= 1
            if shared.handles == 0:
                del _environments[key]
                shared.env.close()
                os.close(shared.lock_fd)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def release_pages(self) -> None:
        """Let go of the store pages this process has read (they stay in the page cache).

        Called every few dozen MiB by long reads so a reader's RSS stays bounded."""
        self._mapped.release()

    def sync(self) -> None:
        """Flush to disk: call before telling a user their data is safe."""
        self.env.sync(True)

    def _transact(self, body: Callable[[lmdb.Transaction], T]) -> T:
        """Run `body` in a write transaction, retried after growing a full map.

        A full disk becomes StoreFull; LMDB aborts the transaction, so the store keeps its
        last committed state."""
        for _ in range(8):
            try:
                with self.env.begin(write=True) as txn:
                    return body(txn)
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
                self._mapped.forget()
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)  # another process grew the map: adopt its size
                self._mapped.forget()
            except lmdb.Error as e:
                # LMDB reports a short write on a full disk as EIO: check the disk itself.
                if "No space left" in str(e) or self._disk_nearly_full():
                    raise StoreFull(
                        f"disk full while writing to {self.home}: the store keeps "
                        "its last complete state"
                    ) from None
                raise ChunkstoreError(f"store write failed: {e}") from None
        raise StoreFull(f"the store at {self.home} could not grow its map")

    def _disk_nearly_full(self) -> bool:
        try:
            st = os.statvfs(self.home)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < LOW_DISK_BYTES

    def _read(self) -> lmdb.Transaction:
        try:
            return self.env.begin(buffers=False)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin(buffers=False)

    # -- chunks -----------------------------------------------------------------------------
    def has_chunk(self, chunk_id: bytes) -> bool:
        """True when the chunk is stored."""
        # The small index, not `chunks`: py-lmdb would page in the whole MiB-sized value to
        # answer yes or no.
        with self._read() as txn:
            return txn.get(chunk_id, db=self._index) is not None

    def missing_chunks(self, chunk_ids: Iterable[bytes]) -> set[bytes]:
        """The ids of `chunk_ids` that are not stored."""
        with self._read() as txn:
            return {c for c in chunk_ids if txn.get(c, db=self._index) is None}

    def get_stored(self, chunk_id: bytes) -> bytes | None:
        """The stored form of a chunk (codec byte + payload), or None."""
        with self._read() as txn:
            return txn.get(chunk_id, db=self._chunks)

    def put_chunks(self, items: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Store (chunk id, stored form) pairs in one transaction; queue new ones for announce.

        Returns (new chunks, their stored bytes); chunks already present are left untouched.
        """

        def body(txn: lmdb.Transaction) -> tuple[int, int]:
            new = new_bytes = 0
            for cid, stored in items:
                if txn.put(cid, stored, db=self._chunks, overwrite=False):
                    txn.put(cid, _LENGTH.pack(len(stored)), db=self._index)
                    new += 1
                    new_bytes += len(stored)
                    txn.put(KIND_CHUNK + cid, b"", db=self._announce)
            return new, new_bytes

        return self._transact(body)

    def stored_size(self, chunk_ids: Iterable[bytes]) -> int:
        """Stored bytes of the distinct chunks of `chunk_ids` that are present."""
        with self._read() as txn:
            lengths = (txn.get(c, db=self._index) for c in set(chunk_ids))
            return sum(_LENGTH.unpack(n)[0] for n in lengths if n is not None)

    def iter_chunks(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (chunk id, stored form), read in small snapshots so memory stays flat."""
        last = b""
        while True:
            batch: list[tuple[bytes, bytes]] = []
            with self._read() as txn:
                cur = txn.cursor(db=self._chunks)
                found = cur.set_range(last) if last else cur.first()
                while found and len(batch) < 64:
                    key = cur.key()
                    if key != last:
                        batch.append((key, cur.value()))
                    found = cur.next()
            if not batch:
                return
            yield from batch
            last = batch[-1][0]

    # -- manifests and names ----------------------------------------------------------------
    def put_manifest(
        self,
        manifest: Manifest,
        name: str | None = None,
        pin: bool = False,
        announce: bool = True,
        publisher: bytes | None = None,
        download: str | None = None,
    ) -> bytes:
        """Store a manifest (and point `name` at it) atomically; returns its id.

        What holds it (see the module's docstring): `name`, `pin`, or `download` (the name
        or id a network get in progress asked for: held until the get ends, listed as
        incomplete meanwhile). A name or pin ends a download entry of the manifest.

        With announce=True (the default), a manifest whose every chunk is stored is recorded
        as complete and queued for announcing, in the same transaction; one with chunks
        missing is neither (a later put_manifest, or `record_complete_manifests`, records
        it once they are all there). announce=False is for a download in progress: it holds
        the manifest but not yet the file, and a peer that announced it would be asked for
        chunks it does not have. `publisher` (with `name`) pins the name to the publisher
        whose record it was fetched by (b"": none known), in the same transaction."""
        data = manifest.to_bytes()
        mid = manifest.id
        key = validate_name(name).encode() if name is not None else None
        chunk_ids = {r.chunk_id for r in manifest.chunks}

        def body(txn: lmdb.Transaction) -> None:
            txn.put(mid, data, db=self._manifests, overwrite=False)
            if (
                announce
                and txn.get(mid, db=self._complete) is None
                and all(txn.get(cid, db=self._index) is not None for cid in chunk_ids)
            ):
                txn.put(mid, b"", db=self._complete)
                txn.put(KIND_MANIFEST + mid, b"", db=self._announce)
            if key is not None:
                txn.put(key, mid, db=self._names)
                if publisher is not None:
                    txn.put(key, publisher, db=self._name_pins)
            if pin:
                txn.put(mid, b"", db=self._pins)
            if download is not None:
                txn.put(mid, download.encode(), db=self._downloads)
            elif key is not None or pin:
                txn.delete(mid, db=self._downloads)
            self._count_manifest(txn)

        self._transact(body)
        return mid

    def _count_manifest(self, txn: lmdb.Transaction) -> None:
        """Count a stored manifest up in the generation a sweeping gc checks."""
        value = txn.get(GENERATION_KEY, db=self._meta)
        n = _GENERATION.unpack(value)[0] if value is not None else 0
        txn.put(GENERATION_KEY, _GENERATION.pack(n + 1), db=self._meta)

    def _generation(self, txn: lmdb.Transaction) -> int:
        value = txn.get(GENERATION_KEY, db=self._meta)
        return _GENERATION.unpack(value)[0] if value is not None else 0

    def is_complete(self, manifest_id: bytes) -> bool:
        """True when the manifest is recorded as complete (every chunk of its file stored)."""
        with self._read() as txn:
            return txn.get(manifest_id, db=self._complete) is not None

    def complete_manifests(self) -> list[bytes]:
        """The ids of every manifest recorded as complete."""
        with self._read() as txn:
            return [bytes(k) for k in txn.cursor(db=self._complete).iternext(values=False)]

    def holds(self, prefix: bytes) -> bool:
        """True when a chunk, or a complete manifest, whose id starts with `prefix` is stored.

        DHT keys are the first 20 bytes of an id, so a node answers for its own store with
        this: two index lookups, whatever the size of the store or of the file."""
        with self._read() as txn:
            for db in (self._index, self._complete):
                cursor = txn.cursor(db=db)
                if cursor.set_range(prefix) and cursor.key()[: len(prefix)] == prefix:
                    return True
        return False

    def record_complete_manifests(self) -> int:
        """Record as complete every stored manifest whose chunks are all present but which is
        not recorded yet (stores made before the `complete` table, a download that got every
        chunk but was stopped before its end); returns how many were recorded. Nothing is
        queued for announcing: a node requeues complete manifests when it starts."""
        with self._read() as txn:
            candidates = [
                bytes(k)
                for k in txn.cursor(db=self._manifests).iternext(values=False)
                if txn.get(k, db=self._complete) is None
            ]
        found = []
        for mid in candidates:
            manifest = self.get_manifest(mid)
            if manifest is not None and not self.missing_chunks(
                r.chunk_id for r in manifest.chunks
            ):
                found.append(mid)

        def body(txn: lmdb.Transaction) -> int:
            recorded = 0
            held = self._held_manifests(txn)
            for mid in found:
                # still stored and held? an `rm` may have released it since the snapshot
                if txn.get(mid, db=self._manifests) is not None and mid in held:
                    recorded += txn.put(mid, b"", db=self._complete)
            return recorded

        return self._transact(body) if found else 0

    def get_manifest(self, manifest_id: bytes) -> Manifest | None:
        """The stored manifest, verified against its id, or None."""
        with self._read() as txn:
            data = txn.get(manifest_id, db=self._manifests)
        return None if data is None else Manifest.from_bytes(data, manifest_id)

    def get_manifest_bytes(self, manifest_id: bytes) -> bytes | None:
        """The stored manifest's encoding as it is (what peers are sent), or None."""
        with self._read() as txn:
            return txn.get(manifest_id, db=self._manifests)

    def resolve(self, name_or_id: str) -> tuple[bytes, Manifest]:
        """A name, or a full hex manifest id, to (manifest id, manifest); raises NotFound."""
        with self._read() as txn:
            mid = txn.get(name_or_id.encode(), db=self._names)
        if mid is None and looks_like_id(name_or_id):
            mid = bytes.fromhex(name_or_id)
        manifest = self.get_manifest(mid) if mid is not None else None
        if manifest is None:
            raise NotFound(f"no file named or with id {name_or_id!r} in the store at {self.home}")
        return mid, manifest

    def lookup_name(self, name: str) -> bytes | None:
        """The manifest id a local name points at, or None."""
        with self._read() as txn:
            return txn.get(name.encode(), db=self._names)

    def names(self) -> list[tuple[str, bytes]]:
        """Every (name, manifest id), in name order."""
        with self._read() as txn:
            return [(k.decode(), v) for k, v in txn.cursor(db=self._names)]

    def remove_name(self, name: str) -> bytes:
        """Drop a name and the downloads asked for under it; the manifest it pointed at
        goes too unless another name, a pin, a download or a live lease keeps it. Returns
        the manifest id (for a download only: the download's); raises NotFound.

        Chunks are freed by `gc`, as in git and restic, so `rm` is instant and re-adding the
        file before a gc rewrites nothing."""
        key = name.encode()

        def body(txn: lmdb.Transaction) -> list[bytes]:
            released = []
            mid = txn.pop(key, db=self._names)
            if mid is not None:
                txn.delete(key, db=self._name_pins)
                released.append(bytes(mid))
            for oid, asked in list(txn.cursor(db=self._downloads)):
                if asked == key:
                    txn.delete(oid, db=self._downloads)
                    released.append(bytes(oid))
            if not released:
                raise NotFound(f"no file named {name!r}")
            return released

        released = self._transact(body)
        self._drop_unheld(released)
        return released[0]

    def remove_file(self, manifest_id: bytes) -> list[str]:
        """Release the file `manifest_id` from every hold: the names pointing at it (returned,
        in order), its pin and its download entry; the manifest goes unless a live lease
        covers it. Raises NotFound when nothing held it."""

        def body(txn: lmdb.Transaction) -> list[str]:
            names = [bytes(k) for k, v in txn.cursor(db=self._names) if v == manifest_id]
            for key in names:
                txn.delete(key, db=self._names)
                txn.delete(key, db=self._name_pins)
            pinned = txn.delete(manifest_id, db=self._pins)
            downloading = txn.delete(manifest_id, db=self._downloads)
            if not (names or pinned or downloading):
                raise NotFound(f"no file with id {manifest_id.hex()} is held here")
            return [k.decode() for k in names]

        names = self._transact(body)
        self._drop_unheld([manifest_id])
        return names

    def pin(self, manifest_id: bytes) -> bool:
        """Hold a stored manifest (and its file) by a pin; False if it was pinned already.
        Raises NotFound when the manifest is not stored."""

        def body(txn: lmdb.Transaction) -> bool:
            if txn.get(manifest_id, db=self._manifests) is None:
                raise NotFound(f"no manifest {manifest_id.hex()} in the store at {self.home}")
            return txn.put(manifest_id, b"", db=self._pins, overwrite=False)

        return self._transact(body)

    def unpin(self, manifest_id: bytes) -> bool:
        """Drop a pin (the file goes with it unless a name, a download or a lease holds it);
        False if it was not pinned."""
        removed = self._transact(lambda txn: txn.delete(manifest_id, db=self._pins))
        if removed:
            self._drop_unheld([manifest_id])
        return removed

    def pins(self) -> list[bytes]:
        """The pinned manifest ids."""
        with self._read() as txn:
            return [bytes(k) for k in txn.cursor(db=self._pins).iternext(values=False)]

    def downloads(self) -> list[tuple[bytes, str]]:
        """Every (manifest id, what the get asked for) of a download not completed."""
        with self._read() as txn:
            return [(bytes(k), bytes(v).decode()) for k, v in txn.cursor(db=self._downloads)]

    def is_pinned(self, manifest_id: bytes) -> bool:
        with self._read() as txn:
            return txn.get(manifest_id, db=self._pins) is not None

    def _held_manifests(self, txn: lmdb.Transaction) -> set[bytes]:
        """The manifests a name, a pin or a download entry holds."""
        held = {bytes(v) for v in txn.cursor(db=self._names).iternext(keys=False)}
        for db in (self._pins, self._downloads):
            held.update(bytes(k) for k in txn.cursor(db=db).iternext(values=False))
        return held

    def _drop_unheld(self, manifest_ids: Iterable[bytes]) -> int:
        """Delete the manifests of `manifest_ids` nothing holds and no live lease covers (no
        longer announced or served as files); their chunks wait for gc. Returns how many."""
        # Exclusive with gc and with an operation looking at the store after recording its
        # lease: a lease recorded before the look below is seen; one recorded after it
        # finds the manifest gone.
        with gc_exclusive(self.home, wait=True):
            return self._drop_unheld_now(set(manifest_ids), live_manifests(self.home))

    def _drop_unheld_now(self, wanted: set[bytes], leased: set[bytes]) -> int:
        """`_drop_unheld` for a caller holding gc.lock, with the leased manifests it read."""

        def body(txn: lmdb.Transaction) -> int:
            dropped = 0
            held = self._held_manifests(txn)  # one pass over the names, however many
            for mid in wanted:
                if mid in held:
                    continue
                # no longer a file of this node: neither announced nor said to be held
                txn.delete(mid, db=self._complete)
                txn.delete(KIND_MANIFEST + mid, db=self._announce)
                if mid not in leased:  # a lease's reader needs it until it ends
                    dropped += txn.delete(mid, db=self._manifests)
            return dropped

        return self._transact(body) if wanted else 0

    # -- published names, pins and trusted publishers ----------------------------------------
    def own_record(self, name: str) -> bytes | None:
        """This home's latest signed record of `name` (encoded), or None."""
        with self._read() as txn:
            return txn.get(name.encode(), db=self._published)

    def own_records(self) -> list[tuple[str, bytes]]:
        """Every (name, encoded record) this home publishes, removals included."""
        with self._read() as txn:
            return [(k.decode(), bytes(v)) for k, v in txn.cursor(db=self._published)]

    def put_own_record(self, name: str, encoded: bytes, previous: bytes | None) -> bool:
        """Replace this home's record of `name` if it is still `previous` (None: none yet);
        False when another process changed it meanwhile (the caller signs again). The name
        is then this home's own: a pin to another publisher goes, in the same transaction."""
        key = validate_name(name).encode()

        def body(txn: lmdb.Transaction) -> bool:
            current = txn.get(key, db=self._published)
            if (None if current is None else bytes(current)) != previous:
                return False
            txn.put(key, encoded, db=self._published)
            txn.delete(key, db=self._name_pins)
            return True

        return self._transact(body)

    def drop_own_record(self, name: str, encoded: bytes) -> None:
        """Forget this home's record of `name` if it is still `encoded` (an expired removal)."""

        def body(txn: lmdb.Transaction) -> None:
            if txn.get(name.encode(), db=self._published) == encoded:
                txn.delete(name.encode(), db=self._published)

        self._transact(body)

    def pinned_publisher(self, name: str) -> bytes | None:
        """The publisher `name` is pinned to here (b"": a link's file whose publisher is not
        known), or None when it is pinned to nobody."""
        with self._read() as txn:
            value = txn.get(name.encode(), db=self._name_pins)
        return None if value is None else bytes(value)

    def unpinned_names(self) -> list[str]:
        """Local names pinned to no publisher (made by `add` before names were signed, or
        whose own record was not written): this home's own."""
        with self._read() as txn:
            return [
                k.decode()
                for k in txn.cursor(db=self._names).iternext(values=False)
                if txn.get(k, db=self._name_pins) is None
            ]

    def trust(self, publisher: bytes) -> bool:
        """Trust a publisher for every name; False if it was trusted already."""
        return self._transact(
            lambda txn: txn.put(publisher, b"", db=self._trusted, overwrite=False)
        )

    def untrust(self, publisher: bytes) -> bool:
        """Stop trusting a publisher; False if it was not trusted."""
        return self._transact(lambda txn: txn.delete(publisher, db=self._trusted))

    def trusted(self) -> list[bytes]:
        """The publishers trusted here."""
        with self._read() as txn:
            return [bytes(k) for k in txn.cursor(db=self._trusted).iternext(values=False)]

    def iter_manifests(self) -> Iterator[tuple[bytes, Manifest]]:
        """Every stored (manifest id, manifest), named or pinned."""
        with self._read() as txn:
            ids = [k for k, _ in txn.cursor(db=self._manifests)]
        for mid in ids:
            manifest = self.get_manifest(mid)
            if manifest is not None:
                yield mid, manifest

    # -- announce queue ---------------------------------------------------------------------
    def queue_announce(self, object_ids: Iterable[bytes], kind: bytes = KIND_CHUNK) -> None:
        """Put ids (chunks, or manifests with KIND_MANIFEST) in the announce queue."""
        keys = [kind + oid for oid in object_ids]
        self._transact(lambda txn: [txn.put(k, b"", db=self._announce) for k in keys])

    def pending_announces(self, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (object id, kind) from the announce queue, manifests first.

        Reads only what it returns: the queue may hold every chunk of a large store."""
        items: list[tuple[bytes, bytes]] = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._announce)
            for kind in (KIND_MANIFEST, KIND_CHUNK):
                found = cursor.set_range(kind)
                while found and len(items) < limit:
                    key = cursor.key()
                    if key[:1] != kind:
                        break
                    items.append((key[1:], kind))
                    found = cursor.next()
        return items

    def ack_announces(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Drop announced (object id, kind) pairs from the queue."""
        keys = [kind + oid for oid, kind in items]
        self._transact(lambda txn: [txn.delete(k, db=self._announce) for k in keys])
        self.sync()  # the node's own record of what it announced: kept through a crash

    def announce_progress(self) -> bytes | None:
        """The saved progress of the re-announce round (opaque here), or None."""
        with self._read() as txn:
            data = txn.get(ANNOUNCE_ROUND_KEY, db=self._announce)
            return bytes(data) if data is not None else None

    def save_announce_progress(self, data: bytes) -> None:
        self._transact(lambda txn: txn.put(ANNOUNCE_ROUND_KEY, data, db=self._announce))

    def chunk_ids_after(self, cursor: bytes, limit: int) -> list[bytes]:
        """Up to `limit` chunk ids above `cursor` (b"": from the first), in id order, from
        the small index; reads only what it returns."""
        ids: list[bytes] = []
        with self._read() as txn:
            cur = txn.cursor(db=self._index)
            found = cur.set_range(cursor) if cursor else cur.first()
            while found and len(ids) < limit:
                key = cur.key()
                if key != cursor:
                    ids.append(bytes(key))
                found = cur.next()
        return ids

    def chunk_count(self) -> int:
        """How many chunks the store holds."""
        with self._read() as txn:
            return txn.stat(self._index)["entries"]

    def chunk_ids(self) -> list[bytes]:
        """Every chunk id in the store, from the small index (no chunk is read)."""
        with self._read() as txn:
            return [bytes(k) for k in txn.cursor(db=self._index).iternext(values=False)]

    # -- leases and gc ----------------------------------------------------------------------
    def lease(self) -> Lease:
        """A lease on this store for one operation (a `with` block ends it): what it covers
        stays stored, whatever is released or collected meanwhile (see local/leases.py)."""
        return Lease(self.home)

    def keep_chunk(self, lease: Lease, chunk_id: bytes) -> bool:
        """Cover `chunk_id` by `lease`; True when it is stored (and so stays stored while the
        lease lives), False when it is not or a gc is running (the caller stores it: storing
        a chunk that is there changes nothing)."""
        lease.cover(COVER_CHUNK, [chunk_id])
        with lease.no_gc_running(wait=False) as quiet:
            return quiet and self.has_chunk(chunk_id)

    def keep_file(self, lease: Lease, manifest_id: bytes) -> Manifest | None:
        """Cover a manifest and every chunk it lists by `lease`, once any running gc has
        ended; returns the manifest if it is still stored (None: it was removed first).
        What of the file is stored now stays stored while the lease lives."""
        lease.cover(COVER_MANIFEST, [manifest_id])
        with lease.no_gc_running(wait=True):
            return self.get_manifest(manifest_id)

    def gc(self, compact: bool | None = None) -> GcResult:
        """Delete the manifests nothing holds and every chunk no kept manifest references and
        no live lease covers, in bounded transactions; then compact the store file when
        `compact` (None: when it would return at least an eighth of the file) and no other
        process has the store open. Manifests that cannot be decoded are skipped and listed
        (their chunks are not protected: the file cannot be restored anyway). Raises
        ChunkstoreError while another gc runs on this home."""
        before = self.file_bytes()
        with only_gc(self.home) as alone:
            if not alone:
                raise ChunkstoreError(f"another gc is running on the store at {self.home}")
            with gc_exclusive(self.home, wait=True):
                result = _Sweep(self).run()
        self.sync()
        now = self.file_bytes()
        if compact is False or (
            compact is None and self.reclaimable_bytes() < max(now // 8, 1 << 20)
        ):
            return dataclasses.replace(result, store_bytes_before=before, store_bytes_after=now)
        note = self.compact()
        return dataclasses.replace(
            result,
            store_bytes_before=before,
            store_bytes_after=self.file_bytes(),
            compacted=not note,
            compact_note=note,
        )

    # -- compaction -------------------------------------------------------------------------
    def file_bytes(self) -> int:
        """Bytes the store's data file takes on disk."""
        st = os.stat(self.home / "store" / "data.mdb")
        return st.st_blocks * 512

    def reclaimable_bytes(self) -> int:
        """About how many bytes a compaction would give back: the file's pages no database
        uses (LMDB's free pages)."""
        with self._read() as txn:
            used = sum(
                st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                for st in [txn.stat(db) for db in self._all_dbs()] + [self.env.stat()]
            )
        info, psize = self.env.info(), self.env.stat()["psize"]
        return max(0, (info["last_pgno"] + 1 - used - 2) * psize)  # 2: LMDB's meta pages

    def _all_dbs(self) -> list:
        return [
            self._chunks,
            self._index,
            self._manifests,
            self._names,
            self._pins,
            self._complete,
            self._announce,
            self._downloads,
            self._meta,
            self._published,
            self._name_pins,
            self._trusted,
        ]

    def compact(self) -> str:
        """Rewrite the store file without its free pages (an LMDB compacting copy, synced,
        renamed over the file) so the space goes back to the filesystem; "" when done, else
        why it could not be (the store is unchanged then). Only while no other process and
        no other handle of this process has the store open: they map the old file. The
        caller must not use this handle from another thread meanwhile (the environment is
        closed and opened again under it)."""
        path = self.home / "store"
        with _environments_lock:
            assert self._key is not None, "compact on a closed Store"
            shared = _environments[self._key]
            if shared.handles > 1:
                return "the store is open elsewhere in this process"
            if not try_flock(shared.lock_fd, fcntl.LOCK_EX):
                fcntl.flock(shared.lock_fd, fcntl.LOCK_SH)  # a failed upgrade may drop it
                return (
                    "another process has the store open (a serving node, an add or a get); "
                    "run gc when it has finished"
                )
            try:
                return self._swap_compacted(shared, path)
            finally:
                fcntl.flock(shared.lock_fd, fcntl.LOCK_SH)

    def _swap_compacted(self, shared: _Environment, path: Path) -> str:
        work = path / "compact.tmp"
        shutil.rmtree(work, ignore_errors=True)  # a compaction killed before its rename
        work.mkdir(mode=0o700)
        try:
            try:
                self.env.copy(str(work), compact=True)
                copy = work / "data.mdb"
                os.chmod(copy, 0o600)
                with open(copy, "rb+") as f:
                    os.fsync(f.fileno())
            except (OSError, lmdb.Error) as e:
                return f"the compacted copy could not be written ({e}); the store is unchanged"
            shared.env.close()
            note = ""
            try:
                # atomic: a kill leaves the old file or the new one, both whole
                os.rename(copy, path / "data.mdb")
                dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as e:
                note = f"the compacted copy could not replace the store file ({e})"
            fresh = _Environment(path)  # the new file, or the old one if the rename failed
            fresh.lock_fd, fresh.handles = shared.lock_fd, shared.handles
            _environments[self._key] = fresh  # type: ignore[index]
            self._bind(fresh)
            return note
        finally:
            shutil.rmtree(work, ignore_errors=True)


# Chunk ids examined per sweeping transaction: a write transaction blocks every writer, so
# each does a bounded amount of work (lookups and deletes, never decoding a manifest).
SWEEP_BATCH = 4096


class _Sweep:
    """One gc pass, run while holding gc.lock exclusively (see local/leases.py).

    Marks the chunks of every kept manifest and live lease (manifests decoded in short read
    transactions), then sweeps the chunk index in batches. Each deleting transaction first
    checks that no manifest was stored since the marking (the generation) and re-reads the
    leases; when either brought something new it is marked before the batch is retried."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.leases = LeaseScan(store.home)
        self.keep: set[bytes] = set()
        self.decoded: set[bytes] = set()
        self.undecodable: list[str] = []
        self.leased: set[bytes] = set()
        self.generation = -1

    def run(self) -> GcResult:
        s = self.store
        chunks, self.leased = self.leases.read()
        self.keep |= chunks
        with s._read() as txn:
            self.generation = s._generation(txn)
            stored = [bytes(k) for k in txn.cursor(db=s._manifests).iternext(values=False)]
        dropped = s._drop_unheld_now(set(stored), self.leased)
        self._mark_new()
        deleted = freed = 0
        after = b""
        while True:
            scanned, doomed = self._candidates(after)
            if not scanned:
                break
            after = scanned
            while doomed:
                outcome = s._transact(lambda txn, d=doomed: self._delete(txn, d))
                if outcome is None:  # something new to mark first
                    self._mark_new()
                    doomed = [(c, n) for c, n in doomed if c not in self.keep]
                    continue
                deleted += outcome[0]
                freed += outcome[1]
                break
        return GcResult(
            chunks_deleted=deleted,
            bytes_freed=freed,
            manifests_dropped=dropped,
            undecodable=self.undecodable,
        )

    def _mark_new(self) -> None:
        """Mark the chunks of stored manifests and leased ones not decoded yet."""
        s = self.store
        with s._read() as txn:
            self.generation = s._generation(txn)
            ids = {bytes(k) for k in txn.cursor(db=s._manifests).iternext(values=False)}
        for mid in (ids | self.leased) - self.decoded:
            self.decoded.add(mid)
            try:
                manifest = s.get_manifest(mid)
            except ChunkstoreError as e:
                self.undecodable.append(mid.hex())
                log.warning("gc: skipping manifest %s: %s", mid.hex(), e)
                continue
            if manifest is not None:
                self.keep.update(r.chunk_id for r in manifest.chunks)

    def _candidates(self, after: bytes) -> tuple[bytes, list[tuple[bytes, int]]]:
        """(the last id looked at, b"" at the end; the unmarked chunks among the next batch)."""
        s = self.store
        doomed = []
        last = b""
        with s._read() as txn:
            cursor = txn.cursor(db=s._index)
            found = cursor.set_range(after) if after else cursor.first()
            looked = 0
            while found and looked < SWEEP_BATCH:
                key = bytes(cursor.key())
                if key != after:
                    looked += 1
                    last = key
                    if key not in self.keep:
                        doomed.append((key, _LENGTH.unpack(cursor.value())[0]))
                found = cursor.next()
        return last, doomed

    def _delete(
        self, txn: lmdb.Transaction, doomed: list[tuple[bytes, int]]
    ) -> tuple[int, int] | None:
        s = self.store
        chunks, manifests = self.leases.read()  # inside the transaction: see local/leases.py
        self.keep |= chunks
        self.leased |= manifests
        if s._generation(txn) != self.generation or manifests - self.decoded:
            return None
        deleted = freed = 0
        for cid, size in doomed:
            if cid in self.keep:
                continue
            if txn.delete(cid, db=s._chunks):
                txn.delete(cid, db=s._index)
                txn.delete(KIND_CHUNK + cid, db=s._announce)
                deleted += 1
                freed += size
        return deleted, freed
