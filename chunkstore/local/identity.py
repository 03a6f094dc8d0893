"""The home's publisher identity: an Ed25519 key pair, made at first use.

The private key signs this home's name records (`objects/name_record.py`); its public key is
how others tell this home's names from anyone else's (`chunkstore key` prints it). It lives
in `IDENTITY_FILE` in the home, PKCS#8 PEM (what `openssl pkey` reads), mode 0600, written
under a temporary name and linked into place, so a crash never leaves half a key and two
processes making it at once agree on one.

`cryptography` (PyCA) does the Ed25519: it is the most used and best kept crypto library of
the Python world (OpenSSL underneath, abi3 wheels for every platform we run on, releases
every few weeks); PyNaCl would bring a second native library for one algorithm.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chunkstore.errors import InputError
from chunkstore.objects.name_record import NameRecord, format_key, public_key_of, sign_record

IDENTITY_FILE = "identity.key"


@dataclass(frozen=True)
class Identity:
    """A publisher key pair: `public_key` (32 bytes) and what signs with the private one."""

    private_key: Ed25519PrivateKey
    public_key: bytes

    @property
    def key_text(self) -> str:
        """The public key's short copyable form (`format_key`)."""
        return format_key(self.public_key)

    def sign(self, name: str, manifest_id: bytes | None, seq: int, expires: int) -> NameRecord:
        """A record of `name` signed by this identity (`manifest_id` None: a removal)."""
        return sign_record(self.private_key, name, manifest_id, seq, expires)


def load_identity(home: Path) -> Identity:
    """The identity of `home`, made now if it has none. InputError when the key file cannot
    be read or written, is not a key, or can be read by others than its owner."""
    path = home / IDENTITY_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        home.mkdir(parents=True, exist_ok=True)
        _create(path)
        return _read(path)
    except OSError as e:
        raise InputError(f"cannot make the publisher key {path}: {e.strerror or e}") from None


def _read(path: Path) -> Identity:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(4096)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise InputError(f"cannot read the publisher key {path}: {e.strerror or e}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise InputError(
            f"the publisher key {path} can be read by other users: run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 private key (PEM)")
    return Identity(key, public_key_of(key))


def _create(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # unique per process and thread: two threads of one program may make it at once too
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        # link() never replaces: if another process made the key first, its key is kept
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
