"""`node.json`: how the node serving a home tells other processes where it is.

Light on purpose (no network imports): `chunkstore add` reads it to put the node's address
in a share link, and `get` to decide whether it can go through the node.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from chunkstore.local.store import pid_alive

NODE_FILE = "node.json"


@dataclass(frozen=True)
class NodeInfo:
    """What `node.json` says about a running node."""

    pid: int
    host: str
    dht_port: int
    transfer_port: int
    api_url: str
    # The IP peers reach this node at: `host` unless it is a wildcard, else the address a peer
    # observed ("" until one did). Rewritten in node.json when it is learnt.
    advertised_host: str = ""

    def dht_address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.dht_port}"


def running_node(home: Path) -> NodeInfo | None:
    """The node serving `home`, if one runs (a stale node.json is ignored)."""
    try:
        data = json.loads((home / NODE_FILE).read_text())
        info = NodeInfo(**data)
    except (OSError, ValueError, TypeError):
        return None
    return info if pid_alive(info.pid) else None


def write_node_file(home: Path, info: NodeInfo) -> None:
    """Write `info` as the home's node.json, atomically (readers never see half a file)."""
    tmp = home / (NODE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, home / NODE_FILE)
