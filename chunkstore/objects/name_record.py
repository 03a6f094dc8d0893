"""Signed name records: "publisher P calls manifest M `name`", checkable by anyone.

A record is what a publisher's node puts in the DHT under the name's key. It carries the
publisher's Ed25519 public key and is signed by the matching private key, so a node that
stores, forwards or uses one checks it first and nobody but the publisher can make or change
it. The model is BEP 44's mutable items (a public key, a sequence number, a signature over a
canonical encoding); unlike BEP 44, the name is inside the signed bytes (a record cannot be
moved to another name) and so is an expiry (a record stops being valid unless re-published).

Encoding, version 1 (integers big-endian), at most MAX_RECORD_BYTES (402) bytes:

    u8      format version (1)
    32      publisher: Ed25519 public key
    u8 n    name length in UTF-8 bytes (1..255), then n bytes of name (`validate_name`)
    u8      kind: 1 = the name points at a manifest, 2 = removed (the publisher unpublished it)
    32      manifest id (all zero for a removal)
    u64     sequence number (1..2**63-1): for one publisher and name, higher replaces lower
    u64     expires: Unix time in seconds after which the record is no longer valid
    64      Ed25519 signature of SIGNING_DOMAIN + every byte above

Pure encoding, signing and checking: no I/O. Time is passed in (`now`), never read here,
except by the defaults of the helpers that make records.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from chunkstore.errors import InputError
from chunkstore.objects.ids import ID_BYTES
from chunkstore.objects.name_syntax import KEY_TEXT_CHARS, MAX_NAME_BYTES, validate_name

RECORD_VERSION = 1
KIND_POINTS_AT = 1
KIND_REMOVED = 2
KEY_BYTES = 32
SIGNATURE_BYTES = 64
SIGNING_DOMAIN = b"chunkstore name record\x00"
MAX_SEQ = (1 << 63) - 1
MAX_RECORD_BYTES = 1 + KEY_BYTES + 1 + MAX_NAME_BYTES + 1 + ID_BYTES + 8 + 8 + SIGNATURE_BYTES
MIN_RECORD_BYTES = MAX_RECORD_BYTES - MAX_NAME_BYTES + 1
# How long a record is valid once signed. kubo keeps provider records 48 h (chosen from
# measured DHT churn) and re-provides every 22 h; a node re-signs its names on its
# re-announce timer (22 h, net/node.py), so a record outlives one missed round and a
# publisher gone for good stops deciding its names two days later.
RECORD_LIFETIME = 48 * 3600
# A record may claim to expire this much later than a fresh one would (the signer's clock
# runs ahead of ours); one claiming more is refused: it could outlive its publisher's will.
CLOCK_SKEW = 3600
_TAIL = struct.Struct(">B32sQQ")
_ZERO_ID = bytes(ID_BYTES)


class InvalidRecord(ValueError):
    """Bytes that are not a valid, correctly signed name record (says why)."""


def format_key(public_key: bytes) -> str:
    """The short copyable text form of a publisher key: 52 characters of lowercase base32."""
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def parse_key(text: str) -> bytes:
    """The public key a full text form stands for; InputError if it is not one."""
    cleaned = text.strip()
    if len(cleaned) != KEY_TEXT_CHARS or cleaned != cleaned.lower():
        raise InputError(
            f"not a publisher key: {text!r} (a key is {KEY_TEXT_CHARS} characters of a-z "
            "and 2-7, as `chunkstore key` prints it)"
        )
    try:
        key = base64.b32decode(cleaned.upper() + "====")
    except binascii.Error:
        raise InputError(f"not a publisher key: {text!r}") from None
    if format_key(key) != cleaned:
        raise InputError(f"not a publisher key: {text!r}")
    return key


@dataclass(frozen=True, slots=True)
class NameRecord:
    """One decoded, signature-checked record (make them with `sign_record` or `decode`).

    `manifest_id` is None for a removal. `encoded` is the exact bytes that were signed and
    travel on the wire."""

    publisher: bytes
    name: str
    manifest_id: bytes | None
    seq: int
    expires: int
    encoded: bytes

    @property
    def removed(self) -> bool:
        return self.manifest_id is None

    @property
    def publisher_text(self) -> str:
        return format_key(self.publisher)

    def is_live(self, now: float) -> bool:
        """Valid at time `now`: not expired, and not claiming more life than a record may."""
        return now < self.expires <= now + RECORD_LIFETIME + CLOCK_SKEW

    def supersedes(self, other: NameRecord) -> bool:
        """True when this record replaces `other`, the same publisher's record of the same
        name: a higher sequence number, or the same one re-signed with a later expiry (the
        same content; a different content at the same number is a conflict the earlier
        record wins)."""
        if (self.publisher, self.name) != (other.publisher, other.name):
            return False
        if self.seq != other.seq:
            return self.seq > other.seq
        return self.manifest_id == other.manifest_id and self.expires > other.expires

    @classmethod
    def decode(cls, data: object) -> NameRecord:
        """The record `data` encodes, its signature checked; InvalidRecord otherwise. Says
        nothing of time: check `is_live` before storing or using it."""
        if not isinstance(data, bytes):
            raise InvalidRecord("a name record is bytes")
        if not MIN_RECORD_BYTES <= len(data) <= MAX_RECORD_BYTES:
            raise InvalidRecord(f"a name record is {MIN_RECORD_BYTES}..{MAX_RECORD_BYTES} bytes")
        if data[0] != RECORD_VERSION:
            raise InvalidRecord(f"unknown name record version {data[0]}")
        publisher = data[1 : 1 + KEY_BYTES]
        name_length = data[1 + KEY_BYTES]
        name_end = 2 + KEY_BYTES + name_length
        if len(data) != name_end + _TAIL.size + SIGNATURE_BYTES:
            raise InvalidRecord("a name record's length does not match its name length")
        try:
            name = validate_name(data[2 + KEY_BYTES : name_end].decode("utf-8"))
        except (UnicodeDecodeError, InputError) as e:
            raise InvalidRecord(f"invalid name in a name record: {e}") from None
        kind, manifest_id, seq, expires = _TAIL.unpack_from(data, name_end)
        if kind == KIND_POINTS_AT:
            if manifest_id == _ZERO_ID:
                raise InvalidRecord("a name record points at the all-zero id")
        elif kind == KIND_REMOVED:
            if manifest_id != _ZERO_ID:
                raise InvalidRecord("a removal record carries a manifest id")
        else:
            raise InvalidRecord(f"unknown name record kind {kind}")
        if not 1 <= seq <= MAX_SEQ:
            raise InvalidRecord("a name record's sequence number is out of range")
        signed = data[:-SIGNATURE_BYTES]
        try:
            Ed25519PublicKey.from_public_bytes(publisher).verify(
                data[-SIGNATURE_BYTES:], SIGNING_DOMAIN + signed
            )
        except (InvalidSignature, ValueError):
            raise InvalidRecord("a name record's signature does not match its publisher") from None
        return cls(
            publisher,
            name,
            manifest_id if kind == KIND_POINTS_AT else None,
            seq,
            expires,
            data,
        )


def public_key_of(private_key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key's public key."""
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def sign_record(
    private_key: Ed25519PrivateKey,
    name: str,
    manifest_id: bytes | None,
    seq: int,
    expires: int,
) -> NameRecord:
    """A record of `name` pointing at `manifest_id` (None: a removal), signed. InputError for
    a bad name, id, sequence number or expiry."""
    validate_name(name)
    if manifest_id is not None and (
        not isinstance(manifest_id, bytes)
        or len(manifest_id) != ID_BYTES
        or manifest_id == _ZERO_ID
    ):
        raise InputError(f"a manifest id is {ID_BYTES} bytes, not all zero")
    if not 1 <= seq <= MAX_SEQ:
        raise InputError("a sequence number is 1..2**63-1")
    if not 0 <= int(expires) < 1 << 64:
        raise InputError("an expiry is a Unix time in 0..2**64-1")
    encoded_name = name.encode()
    kind = KIND_REMOVED if manifest_id is None else KIND_POINTS_AT
    body = (
        bytes([RECORD_VERSION])
        + public_key_of(private_key)
        + bytes([len(encoded_name)])
        + encoded_name
        + _TAIL.pack(kind, manifest_id or _ZERO_ID, seq, int(expires))
    )
    data = body + private_key.sign(SIGNING_DOMAIN + body)
    return NameRecord.decode(data)
