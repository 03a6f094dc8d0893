"""The public API: what a program (and the CLI) calls. Re-exported by `chunkstore`.

Every function takes `home=`: a path (str or PathLike, `~` expanded), an open `Store`
(left open), or None for `$CHUNKSTORE_HOME`, else `~/.chunkstore`. Outputs are a path (str
or PathLike; written to a temporary file renamed into place once complete and verified) or a
binary stream. Errors are `ChunkstoreError`s with a message a user can act on.

The network stack (aiohttp, kademlia: ~0.3 s to import) is imported only by the calls that
need the network, so a local `get` starts fast.

Share links (`chunkstore.objects.link`): `add` and `link` make one, `get` and `fetch` take
one wherever they take a name. The address a link carries is the one the node serving the
home is reached at by peers: its `serve` host when that is an IP, else (a node listening on
every interface) the address a peer observed it at, with its DHT and transfer ports. So:
- with no node serving the home, or a node that has no address yet (listening on every
  interface and alone, so no peer has told it one), a link carries no address: it works
  only where a node already in the swarm can find the file by its id (`link_note` says
  why, and asking again once the node knows its address gives a link with one);
- an observed address is the one the first peer saw: behind NAT it is the public address
  and the ports must be forwarded; a loopback or private address works only on this
  machine or network; a node restarted on other ports makes its older links stale;
- the link names one holder; the receiver joins the DHT through it (in addition to any
  bootstrap given), finds every holder of the manifest, and also asks the link's holder
  directly, so the file is fetched before the DHT has learnt of it; what comes is
  verified against the link's manifest id, whoever serves it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

from chunkstore.errors import (
    BootstrapFailed,
    ChunkstoreError,
    InputError,
    MissingChunks,
    NetworkError,
    NoNetwork,
    NotFound,
)
from chunkstore.local.add import add_file
from chunkstore.local.inventory import file_info, incomplete_files, list_files, pinned_files
from chunkstore.local.output import Output, as_output
from chunkstore.local.restore import restore
from chunkstore.local.store import Store
from chunkstore.local.verify import verify_store
from chunkstore.net.addresses import parse_addresses
from chunkstore.net.node_file import running_node
from chunkstore.net.patience import DEFAULT_PATIENCE
from chunkstore.net.providers import Holder
from chunkstore.objects.chunking import FASTCDC, FIXED, ChunkerParams
from chunkstore.objects.codec import DEFAULT_LEVEL
from chunkstore.objects.ids import looks_like_id
from chunkstore.objects.link import Link, LinkAddress, looks_like_link
from chunkstore.objects.name_syntax import split_name_spec
from chunkstore.results import (
    AddResult,
    FileEntry,
    FileInfo,
    GcResult,
    GetResult,
    PinResult,
    RemoveResult,
    VerifyReport,
)

if TYPE_CHECKING:
    from pathlib import Path

    from chunkstore.net.dht import Contact
    from chunkstore.net.lookup import Lookup

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
    name), replacing what that name pointed at, and sign this home's record of the name
    (the next sequence number when it pointed elsewhere; a node serving the home publishes
    it). `progress(n)` is called as bytes are read. The result's `link` is a share link for
    it (see `link`).

    Raises InputError for a missing, unreadable or non-regular file or a bad name or level,
    StoreFull when the disk fills (the store keeps its last complete state)."""
    if not 1 <= level <= 22:
        raise InputError(f"zstd level must be 1..22, not {level}")
    params = _chunker(chunker)
    from chunkstore.local.identity import load_identity
    from chunkstore.local.own_names import record_own_name

    with open_store(home) as store:
        identity = load_identity(store.home)  # before the add: a home that cannot sign fails early
        result = add_file(store, path, name=name, level=level, chunker=params, progress=progress)
        mid = bytes.fromhex(result.manifest_id)
        record_own_name(store, identity, result.name, mid)
        store.sync()
        addresses, _ = _share_addresses(store.home)
        token = Link(mid, result.name, addresses, identity.public_key).encode()
        return dataclasses.replace(result, link=token)


