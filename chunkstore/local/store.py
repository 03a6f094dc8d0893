"""The local content-addressed store: one LMDB environment per node home.

Named databases:
  chunks     chunk id -> stored form (codec byte + payload)
  chunk_index chunk id -> stored length (u32 LE), written in the same transaction as the chunk:
             existence and size checks read this small table, because py-lmdb pre-faults
             every page of each value it returns (even for a key-only cursor), so asking
             `chunks` whether a 1 MiB chunk exists would read a MiB
  manifests  manifest id -> manifest bytes
  names      name (utf-8) -> manifest id
  pins       manifest id -> b"" : kept by gc even with no name (e.g. fetched by id)
  complete   manifest id -> b"" : manifests whose every chunk is stored (the file is held
             whole), written in the transaction that makes it so: a node answers "I hold
             it" from this small table instead of reading the manifest's chunk list
  announce   kind byte + object id -> b"" : ids to announce on the DHT when a node runs;
             the kind leads the key so manifests (b"m") are read before chunks (b"c")
  leases     pid.n (ascii) -> b"" : writers in progress, so gc never frees their chunks
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
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import lmdb

from chunkstore.errors import ChunkstoreError, InputError, NotFound, StoreFull
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
DATABASES = (
    "chunks",
    "chunk_index",
    "manifests",
    "names",
    "pins",
    "complete",
    "announce",
    "leases",
    "published",
    "name_pins",
    "trusted",
)
# py-lmdb's names for MDB_NOMETASYNC: flush data at every commit, the meta page at the next
# commit or `sync()`. (benchmarks/ingest.py swaps in the old {"sync": False} to show the cost.)
LMDB_SYNC: dict[str, bool] = {"sync": True, "metasync": False}
T = TypeVar("T")
_LENGTH = struct.Struct("<I")


def default_home() -> Path:
    """$CHUNKSTORE_HOME, else ~/.chunkstore."""
    return Path(os.environ.get("CHUNKSTORE_HOME") or "~/.chunkstore").expanduser()


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


# LMDB must not open one environment twice in a process (closing either copy would drop the
# other's locks), yet a program may hold a Node and call chunkstore.add on the same home:
# every Store of a directory in this process shares one environment, closed with the last.
_environments: dict[Path, _Environment] = {}
_environments_lock = threading.Lock()
_lease_numbers = itertools.count()
_held_leases: set[bytes] = set()  # the leases this process holds now


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
                    shared = _environments[key] = _Environment(path)
            except (OSError, lmdb.Error) as e:
                raise InputError(f"cannot open the store at {path}: {e}") from None
            shared.handles += 1
        self._key: Path | None = key
        self.env = shared.env
        self._mapped = shared.mapped
        self._chunks = shared.dbs["chunks"]
        self._index = shared.dbs["chunk_index"]
        self._manifests = shared.dbs["manifests"]
        self._names = shared.dbs["names"]
        self._pins = shared.dbs["pins"]
        self._complete = shared.dbs["complete"]
        self._announce = shared.dbs["announce"]
        self._leases = shared.dbs["leases"]
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
    ) -> bytes:
        """Store a manifest (and point `name` at it) atomically; returns its id.

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

        self._transact(body)
        return mid

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
            for mid in found:
                # still stored? an `rm` may have dropped it since the snapshot above
                if txn.get(mid, db=self._manifests) is not None:
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
        """Drop a name; its manifest goes too unless another name or a pin keeps it.

        Chunks are freed by `gc`, as in git and restic, so `rm` is instant and re-adding the
        file before a gc rewrites nothing."""

        def body(txn: lmdb.Transaction) -> bytes:
            mid = txn.pop(name.encode(), db=self._names)
            if mid is None:
                raise NotFound(f"no file named {name!r}")
            txn.delete(name.encode(), db=self._name_pins)
            still_named = any(v == mid for _, v in txn.cursor(db=self._names))
            if not still_named and txn.get(mid, db=self._pins) is None:
                txn.delete(mid, db=self._manifests)
                txn.delete(mid, db=self._complete)
            return mid

        return self._transact(body)

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

    def chunk_ids(self) -> list[bytes]:
        """Every chunk id in the store, from the small index (no chunk is read)."""
        with self._read() as txn:
            return [bytes(k) for k in txn.cursor(db=self._index).iternext(values=False)]

    # -- leases and gc ----------------------------------------------------------------------
    @contextmanager
    def lease(self) -> Iterator[None]:
        """Mark this process as writing chunks not yet referenced by a manifest (gc waits)."""
        # One key per lease: a process may hold several at once (a Node's download and an
        # add of the same program), and ending one must not end the others.
        key = f"{os.getpid()}.{next(_lease_numbers)}".encode()
        self._transact(lambda txn: txn.put(key, b"", db=self._leases))
        _held_leases.add(key)
        try:
            yield
        finally:
            _held_leases.discard(key)
            self._transact(lambda txn: txn.delete(key, db=self._leases))

    def gc(self) -> GcResult:
        """Delete every chunk no manifest references; refuses while a writer is active."""

        def body(txn: lmdb.Transaction) -> GcResult:
            for key, _ in list(txn.cursor(db=self._leases)):
                pid = int(bytes(key).split(b".")[0])
                held = bytes(key) in _held_leases or (pid != os.getpid() and pid_alive(pid))
                if held:
                    raise ChunkstoreError(
                        f"process {pid} is adding to this store; run gc when it has finished"
                    )
                txn.delete(bytes(key), db=self._leases)  # left by a killed process
            # One write transaction: no add can slip a manifest in meanwhile.
            referenced: set[bytes] = set()
            for _, data in txn.cursor(db=self._manifests):
                referenced.update(r.chunk_id for r in Manifest.from_bytes(bytes(data)).chunks)
            doomed = [
                (bytes(k), _LENGTH.unpack(v)[0])
                for k, v in txn.cursor(db=self._index)
                if bytes(k) not in referenced
            ]
            for cid, _ in doomed:
                txn.delete(cid, db=self._chunks)
                txn.delete(cid, db=self._index)
                txn.delete(KIND_CHUNK + cid, db=self._announce)
            return GcResult(len(doomed), sum(n for _, n in doomed))

        result = self._transact(body)
        self.sync()
        return result
