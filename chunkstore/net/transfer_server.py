"""The transfer server: a store's chunks and manifests over HTTP/1.1 (aiohttp).

Routes (GET, and HEAD for the same headers without a body):
  /chunks/{64 hex}     the chunk's stored form (codec byte + payload), application/octet-stream
  /manifests/{64 hex}  the manifest's bytes
  /health              a small JSON document about the node
Objects are immutable, so their responses carry `Cache-Control: immutable` and an ETag of the
id. Unknown id -> 404, malformed id -> 400, a request with a body -> 413, more than
`max_concurrent` requests at once -> 503 with `Retry-After: 1`, answered at once.
A plain `curl http://host:port/chunks/<id>` fetches a chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from chunkstore.errors import InputError, NetworkError
from chunkstore.local.store import Store
from chunkstore.net.ratelimit import TokenBucket, acquire
from chunkstore.objects.ids import parse_id
from chunkstore.version import __version__

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
OCTET_STREAM = "application/octet-stream"

# Requests are tiny (a method, a 75-character path, a few headers): bound them tightly.
MAX_REQUEST_LINE = 1024
MAX_HEADER_FIELD = 4096
MAX_HEADERS = 32
# An idle keep-alive connection is closed after this; clients close theirs sooner (15 s).
SERVER_KEEPALIVE = 60.0
# An unread request body is discarded for at most this long before the connection is closed.
LINGER = 1.0
# stop() lets in-flight responses finish for this long, then cancels them.
STOP_GRACE = 1.0
# Capped uploads are written in pieces of rate/PIECES_PER_SECOND bytes within these bounds:
# small enough for smooth pacing, large enough to keep the capping cost low (DESIGN.md:
# ~3-4 ms CPU per MB at 64 KiB writes, ~2 ms at 256 KiB).
PIECES_PER_SECOND = 20
MIN_PIECE = 16 * 1024
MAX_PIECE = 256 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def piece_size(rate: float) -> int:
    """Bytes per write of a response capped at `rate` bytes/s."""
    return max(MIN_PIECE, min(MAX_PIECE, int(rate / PIECES_PER_SECOND)))


class TransferServer:
    """Serves a store's chunks and manifests over HTTP/1.1.

    Callers may rely on:
    - at most `max_concurrent` requests are handled at once; others get 503 at once;
    - with `upload_rate`, body bytes leave at no more than that rate (bytes/s) in total over
      all connections, after an initial burst of one piece;
    - a peer that stops reading for `send_timeout` seconds is disconnected;
    - `bytes_served` counts body bytes written, `requests_served` the object requests answered
      in full (200 or 304, GET or HEAD), `requests_refused` the 503s.
    """

    def __init__(
        self,
        store: Store,
        *,
        upload_rate: float | None = None,
        max_concurrent: int = 32,
        send_timeout: float = 60.0,
    ) -> None:
        if upload_rate is not None and not upload_rate > 0:
            raise ValueError(f"upload_rate must be positive or None, not {upload_rate}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        self.store = store
        self.upload_rate = upload_rate
        self.max_concurrent = max_concurrent
        self.send_timeout = send_timeout
        self.port: int | None = None
        self.bytes_served = 0
        self.requests_served = 0
        self.requests_refused = 0
        self._active = 0
        self._piece = piece_size(upload_rate) if upload_rate else 0
        # One bucket for the whole server: the cap is the node's total, not per connection.
        self._bucket = TokenBucket(upload_rate, self._piece) if upload_rate else None
        self._runner: web.AppRunner | None = None

    @property
    def active(self) -> int:
        """Requests being handled right now."""
        return self._active

    async def start(self, host: str | None = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (port 0: the OS chooses; read it from `.port`).

        Raises NetworkError when the address cannot be bound."""
        if self._runner is not None:
            raise RuntimeError("server already started")
        app = web.Application(
            client_max_size=1024,
            middlewares=[self._admission()],
            handler_args={
                "max_line_size": MAX_REQUEST_LINE,
                "max_field_size": MAX_HEADER_FIELD,
                "max_headers": MAX_HEADERS,
            },
        )
        app.router.add_get("/chunks/{oid}", self._get_chunk)
        app.router.add_get("/manifests/{oid}", self._get_manifest)
        app.router.add_get("/health", self._get_health)
        # No access log: a line per chunk would cost more than serving it.
        runner = web.AppRunner(
            app,
            access_log=None,
            logger=_PeerInputLog(log, {}),
            keepalive_timeout=SERVER_KEEPALIVE,
            lingering_time=LINGER,
            handler_cancellation=True,
            shutdown_timeout=STOP_GRACE,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            await runner.cleanup()
            raise NetworkError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("transfer server listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        """Stop listening and close connections (in-flight responses get STOP_GRACE s)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> TransferServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- request handling -------------------------------------------------------------------
    def _admission(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.body_exists:
                # Nothing here takes a body; answer and close rather than read it.
                resp = web.Response(status=413, text="requests carry no body\n")
                resp.force_close()
                return resp
            if self._active >= self.max_concurrent:
                self.requests_refused += 1
                return web.Response(status=503, headers={"Retry-After": "1"}, text="busy\n")
            self._active += 1
            try:
                return await handler(request)
            finally:
                self._active -= 1

        return admission

    async def _get_chunk(self, request: web.Request) -> web.StreamResponse:
        oid = _parse_oid(request)
        # An LMDB get is a memcpy (~10 GB/s): fine inline on the loop, no executor hop.
        return await self._send_object(request, oid, self.store.get_stored(oid))

    async def _get_manifest(self, request: web.Request) -> web.StreamResponse:
        oid = _parse_oid(request)
        return await self._send_object(request, oid, self.store.get_manifest_bytes(oid))

    async def _get_health(self, request: web.Request) -> web.StreamResponse:
        body = {
            "service": "chunkstore",
            "version": __version__,
            "active": self._active,
            "max_concurrent": self.max_concurrent,
            "upload_rate": self.upload_rate,
            "requests_served": self.requests_served,
            "bytes_served": self.bytes_served,
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _send_object(
        self, request: web.Request, oid: bytes, data: bytes | None
    ) -> web.StreamResponse:
        if data is None:
            # Not immutable: the object may arrive here later.
            return web.Response(
                status=404, text="unknown id\n", headers={"Cache-Control": "no-cache"}
            )
        hex_id = oid.hex()
        headers = {"ETag": f'"{hex_id}"', "Cache-Control": IMMUTABLE}
        wanted = request.if_none_match
        if wanted and any(tag.value in (hex_id, "*") for tag in wanted):
            self.requests_served += 1
            return web.Response(status=304, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.content_type = OCTET_STREAM
        resp.content_length = len(data)
        try:
            await self._timed(resp.prepare(request))
            if request.method != "HEAD":
                await self._send_body(resp, data)
            await self._timed(resp.write_eof())
        except TimeoutError:
            log.info(
                "peer %s read nothing for %g s; dropping it", request.remote, self.send_timeout
            )
            if request.transport is not None:
                request.transport.abort()
            return resp  # aiohttp sees the closed transport and ends the connection quietly
        except ConnectionError:
            return resp  # the peer went away mid-response: nothing left to do
        self.requests_served += 1
        return resp

    async def _send_body(self, resp: web.StreamResponse, data: bytes) -> None:
        if self._bucket is None:
            # One write: aiohttp drains after it, honouring back-pressure.
            await self._timed(resp.write(data))
            self.bytes_served += len(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), self._piece):
            part = view[start : start + self._piece]
            await acquire(self._bucket, len(part))
            await self._timed(resp.write(part))
            self.bytes_served += len(part)

    async def _timed(self, aw: Awaitable[object]) -> None:
        async with asyncio.timeout(self.send_timeout):
            await aw


class _PeerInputLog(logging.LoggerAdapter):
    """aiohttp's server log, with malformed requests demoted to DEBUG.

    aiohttp logs every unparsable request at ERROR with a traceback; from untrusted peers that
    is noise, and a way to flood the log. Failures in our own handlers stay at ERROR."""

    def exception(
        self, msg: object, *args: object, exc_info: object = True, **kwargs: object
    ) -> None:
        level = logging.DEBUG if isinstance(exc_info, HttpProcessingError) else logging.ERROR
        self.log(level, msg, *args, exc_info=exc_info, **kwargs)


def _parse_oid(request: web.Request) -> bytes:
    try:
        return parse_id(request.match_info["oid"])
    except InputError as e:
        raise web.HTTPBadRequest(text=f"{e}\n") from None
