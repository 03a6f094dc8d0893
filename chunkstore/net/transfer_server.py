"""The transfer server: a store's chunks and manifests over HTTP/1.1 (aiohttp).

Routes (GET, and HEAD for the same headers without a body):
  /chunks/{64 hex}     the chunk's stored form (codec byte + payload), application/octet-stream
  /manifests/{64 hex}  the manifest's bytes
  /health              a small JSON document about the node
Objects are immutable, so their responses carry `Cache-Control: immutable` and an ETag of the
id. Unknown id -> 404, malformed id -> 400, a request with a body -> 413, more than
`max_concurrent` requests at once (or more than one address's share): the request waits up to
`queue_wait` s in a short queue whose freed slots go to the waiting addresses in turn
(net/upload_slots.py), else 503 with a `Retry-After` that grows with the queue. A HEAD or a
matching If-None-Match on a chunk is answered from the store's length index: the chunk itself
is not read.
A plain `curl http://host:port/chunks/<id>` fetches a chunk.

Strangers may connect, so the server accepts connections itself (aiohttp only parses and
answers) and bounds what each address can hold: connections in all and per address, a few
seconds to finish a request's headers, a share of the request slots, and a minimum rate at
which a reader must take a response (see the constants below for the numbers and why).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from chunkstore.errors import InputError, NetworkError
from chunkstore.local.store import Store
from chunkstore.net.address_scope import Scope, scope_of
from chunkstore.net.ratelimit import TokenBucket, acquire
from chunkstore.net.upload_slots import UploadSlots, Verdict
from chunkstore.objects.ids import parse_id
from chunkstore.version import __version__

try:
    import resource
except ImportError:  # Windows: no RLIMIT_NOFILE to raise
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
OCTET_STREAM = "application/octet-stream"

# Requests are tiny (a method, a 75-character path, a few headers): bound them tightly.
MAX_REQUEST_LINE = 1024
MAX_HEADER_FIELD = 4096
MAX_HEADERS = 32
# An idle keep-alive connection is closed after this; clients close theirs sooner (15 s).
# Under pressure idle connections are closed earlier (see `_ConnectionTable`).
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

# -- limits for strangers ---------------------------------------------------------------------
# Connections in all: 1,024 serve 128 downloaders at the client's 8 connections per peer.
MAX_CONNECTIONS = 1024
# File descriptors left to the rest of the node whatever the connection cap: the transfer
# client's pool (256 connections), the store, the DHT socket, logs and contact files (64).
# Under `ulimit -n 1024` that leaves 704 for incoming connections, so accept() never meets
# EMFILE on account of this server.
FD_RESERVE = 256 + 64
# Connections per address (IPv4 address or IPv6 /64): 8 downloaders behind one NAT at the
# client's 8 connections each. A loopback swarm shares one address: it still works, because at
# the cap a new connection displaces that address's longest-idle one (only connections with a
# request in progress are kept), and the client retries a GET on a reused connection.
MAX_CONNECTIONS_PER_IP = 64
# A connection must finish its request headers this long after it opened (or after its first
# byte, between keep-alive requests). Honest clients send the request with the connection's
# first packet; 5 s covers a 1 s RTT plus two lost packets (initial RTO 1 s, doubled).
HEADER_TIMEOUT = 5.0
# A reader with bytes waiting for it must take at least MIN_SEND_RATE bytes/s, measured over
# windows of `send_timeout` (default SEND_WINDOW) seconds, or lose its connection and its slot.
# Our own client gives up on a fetch after 30 s, i.e. below ~35 KB/s for an average 1 MiB
# chunk, so 16 KiB/s drops no reader that our client would keep; 3 s rides out a few
# retransmission timeouts and frees a non-reader's slot well within 5 s.
MIN_SEND_RATE = 16 * 1024
SEND_WINDOW = 3.0
# Deadlines and progress are checked by one timer this often (one pass over the connections
# whose deadline passed and over the at most `max_concurrent` responses being sent).
SWEEP_INTERVAL = 0.25
# How long a request may wait for an upload slot before its 503. Short: our client's deadline
# for a chunk from a peer that has delivered is a few seconds (at least 2), and a wait counts
# against it; 1 s lets a slot's worth of 1 MiB chunks finish at 32 slots x 1 MiB/s each.
QUEUE_WAIT = 1.0
# Connections accepted per readiness event before yielding to the loop (asyncio uses 100).
ACCEPT_BATCH = 64
# After EMFILE/ENFILE with nothing idle to close, accepting pauses this long (asyncio: 1 s,
# during which no honest peer gets in either).
ACCEPT_PAUSE = 0.25
# Refused connections, expired headers and accept errors are counted, and logged at most
# once per this many seconds: a flood must not become a flood of log lines.
LOG_INTERVAL = 10.0
# Most listening backlog the kernel keeps for us (it caps at net.core.somaxconn).
BACKLOG = 512

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# SO_LINGER with a zero timeout: close() sends RST and keeps no TIME_WAIT state.
_LINGER_RESET = struct.pack("ii", 1, 0)


def piece_size(rate: float) -> int:
    """Bytes per write of a response capped at `rate` bytes/s."""
    return max(MIN_PIECE, min(MAX_PIECE, int(rate / PIECES_PER_SECOND)))


def raise_fd_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit.

    Returns the soft limit in force afterwards (None where the platform has none). Never
    raises: a limit that cannot be raised is left as it was."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        # macOS refuses an infinite soft limit (OPEN_MAX); Linux caps at fs.nr_open.
        for target in (hard, 1 << 20, 10240):
            if target != resource.RLIM_INFINITY and target <= soft:
                continue
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_budget(max_connections: int, fd_limit: int | None) -> int:
    """Connections the server may hold: `max_connections`, less if file descriptors are few."""
    if fd_limit is None or fd_limit == getattr(resource, "RLIM_INFINITY", -1):
        return max_connections
    return max(1, min(max_connections, fd_limit - FD_RESERVE))


def peer_key(host: str) -> str:
    """The address that per-address limits count: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip.is_loopback:
            return str(ip)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class _CountedLog:
    """Counts events of one kind and logs them at most once per LOG_INTERVAL."""

    def __init__(self, level: int, what: str) -> None:
        self.level = level
        self.what = what
        self.count = 0
        self._unlogged = 0
        self._last: float | None = None

    def note(self, detail: object = "") -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if self._last is None or now - self._last >= LOG_INTERVAL:
            log.log(
                self.level,
                "%s: %d in the last %g s (%s)",
                self.what,
                self._unlogged,
                LOG_INTERVAL if self._last is not None else 0,
                detail,
            )
            self._unlogged = 0
            self._last = now


