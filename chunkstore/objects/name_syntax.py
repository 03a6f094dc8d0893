"""What a file name may be: the one rule for the store, share links and signed name records.

A name is published to the whole network and shown in other people's terminals, so it is
plain printable text: no control characters (C0, DEL, C1), no format characters, among them
the bidirectional overrides and isolates that make `evil\\u202etxt.exe` display as
`evilexe.txt`, no path separators, at most MAX_NAME_BYTES of UTF-8. A name also never ends
in "@" and something that reads as a publisher key prefix, so `NAME@KEY` always parses one
way (see `split_name_spec`).
"""

from __future__ import annotations

import re

from chunkstore.errors import InputError

MAX_NAME_BYTES = 255
# The text form of a publisher key is lowercase base32 (52 characters); NAME@KEY takes a
# prefix of at least this many of them (40 bits: a typo or a chance clash never matches).
MIN_KEY_PREFIX = 8
KEY_TEXT_CHARS = 52
_KEY_SUFFIX = re.compile(rf"@([a-z2-7]{{{MIN_KEY_PREFIX},{KEY_TEXT_CHARS}}})\Z")
_SEPARATORS = frozenset("/\\")


def validate_name(name: object) -> str:
    """`name` if it is a valid name, else InputError saying what is wrong with it."""
    if not isinstance(name, str):
        raise InputError("a name must be text")
    try:
        encoded = name.encode()
    except UnicodeEncodeError:  # lone surrogates (e.g. from undecodable file names)
        raise InputError(f"a name must be valid Unicode text: {name!r}") from None
    if not name or len(encoded) > MAX_NAME_BYTES:
        raise InputError(f"a name must be 1..{MAX_NAME_BYTES} bytes long")
    if not name.isprintable():
        # isprintable() is False for control (Cc), format (Cf: bidi overrides and isolates,
        # zero-width characters), separator (Zl, Zp, Zs other than space), surrogate and
        # unassigned characters: what a terminal may render as something else or nothing.
        bad = next(ch for ch in name if not ch.isprintable())
        raise InputError(
            f"a name must be printable text: {name!r} contains U+{ord(bad):04X} "
            "(a control, format or invisible character)"
        )
    if _SEPARATORS & set(name):
        raise InputError(f"a name must not contain a path separator (/ or \\): {name!r}")
    if name in (".", ".."):
        raise InputError(f"{name!r} is not a valid name")
    if _KEY_SUFFIX.search(name):
        raise InputError(
            f"a name must not end in @ and {MIN_KEY_PREFIX} or more of a-z and 2-7: {name!r} "
            "would read as NAME@KEY (a publisher's record)"
        )
    return name


def split_name_spec(text: str) -> tuple[str, str | None]:
    """(name, publisher key prefix or None) of what a user typed: `NAME@KEY` names one
    publisher's record, where KEY is at least MIN_KEY_PREFIX characters of a key's text form;
    anything else is a bare name (`photo@2x.png` included)."""
    match = _KEY_SUFFIX.search(text)
    if match is None:
        return text, None
    return text[: match.start()], match.group(1)
