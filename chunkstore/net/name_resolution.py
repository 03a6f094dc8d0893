"""Which publisher's record a name means here, and so which file a get fetches.

A bare name is resolved in this order:
1. this home's own record of it (what `add` published here);
2. the publisher pinned for it in this home (trust on first use, like SSH's known_hosts:
   a successful get of a name pins the publisher whose record it used);
3. publishers the user trusts (`trust`): one of them with a record wins, several are an
   AmbiguousName;
4. the only publisher with a record (then pinned by the get);
5. several publishers and none of the above: AmbiguousName, listing them; unless they all
   point at the same file (homes that added the same file under the same name), which is
   then fetched, the publisher that signed last pinned.
`NAME@KEY` (KEY: the text form of a publisher key, or a prefix of it that only one
publisher of the name has) always means that publisher's record.

`choose_record` is the decision, pure and tested without sockets; `resolve_target` applies it
to a store and a lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chunkstore.errors import AmbiguousName, InputError, NetworkError, NotFound
from chunkstore.local.own_names import read_own_record
from chunkstore.net.patience import retry_until_found, waited
from chunkstore.objects.ids import looks_like_id
from chunkstore.objects.name_record import NameRecord, format_key
from chunkstore.objects.name_syntax import split_name_spec, validate_name

if TYPE_CHECKING:
    from chunkstore.local.store import Store
    from chunkstore.net.lookup import Lookup

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NameChoice:
    """The record a name resolves to, and whether a get through it pins its publisher."""

    record: NameRecord
    pin: bool


def choose_record(
    name: str,
    records: Sequence[NameRecord],
    now: float,
    *,
    wanted: str | None = None,
    own: NameRecord | None = None,
    pinned: bytes | None = None,
    trusted: Collection[bytes] = (),
) -> NameChoice:
    """The record `name` means, from `records` (one per publisher, as a lookup found them)
    and this home's `own` record, `pinned` publisher and `trusted` publishers; `wanted` is
    the KEY of NAME@KEY. Raises NotFound (no such record, or its publisher removed it) or
    AmbiguousName (several publishers and nothing to choose by)."""
    if own is not None and own.name != name:
        own = None  # a record of another name is no record of this one
    live = {r.publisher: r for r in records if r.name == name and r.is_live(now)}
    if own is not None:
        live[own.publisher] = own  # ours, whatever its expiry: this home publishes it
    if wanted is not None:
        matching = [r for key, r in live.items() if format_key(key).startswith(wanted)]
        if not matching:
            raise NotFound(f"no publisher whose key starts with {wanted!r} has published {name!r}")
        if len(matching) > 1:
            keys = sorted(r.publisher_text for r in matching)
            raise AmbiguousName(name, keys, f" with keys starting {wanted!r}")
        return NameChoice(_not_removed(matching[0]), pin=True)
    if own is not None and not own.removed:
        return NameChoice(own, pin=False)
    if pinned:
        record = live.get(pinned)
        if record is None:
            raise NotFound(
                f"the publisher pinned for {name!r} here ({format_key(pinned)}) has no "
                "valid record of it on the network"
            )
        return NameChoice(_not_removed(record), pin=False)
    published = [r for r in live.values() if not r.removed and r is not own]
    chosen = [r for r in published if r.publisher in trusted]
    if not chosen:
        chosen = published
    if not chosen:
        raise NotFound(f"no file named {name!r} locally or on the network")
    if len({r.manifest_id for r in chosen}) > 1:
        keys = sorted(r.publisher_text for r in chosen)
        raise AmbiguousName(name, keys, " (all trusted)" if chosen is not published else "")
    # One file, whoever published it (several homes added the same file): the publisher
    # that signed last is followed from now on.
    return NameChoice(max(chosen, key=lambda r: (r.expires, r.publisher)), pin=True)


def _not_removed(record: NameRecord) -> NameRecord:
    if record.removed:
        raise NotFound(f"{record.name!r} was unpublished by its publisher {record.publisher_text}")
    return record


@dataclass(frozen=True, slots=True)
class Target:
    """What a get fetches: the manifest id, the local name to give the file ("" for none)
    and the publisher to pin that name to (None: leave the pins alone)."""

    manifest_id: bytes
    name: str = ""
    publisher: bytes | None = None


async def resolve_target(
    store: Store, lookup: Lookup, text: str, deadline: float | None = None
) -> Target:
    """The file a get of `text` (a manifest id, a name or NAME@KEY) fetches.

    A name pinned to a publisher whose record cannot be found now (gone from the network,
    the DHT unreachable) keeps meaning the file last fetched under it, if the store has it.
    A name with no such fallback is asked for again, with backoff, while the network knows
    no record of it, until `deadline` (a time.monotonic(); None: asked once)."""
    if looks_like_id(text) and store.lookup_name(text) is None:
        return Target(bytes.fromhex(text))
    name, wanted = split_name_spec(text)
    try:
        validate_name(name)
    except InputError:
        local = store.lookup_name(name)  # a name made before the rule: local only
        if local is not None and wanted is None:
            return Target(local)
        raise
    own = read_own_record(store, name)
    local = store.lookup_name(name)
    pinned = store.pinned_publisher(name)
    if wanted is None and local is not None and (own is not None or not pinned):
        # this home's name, or a link's whose publisher is unknown: nothing to ask
        return Target(local)
    # With a local file to fall back on, one answer decides (offline must stay quick).
    patient = deadline if wanted is not None or local is None else None
    asked_since = time.monotonic()
    try:
        records, asked = await retry_until_found(
            lambda: lookup.find_name_records(name), bool, patient
        )
    except NetworkError:
        if wanted is None and local is not None:
            log.info("cannot reach the network for %r: using the local file", name)
            return Target(local)
        raise
    try:
        choice = choose_record(
            name,
            records,
            time.time(),
            wanted=wanted,
            own=own,
            pinned=pinned,
            trusted=set(store.trusted()),
        )
    except NotFound as e:
        heard_from_pinned = any(r.publisher == pinned for r in records)
        if wanted is None and local is not None and pinned and not heard_from_pinned:
            # gone quiet (offline, expired), not unpublished: what was fetched still stands
            log.info("no record of %r by its pinned publisher: using the local file", name)
            return Target(local)
        if records:
            raise
        raise NotFound(f"{e}{waited(asked, time.monotonic() - asked_since)}") from None
    record = choice.record
    assert record.manifest_id is not None, "choose_record never returns a removal"
    if own is not None and record.publisher != own.publisher:
        return Target(record.manifest_id)  # our name stays ours; the file comes unnamed
    if own is not None:
        return Target(record.manifest_id, name)
    return Target(record.manifest_id, name, record.publisher)