# Connection states.
_IDLE = 0  # no request bytes pending: fresh (with a header deadline) or kept alive
_READING = 1  # some bytes of a request, headers not complete (header deadline)
_BUSY = 2  # a request is being handled


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, our bookkeeping around it."""

    def __init__(self, table: _ConnectionTable, inner: asyncio.Protocol, key: str) -> None:
        self.table = table
        self.inner = inner
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.deadline: float | None = None
        self.pipelined = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:  # displaced before its transport existed
            transport.abort()  # type: ignore[attr-defined]
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.state == _IDLE:
            self.table.reading(self)
        elif self.state == _BUSY:
            self.pipelined = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.remove(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def abort(self) -> None:
        self.table.remove(self)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _ConnectionTable:
    """Which connections exist, per address, which may be closed to make room, which expire.

    Dicts keep insertion order: `_evictable` is ordered by when a connection last became idle
    or started a request (the oldest is displaced first), `_deadlines` by deadline (every
    deadline is "now + HEADER_TIMEOUT" when set)."""

    def __init__(self, max_total: int, max_per_key: int, relax_loopback: bool = True) -> None:
        self.max_total = max_total
        self.max_per_key = max_per_key
        self.relax_loopback = relax_loopback
        self.total = 0
        self.per_key: dict[str, int] = {}
        self._evictable: dict[str, dict[_Connection, None]] = {}
        self._deadlines: dict[_Connection, None] = {}
        self.by_inner: dict[object, _Connection] = {}

    def victim_for(self, key: str) -> _Connection | None | bool:
        """Room for a new connection from `key`: True if there is room, a connection to close
        to make room, or None (refuse the newcomer: everything is busy)."""
        if self.per_key.get(key, 0) >= self.max_per_key and not (
            self.relax_loopback and scope_of(key) is Scope.LOOPBACK
        ):
            return self._oldest(key)
        if self.total >= self.max_total:
            # From the address holding most connections: a flood displaces its own first.
            ranked = sorted(self._evictable, key=lambda k: self.per_key.get(k, 0), reverse=True)
            for k in ranked:
                if (victim := self._oldest(k)) is not None:
                    return victim
            return None
        return True

    def any_victim(self) -> _Connection | None:
        for k in list(self._evictable):
            if (victim := self._oldest(k)) is not None:
                return victim
        return None

    def _oldest(self, key: str) -> _Connection | None:
        group = self._evictable.get(key)
        return next(iter(group), None) if group else None

    def add(self, conn: _Connection, now: float) -> None:
        self.total += 1
        self.per_key[conn.key] = self.per_key.get(conn.key, 0) + 1
        self.by_inner[conn.inner] = conn
        self._set_evictable(conn, True)
        conn.deadline = now + HEADER_TIMEOUT
        self._deadlines[conn] = None

    def remove(self, conn: _Connection) -> None:
        if self.by_inner.pop(conn.inner, None) is None:
            return
        self.total -= 1
        left = self.per_key[conn.key] - 1
        if left:
            self.per_key[conn.key] = left
        else:
            del self.per_key[conn.key]
        self._set_evictable(conn, False)
        self._deadlines.pop(conn, None)

    def reading(self, conn: _Connection, now: float | None = None) -> None:
        conn.state = _READING
        if conn.deadline is None:
            conn.deadline = (time.monotonic() if now is None else now) + HEADER_TIMEOUT
            self._deadlines[conn] = None

    def busy(self, conn: _Connection) -> None:
        conn.state = _BUSY
        conn.pipelined = False
        conn.deadline = None
        self._deadlines.pop(conn, None)
        self._set_evictable(conn, False)

    def done(self, conn: _Connection, now: float) -> None:
        if conn.inner not in self.by_inner:
            return
        conn.state = _IDLE
        self._set_evictable(conn, True)
        if conn.pipelined:
            self.reading(conn, now)

    def expired(self, now: float) -> list[_Connection]:
        out = []
        for conn in self._deadlines:
            if conn.deadline is None or conn.deadline > now:
                break
            out.append(conn)
        return out

    def _set_evictable(self, conn: _Connection, on: bool) -> None:
        group = self._evictable.get(conn.key)
        if group is not None:
            group.pop(conn, None)
        if on:
            if group is None:
                group = self._evictable[conn.key] = {}
            group[conn] = None
        elif group is not None and not group:
            del self._evictable[conn.key]


class _Sending:
    """A response body on its way to a peer, for the minimum-progress rule."""

    __slots__ = ("transport", "peer", "written", "pending", "run_start", "drained")

    def __init__(self, transport: asyncio.Transport, peer: str | None) -> None:
        self.transport = transport
        self.peer = peer
        self.written = 0  # body bytes handed to the transport
        self.pending = transport.get_write_buffer_size()
        self.run_start: float | None = None  # since when bytes have waited for the peer
        self.drained = 0  # bytes the peer took since run_start

    def stalled(self, now: float, window: float, min_rate: float, written_before: int) -> bool:
        """Sample the transport; True when the peer took too little over a full window."""
        pending = self.transport.get_write_buffer_size()
        taken = (self.written - written_before) - (pending - self.pending)
        self.pending = pending
        if pending == 0:
            self.run_start = None  # caught up (or we are the slow side: the upload cap)
            return False
        if self.run_start is None:
            self.run_start, self.drained = now, 0
            return False
        self.drained += max(0, taken)
        if now - self.run_start < window:
            return False
        if self.drained < min_rate * (now - self.run_start):
            return True
        self.run_start, self.drained = now, 0
        return False


class TransferServer:
    """Serves a store's chunks and manifests over HTTP/1.1.

    Callers may rely on:
    - at most `max_concurrent` requests are handled at once, at most `max_concurrent_per_ip`
      from one address (IPv4 address or IPv6 /64); others wait up to `queue_wait` s in a
      queue of at most `queue_limit` (default: twice the slots; an address at most its
      share), slots freed going to the waiting addresses in turn; the rest get 503 with a
      Retry-After of 1 s plus 1 s per round of slots queued (at most 10);
    - at most `max_connections` connections (fewer if file descriptors are short: see
      FD_RESERVE) and `max_connections_per_ip` per address; a newcomer beyond either
      displaces the longest-idle connection, or is reset when every one has a request running;
    - a connection that does not complete its request headers within HEADER_TIMEOUT s is
      closed;
    - with `upload_rate`, body bytes leave at no more than that rate (bytes/s) in total over
      all connections, after an initial burst of one piece;
    - a peer with bytes waiting that takes fewer than `min_send_rate` bytes/s over
      `send_timeout` seconds is disconnected, and its request slot freed;
    - `bytes_served` counts body bytes written, `requests_served` the object requests answered
      in full (200 or 304, GET or HEAD), `requests_refused` the 503s, `connections_refused`
      the connections reset at accept, `connections_displaced` the idle ones closed for room.
    """

    def __init__(
        self,
        store: Store,
        *,
        upload_rate: float | None = None,
        max_concurrent: int = 32,
        max_concurrent_per_ip: int | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_ip: int = MAX_CONNECTIONS_PER_IP,
        send_timeout: float = SEND_WINDOW,
        min_send_rate: float = MIN_SEND_RATE,
        relax_loopback: bool = True,
        queue_limit: int | None = None,
        queue_wait: float = QUEUE_WAIT,
    ) -> None:
        if upload_rate is not None and not upload_rate > 0:
            raise ValueError(f"upload_rate must be positive or None, not {upload_rate}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        if max_connections < 1 or max_connections_per_ip < 1:
            raise ValueError("max_connections and max_connections_per_ip must be at least 1")
        if max_concurrent_per_ip is None:
            # A quarter of the slots, so at least four addresses are served at once, but never
            # below the client's 8 connections per peer: one honest downloader alone is never
            # refused by its share.
            max_concurrent_per_ip = min(max_concurrent, max(8, max_concurrent // 4))
        if max_concurrent_per_ip < 1:
            raise ValueError("max_concurrent_per_ip must be at least 1")
        self.store = store
        self.upload_rate = upload_rate
        self.max_concurrent = max_concurrent
        self.max_concurrent_per_ip = max_concurrent_per_ip
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.send_timeout = send_timeout
        self.min_send_rate = min_send_rate
        self.port: int | None = None
        self.bytes_served = 0
        self.requests_served = 0
        self.requests_refused = 0
        self.queue_wait = queue_wait
        self._slots = UploadSlots(
            max_concurrent, 2 * max_concurrent if queue_limit is None else queue_limit
        )
        self._slot_waiters: dict[int, asyncio.Future[None]] = {}
        self._piece = piece_size(upload_rate) if upload_rate else 0
        # One bucket for the whole server: the cap is the node's total, not per connection.
        self._bucket = TokenBucket(upload_rate, self._piece) if upload_rate else None
        self._runner: web.AppRunner | None = None
        self._sockets: list[socket.socket] = []
        # Per-address limits leave loopback alone by default, as the DHT's do: a test swarm
        # runs every node and downloader on 127.0.0.1, and no stranger connects from there.
        self.relax_loopback = relax_loopback
        self._table = _ConnectionTable(max_connections, max_connections_per_ip, relax_loopback)
        self._sending: dict[_Sending, int] = {}  # -> `written` at the previous sample
        self._sweeper: asyncio.Task[None] | None = None
        self._connecting: set[asyncio.Task[None]] = set()
        self._refused = _CountedLog(logging.WARNING, "connections reset: all busy")
        self._displaced = _CountedLog(logging.INFO, "idle connections closed to make room")
        self._expired = _CountedLog(logging.INFO, "connections closed: headers too slow")
        self._accept_errors = _CountedLog(logging.WARNING, "accept() failed")

    @property
    def active(self) -> int:
        """Requests being handled right now."""
        return self._slots.active

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot right now."""
        return self._slots.waiting

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return self._table.total

    @property
    def connections_refused(self) -> int:
        return self._refused.count

    @property
    def connections_displaced(self) -> int:
        return self._displaced.count

    async def start(self, host: str | None = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (port 0: the OS chooses; read it from `.port`).

        Raises the soft file-descriptor limit to the hard limit (`raise_fd_limit`) and fits the
        connection cap to it. Raises NetworkError when the address cannot be bound."""
        if self._runner is not None:
            raise RuntimeError("server already started")
        self._table.max_total = connection_budget(self.max_connections, raise_fd_limit())
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
            self._sockets = _listen(host, port)
        except OSError as e:
            await runner.cleanup()
            raise NetworkError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._runner = runner
        self.port = self._sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._accept_ready, sock)
        self._sweeper = asyncio.create_task(self._sweep())
        log.info(
            "transfer server listening on %s:%d (at most %d connections)",
            host,
            self.port,
            self._table.max_total,
        )

    async def stop(self) -> None:
        """Stop listening and close connections (in-flight responses get STOP_GRACE s)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets = []
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._connecting):
            task.cancel()
        await runner.cleanup()
        for conn in list(self._table.by_inner.values()):
            conn.abort()

    async def __aenter__(self) -> TransferServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connections ------------------------------------------------------------------------
    def _accept_ready(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                self._accept_errors.note(e.strerror or e)
                if e.errno in _RESOURCE_ERRORS:
                    # Out of descriptors: an idle connection's is the cheapest to give up.
                    victim = self._table.any_victim()
                    if victim is not None:
                        self._displaced.note(victim.key)
                        victim.abort()
                        continue
                self._pause_accepting(listener)
                return
            self._admit(sock, addr)

    def _pause_accepting(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            if listener in self._sockets:
                loop.add_reader(listener.fileno(), self._accept_ready, listener)

        loop.call_later(ACCEPT_PAUSE, resume)

    def _admit(self, sock: socket.socket, addr: tuple) -> None:
        key = peer_key(addr[0])
        room = self._table.victim_for(key)
        if room is None:
            self._refused.note(key)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
            return
        if room is not True:
            self._displaced.note(key)
            room.abort()  # type: ignore[union-attr]
        assert self._runner is not None and self._runner.server is not None
        sock.setblocking(False)
        conn = _Connection(self._table, self._runner.server(), key)
        self._table.add(conn, time.monotonic())
        task = asyncio.get_running_loop().create_task(self._connect(sock, conn))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, sock: socket.socket, conn: _Connection) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, sock=sock)
        except BaseException:
            self._table.remove(conn)
            sock.close()
            raise

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in self._table.expired(now):
                self._expired.note(conn.key)
                conn.abort()
            for sending, before in list(self._sending.items()):
                self._sending[sending] = sending.written
                if sending.stalled(now, self.send_timeout, self.min_send_rate, before):
                    # At most max_concurrent of these per window: a line each is affordable.
                    log.info(
                        "peer %s took less than %d bytes/s for %g s; dropping it",
                        sending.peer,
                        self.min_send_rate,
                        self.send_timeout,
                    )
                    del self._sending[sending]
                    sending.transport.abort()

    # -- request handling -------------------------------------------------------------------
    def _admission(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
            conn = self._table.by_inner.get(request.protocol)
            if conn is None:  # already closed
                raise web.HTTPServiceUnavailable()
            self._table.busy(conn)
            try:
                return await self._admit_request(request, handler, conn.key)
            finally:
                self._table.done(conn, time.monotonic())

        return admission

    async def _admit_request(
        self, request: web.Request, handler: Handler, key: str
    ) -> web.StreamResponse:
        if request.body_exists:
            # Nothing here takes a body; answer and close rather than read it.
            resp = web.Response(status=413, text="requests carry no body\n")
            resp.force_close()
            return resp
        share = self.max_concurrent_per_ip
        if self.relax_loopback and scope_of(key) is Scope.LOOPBACK:
            share = self.max_concurrent + self._slots.queue_limit  # no share: every slot, queue
        admission = self._slots.admit(key, share)
        if admission.verdict is Verdict.QUEUED:
            granted = await self._wait_for_slot(key, admission.ticket)
        else:
            granted = admission.verdict is Verdict.GRANTED
        if not granted:
            self.requests_refused += 1
            retry = str(self._slots.retry_after())
            return web.Response(status=503, headers={"Retry-After": retry}, text="busy\n")
        try:
            return await handler(request)
        finally:
            self._release_slot(key)

    async def _wait_for_slot(self, key: str, ticket: int) -> bool:
        """Wait for `ticket` to be granted a slot, at most `queue_wait` s: True if it was (the
        request then holds the slot)."""
        granted = asyncio.get_running_loop().create_future()
        self._slot_waiters[ticket] = granted
        try:
            await asyncio.wait({granted}, timeout=self.queue_wait)
        except asyncio.CancelledError:  # the peer went away: give back what it was given
            if not self._slots.withdraw(key, ticket):
                self._release_slot(key)
            raise
        finally:
            self._slot_waiters.pop(ticket, None)
        # Granted in the same moment the wait ended: the slot is the request's.
        return not self._slots.withdraw(key, ticket)

    def _release_slot(self, key: str) -> None:
        for ticket in self._slots.release(key):
            waiter = self._slot_waiters.get(ticket)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _get_chunk(self, request: web.Request) -> web.StreamResponse:
        oid = _parse_oid(request)
        if request.method == "HEAD" or request.if_none_match:
            # The length index answers without reading the chunk (a stored form is >= 1 byte).
            size = self.store.stored_size([oid])
            if request.method == "HEAD" or self._not_modified(request, oid.hex()):
                return self._answer_without_body(request, oid, size or None)
        # An LMDB get is a memcpy (~10 GB/s): fine inline on the loop, no executor hop.
        return await self._send_object(request, oid, self.store.get_stored(oid))

    async def _get_manifest(self, request: web.Request) -> web.StreamResponse:
        oid = _parse_oid(request)
        # Manifests have no length index; they are read whole (at most MAX_MANIFEST_BYTES).
        return await self._send_object(request, oid, self.store.get_manifest_bytes(oid))

    async def _get_health(self, request: web.Request) -> web.StreamResponse:
        body = {
            "service": "chunkstore",
            "version": __version__,
            "active": self._slots.active,
            "waiting": self._slots.waiting,
            "max_concurrent": self.max_concurrent,
            "connections": self._table.total,
            "max_connections": self._table.max_total,
            "upload_rate": self.upload_rate,
            "requests_served": self.requests_served,
            "bytes_served": self.bytes_served,
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    @staticmethod
    def _not_modified(request: web.Request, hex_id: str) -> bool:
        wanted = request.if_none_match
        return bool(wanted) and any(tag.value in (hex_id, "*") for tag in wanted)

    def _answer_without_body(
        self, request: web.Request, oid: bytes, size: int | None
    ) -> web.StreamResponse:
        if size is None:
            return _unknown()
        hex_id = oid.hex()
        headers = {"ETag": f'"{hex_id}"', "Cache-Control": IMMUTABLE}
        self.requests_served += 1
        if self._not_modified(request, hex_id):
            return web.Response(status=304, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.content_type = OCTET_STREAM
        resp.content_length = size  # HEAD: aiohttp prepares it and sends the headers only
        return resp

    async def _send_object(
        self, request: web.Request, oid: bytes, data: bytes | None
    ) -> web.StreamResponse:
        if data is None:
            return _unknown()
        if request.method == "HEAD" or self._not_modified(request, oid.hex()):
            return self._answer_without_body(request, oid, len(data))
        resp = web.StreamResponse(headers={"ETag": f'"{oid.hex()}"', "Cache-Control": IMMUTABLE})
        resp.content_type = OCTET_STREAM
        resp.content_length = len(data)
        transport = request.transport
        if transport is None:
            return resp
        sending = _Sending(transport, request.remote)
        self._sending[sending] = 0
        try:
            await resp.prepare(request)
            await self._send_body(resp, data, sending)
            await resp.write_eof()
        except ConnectionError:
            return resp  # the peer went away, or was dropped as too slow
        finally:
            self._sending.pop(sending, None)
        self.requests_served += 1
        return resp

    async def _send_body(self, resp: web.StreamResponse, data: bytes, sending: _Sending) -> None:
        if self._bucket is None:
            # One write: aiohttp drains after it, honouring back-pressure; the sweep watches
            # the transport's buffer for progress meanwhile.
            sending.written += len(data)
            await resp.write(data)
            self.bytes_served += len(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), self._piece):
            part = view[start : start + self._piece]
            await acquire(self._bucket, len(part))
            sending.written += len(part)
            await resp.write(part)
            self.bytes_served += len(part)


def _unknown() -> web.Response:
    # Not immutable: the object may arrive here later.
    return web.Response(status=404, text="unknown id\n", headers={"Cache-Control": "no-cache"})


def _listen(host: str | None, port: int) -> list[socket.socket]:
    """Non-blocking listening sockets for host:port (None or "": every interface)."""
    if not host:
        if socket.has_dualstack_ipv6():
            socks = [
                socket.create_server(
                    ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=BACKLOG
                )
            ]
        else:
            socks = [socket.create_server(("", port), backlog=BACKLOG)]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        socks = [
            socket.create_server(
                address[:2] if family == socket.AF_INET else address, family=family, backlog=BACKLOG
            )
        ]
    for sock in socks:
        sock.setblocking(False)
    return socks


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
