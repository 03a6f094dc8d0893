"""Which contacts may enter the routing table: diversity by address. Pure: no I/O.

Node ids cost nothing: one socket sending pings with 1,000 random ids filled 645 entries of a
routing table, and lookups then asked that socket over and over (an eclipse). As libtorrent
and libp2p do, the table holds at most one contact per address (IP and port: a node has one
id), at most MAX_PER_IP_PER_BUCKET contacts of one IP in a bucket and MAX_PER_IP in all. The
per-IP limits do not apply to loopback addresses by default (`relax_loopback`): a test swarm
runs every node on 127.0.0.1, and no stranger can send from a loopback address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from chunkstore.net.address_scope import Scope, scope_of

MAX_PER_IP_PER_BUCKET = 2
MAX_PER_IP = 8


@dataclass(frozen=True)
class ContactRules:
    max_per_ip_per_bucket: int = MAX_PER_IP_PER_BUCKET
    max_per_ip: int = MAX_PER_IP
    relax_loopback: bool = True

    def admits(
        self,
        ip: str,
        port: int,
        node_id: bytes,
        bucket: Iterable[tuple[bytes, str, int]],
        table: Iterable[tuple[bytes, str, int]],
    ) -> bool:
        """Whether contact (`node_id`, `ip`, `port`) may join, given the (id, ip, port) of the
        contacts of its bucket and of the whole table (it is not among them)."""
        same_ip_in_table = 0
        for other_id, other_ip, other_port in table:
            if (other_ip, other_port) == (ip, port) and other_id != node_id:
                return False  # that address is another id's already
            same_ip_in_table += other_ip == ip
        if self.relax_loopback and scope_of(ip) is Scope.LOOPBACK:
            return True
        if same_ip_in_table >= self.max_per_ip:
            return False
        return sum(1 for _, other_ip, _ in bucket if other_ip == ip) < self.max_per_ip_per_bucket
