"""The download's I/O shell in one process: `fetch_file` with a fake Lookup (holders chosen
by the test), real TransferServers on 127.0.0.1 serving real stores, a real TransferClient.

No DHT and no subprocess: each test runs its own event loop and stops every server it starts.
Outcomes are checked by what the servers counted (requests served) and what the stores hold,
never by how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

import chunkstore
import chunkstore.net.download as download
import chunkstore.net.lookup as lookup_module
from chunkstore.errors import BootstrapFailed, MissingChunks
from chunkstore.local.add import add_file
from chunkstore.local.store import Store
from chunkstore.local.verify import verify_store
from chunkstore.net.dht import DhtNode, dht_key
from chunkstore.net.download import fetch_file
from chunkstore.net.lookup import first_providers, open_lookup
from chunkstore.net.providers import Holder
from chunkstore.net.transfer_client import TransferClient
from chunkstore.net.transfer_server import TransferServer
from chunkstore.objects.chunking import ChunkerParams
from chunkstore.objects.manifest import Manifest
from tests.helpers import (
    MIB,
    corrupt_stored_chunk,
    peak_rss_mib,
    reset_peak_rss,
    signed_record,
    wait_until_async,
    write_file,
)

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
CHUNK = 256 * 1024
SIZE = 4 * MIB  # 16 chunks of 256 KiB
NAME = "movie.bin"


class FakeLookup:
    """A Lookup whose answers the test sets: every object is held by `holders`, and `names`
    maps names to manifest ids (hex), published by one publisher. Records what it was
    asked."""

    def __init__(self, holders: list[Holder], names: dict[str, str] | None = None) -> None:
        self.holders = list(holders)
        self.names = dict(names or {})
        self.asked: list[bytes] = []

    async def find_name_records(self, name: str) -> list:
        mid = self.names.get(name)
        return [] if mid is None else [signed_record(name, mid)]

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        self.asked.append(object_id)
        return list(self.holders)


class TwoStepLookup(FakeLookup):
    """A FakeLookup that also answers early (`find_first_providers`) with `first`, while its
    full `find_providers` answers `holders` only once `ready()` is true (polled): a DHT
    whose full lookup of the manifest's holders is slow."""

    def __init__(
        self, first: list[Holder], holders: list[Holder], ready: Callable[[], bool]
    ) -> None:
        super().__init__(holders)
        self.first = list(first)
        self.ready = ready
        self.answered_in_full: list[bytes] = []  # ids whose full lookup answered

    async def find_first_providers(self, object_id: bytes, enough: int) -> list[Holder]:
        self.asked.append(object_id)
        return self.first[:enough]

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        await wait_until_async(self.ready, "the test's condition for the full lookup")
        self.answered_in_full.append(object_id)
        return await super().find_providers(object_id)


def run(main) -> None:
    asyncio.run(main())


def assert_phases_in_order(result) -> None:
    """Every phase ended no later than the next one, the first byte within the get."""
    values = list(result.phases.values())
    assert values == sorted(values), result.phases
    assert values[0] >= 0 and result.phases["done"] == result.seconds
    assert result.first_byte_seconds is not None
    assert result.first_byte_seconds == result.phases["first_chunk"] <= result.seconds


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def holder_of(server: TransferServer) -> Holder:
    return Holder(HOST, server.port)


def address(server: TransferServer) -> str:
    return f"{HOST}:{server.port}"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_file(tmp_path / NAME, SIZE, seed=11)


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator:
    """`make_store(label, with_file=True)`: a store in its own home, holding the source
    file (fixed 256 KiB chunks) unless `with_file` is False; all closed at the end."""
    stores: list[Store] = []

    def make(label: str, with_file: bool = True) -> Store:
        store = Store(tmp_path / label)
        stores.append(store)
        if with_file:
            add_file(store, tmp_path / NAME, chunker=ChunkerParams.fixed(CHUNK))
        return store

    yield make
    for store in stores:
        store.close()


