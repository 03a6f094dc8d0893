"""Peer addresses as users write them."""

from __future__ import annotations

from chunkstore.errors import InputError


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) to a pair; raises InputError naming the bad text."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"not a HOST:PORT address: {text!r}")
    return host.strip("[]"), int(port)