def link(name_or_id: str, *, home: Home = None) -> str:
    """A share link for a file complete in the store: its manifest id, its name (for an id,
    a name pointing at it, if any) and the address of the node serving `home` as peers
    reach it, if it has one (`link_note` says why not). `get` takes it on any machine.

    Raises NotFound for an unknown file, InputError for one not complete here (a link
    would send peers to a node that cannot serve all of it)."""
    with open_store(home) as store:
        mid, manifest = store.resolve(name_or_id)
        if store.missing_chunks(r.chunk_id for r in manifest.chunks):
            raise InputError(
                f"{name_or_id!r} is incomplete in the store at {store.home}: "
                "get all of it before sharing it"
            )
        if store.lookup_name(name_or_id) == mid:
            name = name_or_id
        else:
            name = next((n for n, m in store.names() if m == mid), "")
        addresses, _ = _share_addresses(store.home)
        return Link(mid, name, addresses, _publisher_of(store, name)).encode()


def _publisher_of(store: Store, name: str) -> bytes | None:
    """Whose record gives `name` here: this home's (if it published it), else the publisher
    it is pinned to; None when neither is known."""
    if not name:
        return None
    own = store.own_record(name)
    if own is not None:
        from chunkstore.objects.name_record import KEY_BYTES

        return own[1 : 1 + KEY_BYTES]  # the publisher field (checked when it was made)
    return store.pinned_publisher(name) or None


def link_note(*, home: Home = None) -> str:
    """Why a link made now on `home` carries no address to join through, or a limit of the
    address it carries (loopback: this machine only); "" when there is nothing to say."""
    with open_store(home) as store:
        return _share_addresses(store.home)[1]


