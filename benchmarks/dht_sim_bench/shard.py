"""A shard: the simulated DHT nodes one process runs, on one event loop, and the commands the
simulation gives them. `LocalShard` runs in the caller's loop; `RemoteShard` runs a shard in
a child process and speaks to it over its stdin and stdout.

Every node is a real `chunkstore.net.dht.DhtNode` on 127.0.0.1 with an OS-chosen port. The
only thing added is a count of the UDP datagrams each node sends, taken at its transport
(`CountingTransport`): the network itself is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import resource
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chunkstore.net.dht import DhtNode
from chunkstore.net.download import FIRST_HOLDERS, LOOKUP_CONCURRENCY
from chunkstore.net.lookup import DhtLookup
from chunkstore.net.providers import Holder

HOST = "127.0.0.1"
# The transfer port the announcer announces: never connected to, only looked for.
ANNOUNCED_PORT = 4100
# Joins a shard runs at once (each is an iterative lookup of the joining node's own id).
JOIN_CONCURRENCY = 16
# A command that takes longer than this is a hung simulation, not a slow one.
COMMAND_TIMEOUT = 3600.0


class CountingTransport:
    """A node's UDP transport, counting the datagrams and bytes it sends; everything else
    goes to the real transport."""

    def __init__(self, inner: asyncio.DatagramTransport) -> None:
        self._inner = inner
        self.datagrams = 0
        self.bytes = 0

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.datagrams += 1
        self.bytes += len(data)
        self._inner.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def announce_keys(dht: DhtNode, keys: Sequence[bytes], port: int) -> int:
    """Announce `keys` (20-byte DHT keys) through the node's own announce path for many keys:
    the batched one when DhtNode has it, else `announce_many`. Returns how many keys at least
    one remote node accepted (when the method says)."""
    batched = getattr(dht, "announce_batched", None)
    method = batched if batched is not None else dht.announce_many
    accepted = await method(list(keys), port)
    return len(accepted) if isinstance(accepted, set | list | dict) else len(keys)


def announce_method(dht: DhtNode) -> str:
    return "announce_batched" if hasattr(dht, "announce_batched") else "announce_many"


class Shard:
    """The nodes of one process, by global index."""

    def __init__(self) -> None:
        self.nodes: dict[int, DhtNode] = {}
        self.counters: dict[int, CountingTransport] = {}
        self.stopped: dict[int, CountingTransport] = {}  # counts of stopped nodes stay

    async def start_nodes(
        self, specs: Sequence[tuple[int, bytes, tuple[str, int] | None]]
    ) -> dict[int, int]:
        """Start (index, node id, bootstrap address or None) nodes, at most JOIN_CONCURRENCY
        joining at once; returns index -> UDP port."""
        gate = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def one(index: int, node_id: bytes, boot: tuple[str, int] | None) -> None:
            async with gate:
                dht = DhtNode(node_id=node_id)
                await dht.start(HOST, 0)
                counter = CountingTransport(dht.protocol.transport)
                dht.protocol.transport = counter
                self.nodes[index], self.counters[index] = dht, counter
                if boot is not None:
                    await dht.bootstrap([boot])

        async with asyncio.TaskGroup() as group:
            for index, node_id, boot in specs:
                group.create_task(one(index, node_id, boot))
        return {i: self.nodes[i].port for i, _, _ in specs}

    async def stop_nodes(self, indices: Sequence[int]) -> int:
        """Stop these nodes (a departure: the socket closes, nothing is said to anyone)."""
        stopping = [i for i in indices if i in self.nodes]
        for index in stopping:
            self.stopped[index] = self.counters.pop(index)
        await asyncio.gather(*(self.nodes.pop(i).stop() for i in stopping))
        return len(stopping)

    async def datagrams(self) -> dict[str, int]:
        """Datagrams and bytes sent so far by every node of the shard, stopped ones included."""
        counters = [*self.counters.values(), *self.stopped.values()]
        return {
            "datagrams": sum(c.datagrams for c in counters),
            "bytes": sum(c.bytes for c in counters),
        }

    async def node_datagrams(self, index: int) -> int:
        counter = self.counters.get(index) or self.stopped[index]
        return counter.datagrams

    async def lookups_made(self, index: int) -> int:
        return getattr(self.nodes[index], "lookups_made", -1)

    async def announce(self, index: int, keys: Sequence[bytes]) -> dict[str, Any]:
        """Node `index` announces `keys` (20-byte DHT keys) at ANNOUNCED_PORT."""
        dht = self.nodes[index]
        started = time.monotonic()
        accepted = await announce_keys(dht, keys, ANNOUNCED_PORT)
        # A batched announce reports its own lookups (DhtNode.last_sweep, when it has one).
        sweep = getattr(dht, "last_sweep", None)
        return {
            "method": announce_method(dht),
            "accepted": accepted,
            "seconds": time.monotonic() - started,
            "reported_lookups": getattr(sweep, "lookups", None),
            "batched": sweep is not None or announce_method(dht) == "announce_batched",
        }

    async def lookups(
        self, tasks: Sequence[tuple[int, bytes]], concurrency: int
    ) -> list[tuple[bool | None, float]]:
        """Look up the holders of each (node index, object id) as a download does (the first
        holders, FIRST_HOLDERS of them at most); (found the announcer, seconds) each, in order.
        (None, 0.0) when the node had left before its lookup began (the caller picks live
        nodes, but with churn running it may lose the race)."""
        gate = asyncio.Semaphore(max(1, concurrency))
        wanted = Holder(HOST, ANNOUNCED_PORT)

        async def one(index: int, object_id: bytes) -> tuple[bool | None, float]:
            async with gate:
                dht = self.nodes.get(index)
                if dht is None:
                    return (None, 0.0)
                started = time.monotonic()
                try:
                    found = await DhtLookup(dht).find_first_providers(object_id, FIRST_HOLDERS)
                except Exception:  # noqa: BLE001 - a node stopped under the lookup
                    return (False, time.monotonic() - started)
                return (wanted in found, time.monotonic() - started)

        return list(await asyncio.gather(*(one(i, o) for i, o in tasks)))

    async def sweep(self, index: int, object_ids: Sequence[bytes]) -> dict[str, Any]:
        """Node `index` looks up the holders of every object as a download looks up its
        chunks' (full lookups, LOOKUP_CONCURRENCY at a time, from one node: what it learns
        of departed contacts in one lookup spares the others)."""
        dht = self.nodes[index]
        lookup = DhtLookup(dht)
        wanted = Holder(HOST, ANNOUNCED_PORT)
        queue = list(reversed(object_ids))
        found = 0
        counter = self.counters[index]
        sent_before = counter.datagrams
        started = time.monotonic()

        async def worker() -> None:
            nonlocal found
            while queue and index in self.nodes:  # churn may stop this node too
                holders = await lookup.find_providers(queue.pop())
                found += wanted in holders  # after the await: `found` may have moved

        async with asyncio.TaskGroup() as group:
            for _ in range(min(LOOKUP_CONCURRENCY, len(object_ids))):
                group.create_task(worker())
        return {
            "keys": len(object_ids),
            "found": found,
            "seconds": time.monotonic() - started,
            "datagrams": counter.datagrams - sent_before,
            "left_early": index not in self.nodes,
        }

    async def holding(self, keys: Sequence[bytes]) -> dict[int, list[int]]:
        """For each of `keys` (by position), the running nodes of this shard that keep a
        provider record of it."""
        now = time.monotonic()
        return {
            k: [i for i, dht in self.nodes.items() if dht.providers.get(key, now)]
            for k, key in enumerate(keys)
        }

    async def peak_rss_mib(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    async def close(self) -> None:
        await self.stop_nodes(list(self.nodes))


class LocalShard:
    """A shard in the caller's process and event loop."""

    def __init__(self) -> None:
        self.shard = Shard()

    async def call(self, method: str, *args: Any) -> Any:
        return await getattr(self.shard, method)(*args)

    async def close(self) -> None:
        await self.shard.close()


