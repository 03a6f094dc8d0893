"""The name records a DHT node keeps for others: a bounded set of publishers per name.

Pure bookkeeping, no sockets (tested without a network). Records arrive already decoded and
signature-checked (`NameRecord.decode`); this decides which are kept:
- per name key, one record per publisher: a publisher's newer record (`supersedes`)
  replaces its older one, never the reverse;
- records of different publishers coexist, at most MAX_PUBLISHERS_PER_NAME of them: a name
  whose set is full keeps the publishers it has (a flood of new keys cannot push out the
  publisher everyone already uses) until their records expire;
- at most MAX_NAME_RECORDS records in all, the least recently stored name going first;
- nothing expired is kept or answered, and nothing claiming more life than a record may.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from chunkstore.objects.name_record import NameRecord

# One get_names answer carries every record of a name: 12 records of the longest name are
# 4.8 KB, leaving room in the 8 KB datagram for the 20 closer nodes.
MAX_PUBLISHERS_PER_NAME = 12
MAX_NAME_RECORDS = 50_000


class NameRecordStore:
    """Name records by DHT key (20 bytes), a few publishers per key, bounded in all."""

    def __init__(
        self,
        max_records: int = MAX_NAME_RECORDS,
        max_publishers: int = MAX_PUBLISHERS_PER_NAME,
    ) -> None:
        # a name's full set always fits: the record just stored is never the one evicted
        self.max_records = max(max_records, max_publishers)
        self.max_publishers = max_publishers
        self._by_key: OrderedDict[bytes, dict[bytes, NameRecord]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def offer(self, key: bytes, record: NameRecord, now: float) -> bool:
        """Keep `record` under `key` if the rules allow; True when it is now held (stored, or
        the same record was already there), False when refused (expired, older than what the
        publisher already has here, or a new publisher for a full name)."""
        if not record.is_live(now):
            return False
        publishers = self._by_key.get(key)
        if publishers is not None:
            self._drop_expired(key, publishers, now)  # may drop the key itself
        publishers = self._by_key.setdefault(key, {})
        held = publishers.get(record.publisher)
        if held is not None:
            if held.encoded == record.encoded:
                return True
            if not record.supersedes(held):
                return False
            publishers[record.publisher] = record
        else:
            if len(publishers) >= self.max_publishers:
                return False
            publishers[record.publisher] = record
            self._count += 1
        self._by_key.move_to_end(key)
        while self._count > self.max_records:
            _, dropped = self._by_key.popitem(last=False)
            self._count -= len(dropped)
        return True

    def get(self, key: bytes, now: float) -> list[NameRecord]:
        """The live records under `key`, one per publisher."""
        publishers = self._by_key.get(key)
        if publishers is None:
            return []
        self._drop_expired(key, publishers, now)
        return list(publishers.values())

    def items(self, now: float) -> Iterator[tuple[bytes, NameRecord]]:
        """Every live (key, record), for handing records to contacts that join."""
        for key, publishers in list(self._by_key.items()):
            for record in list(publishers.values()):
                if record.is_live(now):
                    yield key, record

    def cull(self, now: float) -> int:
        """Drop every expired record; returns how many went."""
        before = self._count
        for key, publishers in list(self._by_key.items()):
            self._drop_expired(key, publishers, now)
        return before - self._count

    def _drop_expired(self, key: bytes, publishers: dict[bytes, NameRecord], now: float) -> None:
        for publisher, record in list(publishers.items()):
            if not record.is_live(now):
                del publishers[publisher]
                self._count -= 1
        if not publishers and key in self._by_key:
            del self._by_key[key]
