"""Share links: one shell-safe token naming a file and where to join the swarm that has it.

    chunkstore:ah5c2kubgeyf6xb4taq4yn4mrlh3bjgkjqkxaumjziwxhhjffvdiictsmvyg64tufzygizqbar7q
    aaabuakkqm2wzed6a   (one token, split here: report.pdf held at 127.0.0.1, dht 40980)

A link carries a format version, the manifest id (so what is fetched is verified against
it, whoever serves it), the file's name (what the receiver calls it), and up to
MAX_ADDRESSES holder addresses: an IP, the DHT's UDP port to join through and the transfer
server's TCP port to fetch from directly. Pure encoding and decoding, no I/O; a link comes
from strangers, so `Link.decode` checks everything and raises InputError naming the problem.

The token is `chunkstore:` followed by the payload in lowercase base32 without padding:
only letters, digits and one colon, so it needs no quoting in a shell, survives chat
programs and most double-click selections, and never starts with `-`. Payload, version 1
(integers big-endian):

    u8      format version (1)
    32      manifest id
    u8 n    name length in UTF-8 bytes (0: no name), then n bytes of name
    u8 a    address count (0..MAX_ADDRESSES), then per address:
              u8 family (4 or 6), 4 or 16 bytes of IP, u16 DHT UDP port, u16 transfer TCP port
    fields  zero or more (u8 tag, u8 length, value), tags ascending, none repeated
    4       checksum: the first 4 bytes of BLAKE3(CHECKSUM_DOMAIN + everything before it)

The fields are the room left for what later versions add: a decoder skips a field whose tag
has the high bit set (OPTIONAL_TAG) and does not know it, and refuses any other unknown tag,
so a field that changes what a link means can never be silently ignored. One field is
defined: PUBLISHER_TAG (0x81), 32 bytes, the Ed25519 key of the publisher whose signed
record gives the name (the receiver pins the name to it, so `get NAME` later follows that
publisher's updates); optional, as the file itself is fixed by the manifest id. The
checksum turns a link damaged in copying into "copy it again" instead of a wrong id that
no holder has.

Limits a user should know: an address is whatever the publisher's node knew when the link
was made (the `serve` host, else the address a peer observed it at); a link with no
address works only where a node can find the file through the DHT; loopback and private
addresses are allowed (one machine, a LAN); nothing in the link proves who made it (the
file is proved by its manifest id; the publisher key only says whose updates to follow).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import struct
from dataclasses import dataclass

import blake3

from chunkstore.errors import InputError
from chunkstore.objects.ids import ID_BYTES
from chunkstore.objects.name_syntax import MAX_NAME_BYTES, validate_name

PREFIX = "chunkstore:"
LINK_VERSION = 1
MAX_ADDRESSES = 4
OPTIONAL_TAG = 0x80
PUBLISHER_TAG = OPTIONAL_TAG | 1
PUBLISHER_BYTES = 32
CHECKSUM_DOMAIN = b"chunkstore-link"
CHECKSUM_BYTES = 4
# Longest version-1 payload: version, id, 255-byte name, 4 IPv6 addresses, checksum. Fields
# of later versions may add up to FIELD_ROOM bytes; anything longer is refused unread.
_MAX_V1_PAYLOAD = 1 + ID_BYTES + 1 + MAX_NAME_BYTES + 1 + MAX_ADDRESSES * 21 + CHECKSUM_BYTES
FIELD_ROOM = 512
MAX_LINK_CHARS = len(PREFIX) + ((_MAX_V1_PAYLOAD + FIELD_ROOM) * 8 + 4) // 5
_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_PORTS = struct.Struct(">HH")


@dataclass(frozen=True, slots=True)
class LinkAddress:
    """A holder to join through: an IP (never a host name), the DHT's UDP port and the
    transfer server's TCP port. Checked when made: `host` must be an IP a peer can be
    reached at (not a wildcard, multicast or broadcast address) and is kept in canonical
    form (`::FFFF:127.0.0.1` becomes `127.0.0.1`); ports are 1..65535. Else InputError."""

    host: str
    dht_port: int
    transfer_port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", str(_check_ip(self.host)))
        _check_port(self.dht_port, "DHT")
        _check_port(self.transfer_port, "transfer")

    @property
    def dht_address(self) -> str:
        """The DHT's "host:port" (IPv6 in brackets), as bootstrap addresses are written."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.dht_port}"

    @property
    def transfer_address(self) -> str:
        """The transfer server's "host:port" (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.transfer_port}"


@dataclass(frozen=True, slots=True)
class Link:
    """What a share link says: a manifest id, a name ("" for a file shared by id only) and
    up to MAX_ADDRESSES distinct holder addresses. Checked when made (InputError), so a
    Link that exists can be encoded.

    Callers may rely on: `Link.decode(link.encode()) == link` for every Link, and
    `Link.decode` accepts only what `encode` writes (one token per link), plus the optional
    fields of later versions, which it skips."""

    manifest_id: bytes
    name: str = ""
    addresses: tuple[LinkAddress, ...] = ()
    publisher: bytes | None = None
    version: int = LINK_VERSION

    def __post_init__(self) -> None:
        if self.version != LINK_VERSION:
            raise InputError(f"this chunkstore makes version {LINK_VERSION} links only")
        if not isinstance(self.manifest_id, bytes) or len(self.manifest_id) != ID_BYTES:
            raise InputError(f"a link's manifest id is {ID_BYTES} bytes")
        _check_name(self.name)
        addresses = tuple(self.addresses)
        if not all(isinstance(a, LinkAddress) for a in addresses):
            raise InputError("a link's addresses must be LinkAddress values")
        if len(addresses) > MAX_ADDRESSES:
            raise InputError(f"a link carries at most {MAX_ADDRESSES} addresses")
        if len(set(addresses)) != len(addresses):
            raise InputError("a link carries each address once")
        if self.publisher is not None and (
            not isinstance(self.publisher, bytes) or len(self.publisher) != PUBLISHER_BYTES
        ):
            raise InputError(f"a link's publisher key is {PUBLISHER_BYTES} bytes")
        object.__setattr__(self, "addresses", addresses)

    def encode(self) -> str:
        """The token: PREFIX and the payload in lowercase base32."""
        name = self.name.encode()
        parts = [bytes([self.version]), self.manifest_id, bytes([len(name)]), name]
        parts.append(bytes([len(self.addresses)]))
        parts += [_pack_address(a) for a in self.addresses]
        if self.publisher is not None:
            parts.append(bytes([PUBLISHER_TAG, PUBLISHER_BYTES]) + self.publisher)
        body = b"".join(parts)
        payload = body + _checksum(body)
        return PREFIX + base64.b32encode(payload).decode("ascii").rstrip("=").lower()

    @classmethod
    def decode(cls, token: str) -> Link:
        """The link a token stands for; raises InputError saying what is wrong with it."""
        return _parse(_unwrap(token))


def looks_like_link(text: str) -> bool:
    """True when `text` is meant as a link (it may still be invalid): it starts with PREFIX.

    A file whose name starts with PREFIX is then reached by its manifest id instead."""
    return text.startswith(PREFIX)


def _checksum(body: bytes) -> bytes:
    return blake3.blake3(CHECKSUM_DOMAIN + body).digest()[:CHECKSUM_BYTES]


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise InputError("a link's name must be text")
    return validate_name(name) if name else name


def _check_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address a peer can be reached at: an IP literal, not a wildcard, multicast or
    broadcast address. IPv4-mapped IPv6 addresses count as the IPv4 address."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise InputError(f"a link address must be an IP address, not {text!r}") from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            raise InputError(f"a link address cannot have a scope: {text!r}")
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise InputError(f"{ip} cannot be connected to, so it cannot be a link address")
    return ip


def _check_port(port: object, what: str) -> int:
    if type(port) is not int or not 0 < port < 65536:
        raise InputError(f"a link's {what} port must be 1..65535, not {port!r}")
    return port


def _pack_address(address: LinkAddress) -> bytes:
    ip = ipaddress.ip_address(address.host)
    return bytes([ip.version]) + ip.packed + _PORTS.pack(address.dht_port, address.transfer_port)


def _unwrap(token: str) -> bytes:
    """The payload of a token, its checksum checked and removed."""
    if not isinstance(token, str):
        raise InputError("a link must be text")
    if not token.startswith(PREFIX):
        raise InputError(f"not a chunkstore link (it does not start with {PREFIX!r})")
    if len(token) > MAX_LINK_CHARS:
        raise InputError(f"not a valid link: longer than {MAX_LINK_CHARS} characters")
    text = token[len(PREFIX) :]
    bad = sorted(set(text) - _BASE32)
    if bad:
        shown = "".join(bad[:8])
        raise InputError(f"not a valid link: unexpected characters {shown!r} (links are lowercase)")
    try:
        payload = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise InputError("not a valid link: it is cut short or has extra characters") from None
    if base64.b32encode(payload).decode("ascii").rstrip("=").lower() != text:
        raise InputError("not a valid link: it is cut short or has extra characters")
    if len(payload) < 1 + CHECKSUM_BYTES:
        raise InputError("not a valid link: too short")
    body, checksum = payload[:-CHECKSUM_BYTES], payload[-CHECKSUM_BYTES:]
    if _checksum(body) != checksum:
        raise InputError("the link is damaged (its checksum does not match): copy it again")
    return body


class _Reader:
    """Reads a payload front to back; running out is an InputError, never an IndexError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise InputError(f"not a valid link: it ends inside the {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _parse(body: bytes) -> Link:
    reader = _Reader(body)
    version = reader.byte("version")
    if version != LINK_VERSION:
        raise InputError(
            f"this is a version {version} link; this chunkstore reads version {LINK_VERSION}"
            + (" (a newer chunkstore made it)" if version > LINK_VERSION else "")
        )
    manifest_id = reader.take(ID_BYTES, "manifest id")
    raw_name = reader.take(reader.byte("name length"), "name")
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not a valid link: its name is not UTF-8") from None
    count = reader.byte("address count")
    if count > MAX_ADDRESSES:
        raise InputError(f"not a valid link: {count} addresses (at most {MAX_ADDRESSES})")
    addresses = []
    for _ in range(count):
        family = reader.byte("address")
        if family not in (4, 6):
            raise InputError(f"not a valid link: unknown address family {family}")
        packed = reader.take(4 if family == 4 else 16, "address")
        dht_port, transfer_port = _PORTS.unpack(reader.take(_PORTS.size, "address"))
        ip = ipaddress.ip_address(packed)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            raise InputError(f"not a valid link: {ip} is an IPv4 address written as IPv6")
        address = LinkAddress(str(ip), dht_port, transfer_port)
        if address in addresses:
            raise InputError(f"not a valid link: address {address.dht_address} is in it twice")
        addresses.append(address)
    last_tag = -1
    publisher = None
    while reader.left:
        tag = reader.byte("field tag")
        value = reader.take(reader.byte("field length"), "field")
        if tag <= last_tag:
            raise InputError("not a valid link: its fields are out of order or repeated")
        last_tag = tag
        if tag == PUBLISHER_TAG:
            if len(value) != PUBLISHER_BYTES:
                raise InputError("not a valid link: its publisher key is not 32 bytes")
            publisher = value
        elif not tag & OPTIONAL_TAG:  # an essential field we cannot read
            raise InputError(
                f"this link has a field this chunkstore does not know (tag {tag}): "
                "a newer chunkstore made it"
            )
    return Link(manifest_id, name, tuple(addresses), publisher)
