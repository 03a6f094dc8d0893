"""A token bucket: caps a rate (e.g. a node's total upload bytes/s) shared by many users.

The bucket is pure logic: time is always passed in, never read, so tests choose the clock.
`acquire` is the one async helper; it reads a monotonic clock and sleeps.

Reservations may overdraw the bucket (a debt model): a caller takes what it needs at once and
is told how long to wait before using it. Concurrent callers therefore queue in the order they
reserved, and no caller can starve another by polling faster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """Tokens accrue at `rate` per second up to `burst`; reserving takes them, maybe into debt.

    Callers may rely on:
    - over any interval of length T, the amounts whose waits have elapsed add up to at most
      `burst + rate * T` (the bucket starts full);
    - `reserve` never refuses: an amount larger than `burst` is allowed and simply waits longer;
    - time going backwards (a `now` older than the last one) is ignored, never credited.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate}")
        burst = rate * 0.1 if burst is None else burst
        if not burst > 0:
            raise ValueError(f"burst must be positive, not {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        # The first call fixes the clock's origin, so any clock (monotonic, loop, fake) works.
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is None:
            self._last = now
        elif now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at `now`; negative while reservations are still waiting."""
        self._refill(now)
        return self._tokens

    def reserve(self, amount: float, now: float) -> float:
        """Take `amount` tokens; return the seconds to wait (0.0 if none) before using them."""
        if amount < 0:
            raise ValueError(f"amount must not be negative, not {amount}")
        self._refill(now)
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


async def acquire(
    bucket: TokenBucket, amount: float, clock: Callable[[], float] = time.monotonic
) -> None:
    """Reserve `amount` from `bucket` and sleep until it may be used.

    A cancelled wait keeps its reservation spent: the cap errs towards sending less, never more.
    """
    delay = bucket.reserve(amount, clock())
    if delay > 0:
        await asyncio.sleep(delay)
