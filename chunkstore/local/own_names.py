"""This home's own name records: made by `add`, replaced by a removal on unpublish, re-signed
before they expire, all kept in the store's `published` table for the node to publish.

Sequence numbers only grow: the next one is the larger of the last one + 1 and the current
Unix time in seconds, so a home whose table was lost (but not its key) still publishes
numbers above the ones it published before.
"""

from __future__ import annotations

import logging
import time

from chunkstore.errors import ChunkstoreError
from chunkstore.local.identity import Identity
from chunkstore.local.store import Store
from chunkstore.objects.name_record import RECORD_LIFETIME, InvalidRecord, NameRecord

log = logging.getLogger(__name__)
_ATTEMPTS = 8  # another process changing the same record at the same moment


def read_own_record(store: Store, name: str) -> NameRecord | None:
    """This home's record of `name`, or None (an unreadable one is logged and ignored)."""
    data = store.own_record(name)
    if data is None:
        return None
    try:
        return NameRecord.decode(data)
    except InvalidRecord as e:
        log.warning("ignoring this home's unreadable record of %r: %s", name, e)
        return None


def record_own_name(
    store: Store, identity: Identity, name: str, manifest_id: bytes | None, now: float | None = None
) -> NameRecord | None:
    """Make this home's record of `name` point at `manifest_id` (None: a removal), signed with
    the next sequence number; the current record is kept when it already says so. Returns
    the record now held (None: a removal asked for a name never published here)."""
    for _ in range(_ATTEMPTS):
        when = time.time() if now is None else now
        data = store.own_record(name)
        current = read_own_record(store, name)
        if current is not None and current.publisher != identity.public_key:
            current = None  # made with a key this home no longer has: start afresh
        if current is not None and current.manifest_id == manifest_id:
            return current
        if current is None and manifest_id is None and data is None:
            return None
        seq = max(current.seq + 1 if current is not None else 1, int(when))
        record = identity.sign(name, manifest_id, seq, int(when) + RECORD_LIFETIME)
        if store.put_own_record(name, record.encoded, data):
            return record
    raise ChunkstoreError(f"the record of {name!r} kept changing while it was being updated")


def refreshed(
    store: Store, identity: Identity, record: NameRecord, older_than: float, now: float
) -> NameRecord:
    """`record` re-signed with a fresh expiry (same sequence number and content) when it was
    signed more than `older_than` seconds ago and still points at a file; removals are never
    prolonged (they only need to outlive the records they replace). Returns the record held."""
    signed_at = record.expires - RECORD_LIFETIME
    if record.removed or now - signed_at < older_than or record.publisher != identity.public_key:
        return record
    fresh = identity.sign(record.name, record.manifest_id, record.seq, int(now) + RECORD_LIFETIME)
    if store.put_own_record(record.name, fresh.encoded, record.encoded):
        return fresh
    return read_own_record(store, record.name) or record
