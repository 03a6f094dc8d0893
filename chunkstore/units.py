"""Sizes and rates as users write them: 512MiB, 1GiB, 25MB, 100k."""

from __future__ import annotations

import re

from chunkstore.errors import InputError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*?)(?:/s)?\s*$")


def parse_size(text: str) -> int:
    """'512MiB' -> 536870912; decimal units are powers of 1000, binary (KiB..) of 1024."""
    match = _PATTERN.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InputError(f"not a size: {text!r} (examples: 4096, 64MiB, 1GiB, 25MB)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_rate(text: str) -> float | None:
    """Bytes per second ('25MB', '25MB/s', '200k'); '0' or 'none' means uncapped (None)."""
    if text.strip().lower() in ("0", "none", "off", "unlimited"):
        return None
    return float(parse_size(text))


def format_size(n: float) -> str:
    """Bytes for people, in binary units: 512 B, 1.5 KiB, 20.0 MiB, 3.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
