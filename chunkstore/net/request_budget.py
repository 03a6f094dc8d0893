"""Per-address budgets for incoming DHT requests. Pure: time is passed in.

Every datagram costs decoding and an answer on the one event loop that also serves HTTP.
A token bucket per source IP bounds what one address can make the node spend; a bounded
table of addresses bounds the bookkeeping itself (the least recently seen address is
forgotten first, which only gives it a fresh, full bucket). Loopback senders are not
limited by default (`relax_loopback`): a test swarm runs every node on 127.0.0.1, and no
stranger can send from a loopback address.
"""

from __future__ import annotations

from collections import OrderedDict

from chunkstore.net.address_scope import Scope, scope_of

# A lookup asks a node once or twice; a busy honest peer announcing thousands of keys (16
# lookups in flight, each asking this node at most twice) sends up to ~100 per second. 200/s
# with a burst of 400 leaves it room and stops a flood at 200 answers per second per address.
REQUESTS_PER_SECOND = 200.0
REQUEST_BURST = 400.0
MAX_TRACKED_ADDRESSES = 4096


class AddressBudget:
    """A token bucket per source IP: `allow(ip, now, cost)` is True while `ip` stays within
    `rate` units per second (bursts of `burst`), and then charges it `cost`."""

    def __init__(
        self,
        rate: float,
        burst: float,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        relax_loopback: bool = True,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        self.relax_loopback = relax_loopback
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0

    def allow(self, ip: str, now: float, cost: float = 1.0) -> bool:
        if self.relax_loopback and scope_of(ip) is Scope.LOOPBACK:
            return True
        tokens, last = self._buckets.pop(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        else:
            self.refused += 1
        self._buckets[ip] = (tokens, now)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return allowed


class RequestBudget(AddressBudget):
    """Incoming requests per source IP (one unit each)."""

    def __init__(
        self,
        rate: float = REQUESTS_PER_SECOND,
        burst: float = REQUEST_BURST,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        relax_loopback: bool = True,
    ) -> None:
        super().__init__(rate, burst, max_addresses, relax_loopback)


# Answers to addresses that never answered us, in bytes per source IP: a lookup asks a node
# for at most a few KB (a find_names answer of 12 records is ~6 KB), so 32 KB/s with a burst
# of 64 KB never holds up an honest asker, and bounds what a forged request makes this node
# send its victim to 32 KB/s, whatever the answer's size.
REPLY_BYTES_PER_SECOND = 32 * 1024.0
REPLY_BYTES_BURST = 64 * 1024.0


class ReplyBudget(AddressBudget):
    """Bytes of answers to unproven senders per source IP: `allow(ip, now, size)`."""

    def __init__(
        self,
        rate: float = REPLY_BYTES_PER_SECOND,
        burst: float = REPLY_BYTES_BURST,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        relax_loopback: bool = True,
    ) -> None:
        super().__init__(rate, burst, max_addresses, relax_loopback)
