"""Provider records: which peers hold an object, kept per DHT key. Pure logic, no I/O.

A provider record says "the peer at host:port (its HTTP transfer port) holds the object whose
DHT key is K". Records from different announcers merge; each holder expires on its own unless
re-announced (re-announcing is the announcer's job). Time is always passed in, never read, so
callers and tests choose the clock.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

from chunkstore.net.address_scope import Scope, scope_of

# How long a provider record stays valid without re-announcing: 48 h, kubo's figure, chosen
# from measured DHT churn (most nodes a record was stored on are still up a day later, so a
# record re-announced every 22 h (node.py's REANNOUNCE_SECONDS) survives one missed round
# with hours to spare, and a holder gone for good stops being handed out within two days).
# Name records are signed valid for the same 48 h (objects/name_record.py).
DEFAULT_TTL = 48 * 3600.0
DEFAULT_MAX_HOLDERS_PER_KEY = 64
DEFAULT_MAX_KEYS = 200_000
# One IP with 64 ports filled a key's 64 slots, freshest first, pushing honest holders out: one
# address keeps at most this many (a machine running a few nodes is plausible, 64 is not).
DEFAULT_MAX_PER_IP = 4
# Holders whose records expire within this many seconds of each other count as equally
# fresh and are returned in random order: every asker would otherwise start on the same one.
DEFAULT_SHUFFLE_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Holder:
    """A peer that holds an object: the host it was seen at and its HTTP transfer port."""

    host: str
    port: int


class ProviderStore:
    """Holders per DHT key, each with an expiry time.

    Callers may rely on:
    - `add` merges: adding a holder never removes another holder of the same key, except to
      respect `max_holders_per_key`, in which case the holder that expires soonest goes.
    - re-adding a known holder extends its expiry (it never shortens it).
    - `get` never returns an expired holder, and returns the freshest holders first.
    - at most `max_keys` keys are kept: adding to a new key beyond that evicts the key that
      was least recently added to.
    - at most `max_per_ip` holders of one IP per key (loopback exempt with `relax_loopback`,
      for test swarms on one machine): a new one replaces that IP's soonest-expiring holder.
    - holders expiring within `shuffle_window` seconds of each other come back shuffled.
    """

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        max_holders_per_key: int = DEFAULT_MAX_HOLDERS_PER_KEY,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_per_ip: int = DEFAULT_MAX_PER_IP,
        shuffle_window: float = DEFAULT_SHUFFLE_WINDOW,
        relax_loopback: bool = True,
    ) -> None:
        if ttl <= 0 or max_holders_per_key < 1 or max_keys < 1 or max_per_ip < 1:
            raise ValueError("ttl, max_holders_per_key, max_keys and max_per_ip must be positive")
        self.max_per_ip = max_per_ip
        self.shuffle_window = shuffle_window
        self.relax_loopback = relax_loopback
        self.ttl = ttl
        self.max_holders_per_key = max_holders_per_key
        self.max_keys = max_keys
        # key -> {holder: expiry}; the outer order is "least recently added to" first, so the
        # key to evict is always at the front.
        self._records: OrderedDict[bytes, dict[Holder, float]] = OrderedDict()

    def add(self, key: bytes, holder: Holder, now: float) -> None:
        """Record that `holder` holds `key` until `now + ttl`."""
        holders = self._records.get(key)
        if holders is None:
            holders = {}
            self._records[key] = holders
            while len(self._records) > self.max_keys:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        expiry = now + self.ttl
        if holder not in holders and not (
            self.relax_loopback and scope_of(holder.host) is Scope.LOOPBACK
        ):
            same_ip = [h for h in holders if h.host == holder.host]
            if len(same_ip) >= self.max_per_ip:
                del holders[min(same_ip, key=holders.__getitem__)]
        holders[holder] = max(expiry, holders.get(holder, expiry))
        if len(holders) > self.max_holders_per_key:
            # drop expired ones first; if still full, the one that would expire first
            self._drop_expired(holders, now)
            while len(holders) > self.max_holders_per_key:
                del holders[min(holders, key=holders.__getitem__)]

    def get(self, key: bytes, now: float) -> list[Holder]:
        """The live holders of `key`, freshest (latest expiry) first, shuffled among equally
        fresh ones; [] if none."""
        holders = self._records.get(key)
        if holders is None:
            return []
        self._drop_expired(holders, now)
        if not holders:
            del self._records[key]
            return []
        if self.shuffle_window <= 0:
            return sorted(holders, key=holders.__getitem__, reverse=True)
        window = self.shuffle_window
        ranked = [(-(holders[h] // window), random.random(), h) for h in holders]
        return [h for _, _, h in sorted(ranked, key=lambda r: (r[0], r[1]))]

    def cull(self, now: float) -> int:
        """Forget every expired holder and every key left empty; returns how many holders went."""
        dropped = 0
        for key in list(self._records):
            holders = self._records[key]
            dropped += self._drop_expired(holders, now)
            if not holders:
                del self._records[key]
        return dropped

    def __len__(self) -> int:
        """Number of keys with at least one holder recorded (expired ones may still count
        until the next `get` of that key or `cull`)."""
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    @staticmethod
    def _drop_expired(holders: dict[Holder, float], now: float) -> int:
        expired = [h for h, expiry in holders.items() if expiry <= now]
        for holder in expired:
            del holders[holder]
        return len(expired)
