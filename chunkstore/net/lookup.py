"""Lookups: where a download learns names and holders.

Three ways to the DHT, tried in this order by `open_lookup`: a node running in this process
on the same home (its DHT directly), a node serving the home from another process (over its
local HTTP API on 127.0.0.1), else a short-lived DHT node joined through bootstrap addresses.

A get waits for as little of the DHT as it can: a short-lived node is usable as soon as one
bootstrap contact answered (the rest of the join goes on in the background), and a lookup
that can (`find_first_providers`) returns the first holders while a full lookup follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

import aiohttp

from chunkstore.errors import BootstrapFailed, NetworkError, NoNetwork
from chunkstore.net.dht import DhtNode, dht_key
from chunkstore.net.name_records import MAX_PUBLISHERS_PER_NAME
from chunkstore.net.patience import Backoff
from chunkstore.net.providers import Holder
from chunkstore.objects.name_record import InvalidRecord, NameRecord

# A holder list is short: a cap bounds what a hostile local API answer could make us hold.
MAX_HOLDERS = 64
# A short-lived node's joins are bounded by the DHT's own timeouts; this only bounds the
# wait for a first contact before waiting on the joins alone.
JOIN_WAIT = 30.0


class Lookup(Protocol):
    """What a download needs from the DHT."""

    async def find_name_records(self, name: str) -> list[NameRecord]:
        """Every publisher's newest valid record of `name` the network gives (checked)."""

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        """Peers announcing that they hold `object_id` (possibly empty)."""


class EarlyLookup(Lookup, Protocol):
    """A Lookup that can also answer early (optional; see `first_providers`)."""

    async def find_first_providers(self, object_id: bytes, enough: int) -> list[Holder]:
        """Holders of `object_id`, returned as soon as `enough` are known; fewer means the
        lookup found no more."""


async def first_providers(
    lookup: Lookup, object_id: bytes, enough: int
) -> tuple[list[Holder], bool]:
    """The first holders of `object_id` a lookup finds, and whether they are all it would
    find (False: `enough` came early, and a full `find_providers` may know more). A Lookup
    without `find_first_providers` answers in full."""
    early = getattr(lookup, "find_first_providers", None)
    if early is None:
        return await lookup.find_providers(object_id), True
    found = await early(object_id, enough)
    return found, len(found) < enough


class DhtLookup:
    """Looks things up through a DHT node running in this process."""

    def __init__(self, dht: DhtNode) -> None:
        self.dht = dht

    async def find_name_records(self, name: str) -> list[NameRecord]:
        return await self.dht.find_name_records(name)

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        return await self.dht.find_providers(dht_key(object_id), limit=MAX_HOLDERS)

    async def find_first_providers(self, object_id: bytes, enough: int) -> list[Holder]:
        # The iterative lookup stops at the round where `enough` are known, instead of
        # asking every node near the key (a round with a dead node in it waits 1 s).
        return await self.dht.find_providers(dht_key(object_id), limit=min(enough, MAX_HOLDERS))


class LinkLookup:
    """A lookup that also gives a share link's holders as holders of its manifest: the link's
    maker said it holds the file, so it is asked even before (or without) the DHT knowing of
    it. With `inner` None (the DHT could not be joined) only those holders are known."""

    def __init__(self, inner: Lookup | None, manifest_id: bytes, holders: list[Holder]) -> None:
        self.inner = inner
        self.manifest_id = manifest_id
        self.holders = holders

    async def find_name_records(self, name: str) -> list[NameRecord]:
        return [] if self.inner is None else await self.inner.find_name_records(name)

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        found: list[Holder] = []
        if self.inner is not None:
            with contextlib.suppress(NetworkError):
                found = await self.inner.find_providers(object_id)
        return self._with_link_holders(object_id, found)

    async def find_first_providers(self, object_id: bytes, enough: int) -> list[Holder]:
        found: list[Holder] = []
        if self.inner is not None:
            with contextlib.suppress(NetworkError):
                found, _ = await first_providers(self.inner, object_id, enough)
        return self._with_link_holders(object_id, found)

    def _with_link_holders(self, object_id: bytes, found: list[Holder]) -> list[Holder]:
        if object_id != self.manifest_id:
            return found
        return found + [h for h in self.holders if h not in found]


