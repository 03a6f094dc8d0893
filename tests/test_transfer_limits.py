"""Transfer server under hostile load (issue 10, items 2 and 3): real sockets on 127.0.0.1.

Every flood is bounded in count and time; every socket and server is closed in `finally`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from chunkstore.local.add import add_file
from chunkstore.local.store import Store
from chunkstore.net.transfer_server import TransferServer, connection_budget, peer_key
from chunkstore.objects.chunking import ChunkerParams

HOST = "127.0.0.1"
pytestmark = pytest.mark.timeout(90)


def stock(tmp_path: Path, size: int) -> tuple[Store, bytes]:
    path = tmp_path / "input.bin"
    path.write_bytes(os.urandom(size))
    store = Store(tmp_path / "home")
    result = add_file(store, path, chunker=ChunkerParams.fixed(size))
    manifest = store.get_manifest(bytes.fromhex(result.manifest_id))
    assert manifest is not None and len(manifest.chunks) == 1
    return store, manifest.chunks[0].chunk_id


async def timed_get(url: str, deadline: float) -> tuple[int, float]:
    """GET until 200 (honouring 503 Retry-After) within `deadline` s: (status, seconds)."""
    start = time.monotonic()
    status = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=deadline)) as http:
        while time.monotonic() - start < deadline:
            try:
                async with http.get(url) as r:
                    await r.read()
                    status = r.status
                    if status != 503:
                        break
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
            except (aiohttp.ClientError, TimeoutError):
                status = -1
                break
    return status, time.monotonic() - start


def test_limits_are_derived_sensibly():
    assert connection_budget(1024, 1024) == 704
    assert connection_budget(1024, 20000) == 1024
    assert connection_budget(1024, None) == 1024
    assert peer_key("127.0.0.1") == "127.0.0.1"
    assert peer_key("::ffff:127.0.0.1") == "127.0.0.1"
    assert peer_key("::1") == "::1"  # loopback: its own key, exempt as 127.0.0.1 is


def test_head_and_if_none_match_send_no_body(tmp_path):
    store, cid = stock(tmp_path, 256 * 1024)
    stored = store.get_stored(cid)

    async def main() -> None:
        server = TransferServer(store, relax_loopback=False)
        await server.start(HOST)
        url = f"http://{HOST}:{server.port}/chunks/{cid.hex()}"
        try:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            try:
                writer.write(
                    f"HEAD /chunks/{cid.hex()} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                    + f"GET /chunks/{cid.hex()} HTTP/1.1\r\nHost: x\r\n"
                    f'If-None-Match: "{cid.hex()}"\r\nConnection: close\r\n\r\n'.encode()
                )
                await writer.drain()
                async with asyncio.timeout(5):
                    raw = await reader.read()  # until the server closes
            finally:
                writer.close()
            assert raw.startswith(b"HTTP/1.1 200")
            assert f"Content-Length: {len(stored)}".encode() in raw
            assert b"HTTP/1.1 304" in raw
            assert len(raw) < 2048  # headers only, no body in either answer
            async with aiohttp.ClientSession() as http:
                async with http.head(f"http://{HOST}:{server.port}/chunks/{'ab' * 32}") as r:
                    assert r.status == 404
                async with http.get(url, headers={"If-None-Match": '"other"'}) as r:
                    assert r.status == 200 and await r.read() == stored
        finally:
            await server.stop()

    asyncio.run(main())
    store.close()


@pytest.mark.slow
def test_non_reading_pipeliners_do_not_hold_the_slots(tmp_path):
    store, cid = stock(tmp_path, 2 * 1024 * 1024)
    request = f"GET /chunks/{cid.hex()} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 5

    async def main() -> None:
        server = TransferServer(store, relax_loopback=False)
        await server.start(HOST)
        socks: list[socket.socket] = []
        loop = asyncio.get_running_loop()
        try:
            for _ in range(64):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.setblocking(False)
                socks.append(s)
                await loop.sock_connect(s, (HOST, server.port))
                await loop.sock_sendall(s, request)
            await asyncio.sleep(0.3)  # the non-readers take their slots
            status, took = await timed_get(f"http://{HOST}:{server.port}/chunks/{cid.hex()}", 5)
            print(f"legitimate GET under 64 non-readers: {status} after {took:.2f} s")
            assert status == 200 and took < 5
        finally:
            for s in socks:
                s.close()
            await server.stop()

    asyncio.run(main())
    store.close()


SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pathlib import Path
    from chunkstore.local.store import Store
    from chunkstore.net.transfer_server import TransferServer

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.DEBUG)

    async def main():
        server = TransferServer(Store(Path(sys.argv[1])), relax_loopback=False)
        await server.start("127.0.0.1")
        print(server.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop()

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_connection_flood_under_ulimit_1024(tmp_path):
    store, cid = stock(tmp_path, 256 * 1024)
    store.close()
    log_path = tmp_path / "server.log"

    def limit_fds() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))  # as `ulimit -n 1024`

    async def main() -> None:
        with open(log_path, "wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                SERVER_SCRIPT,
                str(tmp_path / "home"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                preexec_fn=limit_fds,
            )
            writers: list[asyncio.StreamWriter] = []
            try:
                async with asyncio.timeout(20):
                    port = int(await proc.stdout.readline())
                url = f"http://{HOST}:{port}/chunks/{cid.hex()}"
                latencies: list[float] = []
                readers: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}
                connects = 0

                async def open_hostile(i: int) -> None:
                    nonlocal connects
                    connects += 1
                    try:
                        r, w = await asyncio.open_connection(HOST, port)
                    except OSError:
                        return
                    writers.append(w)
                    readers[w] = r
                    if i % 2:
                        w.write(b"GET /chunks/" + b"a" * 64 + b" HTTP/1.1\r\nHost: x\r\nX-A: ")

                deadline = time.monotonic() + 10
                await asyncio.gather(*(open_hostile(i) for i in range(1100)))
                while time.monotonic() < deadline:
                    status, took = await timed_get(url, 5)
                    latencies.append(took)
                    assert status == 200, (status, took)
                    # Keep the pressure: replace what the server closed, bounded in count.
                    gone = [w for w in writers if readers[w].at_eof() or w.is_closing()]
                    for w in gone:
                        w.close()
                        writers.remove(w)
                        del readers[w]
                    closed = 1100 - len(writers)
                    if connects < 6000 and closed > 0:
                        await asyncio.gather(*(open_hostile(i) for i in range(min(closed, 300))))
                    await asyncio.sleep(0.2)
                worst = max(latencies)
                print(
                    f"flood: {connects} hostile connects, {len(latencies)} GETs, "
                    f"worst {worst:.3f} s, log {log_path.stat().st_size} bytes"
                )
                assert worst < 5
            finally:
                for w in writers:
                    w.close()
                if proc.returncode is None:
                    proc.stdin.close()
                    try:
                        await asyncio.wait_for(proc.wait(), 10)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        assert log_path.stat().st_size < 5 * 1024 * 1024

    asyncio.run(main())