def manifest_of(store: Store) -> Manifest:
    mid = store.lookup_name(NAME)
    assert mid is not None
    manifest = store.get_manifest(mid)
    assert manifest is not None and len(manifest.chunks) == SIZE // CHUNK
    return manifest


@contextlib.asynccontextmanager
async def serving(*stores: Store, **options: object) -> AsyncIterator[list[TransferServer]]:
    """A TransferServer on 127.0.0.1 for each store, stopped on exit."""
    servers: list[TransferServer] = []
    try:
        for store in stores:
            server = TransferServer(store, **options)
            await server.start(HOST, 0)
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            await server.stop()


@contextlib.asynccontextmanager
async def busy_for_ever() -> AsyncIterator[tuple[int, list[str]]]:
    """A peer answering every request `503 Retry-After: 0`: (its port, the paths asked)."""
    asked: list[str] = []

    async def busy(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(status=503, headers={"Retry-After": "0"}, text="busy\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", busy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, 0).start()
        yield runner.addresses[0][1], asked
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def silent_holder(
    snapshot: Callable[[], int],
) -> AsyncIterator[tuple[int, list[int | None]]]:
    """A TCP listener that accepts and never answers: (its port, one entry per connection,
    in the order accepted: None while it is open, then `snapshot()` taken when the peer
    closed it)."""
    connections: list[int | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(connections)
        connections.append(None)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client gives up and closes
        connections[index] = snapshot()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


def test_a_file_from_two_holders_is_identical_and_both_deliver(src, make_store, tmp_path):
    a, b, fetcher = make_store("a"), make_store("b"), make_store("fetcher", with_file=False)
    mid = manifest_of(a).id.hex()
    out = tmp_path / "out.bin"

    async def main() -> None:
        async with serving(a, b) as servers, TransferClient() as client:
            lookup = FakeLookup([holder_of(s) for s in servers], names={NAME: mid})
            result = await fetch_file(fetcher, lookup, client, NAME, out)
            assert set(result.sources) == {address(s) for s in servers}, result.sources
            assert all(n > 0 for n in result.sources.values())
            assert sum(result.sources.values()) == result.bytes_fetched == SIZE
            # every chunk served at least once, plus the manifest
            assert sum(s.requests_served for s in servers) >= SIZE // CHUNK + 1

    run(main)
    assert out.read_bytes() == src.read_bytes()
    assert fetcher.lookup_name(NAME) == bytes.fromhex(mid)  # the name is local now
    assert (
        verify_store(fetcher).ok
        and fetcher.missing_chunks(r.chunk_id for r in manifest_of(fetcher).chunks) == set()
    )


def test_a_holder_serving_corrupt_chunks_is_avoided(src, make_store, tmp_path):
    liar, honest = make_store("liar"), make_store("honest")
    fetcher = make_store("fetcher", with_file=False)
    for ref in manifest_of(liar).chunks:
        corrupt_stored_chunk(liar, ref.chunk_id)
    mid = manifest_of(honest).id.hex()
    out = tmp_path / "out.bin"

    async def main() -> None:
        async with serving(liar, honest) as (bad, good), TransferClient() as client:
            lookup = FakeLookup([holder_of(bad), holder_of(good)])
            result = await fetch_file(fetcher, lookup, client, mid, out)
            assert bad.requests_served >= 1  # it was asked, and what it sent was refused
            assert result.sources == {address(good): SIZE}

    run(main)
    assert out.read_bytes() == src.read_bytes()
    assert verify_store(fetcher).ok


def test_a_holder_that_is_not_listening_is_skipped(src, make_store, tmp_path):
    live, fetcher = make_store("live"), make_store("fetcher", with_file=False)
    mid = manifest_of(live).id.hex()
    out = tmp_path / "out.bin"

    async def main() -> None:
        async with serving(live) as (server,), TransferClient() as client:
            # the dead one first: the manifest too must come from the live one
            lookup = FakeLookup([Holder(HOST, closed_port()), holder_of(server)])
            result = await fetch_file(fetcher, lookup, client, mid, out)
            assert result.sources == {address(server): SIZE}

    run(main)
    assert out.read_bytes() == src.read_bytes()


def test_a_holder_stopped_mid_download_is_replaced_by_the_other(src, make_store, tmp_path):
    a, b, fetcher = make_store("a"), make_store("b"), make_store("fetcher", with_file=False)
    mid = manifest_of(a).id.hex()
    out = tmp_path / "out.bin"
    chunks = SIZE // CHUNK

    async def main() -> None:
        # Capped so the download lasts long enough to stop a holder in the middle of it.
        async with (
            serving(a, b, upload_rate=2 * MIB) as (first, second),
            TransferClient() as client,
        ):
            lookup = FakeLookup([holder_of(first), holder_of(second)])
            download = asyncio.create_task(fetch_file(fetcher, lookup, client, mid, out))
            # the manifest and two chunks came from the first holder: now it goes away
            await wait_until_async(
                lambda: first.requests_served >= 3 or download.done(),
                "the first holder to serve some chunks",
            )
            assert not download.done(), "the download ended before a holder could be stopped"
            await first.stop()
            served_by_first = first.requests_served
            result = await download
            assert served_by_first < chunks + 1  # it did not serve the whole file
            assert result.sources[address(second)] > 0
            assert sum(result.sources.values()) == SIZE

    run(main)
    assert out.read_bytes() == src.read_bytes()


def partial_copy(complete: Store, partial: Store, withheld: set[bytes]) -> None:
    """Make `partial` a holder of the file (manifest and name) lacking the `withheld` chunks."""
    manifest = manifest_of(complete)
    partial.put_manifest(manifest, name=NAME)
    partial.put_chunks(
        [
            (r.chunk_id, complete.get_stored(r.chunk_id))
            for r in manifest.chunks
            if r.chunk_id not in withheld
        ]
    )


@pytest.mark.slow  # a holder that fails is probed twice, 2 s then 4 s later, before giving up
def test_missing_chunks_stay_missing_then_a_second_fetch_gets_only_the_rest(
    src, make_store, tmp_path
):
    complete = make_store("complete")
    partial = make_store("partial", with_file=False)
    fetcher = make_store("fetcher", with_file=False)
    manifest = manifest_of(complete)
    all_chunks = {r.chunk_id for r in manifest.chunks}
    withheld = {manifest.chunks[3].chunk_id, manifest.chunks[10].chunk_id}
    partial_copy(complete, partial, withheld)
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    out = outdir / "out.bin"

    async def main() -> None:
        async with serving(partial, complete) as (half, full), TransferClient() as client:
            with pytest.raises(MissingChunks) as missing:
                await fetch_file(
                    fetcher, FakeLookup([holder_of(half)]), client, manifest.id.hex(), out
                )
            assert list(outdir.iterdir()) == []  # nothing under the final name, no temp file
            # what was fetched stays in the store, and the error counts what is not there
            absent = fetcher.missing_chunks(all_chunks)
            assert withheld <= absent < all_chunks
            assert (missing.value.missing, missing.value.total) == (len(absent), len(all_chunks))
            assert full.requests_served == 0

            result = await fetch_file(
                fetcher, FakeLookup([holder_of(full)]), client, manifest.id.hex(), out
            )
            # the manifest was kept too: only the absent chunks were asked for
            assert full.requests_served == len(absent)
            assert (result.chunks_fetched, result.chunks_reused) == (
                len(absent),
                len(all_chunks) - len(absent),
            )
            assert result.sources == {address(full): len(absent) * CHUNK}

    run(main)
    assert out.read_bytes() == src.read_bytes()
    assert verify_store(fetcher).ok


def test_a_holder_lacking_two_chunks_still_delivers_all_the_others(src, make_store, tmp_path):
    complete = make_store("complete")
    partial = make_store("partial", with_file=False)
    fetcher = make_store("fetcher", with_file=False)
    manifest = manifest_of(complete)
    withheld = {manifest.chunks[3].chunk_id, manifest.chunks[10].chunk_id}
    partial_copy(complete, partial, withheld)

    async def main() -> None:
        async with serving(partial) as (half,), TransferClient() as client:
            with pytest.raises(MissingChunks) as missing:
                await fetch_file(
                    fetcher,
                    FakeLookup([holder_of(half)]),
                    client,
                    manifest.id.hex(),
                    tmp_path / "out.bin",
                )
            assert fetcher.missing_chunks(r.chunk_id for r in manifest.chunks) == withheld
            assert missing.value.missing == 2
            assert half.requests_served == 1 + len(manifest.chunks) - 2  # manifest + the rest

    run(main)


def test_output_to_a_stream_and_to_the_store_only(src, make_store, tmp_path):
    holder = make_store("holder")
    to_stream = make_store("to-stream", with_file=False)
    store_only = make_store("store-only", with_file=False)
    mid = manifest_of(holder).id.hex()
    sink = io.BytesIO()

    async def main() -> None:
        async with serving(holder) as (server,), TransferClient() as client:
            lookup = FakeLookup([holder_of(server)])
            streamed = await fetch_file(to_stream, lookup, client, mid, sink)
            assert streamed.output == "-" and streamed.bytes_fetched == SIZE
            kept = await fetch_file(store_only, lookup, client, mid, None)
            assert kept.output == "" and kept.chunks_fetched == SIZE // CHUNK

    run(main)
    assert sink.getvalue() == src.read_bytes()
    assert list(tmp_path.glob(f"*{mid}*")) == []  # no file was written for the store-only get
    # the store-only fetch holds the whole file: a local get restores it with no network
    chunkstore.get(mid, tmp_path / "restored", home=store_only)
    assert (tmp_path / "restored").read_bytes() == src.read_bytes()


def test_a_peer_busy_for_ever_ends_in_missing_chunks(src, make_store, tmp_path):
    # Regression: a get whose only holder answered 503 for ever waited for ever.
    manifest = manifest_of(make_store("origin"))
    fetcher = make_store("fetcher", with_file=False)
    # As after an interrupted get: the manifest is local, none of the chunks are.
    fetcher.put_manifest(manifest, pin=True, announce=False)
    outdir = tmp_path / "outdir"
    outdir.mkdir()

    async def main() -> None:
        async with busy_for_ever() as (port, asked), TransferClient() as client:
            with pytest.raises(MissingChunks) as missing:
                await fetch_file(
                    fetcher,
                    FakeLookup([Holder(HOST, port)]),
                    client,
                    manifest.id.hex(),
                    outdir / "out.bin",
                    stall_seconds=1.0,
                )
            assert missing.value.missing == len(manifest.chunks)
            assert len(asked) >= 2 and all(p.startswith("/chunks/") for p in asked)

    run(main)
    assert list(outdir.iterdir()) == []
    assert fetcher.missing_chunks(r.chunk_id for r in manifest.chunks) == {
        r.chunk_id for r in manifest.chunks
    }


def test_the_manifest_comes_from_a_live_holder_while_the_first_listed_stays_silent(
    src, make_store, tmp_path
):
    live_store, fetcher = make_store("live"), make_store("fetcher", with_file=False)
    mid = manifest_of(live_store).id.hex()
    out = tmp_path / "out.bin"

    async def main() -> None:
        async with serving(live_store) as (live,), TransferClient() as client:
            async with silent_holder(lambda: live.requests_served) as (port, connections):
                lookup = FakeLookup([Holder(HOST, port), holder_of(live)])
                result = await fetch_file(fetcher, lookup, client, mid, out)
                assert result.sources == {address(live): SIZE}
                await wait_until_async(
                    lambda: connections and connections[0] is not None,
                    "the silent holder's first connection to close",
                )
            # The silent holder was asked first (its connection is the manifest request: no
            # chunk is asked for before the manifest), and the live holder had served when
            # that request was given up: it did not wait for the silent one to time out.
            assert connections[0] >= 1
            assert live.requests_served >= SIZE // CHUNK + 1

    run(main)
    assert out.read_bytes() == src.read_bytes()


def test_phases_and_first_byte_are_filled_and_in_order(src, make_store, tmp_path):
    holder, fetcher = make_store("holder"), make_store("fetcher", with_file=False)
    mid = manifest_of(holder).id.hex()

    async def main() -> None:
        async with serving(holder) as (server,), TransferClient() as client:
            lookup = FakeLookup([holder_of(server)], names={NAME: mid})
            result = await fetch_file(fetcher, lookup, client, NAME, tmp_path / "out.bin")
            assert_phases_in_order(result)
            for phase in ("join", "name", "manifest_holders", "manifest", "first_chunk"):
                assert phase in result.phases
            # one holder of the manifest: the holders of each chunk were looked up too
            assert "chunk_holders" in result.phases
            assert list(result.phases)[-2:] == ["last_chunk", "done"]

            # Times count from the caller's start when it gives one (e.g. before it joined
            # the DHT): here 5 s before the call.
            again = make_store("again", with_file=False)
            started = time.monotonic() - 5.0
            later = await fetch_file(again, lookup, client, NAME, None, started=started)
            assert_phases_in_order(later)
            assert later.phases["join"] >= 5.0 and later.first_byte_seconds >= 5.0

    run(main)


def test_chunks_flow_from_the_first_holders_while_the_full_lookup_goes_on(
    src, make_store, tmp_path, monkeypatch
):
    first, second = make_store("first"), make_store("second")
    fetcher = make_store("fetcher", with_file=False)
    mid = manifest_of(first).id.hex()
    out = tmp_path / "out.bin"
    monkeypatch.setattr(download, "FIRST_HOLDERS", 1)

    async def main() -> None:
        # Capped, so the download outlasts the moment the second holder is found.
        async with (
            serving(first, second, upload_rate=2 * MIB) as (a, b),
            TransferClient() as client,
        ):
            # The full lookup answers only once the first holder has served the manifest and
            # two chunks: data flowed before it ended, and the holder it adds joins at once.
            lookup = TwoStepLookup(
                [holder_of(a)], [holder_of(a), holder_of(b)], lambda: a.requests_served >= 3
            )
            result = await fetch_file(fetcher, lookup, client, mid, out)
            assert lookup.answered_in_full.count(bytes.fromhex(mid)) == 1
            assert set(result.sources) == {address(a), address(b)}
            assert result.sources[address(b)] > 0
            assert sum(result.sources.values()) == SIZE
            assert_phases_in_order(result)
            assert result.phases["first_chunk"] <= result.phases["manifest_holders_all"]

    run(main)
    assert out.read_bytes() == src.read_bytes()


def test_a_holder_found_later_serves_the_manifest_when_the_first_is_silent(
    src, make_store, tmp_path, monkeypatch
):
    live_store, fetcher = make_store("live"), make_store("fetcher", with_file=False)
    mid = manifest_of(live_store).id.hex()
    monkeypatch.setattr(download, "FIRST_HOLDERS", 1)

    async def main() -> None:
        async with serving(live_store) as (live,), TransferClient() as client:
            async with silent_holder(lambda: live.requests_served) as (port, connections):
                silent = Holder(HOST, port)
                # The early answer is the silent holder alone; the full lookup adds the live
                # one once the silent holder holds the manifest request.
                lookup = TwoStepLookup(
                    [silent], [silent, holder_of(live)], lambda: bool(connections)
                )
                result = await fetch_file(fetcher, lookup, client, mid, None)
                assert result.sources == {address(live): SIZE}
                await wait_until_async(
                    lambda: connections[0] is not None, "the manifest request to be given up"
                )
            assert connections[0] >= 1  # the live holder served while it was still open

    run(main)


def test_first_providers_answers_early_only_when_the_lookup_can():
    holders = [Holder(HOST, 1000 + i) for i in range(6)]
    oid = b"\x01" * 32

    async def main() -> None:
        plain = FakeLookup(holders)
        assert await first_providers(plain, oid, 2) == (holders, True)  # all it knows
        two_step = TwoStepLookup(holders, holders, lambda: True)
        assert await first_providers(two_step, oid, 2) == (holders[:2], False)  # maybe more
        assert await first_providers(two_step, oid, 8) == (holders, True)  # fewer: all
        assert two_step.answered_in_full == []

    run(main)


@pytest.fixture
def patient_dht(monkeypatch):
    """Short-lived DHT nodes of `open_lookup` wait 30 s for an RPC answer (instead of 1 s), so
    a contact that never answers holds a join up for longer than any test runs; the ends of
    their joins are recorded, one entry per bootstrap address."""
    ended: list[tuple[str, int]] = []
    join = DhtNode.bootstrap

    async def bootstrap(self, addrs):
        try:
            return await join(self, addrs)
        finally:
            ended.extend(addrs)

    monkeypatch.setattr(DhtNode, "bootstrap", bootstrap)
    patient = functools.partial(DhtNode, rpc_timeout=30.0, lookup_timeout=60.0)
    monkeypatch.setattr(lookup_module, "DhtNode", patient)
    return ended


def test_a_short_lived_lookup_is_used_before_a_silent_bootstrap_contact_answers(
    tmp_path, patient_dht
):
    mid = "ab" * 32
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))
        dead = (HOST, silent.getsockname()[1])

        async def main() -> None:
            live = DhtNode()
            await live.start(HOST, 0)
            try:
                record = signed_record(NAME, mid)
                await live.publish_record(record)
                await live.announce(dht_key(bytes.fromhex(mid)), 4242)
                alive = (HOST, live.port)
                async with open_lookup(tmp_path / "no-node", [dead, alive]) as lookup:
                    assert await lookup.find_name_records(NAME) == [record]
                    assert Holder(HOST, 4242) in await lookup.find_providers(bytes.fromhex(mid))
                    # answered while the join through the silent contact still waits
                    assert dead not in patient_dht
                silent.setblocking(False)
                assert silent.recv(4096)  # it was asked (a ping), and never answered
            finally:
                await live.stop()

        run(main)