def quiet_logs() -> None:
    # Departed nodes are routine here: kademlia logs a WARNING for every one it drops.
    logging.getLogger("kademlia").setLevel(logging.ERROR)
    logging.getLogger("rpcudp").setLevel(logging.ERROR)
    logging.getLogger("chunkstore").setLevel(logging.ERROR)


# Messages between the controller and a shard process: a 4-byte big-endian length, then a
# pickle (both ends are this harness). Length 0 asks the shard to close.
_HEADER = struct.Struct(">I")


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message)
    return _HEADER.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> Any | None:
    """The next message, or None at end of stream or on a close request."""
    try:
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        return pickle.loads(await reader.readexactly(size)) if size else None
    except asyncio.IncompleteReadError:
        return None


async def _serve_controller() -> None:
    """A shard process: runs a Shard, one task per command read from stdin, answers on the
    original stdout (fd 1 itself goes to stderr, so nothing else can write into the pipe)."""
    loop = asyncio.get_running_loop()
    answers = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, answers)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    shard = Shard()
    running: set[asyncio.Task] = set()

    async def run(req: int, method: str, args: tuple) -> None:
        try:
            reply = (req, True, await getattr(shard, method)(*args))
        except Exception as exc:  # noqa: BLE001 - reported to the controller
            reply = (req, False, f"{type(exc).__name__}: {exc}")
        writer.write(_frame(reply))
        await writer.drain()

    try:
        while (message := await _read_frame(reader)) is not None:
            task = asyncio.create_task(run(*message))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await shard.close()
        writer.close()


class RemoteShard:
    """A shard in a child process (`python -m benchmarks.dht_sim_bench.shard`), spoken to over
    its stdin and stdout. `call` sends a command and awaits its answer; several may be
    outstanding at once (the child runs each as a task). Made with `await RemoteShard.open()`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._next = 0
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls) -> RemoteShard:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.dht_sim_bench.shard",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(process)

    async def _read(self) -> None:
        while (message := await _read_frame(self.process.stdout)) is not None:
            req, ok, result = message
            future = self._waiting.pop(req, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(result)
            else:
                future.set_exception(RuntimeError(f"shard process: {result}"))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("shard process ended"))
        self._waiting.clear()

    async def call(self, method: str, *args: Any) -> Any:
        if self._reader.done():
            raise RuntimeError("shard process ended")
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        self.process.stdin.write(_frame((self._next, method, args)))
        await self.process.stdin.drain()
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return await future

    async def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.process.stdin.write(_HEADER.pack(0))
            await self.process.stdin.drain()
            self.process.stdin.close()
        try:
            async with asyncio.timeout(30):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


if __name__ == "__main__":
    quiet_logs()
    asyncio.run(_serve_controller())