class NodeApiLookup:
    """Looks things up through the local API of the node serving this home. `base_url` is
    node.json's `api_url`: aiohttp sends its userinfo (the token) as the Authorization header."""

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
            # The URL's password is the API token: never in a message.
            where = urlsplit(self.base_url).port
            raise NetworkError(f"cannot reach the local node on port {where}: {e}") from None

    async def find_name_records(self, name: str) -> list[NameRecord]:
        data = await self.get_json("/dht/names/" + quote(name, safe=""))
        raw = data.get("records") if isinstance(data, dict) else None
        records = []
        now = time.time()
        # checked again here: the node's answer is bytes from another process
        for item in raw[:MAX_PUBLISHERS_PER_NAME] if isinstance(raw, list) else []:
            try:
                record = NameRecord.decode(bytes.fromhex(item))
            except (InvalidRecord, TypeError, ValueError):
                continue
            if record.name == name and record.is_live(now):
                records.append(record)
        return records

    async def find_providers(self, object_id: bytes) -> list[Holder]:
        return await self._providers(object_id, MAX_HOLDERS)

    async def find_first_providers(self, object_id: bytes, enough: int) -> list[Holder]:
        # The node's lookup stops once `enough` are known: in a churned swarm the full one
        # costs seconds of dead contacts before the first byte.
        return await self._providers(object_id, max(1, min(enough, MAX_HOLDERS)))

    async def _providers(self, object_id: bytes, limit: int) -> list[Holder]:
        data = await self.get_json(f"/dht/providers/{object_id.hex()}?limit={limit}")
        holders = []
        for item in data if isinstance(data, list) else []:
            if (
                isinstance(item, dict)
                and isinstance(item.get("host"), str)
                and isinstance(item.get("port"), int)
            ):
                holders.append(Holder(item["host"], item["port"]))
        return holders[:limit]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@asynccontextmanager
async def open_lookup(
    home: Path, bootstrap: Sequence[tuple[str, int]], patience: float | None = None
) -> AsyncIterator[Lookup]:
    """The best lookup for `home`: its node in this process and event loop, a node serving it
    (from another process or loop, through its local API), or a short-lived DHT node joined
    through `bootstrap` (stopped on exit).

    Raises NoNetwork when there is neither a node nor a bootstrap address, BootstrapFailed
    when no bootstrap address answers: at once (`patience` None), or after joins tried again
    with backoff for `patience` seconds (a busy node answers late, not never)."""
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
    await dht.start(host, 0)
    # One join per bootstrap contact: the DHT's join pings all its contacts before it asks
    # any of them for nodes, so one that never answers would hold up the others.
    joins: list[asyncio.Task] = []
    backoff = Backoff(time.monotonic() + (patience or 0.0))
    try:
        while True:
            joins[:] = [asyncio.create_task(dht.bootstrap([address])) for address in bootstrap]
            try:
                await _first_contact(dht, joins, bootstrap)
                break
            except BootstrapFailed:
                delay = backoff.next_delay(time.monotonic())
                if delay is None:
                    raise
            await asyncio.sleep(delay)
        yield DhtLookup(dht)
    finally:
        for join in joins:
            join.cancel()
        await asyncio.gather(*joins, return_exceptions=True)
        await dht.stop()


async def _first_contact(
    dht: DhtNode, joins: list[asyncio.Task], bootstrap: Sequence[tuple[str, int]]
) -> None:
    """Wait until the joining `dht` has a contact that answered, or a join ended having
    reached someone; raises BootstrapFailed when every join ended reaching no one.

    The rest of the join goes on in the background: it is for the routing table, and each
    of its rounds that asks a departed node waits a full RPC timeout (in a swarm where
    short-lived getters came and went it cost 1-4 s before the first lookup), while the
    get's own lookups need only one contact to start from."""
    contact = asyncio.create_task(dht.wait_for_new_contact(dht.contacts_gained, JOIN_WAIT))
    waiting: set[asyncio.Task] = {*joins, contact}
    try:
        while True:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if contact in done and contact.result():
                return
            if any(join.result() for join in done if join is not contact):
                return
            if not waiting - {contact}:
                raise BootstrapFailed([f"{h}:{p}" for h, p in bootstrap])
    finally:
        contact.cancel()
        await asyncio.gather(contact, return_exceptions=True)
