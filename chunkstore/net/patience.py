"""How long a get keeps looking: retries of empty or failed lookups with backoff, until a
deadline.

In a flash crowd the holders' nodes answer DHT RPCs late (their loop is busy uploading), so
one lookup of a name or of a manifest's holders can come back empty although the file is
there: measured with 50 concurrent gets of one file from two holders, 1 of 50 gave up on
its first empty holder lookup. BitTorrent clients and IPFS keep asking; a get keeps asking
until its deadline, then says what it waited for.

`Backoff` is the pure decision (no clock of its own, no sleeping); `retry_until_found` the
thin async loop over it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from chunkstore.errors import NetworkError

T = TypeVar("T")

# A minute: long enough to ride out a loaded swarm's slow answers and a holder that is still
# joining (a node's join and first announce take a few seconds), short enough that a name
# nobody publishes fails while the user still waits for it. `get --wait` changes it.
DEFAULT_PATIENCE = 60.0
# Lookups repeat after 0.5 s, 1, 2, 4, then every 5 s: quick while the answer may only be
# late, no more than one lookup per 5 s per get once the swarm is clearly busy or empty.
FIRST_DELAY = 0.5
MAX_DELAY = 5.0


class Backoff:
    """The delays between attempts of one lookup, ending at `deadline` (a time.monotonic()).

    Callers may rely on: delays double from `first` to at most `cap`; no delay reaches past
    the deadline; `next_delay` returns None once it has passed (give up); `attempts` counts
    the delays handed out plus the first attempt."""

    def __init__(
        self, deadline: float, *, first: float = FIRST_DELAY, cap: float = MAX_DELAY
    ) -> None:
        if first <= 0 or cap < first:
            raise ValueError("need 0 < first <= cap")
        self.deadline = deadline
        self.first = first
        self.cap = cap
        self.attempts = 1

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None: the deadline has passed."""
        left = self.deadline - now
        if left <= 0:
            return None
        delay = min(self.cap, self.first * 2 ** (self.attempts - 1), left)
        self.attempts += 1
        return delay


async def retry_until_found(
    attempt: Callable[[], Awaitable[T]], found: Callable[[T], bool], deadline: float | None
) -> tuple[T, int]:
    """Call `attempt()` until `found(answer)`, a NetworkError counting as not found, with
    Backoff's delays until `deadline` (None: one attempt). Returns the last answer and the
    number of attempts; the last NetworkError is raised if the last attempt failed so."""
    import asyncio  # here: the module's constants are read by a local get, which loads none

    backoff = Backoff(time.monotonic() if deadline is None else deadline)
    while True:
        try:
            answer = await attempt()
            failure = None
        except NetworkError as e:
            answer, failure = None, e
        if failure is None and found(answer):
            return answer, backoff.attempts
        delay = backoff.next_delay(time.monotonic())
        if delay is None:
            if failure is not None:
                raise failure
            return answer, backoff.attempts
        await asyncio.sleep(delay)


def waited(attempts: int, seconds: float) -> str:
    """' (asked N times over S s)' for an error message, or '' after a single attempt."""
    return "" if attempts <= 1 else f" (asked {attempts} times over {seconds:.0f} s)"
