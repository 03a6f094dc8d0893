"""Signed name records: the wire format, the name rules, what a node keeps, which record a
name means, the home's key, and hostile datagrams against a real node on 127.0.0.1."""

import os
import stat
import struct
import threading
import time

import pytest
import umsgpack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kademlia.utils import digest

from chunkstore.errors import AmbiguousName, InputError, NotFound
from chunkstore.local.identity import IDENTITY_FILE, load_identity
from chunkstore.net.name_records import MAX_PUBLISHERS_PER_NAME, NameRecordStore
from chunkstore.net.name_resolution import choose_record
from chunkstore.net.protocol import name_key
from chunkstore.objects.name_record import (
    CLOCK_SKEW,
    KIND_POINTS_AT,
    KIND_REMOVED,
    MAX_RECORD_BYTES,
    MAX_SEQ,
    MIN_RECORD_BYTES,
    RECORD_LIFETIME,
    RECORD_VERSION,
    SIGNING_DOMAIN,
    InvalidRecord,
    NameRecord,
    format_key,
    parse_key,
    sign_record,
)
from chunkstore.objects.name_syntax import split_name_spec, validate_name
from tests.helpers import publisher, signed_record
from tests.test_dht import LOCAL, MANIFEST, OTHER_MANIFEST, answer, raw_socket, request, run, swarm

pytestmark = pytest.mark.timeout(60)

# Pure tests run at a fixed time, so every expiry below is exact.
NOW = 1_800_000_000.0
LATER = int(NOW) + 86400
MANIFEST_ID = bytes.fromhex(MANIFEST)
NAME = "report.pdf"


def raw_record(
    *,
    signer: int = 1,
    publisher_key: bytes | None = None,
    name: str = NAME,
    name_bytes: bytes | None = None,
    name_length: int | None = None,
    kind: int = KIND_POINTS_AT,
    manifest_id: bytes = MANIFEST_ID,
    seq: int = 1,
    expires: int = LATER,
    version: int = RECORD_VERSION,
    domain: bytes = SIGNING_DOMAIN,
) -> bytes:
    """Record bytes laid out as name_record.py documents them, signed by `publisher(signer)`
    over `domain` + the body, whatever the fields say: the way to make what decode refuses."""
    identity = publisher(signer)
    encoded_name = name.encode() if name_bytes is None else name_bytes
    body = (
        bytes([version])
        + (identity.public_key if publisher_key is None else publisher_key)
        + bytes([len(encoded_name) if name_length is None else name_length])
        + encoded_name
        + struct.pack(">B32sQQ", kind, manifest_id, seq, expires)
    )
    return body + identity.private_key.sign(domain + body)


def record(seed: int, manifest_id: str | None = MANIFEST, **options) -> NameRecord:
    """`NAME` -> `manifest_id` by `publisher(seed)`, valid at NOW unless told otherwise."""
    options.setdefault("expires", LATER)
    return signed_record(options.pop("name", NAME), manifest_id, seed=seed, **options)


def file_of(seed: int) -> str:
    """A manifest id of its own for each seed (publishers pointing at different files)."""
    return f"{seed + 1:02x}" * 32


