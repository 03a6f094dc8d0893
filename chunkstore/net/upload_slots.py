"""Who gets the transfer server's next upload slot: pure decision logic, no I/O.

A request finding every slot taken waits in a short queue instead of being refused at once,
and a freed slot goes to the waiting addresses in turn (round-robin), not to whoever asked
first or most: an address with twenty requests queued and one with a single request each get
the next slot in turn, so a greedy downloader cannot starve the others. The queue is bounded
in all and per address; a request it cannot take is refused with a Retry-After that grows
with the queue, which downloaders honour (net/scheduler.py), spreading their retries.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass


class Verdict(enum.Enum):
    GRANTED = "granted"  # a slot is the request's now
    QUEUED = "queued"  # wait for `UploadSlots.release` to grant the ticket
    REFUSED = "refused"  # answer 503 with `retry_after()`


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    ticket: int | None = None  # set when QUEUED


class UploadSlots:
    """Slots and the queue of requests waiting for one, keyed by address.

    - at most `slots` requests hold a slot, at most `share` (given per request: loopback may
      be relaxed) from one key;
    - a request of a key below its share waits if every slot is taken, in a queue of at most
      `queue_limit`, holding and waiting at most `share` from one key; others are refused;
    - a freed slot goes to the next key in turn that has a waiter and room in its share.
    """

    def __init__(self, slots: int, queue_limit: int) -> None:
        if slots < 1 or queue_limit < 0:
            raise ValueError("need slots >= 1 and queue_limit >= 0")
        self.slots = slots
        self.queue_limit = queue_limit
        self.active = 0
        self._active_by_key: dict[str, int] = {}
        # key -> its waiting (ticket, share), in turn order: the key served last goes last.
        self._waiting: OrderedDict[str, deque[tuple[int, int]]] = OrderedDict()
        self._waiting_count = 0
        self._tickets = itertools.count(1)

    @property
    def waiting(self) -> int:
        return self._waiting_count

    def held_by(self, key: str) -> int:
        return self._active_by_key.get(key, 0)

    def admit(self, key: str, share: int) -> Admission:
        """A new request from `key`, allowed `share` slots at once."""
        held = self.held_by(key)
        if held >= share:
            # Refused at once, not queued: an address holding its whole share (maybe peers
            # that never read, until the server drops them) must not also fill the queue
            # and take every slot it frees.
            return Admission(Verdict.REFUSED)
        if self.active < self.slots and key not in self._waiting:
            self._take(key)
            return Admission(Verdict.GRANTED)
        queued = len(self._waiting.get(key, ()))
        if self._waiting_count >= self.queue_limit or held + queued >= share:
            return Admission(Verdict.REFUSED)
        ticket = next(self._tickets)
        self._waiting.setdefault(key, deque()).append((ticket, share))
        self._waiting_count += 1
        return Admission(Verdict.QUEUED, ticket)

    def release(self, key: str) -> list[int]:
        """A request of `key` that held a slot ended: the tickets granted a slot now (each
        now holds one; the caller wakes their requests)."""
        left = self._active_by_key[key] - 1
        if left:
            self._active_by_key[key] = left
        else:
            del self._active_by_key[key]
        self.active -= 1
        return self._grant()

    def withdraw(self, key: str, ticket: int) -> bool:
        """A waiting request gave up (timed out, disconnected). False if `ticket` was not
        waiting (granted already: the caller then holds a slot and must `release` it)."""
        queue = self._waiting.get(key)
        if not queue:
            return False
        for item in queue:
            if item[0] == ticket:
                queue.remove(item)
                self._waiting_count -= 1
                if not queue:
                    del self._waiting[key]
                return True
        return False

    def retry_after(self) -> int:
        """Seconds a refused request is told to wait: one, plus one per full round of slots
        already queued, at most ten (whole seconds: the header takes delta-seconds)."""
        return min(10, 1 + self._waiting_count // self.slots)

    def _take(self, key: str) -> None:
        self.active += 1
        self._active_by_key[key] = self.held_by(key) + 1

    def _grant(self) -> list[int]:
        granted: list[int] = []
        while self.active < self.slots and self._waiting:
            for key, queue in self._waiting.items():
                ticket, share = queue[0]
                if self.held_by(key) < share:
                    break
            else:
                break  # every waiting key is at its share
            queue.popleft()
            self._waiting_count -= 1
            del self._waiting[key]
            if queue:
                self._waiting[key] = queue  # back of the line: the others go first
            self._take(key)
            granted.append(ticket)
        return granted
