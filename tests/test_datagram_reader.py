"""The DHT socket's reading (net/datagram_reader.py): a burst that arrives while the node's
loop is busy is kept (a larger receive buffer) and drained many datagrams per turn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import pytest

from chunkstore.net.datagram_reader import DATAGRAMS_PER_WAKEUP
from tests.test_dht import LOCAL, request, run, swarm

pytestmark = pytest.mark.timeout(60)
SENDER_ID = os.urandom(20)


def ping() -> bytes:
    return request(["ping", [SENDER_ID]])


@contextlib.contextmanager
def receiver():
    """A plain non-blocking UDP socket with a large buffer: it must not be what drops."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((LOCAL, 0))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> int:
    """How many answers are waiting (read them all)."""
    got = 0
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return got
        got += data[:1] == b"\x01"


def test_a_burst_sent_while_the_loop_is_blocked_is_answered_whole():
    # 400 pings arrive while the node's loop does not run: ~480 KB of kernel buffer (each
    # datagram is charged ~1.2 KB). The default 212,992-byte buffer dropped about half.
    async def main():
        async with swarm(1) as [node]:
            if node._server.reader.receive_buffer < 2 << 20:
                pytest.skip("net.core.rmem_max keeps the receive buffer under 1 MiB here")
            with receiver() as sock:
                for _ in range(400):  # no await: the node's loop is held up meanwhile
                    sock.sendto(ping(), (LOCAL, node.port))
                got, deadline = 0, time.monotonic() + 10
                while got < 400 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                    got += drain(sock)
                assert got == 400
            assert node.protocol.dropped_datagrams == 0

    run(main)


def test_a_busy_loop_drains_many_datagrams_per_turn():
    # Every turn of the loop takes 10 ms of other work (uploads, say): one datagram per turn
    # needed 200 turns for 200 pings; batched, a few turns do.
    async def main():
        async with swarm(1) as [node]:
            with receiver() as sock:
                for _ in range(200):
                    sock.sendto(ping(), (LOCAL, node.port))
                got = turns = 0
                while got < 200 and turns < 1000:
                    time.sleep(0.01)  # the other work of this turn
                    got += drain(sock)
                    turns += 1
                    await asyncio.sleep(0)
            assert got == 200
            assert turns <= 4 * (200 // DATAGRAMS_PER_WAKEUP + 1), turns

    run(main)
