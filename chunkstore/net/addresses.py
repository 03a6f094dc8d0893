"""Peer addresses as users write them: "HOST:PORT", "[IPv6]:PORT" or (host, port) pairs."""

from __future__ import annotations

from collections.abc import Iterable

from chunkstore.errors import InputError

Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """HOST:PORT (or [IPv6]:PORT) to a pair; raises InputError naming the bad text."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"not a HOST:PORT address: {text!r}")
    return host.strip("[]"), int(port)


def parse_addresses(items: Iterable[str | tuple[str, int]]) -> list[Address]:
    """Bootstrap addresses given as "host:port" strings or (host, port) pairs, checked."""
    if isinstance(items, str):
        items = [items]  # one address given bare: never iterate its characters
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(parse_address(item))
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and type(item[1]) is int
            and 0 < item[1] < 65536
        ):
            out.append((item[0].strip("[]"), item[1]))
        else:
            raise InputError(f'not an address ("host:port" or (host, port)): {item!r}')
    return out
