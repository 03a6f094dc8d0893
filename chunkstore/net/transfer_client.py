"""The transfer client: chunks and manifests fetched from peers over HTTP/1.1 (aiohttp).

It never trusts a peer: every response is read with a size bound and every network await has
a timeout. It does not verify content; the caller decodes and re-hashes (see
`ChunkCodec.decode_verified`, `Manifest.from_bytes`) before trusting anything it received.
"""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from chunkstore.errors import PeerBusy, PeerError, PeerMissing
from chunkstore.objects.codec import MAX_RAW_CHUNK
from chunkstore.objects.ids import ID_BYTES
from chunkstore.objects.manifest import MAX_MANIFEST_BYTES
from chunkstore.version import __version__

# The codec keeps zstd only when it is smaller than the raw bytes, so a stored form is at most
# one codec byte longer than its chunk; a caller that knows the chunk's size can bound tighter.
MAX_STORED_CHUNK = MAX_RAW_CHUNK + 1
# A 404/503 body is read (to keep the connection reusable) only up to this size.
MAX_ERROR_BODY = 4096


class TransferClient:
    """Fetches chunks and manifests from peers over one pooled keep-alive session.

    Callers may rely on:
    - at most `connections_per_peer` connections to one host:port, `max_connections` in all;
    - each fetch ends within `timeout` seconds (connecting within `connect_timeout`);
    - no response larger than the given bound is buffered;
    - failures raise PeerBusy, PeerMissing or PeerError (all TransferError), nothing else
      (except cancellation).
    Use from one event loop; call `close()` (or use `async with`) when done.
    """

    def __init__(
        self,
        *,
        connections_per_peer: int = 8,
        max_connections: int = 256,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if connections_per_peer < 1 or max_connections < 1:
            raise ValueError("connections_per_peer and max_connections must be at least 1")
        self.connections_per_peer = connections_per_peer
        self.max_connections = max_connections
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        # Created on first use: aiohttp wants its session made inside the running loop.
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # ssl=False: peers speak plain HTTP, and building a default TLS context (loading
            # the system CA store) cost ~30 ms at the start of every get.
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=self.connections_per_peer, ssl=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                # A peer's Content-Encoding is never undone: no gzip bomb can inflate here.
                auto_decompress=False,
                headers={"User-Agent": f"chunkstore/{__version__}", "Accept-Encoding": "identity"},
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def fetch_chunk(
        self, holder_host: str, holder_port: int, chunk_id: bytes, max_size: int = MAX_STORED_CHUNK
    ) -> bytes:
        """The stored form of a chunk from a holder, unverified, at most `max_size` bytes.

        A caller that knows the chunk's raw size may pass `raw size + 1` as the bound."""
        return await self._fetch(holder_host, holder_port, "chunks", chunk_id, max_size)

    async def fetch_manifest(
        self, host: str, port: int, manifest_id: bytes, max_size: int = MAX_MANIFEST_BYTES
    ) -> bytes:
        """A manifest's bytes from a holder, unverified, at most `max_size` bytes."""
        return await self._fetch(host, port, "manifests", manifest_id, max_size)

    async def close(self) -> None:
        """Close pooled connections; the client may not be used afterwards."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> TransferClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _fetch(self, host: str, port: int, kind: str, oid: bytes, max_size: int) -> bytes:
        if len(oid) != ID_BYTES:
            raise ValueError(f"an object id is {ID_BYTES} bytes, not {len(oid)}")
        peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            url = URL.build(scheme="http", host=host, port=port, path=f"/{kind}/{oid.hex()}")
        except (ValueError, TypeError) as e:
            raise PeerError(peer, f"bad address: {e}") from None
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client().get(url, allow_redirects=False) as resp:
                    if resp.status == 200:
                        return await _read_bounded(resp, max_size, peer)
                    # Reading a small error body keeps the connection reusable.
                    await resp.content.read(MAX_ERROR_BODY)
                    if resp.status == 404:
                        raise PeerMissing(peer, f"does not hold {kind[:-1]} {oid.hex()}")
                    if resp.status == 503:
                        raise PeerBusy(
                            peer, "busy (503)", _retry_after(resp.headers.get("Retry-After"))
                        )
                    raise PeerError(
                        peer, f"answered HTTP {resp.status} for {kind[:-1]} {oid.hex()}"
                    )
        except TimeoutError:
            # Before OSError: TimeoutError is one, and aiohttp's timeouts subclass both.
            raise PeerError(peer, f"no complete answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as e:
            raise PeerError(peer, _describe(e)) from None


async def _read_bounded(resp: aiohttp.ClientResponse, max_size: int, peer: str) -> bytes:
    length = resp.content_length
    if length is not None:
        if length > max_size:
            raise PeerError(peer, f"response of {length} bytes exceeds the {max_size} allowed")
        # aiohttp's parser stops at Content-Length, so this reads exactly the body.
        return await resp.content.readexactly(length)
    # No length (chunked, or until close): accumulate, refusing past the bound.
    buf = bytearray()
    while piece := await resp.content.readany():
        buf += piece
        if len(buf) > max_size:
            raise PeerError(peer, f"response exceeds the {max_size} bytes allowed")
    return bytes(buf)


def _retry_after(value: str | None) -> float:
    # Only the delay-seconds form; an HTTP date or junk falls back to a second.
    try:
        return min(60.0, max(0.0, float(value))) if value is not None else 1.0
    except ValueError:
        return 1.0


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or e.os_error}"
    if isinstance(e, asyncio.IncompleteReadError):
        return f"connection closed after {len(e.partial)} of {e.expected} bytes"
    return str(e) or type(e).__name__
