"""Address scopes: which addresses learnt from other nodes this node may contact.

A DHT answer can name any address. Followed blindly, a hostile answer makes a node send UDP
and HTTP requests into its own machine (loopback), its LAN or cloud metadata endpoints
(link-local 169.254.169.254), on behalf of a stranger. The rule: an address learnt from
another node is used only if its scope is at least as wide as this node's own (loopback <
link-local < private < public): a node on a public address ignores private, link-local and
loopback holders and contacts; a node on a LAN keeps LAN peers; a loopback test swarm keeps
working. Multicast, unspecified and reserved addresses are never used. A node that does
not know its own address yet (listening on every interface, no peer has told it) applies no
scope rule beyond that. Pure: no I/O.
"""

from __future__ import annotations

import enum
import functools
import ipaddress


class Scope(enum.IntEnum):
    """How far an address reaches, narrowest first; UNUSABLE is never contacted."""

    UNUSABLE = -1
    LOOPBACK = 0
    LINK_LOCAL = 1
    PRIVATE = 2
    PUBLIC = 3


@functools.lru_cache(maxsize=4096)
def scope_of(host: str) -> Scope:
    """The scope of an IP literal (UNUSABLE for anything else). Cached: it is asked for
    every incoming datagram and request, mostly of the same few addresses."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return Scope.UNUSABLE
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:  # first: ::1 lies in a block ipaddress calls reserved
        return Scope.LOOPBACK
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return Scope.UNUSABLE
    if ip.is_link_local:
        return Scope.LINK_LOCAL
    if ip.is_private:
        return Scope.PRIVATE
    return Scope.PUBLIC if ip.is_global else Scope.UNUSABLE


def usable(host: str, own: Scope | None) -> bool:
    """Whether this node, of scope `own` (None: not known yet), may contact `host` learnt
    from another node."""
    scope = scope_of(host)
    if scope is Scope.UNUSABLE:
        return False
    return own is None or scope >= own