def test_a_short_lived_lookup_with_no_answering_contact_fails(tmp_path, monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))

        async def main() -> None:
            with pytest.raises(BootstrapFailed):
                async with open_lookup(tmp_path / "no-node", [(HOST, silent.getsockname()[1])]):
                    pass

        run(main)


def test_a_holder_serving_decompression_bombs_is_avoided(src, make_store, tmp_path):
    # Each stored form replaced by 18 bytes whose zstd frame declares 64 GiB: refused as
    # corrupt without allocating, the bomber banned, every chunk fetched from the honest one.
    bomber, honest = make_store("bomber"), make_store("honest")
    fetcher = make_store("fetcher", with_file=False)
    bomb = b"\x01\x28\xb5\x2f\xfd\xe0" + (64 << 30).to_bytes(8, "little")
    bomb += (1 | 1 << 1 | (128 * 1024) << 3).to_bytes(3, "little") + b"\x00"
    for ref in manifest_of(bomber).chunks:
        bomber._transact(lambda txn, cid=ref.chunk_id: txn.put(cid, bomb, db=bomber._chunks))
    mid = manifest_of(honest).id.hex()
    out = tmp_path / "out.bin"
    reset_peak_rss()

    async def main() -> None:
        async with serving(bomber, honest) as (bad, good), TransferClient() as client:
            lookup = FakeLookup([holder_of(bad), holder_of(good)])
            result = await fetch_file(fetcher, lookup, client, mid, out)
            assert bad.requests_served >= 1
            assert result.sources == {address(good): SIZE}

    run(main)
    assert out.read_bytes() == src.read_bytes()
    assert peak_rss_mib() < 400