def flipped(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- the wire format --------------------------------------------------------------------


def test_a_record_round_trips_through_the_documented_layout():
    signed = record(1, seq=7)
    assert NameRecord.decode(signed.encoded) == signed
    assert (signed.name, signed.manifest_id, signed.seq, signed.expires) == (
        NAME,
        MANIFEST_ID,
        7,
        LATER,
    )
    assert signed.publisher == publisher(1).public_key
    assert not signed.removed
    # The bytes are exactly the documented encoding: old records stay readable.
    assert signed.encoded == raw_record(seq=7)
    assert len(signed.encoded) == MIN_RECORD_BYTES - 1 + len(NAME.encode())


def test_a_removal_is_signed_as_kind_2_with_an_all_zero_id():
    removal = sign_record(publisher(1).private_key, NAME, None, 3, LATER)
    assert removal.removed and removal.manifest_id is None
    assert removal.encoded == raw_record(kind=KIND_REMOVED, manifest_id=bytes(32), seq=3)
    assert NameRecord.decode(removal.encoded) == removal


def test_the_longest_record_is_402_bytes_far_below_one_datagram():
    assert MAX_RECORD_BYTES == 402
    longest = record(1, name="n" * 255)
    assert len(longest.encoded) == MAX_RECORD_BYTES
    shortest = record(1, name="n")
    assert len(shortest.encoded) == MIN_RECORD_BYTES
    assert MAX_RECORD_BYTES * 20 < 8192  # (a full find_names answer: see the wire tests)


GOOD = raw_record()
REFUSED = {
    "version 2": (raw_record(version=2), "version 2"),
    "version 0": (raw_record(version=0), "version 0"),
    "truncated by one byte": (GOOD[:-1], "does not match its name length"),
    "truncated below the shortest record": (GOOD[:60], "bytes"),
    "empty": (b"", "bytes"),
    "one byte too many": (GOOD + b"\x00", "does not match its name length"),
    "name length says one more": (
        raw_record(name_length=len(NAME) + 1),
        "does not match its name length",
    ),
    "name length says one less": (
        raw_record(name_length=len(NAME) - 1),
        "does not match its name length",
    ),
    "empty name": (raw_record(name_bytes=b""), "bytes"),
    "name not UTF-8": (raw_record(name_bytes=b"\xff\xfename"), "invalid name"),
    "name with overlong UTF-8 slash": (raw_record(name_bytes=b"a\xc0\xafb"), "invalid name"),
    "name with UTF-8 surrogate": (raw_record(name_bytes=b"a\xed\xa0\x80"), "invalid name"),
    "name with U+202E": (raw_record(name="evil\u202etxt.exe"), "invalid name"),
    "name with a slash": (raw_record(name="a/b"), "invalid name"),
    "name ..": (raw_record(name=".."), "invalid name"),
    "name reading as NAME@KEY": (raw_record(name="file@abcdefgh"), "invalid name"),
    "kind 3": (raw_record(kind=3), "kind 3"),
    "kind 0": (raw_record(kind=0), "kind 0"),
    "removal with a manifest id": (raw_record(kind=KIND_REMOVED), "carries a manifest id"),
    "pointer to the zero id": (raw_record(manifest_id=bytes(32)), "all-zero id"),
    "seq 0": (raw_record(seq=0), "sequence number"),
    "seq 2**63": (raw_record(seq=MAX_SEQ + 1), "sequence number"),
    "flipped signature byte": (flipped(GOOD, len(GOOD) - 10), "signature"),
    "flipped manifest id byte": (flipped(GOOD, len(GOOD) - 64 - 16 - 1), "signature"),
    "flipped expiry byte": (flipped(GOOD, len(GOOD) - 64 - 1), "signature"),
    "signed without the domain": (raw_record(domain=b""), "signature"),
    "signed by A, publisher field B": (
        raw_record(signer=2, publisher_key=publisher(1).public_key),
        "signature",
    ),
    "one byte over the maximum": (raw_record(name="n" * 255) + b"\x00", "bytes"),
    "5000 bytes": (GOOD + bytes(5000 - len(GOOD)), "bytes"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_decode_refuses(case):
    data, reason = REFUSED[case]
    with pytest.raises(InvalidRecord, match=reason):
        NameRecord.decode(data)


@pytest.mark.parametrize(
    "value", [GOOD.hex(), bytearray(GOOD), memoryview(GOOD), None, 5, [GOOD]], ids=repr
)
def test_decode_refuses_what_is_not_bytes(value):
    with pytest.raises(InvalidRecord, match="is bytes"):
        NameRecord.decode(value)


def test_sign_record_refuses_a_bad_name_id_or_sequence_number():
    key = publisher(1).private_key
    for name, manifest_id, seq in [
        ("a/b", MANIFEST_ID, 1),
        ("x", MANIFEST_ID[:31], 1),
        ("x", MANIFEST[:32], 1),  # text, not bytes
        ("x", MANIFEST_ID, 0),
        ("x", MANIFEST_ID, MAX_SEQ + 1),
        ("x", bytes(32), 1),  # the all-zero id
    ]:
        with pytest.raises(InputError):
            sign_record(key, name, manifest_id, seq, LATER)
    for expires in (-1, 1 << 64):
        with pytest.raises(InputError, match="expiry"):
            sign_record(key, "x", MANIFEST_ID, 1, expires)
    assert sign_record(key, "x", MANIFEST_ID, MAX_SEQ, LATER).seq == MAX_SEQ


def test_a_store_smaller_than_a_name_set_never_evicts_what_it_just_stored():
    store = NameRecordStore(max_records=3)  # raised to the per-name cap
    for seed in range(1, 5):
        assert store.offer(name_key(NAME), record(seed), NOW)
    assert len(store) == 4 and len(store.get(name_key(NAME), NOW)) == 4


def test_supersedes():
    first = record(1, seq=1)
    assert record(1, OTHER_MANIFEST, seq=2).supersedes(first)
    assert record(1, None, seq=2).supersedes(first)  # a removal replaces, as any update
    assert not first.supersedes(record(1, OTHER_MANIFEST, seq=2))
    assert not first.supersedes(first)
    # the same content re-signed with a later expiry replaces, an earlier one does not
    assert record(1, seq=1, expires=LATER + 60).supersedes(first)
    assert not first.supersedes(record(1, seq=1, expires=LATER + 60))
    # the same number with another content: whichever came first stays
    assert not record(1, OTHER_MANIFEST, seq=1, expires=LATER + 60).supersedes(first)
    assert not record(1, None, seq=1, expires=LATER + 60).supersedes(first)
    assert not first.supersedes(record(1, OTHER_MANIFEST, seq=1))
    # never across publishers or names, whatever the numbers
    assert not record(2, seq=9).supersedes(first)
    assert not record(1, name="other.pdf", seq=9).supersedes(first)


@pytest.mark.parametrize(
    ("expires", "live"),
    [
        (NOW - 3600, False),
        (NOW - 1, False),
        (NOW, False),
        (NOW + 1, True),
        (NOW + RECORD_LIFETIME, True),
        (NOW + RECORD_LIFETIME + CLOCK_SKEW, True),
        (NOW + RECORD_LIFETIME + CLOCK_SKEW + 1, False),
        (NOW + 10 * 365 * 86400, False),
    ],
)
def test_is_live(expires, live):
    assert record(1, expires=expires).is_live(NOW) is live


def test_a_key_text_parses_back_to_its_key_and_nothing_else_does():
    key = publisher(1).public_key
    text = format_key(key)
    assert len(text) == 52 and text == text.lower()
    assert parse_key(text) == key
    assert parse_key(f"  {text}\n") == key
    # The last character carries the key's last bit and 4 zero bits: set one of those.
    last = {"a": "b", "q": "r"}[text[-1]]
    for bad in [text.upper(), text[:-1], text + "a", "1" + text[1:], text[:-1] + last, ""]:
        with pytest.raises(InputError, match="not a publisher key"):
            parse_key(bad)


# --- what a name may be ---------------------------------------------------------------

ACCEPTED_NAMES = [
    "a",
    "report.pdf",
    "photo@2x.png",
    "ok (1).txt",
    "日本",
    "日" * 85,  # 255 bytes
    "n" * 255,
    "e\u0301t\u00e9",  # combining and precomposed accents
    ".hidden",
    "...",
    "file@abcdefg",  # 7 characters after @: too short for a key prefix
    "file@ABCDEFGH",  # upper case is not a key's text form
    "file@abcdefgh1",  # 1 is not in the base32 alphabet
    "file@" + "a" * 53,  # longer than any key
    "a@b c",
    " spaced ",
]


@pytest.mark.parametrize("name", ACCEPTED_NAMES)
def test_validate_name_accepts(name):
    assert validate_name(name) == name
    # a valid name never reads as NAME@KEY, and NAME@KEY of it splits back into the two
    assert split_name_spec(name) == (name, None)
    prefix = publisher(1).key_text[:8]
    assert split_name_spec(f"{name}@{prefix}") == (name, prefix)


REFUSED_NAMES = {
    "empty": ("", "1..255 bytes"),
    "256 bytes": ("n" * 256, "1..255 bytes"),
    "258 bytes of CJK": ("日" * 86, "1..255 bytes"),
    "NUL": ("a\x00b", "U\\+0000"),
    "newline": ("a\nb", "U\\+000A"),
    "tab": ("a\tb", "U\\+0009"),
    "ESC": ("a\x1b[31mb", "U\\+001B"),
    "DEL": ("a\x7fb", "U\\+007F"),
    "C1 NEL": ("a\x85b", "U\\+0085"),
    "C1 CSI": ("a\x9bb", "U\\+009B"),
    "RLO U+202E": ("evil\u202etxt.exe", "U\\+202E"),
    "LRI U+2066": ("a\u2066b", "U\\+2066"),
    "RLI U+2067": ("a\u2067b", "U\\+2067"),
    "FSI U+2068": ("a\u2068b", "U\\+2068"),
    "PDI U+2069": ("a\u2069b", "U\\+2069"),
    "zero width space": ("a\u200bb", "U\\+200B"),
    "byte order mark": ("\ufeffa", "U\\+FEFF"),
    "no-break space": ("a\u00a0b", "U\\+00A0"),
    "line separator": ("a\u2028b", "U\\+2028"),
    "private use": ("a\ue000", "U\\+E000"),
    "unassigned": ("a\u0378", "U\\+0378"),
    "lone surrogate": ("a\udcff", "valid Unicode"),
    "slash": ("a/b", "path separator"),
    "backslash": ("a\\b", "path separator"),
    "only a slash": ("/", "path separator"),
    "dot": (".", "not a valid name"),
    "dot dot": ("..", "not a valid name"),
    "ends as NAME@KEY": ("file@abcdefgh", "NAME@KEY"),
    "ends as NAME@full key": ("file@" + publisher(1).key_text, "NAME@KEY"),
    "ends as NAME@KEY after another @": ("a@b@2345abcd", "NAME@KEY"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_NAMES))
def test_validate_name_refuses(case):
    name, reason = REFUSED_NAMES[case]
    with pytest.raises(InputError, match=reason):
        validate_name(name)


@pytest.mark.parametrize("value", [None, b"name", 5, ["a"]], ids=repr)
def test_validate_name_refuses_what_is_not_text(value):
    with pytest.raises(InputError, match="must be text"):
        validate_name(value)


KEY_TEXT = publisher(1).key_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("report.pdf", ("report.pdf", None)),
        ("photo@2x.png", ("photo@2x.png", None)),
        ("report.pdf@abcdefgh", ("report.pdf", "abcdefgh")),
        ("report.pdf@abcdefg", ("report.pdf@abcdefg", None)),
        (f"report.pdf@{KEY_TEXT}", ("report.pdf", KEY_TEXT)),
        (f"report.pdf@{KEY_TEXT}a", (f"report.pdf@{KEY_TEXT}a", None)),
        ("a@b@abcdefgh", ("a@b", "abcdefgh")),
        ("report.pdf@ABCDEFGH", ("report.pdf@ABCDEFGH", None)),
        ("@abcdefgh", ("", "abcdefgh")),  # an empty name: validate_name refuses it later
        ("report.pdf@abcdefgh\n", ("report.pdf@abcdefgh\n", None)),
    ],
)
def test_split_name_spec(text, expected):
    assert split_name_spec(text) == expected


# --- what a node keeps ----------------------------------------------------------------

KEY = name_key(NAME)


def held(store: NameRecordStore, key: bytes = KEY, now: float = NOW) -> set[bytes]:
    return {r.encoded for r in store.get(key, now)}


def test_a_publishers_newer_record_replaces_its_older_one_never_the_reverse():
    store = NameRecordStore()
    first, second, third = (record(1, seq=n) for n in (1, 2, 3))
    assert store.offer(KEY, second, NOW)
    assert not store.offer(KEY, first, NOW)  # older: refused, nothing changes
    assert held(store) == {second.encoded}
    assert store.offer(KEY, second, NOW)  # the same record again: held, still one
    assert store.offer(KEY, third, NOW)
    assert held(store) == {third.encoded} and len(store) == 1
    # same number, other content: the record already held stays
    assert not store.offer(KEY, record(1, OTHER_MANIFEST, seq=3, expires=LATER + 60), NOW)
    assert held(store) == {third.encoded}
    # a removal is an update like any other
    removal = record(1, None, seq=4)
    assert store.offer(KEY, removal, NOW)
    assert store.get(KEY, NOW) == [removal]


def test_publishers_of_a_name_coexist_up_to_the_cap_and_the_first_ones_stay():
    store = NameRecordStore()
    # the first publisher's record expires soonest
    first = [record(1, expires=int(NOW) + 100)]
    first += [record(seed) for seed in range(2, MAX_PUBLISHERS_PER_NAME + 1)]
    for r in first:
        assert store.offer(KEY, r, NOW)
    late = record(50)
    assert not store.offer(KEY, late, NOW)
    assert held(store) == {r.encoded for r in first}
    assert len(store) == MAX_PUBLISHERS_PER_NAME
    # a kept publisher may still update its record in a full set
    update = record(2, OTHER_MANIFEST, seq=2)
    assert store.offer(KEY, update, NOW)
    assert update.encoded in held(store) and len(store) == MAX_PUBLISHERS_PER_NAME
    # once a kept record expires, a newcomer takes the free place
    assert store.offer(KEY, late, NOW + 200)
    assert first[0].encoded not in held(store, now=NOW + 200)
    assert late.encoded in held(store, now=NOW + 200)
    assert len(store) == MAX_PUBLISHERS_PER_NAME
    # other names are not affected by this one's cap
    assert store.offer(name_key("other.pdf"), record(60, name="other.pdf"), NOW)


def test_the_total_cap_evicts_the_least_recently_stored_name():
    store = NameRecordStore(max_records=3, max_publishers=2)
    names = ["a.bin", "b.bin", "c.bin"]
    for name in names:
        assert store.offer(name_key(name), record(1, name=name), NOW)
    # updating a.bin makes it the most recently stored; b.bin is now the oldest
    assert store.offer(name_key("a.bin"), record(1, name="a.bin", seq=2), NOW)
    assert store.offer(name_key("d.bin"), record(1, name="d.bin"), NOW)
    assert len(store) == 3
    assert store.get(name_key("b.bin"), NOW) == []
    for name in ["a.bin", "c.bin", "d.bin"]:
        assert len(store.get(name_key(name), NOW)) == 1
    assert {key for key, _ in store.items(NOW)} == {
        name_key(n) for n in ["a.bin", "c.bin", "d.bin"]
    }


def test_expired_records_are_neither_kept_nor_returned():
    store = NameRecordStore()
    assert not store.offer(KEY, record(1, expires=int(NOW) - 1), NOW)
    assert not store.offer(
        KEY, record(2, expires=int(NOW + RECORD_LIFETIME + CLOCK_SKEW) + 60), NOW
    )
    assert len(store) == 0 and store.get(KEY, NOW) == []
    short, long = record(1, expires=int(NOW) + 10), record(2, expires=int(NOW) + 1000)
    other = record(3, name="other.pdf", seq=5, expires=int(NOW) + 10)
    assert store.offer(KEY, short, NOW) and store.offer(KEY, long, NOW)
    assert store.offer(name_key("other.pdf"), other, NOW)
    later = NOW + 100
    assert store.get(KEY, later) == [long]
    assert [r for _, r in store.items(later)] == [long]
    # an older record of a publisher whose record expired is welcome again
    assert store.offer(name_key("other.pdf"), record(3, name="other.pdf", seq=1), later) is True
    assert store.cull(later) == 0  # get already dropped the expired one of KEY
    assert store.cull(NOW + 2000) == 1  # long goes; other's seq 1 (expires at LATER) stays
    assert len(store) == 1
    assert store.cull(LATER + 1) == 1
    assert len(store) == 0 and list(store.items(NOW)) == []


# --- which record a name means -----------------------------------------------------------


def choose(records, **options):
    return choose_record(NAME, records, NOW, **options)


def test_the_only_publisher_is_chosen_and_pinned():
    only = record(1)
    noise = [record(2, name="other.pdf"), record(3, expires=int(NOW) - 1)]
    choice = choose([only, *noise])
    assert choice.record == only and choice.pin is True


def test_no_record_or_only_removals_is_not_found():
    with pytest.raises(NotFound, match="no file named"):
        choose([])
    with pytest.raises(NotFound, match="no file named"):
        choose([record(1, None, seq=2), record(2, expires=int(NOW) - 1)])


def test_several_publishers_and_nothing_to_choose_by_is_ambiguous():
    records = [record(seed, file_of(seed)) for seed in (1, 2, 3)]
    with pytest.raises(AmbiguousName) as raised:
        choose([*records, record(4, None)])  # a removal is not a candidate
    assert raised.value.publishers == sorted(r.publisher_text for r in records)
    assert raised.value.name == NAME
    assert f"{NAME}@KEY" in str(raised.value)
    # two of them pointing at the same file do not make it less ambiguous
    with pytest.raises(AmbiguousName):
        choose([*records, record(5, file_of(1))])


def test_publishers_of_the_same_file_are_no_ambiguity_the_last_signer_is_followed():
    records = [record(1), record(2, expires=LATER + 60), record(3, expires=LATER - 60)]
    choice = choose([*records, record(4, None)])
    assert choice.record == records[1] and choice.pin is True
    # among trusted publishers too
    trusted = {publisher(1).public_key, publisher(3).public_key}
    others = [record(5, file_of(5))]
    choice = choose([*records, *others], trusted=trusted)
    assert choice.record == records[0] and choice.pin is True


def test_a_home_own_record_wins_over_everything_for_a_bare_name():
    own = record(9, OTHER_MANIFEST)
    others = [record(1), record(2, file_of(2))]
    choice = choose(
        others, own=own, pinned=publisher(1).public_key, trusted={publisher(2).public_key}
    )
    assert choice.record == own and choice.pin is False
    # even expired: this home publishes it, and re-signs it
    stale = record(9, OTHER_MANIFEST, expires=int(NOW) - 10)
    assert choose(others, own=stale).record == stale
    # and over a newer network record of the same key (the home knows its own name)
    assert choose([record(9, seq=5)], own=own).record == own


def test_an_own_record_of_another_name_is_no_own_record_of_this_one():
    assert choose([record(1)], own=record(9, name="other.pdf")).record == record(1)


def test_a_removed_own_record_leaves_the_choice_to_the_others():
    removed = record(9, None, seq=2)
    choice = choose([record(1)], own=removed)
    assert choice.record == record(1) and choice.pin is True
    with pytest.raises(NotFound):
        choose([], own=removed)
    with pytest.raises(AmbiguousName):
        choose([record(1), record(2, file_of(2))], own=removed)


def test_the_pinned_publisher_is_chosen_among_several_without_pinning_again():
    records = [record(1), record(2, OTHER_MANIFEST), record(3)]
    choice = choose(records, pinned=publisher(2).public_key, trusted={publisher(3).public_key})
    assert choice.record == records[1] and choice.pin is False


def test_a_pinned_publisher_that_unpublished_is_not_found_as_unpublished():
    records = [record(1, None, seq=2), record(2)]
    with pytest.raises(NotFound, match="unpublished") as raised:
        choose(records, pinned=publisher(1).public_key)
    assert publisher(1).key_text in str(raised.value)


def test_a_pinned_publisher_without_a_record_is_not_found_and_no_other_is_taken():
    for records in ([record(2)], [record(1, expires=int(NOW) - 1), record(2)]):
        with pytest.raises(NotFound, match="pinned") as raised:
            choose(records, pinned=publisher(1).public_key)
        assert publisher(1).key_text in str(raised.value)


def test_a_trusted_publisher_is_chosen_among_several():
    records = [record(1), record(2, OTHER_MANIFEST), record(3)]
    choice = choose(records, trusted={publisher(2).public_key, publisher(7).public_key})
    assert choice.record == records[1] and choice.pin is True


def test_several_trusted_publishers_are_ambiguous():
    records = [record(seed, file_of(seed)) for seed in (1, 2, 3)]
    trusted = {publisher(1).public_key, publisher(2).public_key}
    with pytest.raises(AmbiguousName, match="all trusted") as raised:
        choose(records, trusted=trusted)
    assert raised.value.publishers == sorted(r.publisher_text for r in records[:2])


def test_a_trusted_publisher_without_a_record_does_not_hide_the_only_one():
    choice = choose([record(1)], trusted={publisher(2).public_key})
    assert choice.record == record(1) and choice.pin is True


def test_name_at_key_means_that_publishers_record_whatever_else_is_known():
    records = [record(1), record(2, OTHER_MANIFEST), record(3)]
    own, pinned = record(9), publisher(1).public_key
    for wanted in (publisher(2).key_text, publisher(2).key_text[:8]):
        choice = choose(records, wanted=wanted, own=own, pinned=pinned)
        assert choice.record == records[1] and choice.pin is True
    # the home's own record is reachable by its key too
    assert choose(records, wanted=publisher(9).key_text[:8], own=own).record == own


def test_name_at_key_with_no_such_publisher_or_a_removal_is_not_found():
    records = [record(1), record(2, None, seq=2), record(3, expires=int(NOW) - 1)]
    for wanted in (publisher(5).key_text[:8], publisher(3).key_text):
        with pytest.raises(NotFound, match="starts with"):
            choose(records, wanted=wanted)
    with pytest.raises(NotFound, match="unpublished"):
        choose(records, wanted=publisher(2).key_text[:8])


def test_name_at_key_with_a_prefix_two_publishers_share_is_ambiguous():
    # Two keys sharing 8 characters take 2**40 tries to make; choose_record decides by
    # prefix whatever its length, so the longest prefix two seeds share stands in for one.
    by_first = {}
    for seed in range(64):
        by_first.setdefault(publisher(seed).key_text[0], []).append(seed)
    a, b = next(seeds[:2] for seeds in by_first.values() if len(seeds) > 1)
    shared = os.path.commonprefix([publisher(a).key_text, publisher(b).key_text])
    records = [record(a), record(b)]
    with pytest.raises(AmbiguousName, match="with keys starting") as raised:
        choose(records, wanted=shared)
    assert raised.value.publishers == sorted([publisher(a).key_text, publisher(b).key_text])
    assert choose(records, wanted=publisher(a).key_text[: len(shared) + 1]).record == record(a)


# --- the home's key -------------------------------------------------------------------


def test_the_key_is_made_once_private_to_its_owner(home):
    first = load_identity(home)
    path = home / IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    made = path.stat().st_mtime_ns
    second = load_identity(home)
    assert second.public_key == first.public_key and len(first.public_key) == 32
    assert path.stat().st_mtime_ns == made
    assert [p.name for p in home.iterdir()] == [IDENTITY_FILE]  # no temporary left
    signed = second.sign(NAME, MANIFEST_ID, 1, LATER)
    assert NameRecord.decode(signed.encoded).publisher == first.public_key
    assert first.key_text == format_key(first.public_key)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_can_read_is_refused_with_the_fix(home, mode):
    load_identity(home)
    path = home / IDENTITY_FILE
    path.chmod(mode)
    with pytest.raises(InputError, match="chmod 600"):
        load_identity(home)
    path.chmod(0o600)
    load_identity(home)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key at all\n",
        os.urandom(200),
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    ],
    ids=["empty", "text", "random", "truncated PEM", "P-256 key"],
)
def test_a_key_file_that_is_no_ed25519_key_is_refused(home, content):
    home.mkdir()
    path = home / IDENTITY_FILE
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(InputError, match="not an Ed25519 private key"):
        load_identity(home)
    assert path.read_bytes() == content  # never replaced by a new key


