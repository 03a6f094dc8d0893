"""Lookups: where a download learns names and holders.

Three ways to the DHT, tried in this order by `open_lookup`: a node running in this process
on the same home (its DHT directly), a node serving the home from another process (over its
local HTTP API on 127.0.0.1), else a short-lived DHT node joined through bootstrap addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import aiohttp

from chunkstore.errors import BootstrapFailed, NetworkError, NoNetwork
from chunkstore.net.dht import DhtNode, dht_key
from chunkstore.net.providers import Holder
from chunkstore.objects.ids import looks_like_id

# A holder list is short: a cap bounds what a hostile local API answer could make us hold.
MAX_HOLDERS = 64


class Lookup(Protocol):
    """What a download needs from the DHT."""

    async def resolve_name(self, name: str) -> str | None:
        """The manifest id (hex) a name points at on the network, or None."""

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        """Peers announcing that they hold `object_id` (possibly empty)."""


class DhtLookup:
    """Looks things up through a DHT node running in this process."""

    def __init__(self, dht: DhtNode) -> None:
        self.dht = dht

    async def resolve_name(self, name: str) -> str | None:
        return await self.dht.resolve_name(name)

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        return await self.dht.find_providers(dht_key(object_id), limit=MAX_HOLDERS)


class NodeApiLookup:
    """Looks things up through the local API of the node serving this home."""

    def __init__(self, base_url: str, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, trust_env=False, connector=aiohttp.TCPConnector(ssl=False)
            )
        return self._session

    async def get_json(self, path: str) -> object | None:
        try:
            async with self._client().get(self.base_url + path) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise NetworkError(f"local node answered {resp.status} for {path}")
                return await resp.json()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise NetworkError(f"cannot reach the local node at {self.base_url}: {e}") from None

    async def resolve_name(self, name: str) -> str | None:
        data = await self.get_json("/dht/names/" + quote(name, safe=""))
        mid = data.get("manifest_id") if isinstance(data, dict) else None
        return mid if isinstance(mid, str) and looks_like_id(mid) else None

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        data = await self.get_json("/dht/providers/" + object_id.hex())
        holders = []
        for item in data if isinstance(data, list) else []:
            if (
                isinstance(item, dict)
                and isinstance(item.get("host"), str)
                and isinstance(item.get("port"), int)
            ):
                holders.append(Holder(item["host"], item["port"]))
        return holders[:MAX_HOLDERS]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@asynccontextmanager
async def open_lookup(home: Path, bootstrap: Sequence[tuple[str, int]]) -> AsyncIterator[Lookup]:
    """The best lookup for `home`: its node in this process and event loop, a node serving it
    (from another process or loop, through its local API), or a short-lived DHT node joined
    through `bootstrap` (stopped on exit).

    Raises NoNetwork when there is neither a node nor a bootstrap address, BootstrapFailed
    when no bootstrap address answers."""
    from chunkstore.net.node import Node, running_node

    local = Node.serving(home)
    if local is not None and local.loop is asyncio.get_running_loop():
        yield DhtLookup(local.dht)
        return
    info = running_node(home)
    if info is not None:
        api = NodeApiLookup(info.api_url)
        try:
            yield api
        finally:
            await api.close()
        return
    if not bootstrap:
        raise NoNetwork(f"no node is serving {home} and no bootstrap address was given")
    dht = DhtNode()
    # Stay on loopback when every peer is there (tests, the demo); else listen everywhere.
    host = "127.0.0.1" if all(_is_loopback(h) for h, _ in bootstrap) else "0.0.0.0"
    joined = await dht.start(host, 0, bootstrap)
    try:
        if not joined:
            raise BootstrapFailed([f"{h}:{p}" for h, p in bootstrap])
        yield DhtLookup(dht)
    finally:
        await dht.stop()
