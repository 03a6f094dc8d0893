"""Object ids: BLAKE3-256 of an object's bytes, shown as 64 lowercase hex characters."""

from __future__ import annotations

import blake3

from chunkstore.errors import InputError

ID_BYTES = 32
HEX_LEN = ID_BYTES * 2


def object_id(data: bytes | memoryview) -> bytes:
    """The id of a chunk or manifest: BLAKE3-256 of its (uncompressed) bytes."""
    return blake3.blake3(data).digest()


def looks_like_id(text: str) -> bool:
    """True when `text` has the shape of a full hex id (it may still be unknown)."""
    if len(text) != HEX_LEN:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def parse_id(text: str) -> bytes:
    """Parse a 64-hex-character id; raises InputError naming the bad text."""
    if not looks_like_id(text):
        raise InputError(f"not an object id (expected {HEX_LEN} hex characters): {text!r}")
    return bytes.fromhex(text)
