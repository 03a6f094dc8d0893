"""Where a download learns names and holders: the DHT itself, or a running node's DHT.

A `get` run while `chunkstore serve` runs on the same home asks that node (over its local
HTTP API) instead of joining the DHT itself; otherwise it starts a short-lived DHT node.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

import aiohttp

from chunkstore.dht import DhtNode, dht_key
from chunkstore.errors import NetworkError
from chunkstore.objectid import looks_like_id
from chunkstore.providers import Holder

# A holder list is short: a cap bounds what a hostile local API answer could make us hold.
MAX_HOLDERS = 64


class Directory(Protocol):
    async def resolve_name(self, name: str) -> str | None:
        """The manifest id (hex) a name points at on the network, or None."""

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        """Peers announcing that they hold `object_id` (possibly empty)."""


class DhtDirectory:
    """Looks things up through a DHT node running in this process."""

    def __init__(self, dht: DhtNode) -> None:
        self.dht = dht

    async def resolve_name(self, name: str) -> str | None:
        return await self.dht.resolve_name(name)

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        return await self.dht.find_providers(dht_key(object_id), limit=MAX_HOLDERS)


class NodeApiDirectory:
    """Looks things up through the local API of the node serving this home."""

    def __init__(self, base_url: str, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False,
                                                  connector=aiohttp.TCPConnector(ssl=False))
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
            if isinstance(item, dict) and isinstance(item.get("host"), str) \
                    and isinstance(item.get("port"), int):
                holders.append(Holder(item["host"], item["port"]))
        return holders[:MAX_HOLDERS]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