def test_a_home_that_cannot_hold_a_key_is_an_input_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(InputError):
        load_identity(blocker)


def test_threads_making_the_key_at_once_agree_on_one(tmp_path):
    def make(home, barrier, results):
        barrier.wait()
        try:
            results.append(load_identity(home).public_key)
        except InputError as e:
            results.append(e)

    for attempt in range(3):
        home, barrier, results = tmp_path / f"home{attempt}", threading.Barrier(4), []
        threads = [threading.Thread(target=make, args=(home, barrier, results)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(results)) == 1, results


# --- hostile datagrams against a real node ------------------------------------------------


def stored(node, name: str) -> list[bytes]:
    return sorted(r.encoded for r in node.name_records.get(name_key(name), time.time()))


def test_a_node_refuses_every_record_it_must_not_keep_and_keeps_answering():
    name = "taken.iso"
    key = name_key(name)
    now = int(time.time())
    older = signed_record(name, MANIFEST, seed=1, seq=4)
    good = signed_record(name, MANIFEST, seed=1, seq=5)
    forged_content = good.encoded.replace(MANIFEST_ID, bytes.fromhex(OTHER_MANIFEST))
    hostile = {
        "flipped signature byte": (key, flipped(good.encoded, len(good.encoded) - 1)),
        "other content under the publisher's signature": (key, forged_content),
        "older sequence number replayed": (key, older.encoded),
        "same sequence number, other content": (
            key,
            signed_record(name, OTHER_MANIFEST, seed=1, seq=5, expires=now + 90000).encoded,
        ),
        "signed by one key, claiming another": (
            key,
            raw_record(
                signer=2,
                publisher_key=publisher(1).public_key,
                name=name,
                seq=6,
                expires=now + 3600,
            ),
        ),
        "a removal by someone else in the publisher's name": (
            key,
            raw_record(
                signer=2,
                publisher_key=publisher(1).public_key,
                name=name,
                kind=KIND_REMOVED,
                manifest_id=bytes(32),
                seq=7,
                expires=now + 3600,
            ),
        ),
        "5000 bytes": (key, good.encoded + os.urandom(5000 - len(good.encoded))),
        "one byte over a record": (key, signed_record("n" * 255, MANIFEST).encoded + b"\0"),
        "garbage bytes": (key, os.urandom(300)),
        "empty bytes": (key, b""),
        "text": (key, good.encoded.hex()),
        "a number": (key, 12345),
        "a record of another name": (key, signed_record("other.iso", MANIFEST, seed=3).encoded),
        "this name's record under another name's key": (
            name_key("other.iso"),
            signed_record(name, MANIFEST, seed=3).encoded,
        ),
        "expired": (key, signed_record(name, MANIFEST, seed=3, expires=now - 60).encoded),
        "claiming more life than a record may": (
            key,
            signed_record(
                name, MANIFEST, seed=3, expires=now + RECORD_LIFETIME + CLOCK_SKEW + 600
            ).encoded,
        ),
    }

    async def main():
        async with swarm(2) as (node, reader), raw_socket() as (transport, peer):
            target = (LOCAL, node.port)
            nid = os.urandom(20)

            async def ask(rpc, *args):
                msg_id = os.urandom(20)
                transport.sendto(request([rpc, [nid, *args]], msg_id), target)
                return await answer(peer, msg_id)

            assert await ask("store_name", key, older.encoded) is True
            assert await ask("store_name", key, good.encoded) is True
            assert stored(node, name) == [good.encoded]
            for case, (under, value) in hostile.items():
                assert await ask("store_name", under, value) is False, case
                assert stored(node, name) == [good.encoded], case
                assert stored(node, "other.iso") == [], case
                assert await ask("ping") == node.node_id, case
            # A stock STORE of a plain manifest id, under our key and under kademlia's own,
            # is answered False and kept nowhere; FIND_VALUE then answers nodes only.
            for stock_key in (key, digest(name)):
                for value in (OTHER_MANIFEST, bytes.fromhex(OTHER_MANIFEST)):
                    assert await ask("store", stock_key, value) is False
                assert isinstance(await ask("find_value", stock_key), list)
            assert list(node.protocol.storage) == []
            assert stored(node, name) == [good.encoded]
            reply = await ask("find_names", key)
            assert reply["records"] == [good.encoded]
            assert await ask("ping") == node.node_id
            assert await reader.find_name_records(name) == [good]
            assert await reader.find_name_records("other.iso") == []

    run(main)


def test_a_valid_record_sent_with_store_name_is_found_by_another_node():
    name = "fresh.iso"
    good = signed_record(name, MANIFEST, seed=4)

    async def main():
        async with swarm(2) as (node, reader):
            async with raw_socket() as (transport, peer):
                msg_id = os.urandom(20)
                payload = ["store_name", [os.urandom(20), name_key(name), good.encoded]]
                transport.sendto(request(payload, msg_id), (LOCAL, node.port))
                assert await answer(peer, msg_id) is True
            assert stored(node, name) == [good.encoded]
            assert stored(reader, name) == []  # what the reader finds, it asks for
            assert await reader.find_name_records(name) == [good]

    run(main)


def test_find_names_answers_carry_at_most_twelve_records():
    name = "n" * 255  # the longest records there are
    key = name_key(name)
    records = [signed_record(name, MANIFEST, seed=seed) for seed in range(10, 30)]

    async def main():
        async with swarm(2) as (node, reader), raw_socket() as (transport, peer):
            target = (LOCAL, node.port)
            nid = os.urandom(20)

            async def ask(rpc, *args):
                msg_id = os.urandom(20)
                transport.sendto(request([rpc, [nid, *args]], msg_id), target)
                return await answer(peer, msg_id)

            results = [await ask("store_name", key, r.encoded) for r in records[:13]]
            assert results == [True] * MAX_PUBLISHERS_PER_NAME + [False]
            first = sorted(r.encoded for r in records[:MAX_PUBLISHERS_PER_NAME])
            assert stored(node, name) == first
            reply = await ask("find_names", key)
            assert sorted(reply["records"]) == first
            assert len(umsgpack.packb(reply)) + 21 < 8192
            # however many a node holds (a bigger cap here), an answer carries twelve
            node.name_records.max_publishers = len(records)
            for r in records[13:]:
                assert node.name_records.offer(key, r, time.time())
            reply = await ask("find_names", key)
            assert len(reply["records"]) == MAX_PUBLISHERS_PER_NAME
            assert len(umsgpack.packb(reply)) + 21 < 8192
            found = await reader.find_name_records(name)
            assert len(found) == MAX_PUBLISHERS_PER_NAME
            assert {r.encoded for r in found} <= {r.encoded for r in records}

    run(main)