def _share_addresses(home: Path) -> tuple[tuple[LinkAddress, ...], str]:
    """The address links made on `home` carry (its node's, as peers reach it), and a note."""
    info = running_node(home)
    if info is None:
        return (), (
            f"no node serves {home}, so the link carries no address to join through: it works "
            "only where a node can find the file; start a node on this home and make the "
            "link again"
        )
    if not info.advertised_host:
        return (), (
            f"the node serving {home} listens on {info.host or 'every interface'} and no peer "
            "has told it its address yet, so the link carries no address to join through; "
            "make the link again once a peer has contacted the node, or give the node an "
            "IP address to listen on"
        )
    try:
        address = LinkAddress(info.advertised_host, info.dht_port, info.transfer_port)
    except InputError:
        return (), (
            f"the node serving {home} is reached at {info.advertised_host!r}, not an IP "
            "address, so the link carries no address to join through"
        )
    note = ""
    if ipaddress.ip_address(address.host).is_loopback:
        note = (
            f"the link's address {address.host} is a loopback address: only this machine "
            "can join through it"
        )
    return (address,), note


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
        mid, _ = store.resolve(name_or_id)
    except NotFound:
        return None
    with store.lease() as lease:  # what is stored now stays, whatever rm and gc do meanwhile
        manifest = store.keep_file(lease, mid)
        if manifest is None or store.missing_chunks(r.chunk_id for r in manifest.chunks):
            return None
        if on_total:
            on_total(manifest.size)
        shown = (
            ""
            if output is None
            else restore(store, manifest, output, force=force, progress=progress)
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


def _no_network(store: Store, name_or_id: str, link: Link | None) -> NoNetwork:
    if link is not None:
        return NoNetwork(
            f"the file of the link is not in the local store, the link carries no address to "
            f"join through and no node serves {store.home} to find it"
        )
    try:
        store.resolve(name_or_id)
        state = "is incomplete in"
    except NotFound:
        state = "is not in"
    return NoNetwork(
        f"{name_or_id!r} {state} the local store and no node serves {store.home} to fetch it"
    )


def _asks_network(store: Store, what: str) -> bool:
    """True when which file `what` means is for the network to say (NAME@KEY, an unknown
    name, or a name pinned to a publisher, whose record may have changed); a way to the
    network is then opened if there is one, and the local file is used only without one.
    Ids, share links' ids, this home's own names and names of no known publisher are
    decided here, without loading the network code."""
    if looks_like_id(what):
        return False
    name, wanted = split_name_spec(what)
    if wanted is not None or store.lookup_name(name) is None:
        return True
    return store.own_record(name) is None and bool(store.pinned_publisher(name))


def _read_target(
    name_or_id: str, bootstrap: Bootstrap
) -> tuple[str, Link | None, list[tuple[str, int]]]:
    """What to fetch (a name, or the manifest id of a link), the link, and the addresses to
    join through: those given, then the link's."""
    peers = parse_addresses(bootstrap)
    if not looks_like_link(name_or_id):
        return name_or_id, None, peers
    link = Link.decode(name_or_id)
    for address in link.addresses:
        if (address.host, address.dht_port) not in peers:
            peers.append((address.host, address.dht_port))
    return link.manifest_id.hex(), link, peers


def _link_holders(link: Link) -> list[Holder]:
    """The holders a link names (its maker, at its transfer port)."""
    return [Holder(a.host, a.transfer_port) for a in link.addresses]


def _name_from_link(store: Store, link: Link | None, result: GetResult) -> GetResult:
    """After a get through a link: its name points at its file in the store (replacing what
    the name pointed at, unless this home publishes that name itself), pinned to the link's
    publisher, and the result says so."""
    if link is None or not link.name or store.own_record(link.name) is not None:
        return result
    manifest = store.get_manifest(link.manifest_id)
    if manifest is not None:
        store.put_manifest(
            manifest, name=link.name, announce=False, publisher=link.publisher or b""
        )
        store.sync()
        result.name = link.name
    return result


def get(
    name_or_id: str,
    output: Target,
    *,
    home: Home = None,
    bootstrap: Bootstrap = (),
    force: bool = False,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    patience: float = DEFAULT_PATIENCE,
) -> GetResult:
    """Write the file `name_or_id` (a name, a manifest id or a share link) to `output`, for
    scripts.

    From the local store when the file is complete there (no network code is loaded); else
    from the swarm through the node serving `home` (in this process or another), else
    through a short-lived node joined via `bootstrap` ("host:port" strings or (host, port)
    pairs) and a link's addresses. A link's file is fetched by its manifest id and gets the
    link's name in the store. `on_total(size)` is called once the file's size is known,
    `progress(n)` as bytes arrive. The name and the file's holders are asked for again,
    with backoff, while none is found, for up to `patience` seconds from the call. Inside a
    running event loop use `await chunkstore.fetch(...)`.

    Raises NotFound (unknown name, no holder), NoNetwork (not complete locally and no way to
    the network), BootstrapFailed (no bootstrap or link address answered), MissingChunks
    (some chunks had no reachable holder: what came stays in the store and a retry
    resumes), OutputExists (output exists and not `force`), InputError (a bad link)."""
    started = time.monotonic()  # phases of the result count from here: the join included
    what, link, peers = _read_target(name_or_id, bootstrap)
    target = as_output(output)
    with open_store(home) as store:
        local = None
        if not _asks_network(store, what):
            local = _local_get(
                store, what, target, force=force, progress=progress, on_total=on_total
            )
        if local is not None:
            return _name_from_link(store, link, local)
        import asyncio  # here, not at the top: ~45 ms a local get does not pay

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ChunkstoreError(
                "chunkstore.get() cannot run inside an event loop: "
                "use `await chunkstore.fetch(...)` there"
            )
        result = asyncio.run(
            _fetch_remote(
                store,
                what,
                target,
                peers,
                link,
                force=force,
                progress=progress,
                on_total=on_total,
                started=started,
                patience=patience,
            )
        )
        return _name_from_link(store, link, result)


async def fetch(
    name_or_id: str,
    output: Target | None,
    *,
    home: Home = None,
    bootstrap: Bootstrap = (),
    force: bool = False,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    patience: float = DEFAULT_PATIENCE,
) -> GetResult:
    """`get` for code already inside an event loop; `output=None` fills the store only.

    A local restore runs on a worker thread, so the loop keeps running meanwhile."""
    import asyncio

    started = time.monotonic()
    what, link, peers = _read_target(name_or_id, bootstrap)
    target = None if output is None else as_output(output)
    with open_store(home) as store:
        local = None
        if not _asks_network(store, what):
            local = await asyncio.to_thread(
                _local_get, store, what, target, force=force, progress=progress, on_total=on_total
            )
        if local is None:
            local = await _fetch_remote(
                store,
                what,
                target,
                peers,
                link,
                force=force,
                progress=progress,
                on_total=on_total,
                started=started,
                patience=patience,
            )
        return _name_from_link(store, link, local)


async def _fetch_remote(
    store: Store,
    name_or_id: str,
    output: Output | None,
    bootstrap: list[tuple[str, int]],
    link: Link | None = None,
    *,
    force: bool,
    progress: Progress | None,
    on_total: Callable[[int], None] | None,
    started: float,
    patience: float,
) -> GetResult:
    from chunkstore.net.download import fetch_file
    from chunkstore.net.lookup import LinkLookup, open_lookup
    from chunkstore.net.transfer_client import TransferClient

    async with contextlib.AsyncExitStack() as stack:
        try:
            lookup: Lookup | None = await stack.enter_async_context(
                open_lookup(store.home, bootstrap, patience)
            )
        except NoNetwork:  # the same verdict, said of what was asked for
            local = _local_get(
                store, name_or_id, output, force=force, progress=progress, on_total=on_total
            )
            if local is not None:  # a pinned name's last file: the best there is offline
                return local
            raise _no_network(store, name_or_id, link) from None
        except BootstrapFailed:
            if link is None or not link.addresses:
                raise
            # No DHT answered; the link's holders may still serve over TCP (UDP blocked).
            failed = BootstrapFailed([f"{h}:{p}" for h, p in bootstrap])
            lookup = None
        else:
            failed = None
        hold_as = None
        if link is not None:
            lookup = LinkLookup(lookup, link.manifest_id, _link_holders(link))
            if link.name and store.own_record(link.name) is None:
                hold_as = (link.name, link.publisher or b"")  # as _name_from_link does
        client = await stack.enter_async_context(TransferClient())
        try:
            return await fetch_file(
                store,
                lookup,
                client,
                name_or_id,
                output,
                force=force,
                progress=progress,
                on_total=on_total,
                started=started,
                patience=patience,
                hold_as=hold_as,
            )
        except (NotFound, NetworkError) as e:
            if failed is None or isinstance(e, MissingChunks):
                raise
            raise failed from None  # neither the DHT nor the link's holders answered


def ls(*, home: Home = None, incomplete: bool = False) -> list[FileEntry]:
    """The named files of the store, in name order; with `incomplete`, instead, the files
    held but not whole here (downloads not completed, and pinned or named files missing
    chunks), each with how many of its chunks are stored. `rm` takes their name or id."""
    with open_store(home) as store:
        return incomplete_files(store) if incomplete else list_files(store)


def pin(name_or_id: str, *, home: Home = None) -> PinResult:
    """Hold a stored file by a pin: it stays whatever its names become, until `unpin`.
    Returns whether it was pinned already. Raises NotFound."""
    with open_store(home) as store:
        mid, _ = store.resolve(name_or_id)
        added = store.pin(mid)
        store.sync()
        return PinResult(mid.hex(), pinned=True, changed=added)


def unpin(name_or_id: str, *, home: Home = None) -> PinResult:
    """Drop a file's pin; the file goes (its chunks at the next gc) unless a name or a
    download holds it. Raises NotFound for an unknown file, InputError for one not pinned."""
    with open_store(home) as store:
        mid = _held_id(store, name_or_id)
        if not store.unpin(mid):
            raise InputError(f"{name_or_id!r} is not pinned in the store at {store.home}")
        store.sync()
        return PinResult(mid.hex(), pinned=False, changed=True)


def pins(*, home: Home = None) -> list[FileEntry]:
    """The pinned files (name: one of the names pointing at it, if any)."""
    with open_store(home) as store:
        return pinned_files(store)


def _held_id(store: Store, name_or_id: str) -> bytes:
    """The manifest id a name (or a full hex id) means, even when the manifest is gone."""
    mid = store.lookup_name(name_or_id)
    if mid is not None:
        return bytes(mid)
    if looks_like_id(name_or_id):
        return bytes.fromhex(name_or_id)
    raise NotFound(f"no file named or with id {name_or_id!r} in the store at {store.home}")


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


def rm(name: str, *, home: Home = None, unpublish: bool = False) -> RemoveResult:
    """Release a file: `name` (a name, or what an incomplete download asked for) or a
    manifest id (every name pointing at it, its pin and its download entry go). Its manifest
    goes at once unless a pin (`unpin` it) or another name keeps it, and its chunks are
    freed by `gc` unless another file uses them. This home stops publishing its record of
    each name dropped (copies on other nodes expire within two days); with `unpublish`, a
    signed removal replaces the record instead, which a node serving the home publishes at
    once, so other nodes drop the name now. Raises NotFound for an unknown name or id,
    InputError for `unpublish` of a name this home never published."""
    with open_store(home) as store:
        if looks_like_id(name) and store.lookup_name(name) is None and not unpublish:
            mid = bytes.fromhex(name)
            names = store.remove_file(mid)
            for dropped in names:
                own = store.own_record(dropped)
                if own is not None:
                    store.drop_own_record(dropped, own)
            store.sync()
            return RemoveResult("", mid.hex(), names=names, still_held=_still_held(store, mid))
        if unpublish:
            from chunkstore.local.identity import load_identity
            from chunkstore.local.own_names import read_own_record, record_own_name

            current = read_own_record(store, name)
            if current is None or current.removed:
                raise InputError(
                    f"{name!r} is not published from the store at {store.home}: "
                    "nothing to unpublish"
                )
            record_own_name(store, load_identity(store.home), name, None)
            mid = store.lookup_name(name)
            if mid is not None:
                store.remove_name(name)
            store.sync()
            return RemoveResult(name, (mid or current.manifest_id or b"").hex(), unpublished=True)
        mid = store.remove_name(name)
        own = store.own_record(name)
        if own is not None:
            store.drop_own_record(name, own)
        store.sync()
        return RemoveResult(
            name=name, manifest_id=mid.hex(), names=[name], still_held=_still_held(store, mid)
        )


def _still_held(store: Store, manifest_id: bytes) -> str:
    """What still holds a file after an rm: "pin", "name", or "" (nothing)."""
    if store.is_pinned(manifest_id):
        return "pin"
    if any(m == manifest_id for _, m in store.names()):
        return "name"
    return ""


def key(*, home: Home = None) -> str:
    """This home's publisher key (its text form, as NAME@KEY and `trust` take it), made at
    first use."""
    from chunkstore.local.identity import load_identity

    with open_store(home) as store:
        return load_identity(store.home).key_text


def trust(publisher: str, *, home: Home = None) -> bool:
    """Trust a publisher (the text form of its key) for every name: a bare name it has
    published resolves to its record when no record of this home or pinned publisher
    decides. Returns False if it was trusted already. InputError for a malformed key."""
    from chunkstore.objects.name_record import parse_key

    with open_store(home) as store:
        return store.trust(parse_key(publisher))


def untrust(publisher: str, *, home: Home = None) -> bool:
    """Stop trusting a publisher; False if it was not trusted. Names already pinned to it
    stay pinned (`rm` the name to forget the pin)."""
    from chunkstore.objects.name_record import parse_key

    with open_store(home) as store:
        return store.untrust(parse_key(publisher))


def trusted(*, home: Home = None) -> list[str]:
    """The publishers trusted in this home (text forms of their keys)."""
    from chunkstore.objects.name_record import format_key

    with open_store(home) as store:
        return sorted(format_key(k) for k in store.trusted())


def gc(*, home: Home = None, compact: bool | None = None) -> GcResult:
    """Free every chunk no name, pin, download or live operation (add, get: their leases)
    holds, in short transactions that never block other writers for long; manifests that
    cannot be decoded are skipped and listed. Then give the space back to the filesystem
    by compacting the store file: with `compact` None, when that would return at least an
    eighth of it; True, always tried; False, never. Compacting needs the store open nowhere
    else (no serving node, add or get): the result's `compact_note` says when it could not.
    Raises ChunkstoreError while another gc runs."""
    with open_store(home) as store:
        return store.gc(compact=compact)


def _run(coro_fn: Callable[[], object], what: str) -> object:
    import asyncio

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
