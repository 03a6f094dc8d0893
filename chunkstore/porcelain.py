"""The public API: what a program (and the CLI) calls. Re-exported by `chunkstore`.

Every function takes `home=`: a path (str or PathLike, `~` expanded), an open `Store`
(left open), or None for `$CHUNKSTORE_HOME`, else `~/.chunkstore`. Outputs are a path (str
or PathLike; written to a temporary file renamed into place once complete and verified) or a
binary stream. Errors are `ChunkstoreError`s with a message a user can act on.

The network stack (aiohttp, kademlia: ~0.3 s to import) is imported only by the calls that
need the network, so a local `get` starts fast.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

from chunkstore.errors import ChunkstoreError, InputError, NoNetwork, NotFound
from chunkstore.local.add import add_file
from chunkstore.local.inventory import file_info, list_files
from chunkstore.local.output import Output, as_output
from chunkstore.local.restore import restore
from chunkstore.local.store import Store
from chunkstore.local.verify import verify_store
from chunkstore.net.addresses import parse_addresses
from chunkstore.objects.chunking import FASTCDC, FIXED, ChunkerParams
from chunkstore.objects.codec import DEFAULT_LEVEL
from chunkstore.results import (
    AddResult,
    FileEntry,
    FileInfo,
    GcResult,
    GetResult,
    RemoveResult,
    VerifyReport,
)

if TYPE_CHECKING:
    from chunkstore.net.dht import Contact
    from chunkstore.net.providers import Holder

Home = str | os.PathLike[str] | Store | None
Target = str | os.PathLike[str] | BinaryIO
Bootstrap = Iterable[str | tuple[str, int]]
Progress = Callable[[int], None]


@contextmanager
def open_store(home: Home) -> Iterator[Store]:
    """The store of `home`; closed on exit unless `home` was an open Store."""
    if isinstance(home, Store):
        yield home
        return
    with Store(home) as store:
        yield store


def _chunker(chunker: str | ChunkerParams) -> ChunkerParams:
    if isinstance(chunker, ChunkerParams):
        return chunker
    if chunker == FASTCDC:
        return ChunkerParams()
    if chunker == FIXED:
        return ChunkerParams.fixed()
    raise InputError(f"unknown chunker {chunker!r}: choose {FASTCDC} or {FIXED}")


def add(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    home: Home = None,
    level: int = DEFAULT_LEVEL,
    chunker: str | ChunkerParams = FASTCDC,
    progress: Progress | None = None,
) -> AddResult:
    """Chunk, hash, compress and store the file at `path` under `name` (default: its base
    name), replacing what that name pointed at. `progress(n)` is called as bytes are read.

    Raises InputError for a missing, unreadable or non-regular file or a bad name or level,
    StoreFull when the disk fills (the store keeps its last complete state)."""
    if not 1 <= level <= 22:
        raise InputError(f"zstd level must be 1..22, not {level}")
    params = _chunker(chunker)
    with open_store(home) as store:
        return add_file(store, path, name=name, level=level, chunker=params, progress=progress)


def _local_get(
    store: Store,
    name_or_id: str,
    output: Output | None,
    *,
    force: bool,
    progress: Progress | None,
    on_total: Callable[[int], None] | None,
) -> GetResult | None:
    """The file written from the local store when it is complete there (`output=None`:
    nothing to write), else None."""
    started = time.monotonic()
    try:
        mid, manifest = store.resolve(name_or_id)
    except NotFound:
        return None
    if store.missing_chunks(r.chunk_id for r in manifest.chunks):
        return None
    if on_total:
        on_total(manifest.size)
    shown = (
        "" if output is None else restore(store, manifest, output, force=force, progress=progress)
    )
    return GetResult(
        name=name_or_id if store.lookup_name(name_or_id) == mid else "",
        manifest_id=mid.hex(),
        size=manifest.size,
        chunks=len(manifest.chunks),
        chunks_fetched=0,
        chunks_reused=len({r.chunk_id for r in manifest.chunks}),
        bytes_fetched=0,
        seconds=time.monotonic() - started,
        output=shown,
    )


def _no_network(store: Store, name_or_id: str) -> NoNetwork:
    try:
        store.resolve(name_or_id)
        state = "is incomplete in"
    except NotFound:
        state = "is not in"
    return NoNetwork(
        f"{name_or_id!r} {state} the local store and no node serves {store.home} to fetch it"
    )


def get(
    name_or_id: str,
    output: Target,
    *,
    home: Home = None,
    bootstrap: Bootstrap = (),
    force: bool = False,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> GetResult:
    """Write the file `name_or_id` (a name or a manifest id) to `output`, for scripts.

    From the local store when the file is complete there (no network code is loaded); else
    from the swarm through the node serving `home` (in this process or another), else
    through a short-lived node joined via `bootstrap` ("host:port" strings or (host, port)
    pairs). `on_total(size)` is called once the file's size is known, `progress(n)` as bytes
    arrive. Inside a running event loop use `await chunkstore.fetch(...)`.

    Raises NotFound (unknown name, no holder), NoNetwork (not complete locally and no way to
    the network), MissingChunks (some chunks had no reachable holder: what came stays in the
    store and a retry resumes), OutputExists (output exists and not `force`)."""
    peers = parse_addresses(bootstrap)
    target = as_output(output)
    with open_store(home) as store:
        local = _local_get(
            store, name_or_id, target, force=force, progress=progress, on_total=on_total
        )
        if local is not None:
            return local
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ChunkstoreError(
                "chunkstore.get() cannot run inside an event loop: "
                "use `await chunkstore.fetch(...)` there"
            )
        return asyncio.run(
            _fetch_remote(
                store, name_or_id, target, peers, force=force, progress=progress, on_total=on_total
            )
        )


async def fetch(
    name_or_id: str,
    output: Target | None,
    *,
    home: Home = None,
    bootstrap: Bootstrap = (),
    force: bool = False,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> GetResult:
    """`get` for code already inside an event loop; `output=None` fills the store only.

    A local restore runs on a worker thread, so the loop keeps running meanwhile."""
    peers = parse_addresses(bootstrap)
    target = None if output is None else as_output(output)
    with open_store(home) as store:
        local = await asyncio.to_thread(
            _local_get, store, name_or_id, target, force=force, progress=progress, on_total=on_total
        )
        if local is not None:
            return local
        return await _fetch_remote(
            store, name_or_id, target, peers, force=force, progress=progress, on_total=on_total
        )


async def _fetch_remote(
    store: Store,
    name_or_id: str,
    output: Output | None,
    bootstrap: list[tuple[str, int]],
    *,
    force: bool,
    progress: Progress | None,
    on_total: Callable[[int], None] | None,
) -> GetResult:
    from chunkstore.net.download import fetch_file
    from chunkstore.net.lookup import open_lookup
    from chunkstore.net.node import Node, running_node
    from chunkstore.net.transfer_client import TransferClient

    if not bootstrap and Node.serving(store.home) is None and running_node(store.home) is None:
        raise _no_network(store, name_or_id)
    async with open_lookup(store.home, bootstrap) as lookup, TransferClient() as client:
        return await fetch_file(
            store,
            lookup,
            client,
            name_or_id,
            output,
            force=force,
            progress=progress,
            on_total=on_total,
        )


def ls(*, home: Home = None) -> list[FileEntry]:
    """The named files of the store, in name order."""
    with open_store(home) as store:
        return list_files(store)


def stat(name_or_id: str, *, home: Home = None) -> FileInfo:
    """One file's manifest: size, chunks (and how many are local), chunker, stored bytes.
    Raises NotFound."""
    with open_store(home) as store:
        return file_info(store, name_or_id)


def verify(
    name_or_id: str | None = None, *, home: Home = None, progress: Progress | None = None
) -> VerifyReport:
    """Re-hash every chunk of the store (or of one file); the report lists what is corrupt
    or missing (`report.ok` is False then). Raises NotFound for an unknown file."""
    with open_store(home) as store:
        return verify_store(store, name_or_id, progress)


def rm(name: str, *, home: Home = None) -> RemoveResult:
    """Drop a name; its chunks are freed by `gc` unless another file uses them.
    Raises NotFound."""
    with open_store(home) as store:
        return RemoveResult(name=name, manifest_id=store.remove_name(name).hex())


def gc(*, home: Home = None) -> GcResult:
    """Delete every chunk no manifest references. Refuses (ChunkstoreError) while another
    add or get writes to the store."""
    with open_store(home) as store:
        return store.gc()


def _run(coro_fn: Callable[[], object], what: str) -> object:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    raise ChunkstoreError(
        f"chunkstore.{what}() cannot run inside an event loop: use a "
        f"running chunkstore.Node's {what}() there"
    )


def providers(object_id: str, *, home: Home = None, bootstrap: Bootstrap = ()) -> list[Holder]:
    """The holders the DHT knows for a chunk or manifest id (hex), through the node serving
    `home` or a short-lived node joined via `bootstrap`."""
    from chunkstore.objects.ids import parse_id

    oid = parse_id(object_id)
    peers = parse_addresses(bootstrap)

    async def lookup_holders() -> list[Holder]:
        from chunkstore.net.lookup import open_lookup

        with open_store(home) as store:
            async with open_lookup(store.home, peers) as lookup:
                return await lookup.find_providers(oid)

    return _run(lookup_holders, "providers")  # type: ignore[return-value]


def peers(*, home: Home = None) -> list[Contact]:
    """The routing-table contacts of the node serving `home`; NoNetwork without one."""

    async def contacts() -> list[Contact]:
        from chunkstore.net.dht import Contact
        from chunkstore.net.lookup import NodeApiLookup
        from chunkstore.net.node import Node, running_node

        with open_store(home) as store:
            local = Node.serving(store.home)
            if local is not None:
                return local.peers()
            info = running_node(store.home)
            if info is None:
                raise NoNetwork(f"no node is serving {store.home}", bootstrap_helps=False)
        api = NodeApiLookup(info.api_url)
        try:
            data = await api.get_json("/peers")
        finally:
            await api.close()
        found = []
        for item in data if isinstance(data, list) else []:
            try:
                found.append(Contact(bytes.fromhex(item["node_id"]), item["host"], item["port"]))
            except (TypeError, KeyError, ValueError):
                continue
        return found

    return _run(contacts, "peers")  # type: ignore[return-value]
