"""Transfer layer: real servers on 127.0.0.1, a real store, real sockets (the token bucket
that caps uploads is tested in test_ratelimit.py).

Each test runs its own event loop (asyncio.run) and stops every server and client it starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from chunkstore.errors import PeerBusy, PeerError, PeerMissing, TransferError
from chunkstore.local.add import add_file
from chunkstore.local.store import Store
from chunkstore.net.transfer_client import TransferClient
from chunkstore.net.transfer_server import IMMUTABLE, TransferServer
from chunkstore.objects.chunking import ChunkerParams
from chunkstore.objects.codec import ChunkCodec
from chunkstore.objects.manifest import Manifest
from tests.helpers import wait_until_async

HOST = "127.0.0.1"
CHUNK = 64 * 1024
UNKNOWN = b"\xab" * 32

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stocked(tmp_path: Path) -> Iterator[tuple[Store, Manifest]]:
    """A store holding one file of 64 KiB chunks: 2 MiB random (raw) then text (zstd)."""
    data = os.urandom(2 * 1024 * 1024) + b"the same words again and again " * 17000
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    store = Store(tmp_path / "home")
    result = add_file(store, path, chunker=ChunkerParams.fixed(CHUNK))
    manifest = store.get_manifest(bytes.fromhex(result.manifest_id))
    assert manifest is not None and len(manifest.chunks) > 16
    yield store, manifest
    store.close()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())


async def serve(store: Store, **kwargs: object) -> TransferServer:
    server = TransferServer(store, **kwargs)
    await server.start(HOST)
    return server


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return what the server answers before closing (b"" if it just closes).

    Raises TimeoutError if the server neither answers nor closes: that is the hang we forbid."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        async with asyncio.timeout(timeout):
            try:
                writer.write(request)
                await writer.drain()
                return await reader.read(65536)
            except ConnectionError:
                return b""
    finally:
        writer.close()


def is_error_or_close(answer: bytes) -> bool:
    return answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4"))


# -- round trips ------------------------------------------------------------------------------


def test_fetch_chunks_and_manifest_round_trip_and_verify(stocked):
    store, manifest = stocked
    codec = ChunkCodec()

    async def main() -> None:
        server = await serve(store)
        try:
            async with TransferClient() as client:
                received = await asyncio.gather(
                    *(
                        client.fetch_chunk(HOST, server.port, ref.chunk_id, ref.size + 1)
                        for ref in manifest.chunks
                    )
                )
                for ref, stored in zip(manifest.chunks, received, strict=True):
                    assert stored == store.get_stored(ref.chunk_id)
                    assert len(codec.decode_verified(ref.chunk_id, stored)) == ref.size
                data = await client.fetch_manifest(HOST, server.port, manifest.id)
                assert Manifest.from_bytes(data, manifest.id) == manifest
        finally:
            await server.stop()
        assert server.requests_served == len(manifest.chunks) + 1
        assert server.bytes_served == sum(len(s) for s in received) + len(data)

    run(main)


def test_headers_head_conditional_and_health(stocked):
    store, manifest = stocked
    cid = manifest.chunks[0].chunk_id

    async def main() -> None:
        server = await serve(store)
        base = f"http://{HOST}:{server.port}"
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as http:
                async with http.get(f"{base}/chunks/{cid.hex()}") as r:
                    assert r.status == 200
                    assert r.headers["Cache-Control"] == IMMUTABLE
                    assert r.headers["ETag"] == f'"{cid.hex()}"'
                    assert r.content_type == "application/octet-stream"
                    assert await r.read() == store.get_stored(cid)
                async with http.head(f"{base}/chunks/{cid.hex()}") as r:
                    assert r.status == 200
                    assert int(r.headers["Content-Length"]) == len(store.get_stored(cid))
                    assert await r.read() == b""
                async with http.head(f"{base}/manifests/{UNKNOWN.hex()}") as r:
                    assert r.status == 404
                async with http.get(
                    f"{base}/chunks/{cid.hex()}", headers={"If-None-Match": f'"{cid.hex()}"'}
                ) as r:
                    assert r.status == 304
                async with http.get(f"{base}/health") as r:
                    health = await r.json()
                    assert health["service"] == "chunkstore"
                async with http.delete(f"{base}/chunks/{cid.hex()}") as r:
                    assert r.status == 405
                async with http.get(f"{base}/elsewhere") as r:
                    assert r.status == 404
        finally:
            await server.stop()

    run(main)


def test_unknown_id_is_404_and_malformed_id_is_400(stocked):
    store, _ = stocked

    async def main() -> None:
        server = await serve(store)
        base = f"http://{HOST}:{server.port}"
        try:
            async with aiohttp.ClientSession() as http:
                for kind in ("chunks", "manifests"):
                    async with http.get(f"{base}/{kind}/{UNKNOWN.hex()}") as r:
                        assert r.status == 404
                    for bad in ("xyz", "ab" * 31, "ab" * 33, "g" * 64):
                        async with http.get(f"{base}/{kind}/{bad}") as r:
                            assert r.status == 400, bad
        finally:
            await server.stop()

    run(main)


def test_curl_fetches_the_stored_form(stocked, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    store, manifest = stocked
    cid = manifest.chunks[3].chunk_id
    out = tmp_path / "chunk.out"

    async def main() -> None:
        server = await serve(store)
        try:
            # A subprocess, not subprocess.run: blocking here would block the server's loop.
            proc = await asyncio.create_subprocess_exec(
                "curl",
                "-sSf",
                "--max-time",
                "10",
                "-o",
                str(out),
                f"http://{HOST}:{server.port}/chunks/{cid.hex()}",
            )
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            await server.stop()

    run(main)
    assert out.read_bytes() == store.get_stored(cid)


# -- upload cap and concurrency bound -----------------------------------------------------------


def test_upload_cap_holds_across_connections(stocked):
    store, manifest = stocked
    rate = 4 * 1024 * 1024

    async def main() -> None:
        server = await serve(store, upload_rate=rate)
        try:
            async with TransferClient(connections_per_peer=4) as client:
                start = time.monotonic()
                got = await asyncio.gather(
                    *(
                        client.fetch_chunk(HOST, server.port, ref.chunk_id)
                        for ref in manifest.chunks
                    )
                )
                elapsed = time.monotonic() - start
        finally:
            await server.stop()
        total = sum(len(g) for g in got)
        assert total > 1.9 * 1024 * 1024
        # Lower bound only (the cap is a ceiling): 2 MiB at 4 MiB/s minus one burst is ~0.45 s.
        assert elapsed >= 0.8 * (total - 256 * 1024) / rate, (elapsed, total)

    run(main)


def test_excess_requests_get_503_at_once_and_slots_are_freed(stocked):
    store, manifest = stocked
    refs = manifest.chunks[:6]

    async def main() -> None:
        # 64 KiB chunks at 128 KiB/s shared: two in flight keep the server busy for ~1 s.
        # No queue: every request beyond the slots is refused at once.
        server = await serve(store, upload_rate=128 * 1024, max_concurrent=2, queue_limit=0)
        try:
            async with TransferClient(connections_per_peer=8) as client:
                slow = [
                    asyncio.create_task(client.fetch_chunk(HOST, server.port, r.chunk_id))
                    for r in refs[:2]
                ]
                await wait_until_async(lambda: server.active == 2, "both slow requests admitted")
                excess = await asyncio.gather(
                    *(client.fetch_chunk(HOST, server.port, r.chunk_id) for r in refs[2:]),
                    return_exceptions=True,
                )
                assert all(isinstance(e, PeerBusy) for e in excess), excess
                assert all(e.retry_after == 1.0 for e in excess)
                # Answered at once, not queued behind the slow ones: every refusal came while
                # both slots were still taken and before either slow response was complete.
                assert server.requests_refused == 4
                assert server.active == 2 and server.requests_served == 0
                assert not any(task.done() for task in slow)
                assert [len(s) for s in await asyncio.gather(*slow)] == [
                    len(store.get_stored(r.chunk_id)) for r in refs[:2]
                ]
                assert server.active == 0
                assert await client.fetch_chunk(HOST, server.port, refs[5].chunk_id)
        finally:
            await server.stop()
        assert server.requests_refused == 4

    run(main)


def test_requests_beyond_the_slots_wait_in_a_bounded_queue(stocked):
    store, manifest = stocked
    refs = manifest.chunks[:6]

    async def main() -> None:
        # Two slots busy for ~1 s, a queue of two: the next two requests wait and are served
        # (no 503 for them), the two after are refused with a Retry-After grown by the queue.
        server = await serve(
            store, upload_rate=128 * 1024, max_concurrent=2, queue_limit=2, queue_wait=30.0
        )
        try:
            async with TransferClient(connections_per_peer=8) as client:

                def fetch(ref):
                    return asyncio.create_task(client.fetch_chunk(HOST, server.port, ref.chunk_id))

                first = [fetch(r) for r in refs[:2]]
                await wait_until_async(lambda: server.active == 2, "both slots taken")
                queued = [fetch(r) for r in refs[2:4]]
                await wait_until_async(lambda: server.waiting == 2, "two requests queued")
                refused = await asyncio.gather(
                    *(client.fetch_chunk(HOST, server.port, r.chunk_id) for r in refs[4:]),
                    return_exceptions=True,
                )
                assert all(isinstance(e, PeerBusy) for e in refused), refused
                assert [e.retry_after for e in refused] == [2.0, 2.0]  # 1 + 2 queued // 2
                got = await asyncio.gather(*first, *queued)
                assert got == [store.get_stored(r.chunk_id) for r in refs[:4]]
                assert server.active == 0 and server.waiting == 0
        finally:
            await server.stop()
        assert server.requests_served == 4 and server.requests_refused == 2

    run(main)


def test_a_peer_that_stops_reading_is_dropped(stocked, caplog):
    caplog.set_level(logging.INFO, logger="chunkstore.net.transfer_server")
    store, manifest = stocked
    cid = manifest.chunks[0].chunk_id
    # Pipelined requests for ~10 MiB: far more than the socket buffers, so writes stall.
    requests = (f"GET /chunks/{cid.hex()} HTTP/1.1\r\nHost: x\r\n\r\n".encode()) * 160

    async def main() -> None:
        server = await serve(store, send_timeout=0.5, max_concurrent=1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (HOST, server.port))
            await asyncio.get_running_loop().sock_sendall(sock, requests)
            # Its send times out: the server drops the connection and frees the slot.
            await wait_until_async(
                lambda: any("dropping it" in r.getMessage() for r in caplog.records),
                "the server to drop the stalled peer",
                timeout=10,
            )
            await wait_until_async(lambda: server.active == 0, "the stalled request's slot")
            served = server.requests_served
            assert served < 160  # the rest of the pipelined requests were never answered
            async with TransferClient() as client:
                assert await client.fetch_chunk(HOST, server.port, cid)
            assert server.requests_served == served + 1 and server.requests_refused == 0
        finally:
            sock.close()
            await server.stop()

    run(main)


# -- hostile input -----------------------------------------------------------------------------


def test_malformed_http_gets_an_error_or_close_and_serving_goes_on(stocked):
    store, manifest = stocked
    cid = manifest.chunks[0].chunk_id

    async def main() -> None:
        server = await serve(store)
        port = server.port
        try:
            garbage = os.urandom(4096) + b"\r\n\r\n"
            assert is_error_or_close(await raw_exchange(port, garbage))
            assert is_error_or_close(await raw_exchange(port, b"HELLO\r\n\r\n"))
            long_line = b"GET /chunks/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            assert is_error_or_close(await raw_exchange(port, long_line))
            long_header = (
                b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n"
            )
            assert is_error_or_close(await raw_exchange(port, long_header))
            many = b"".join(b"X-%d: y\r\n" % i for i in range(5000))
            assert is_error_or_close(
                await raw_exchange(port, b"GET /health HTTP/1.1\r\n" + many + b"\r\n")
            )
            huge_post = (
                f"POST /chunks/{cid.hex()} HTTP/1.1\r\nHost: x\r\n"
                "Content-Length: 10000000000\r\n\r\n"
            ).encode() + b"\0" * (4 << 20)
            assert is_error_or_close(await raw_exchange(port, huge_post))
            body_get = (
                (
                    f"GET /chunks/{cid.hex()} HTTP/1.1\r\nHost: x\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n"
                ).encode()
                + b"ffffff\r\n"
                + b"z" * 4096
            )
            assert is_error_or_close(await raw_exchange(port, body_get))

            async with TransferClient() as client:
                assert await client.fetch_chunk(HOST, port, cid) == store.get_stored(cid)
        finally:
            await server.stop()

    run(main)


# -- client error mapping -----------------------------------------------------------------------


def test_client_maps_404_refused_and_bad_status(stocked):
    store, manifest = stocked

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="oops")

    async def main() -> None:
        server = await serve(store)
        app = web.Application()
        app.router.add_get("/chunks/{oid}", broken)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        bad_port = runner.addresses[0][1]
        try:
            async with TransferClient(timeout=5) as client:
                with pytest.raises(PeerMissing):
                    await client.fetch_chunk(HOST, server.port, UNKNOWN)
                with pytest.raises(PeerMissing):
                    await client.fetch_manifest(HOST, server.port, UNKNOWN)
                # A refused connection is an error of its own at once, not a wait for a timeout.
                with pytest.raises(PeerError, match="cannot connect"):
                    await client.fetch_chunk(HOST, closed_port(), UNKNOWN)
                with pytest.raises(PeerError, match="HTTP 500"):
                    await client.fetch_chunk(HOST, bad_port, UNKNOWN)
                # after errors the pooled client still works
                ref = manifest.chunks[0]
                assert await client.fetch_chunk(HOST, server.port, ref.chunk_id)
        finally:
            await runner.cleanup()
            await server.stop()

    run(main)


def test_client_refuses_a_truncated_response():
    async def main() -> None:
        async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(liar, HOST, 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            async with TransferClient(timeout=5) as client:
                with pytest.raises(PeerError):
                    await client.fetch_chunk(HOST, port, UNKNOWN)
        finally:
            listener.close()
            await listener.wait_closed()

    run(main)


def test_client_times_out_on_a_silent_peer():
    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # read nothing, answer nothing

        listener = await asyncio.start_server(silent, HOST, 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            async with TransferClient(timeout=0.5) as client:
                # The client's own deadline ended it (the message names it), not the peer.
                with pytest.raises(PeerError, match=r"no complete answer within 0\.5 s"):
                    await client.fetch_chunk(HOST, port, UNKNOWN)
            assert len(accepted) == 1  # it connected, and the peer never answered
        finally:
            for w in accepted:
                w.close()
            listener.close()
            await listener.wait_closed()

    run(main)


def test_oversized_responses_are_refused(stocked):
    store, manifest = stocked
    ref = manifest.chunks[0]
    stored = store.get_stored(ref.chunk_id)

    async def endless(request: web.Request) -> web.StreamResponse:
        # A hostile peer: chunked encoding (no length to check up front), far too much data.
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(64):
                await resp.write(b"x" * 65536)
        except ConnectionError:
            pass
        return resp

    async def main() -> None:
        server = await serve(store)
        app = web.Application()
        app.router.add_get("/chunks/{oid}", endless)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        hostile_port = runner.addresses[0][1]
        try:
            async with TransferClient(timeout=5) as client:
                with pytest.raises(PeerError, match="exceeds"):
                    await client.fetch_chunk(HOST, server.port, ref.chunk_id, len(stored) - 1)
                with pytest.raises(PeerError, match="exceeds"):
                    await client.fetch_manifest(HOST, server.port, manifest.id, max_size=10)
                with pytest.raises(PeerError, match="exceeds"):
                    await client.fetch_chunk(HOST, hostile_port, ref.chunk_id, 1 << 20)
                assert (
                    await client.fetch_chunk(HOST, server.port, ref.chunk_id, len(stored)) == stored
                )
        finally:
            await runner.cleanup()
            await server.stop()

    run(main)


def test_transfer_errors_are_network_errors():
    from chunkstore.errors import NetworkError

    for cls in (PeerBusy, PeerMissing, PeerError):
        assert issubclass(cls, TransferError) and issubclass(cls, NetworkError)
    assert "127.0.0.9:80" in str(PeerError("127.0.0.9:80", "reset"))
