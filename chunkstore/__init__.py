"""chunkstore: content-addressed file distribution over a Kademlia DHT.

    import chunkstore
    chunkstore.add("bigfile.iso")                      # into ~/.chunkstore (or home=...)
    chunkstore.get("bigfile.iso", "copy.iso")          # local, or from the swarm
    token = chunkstore.link("bigfile.iso")             # a share link: get takes it anywhere
    async with chunkstore.Node(port=4100) as node:     # serve, announce, fetch
        await node.fetch("other.iso", "other.iso")

Sub-packages by layer: `objects` (formats, no I/O), `local` (the store and its operations),
`net` (DHT, transfer, download, node), `demo` (a local swarm of `serve` processes). The
functions here are the supported surface; the layers below may change between versions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chunkstore.errors import (
    AmbiguousName,
    BootstrapFailed,
    ChunkstoreError,
    CorruptChunk,
    CorruptManifest,
    InputError,
    MissingChunks,
    NetworkError,
    NoNetwork,
    NotFound,
    OutputExists,
    PeerBusy,
    PeerError,
    PeerMissing,
    StoreFull,
    TransferError,
    UnsafeOutputName,
)
from chunkstore.local.store import Store
from chunkstore.net.providers import Holder
from chunkstore.objects.chunking import ChunkerParams
from chunkstore.objects.link import Link, LinkAddress
from chunkstore.porcelain import (
    add,
    fetch,
    gc,
    get,
    key,
    link,
    link_note,
    ls,
    peers,
    pin,
    pins,
    providers,
    rm,
    stat,
    trust,
    trusted,
    unpin,
    untrust,
    verify,
)
from chunkstore.results import (
    AddResult,
    FileEntry,
    FileInfo,
    GcResult,
    GetResult,
    PinResult,
    RemoveResult,
    VerifyReport,
)
from chunkstore.version import __version__

if TYPE_CHECKING:
    from chunkstore.net.node import Node

__all__ = [
    "AddResult",
    "AmbiguousName",
    "BootstrapFailed",
    "ChunkerParams",
    "ChunkstoreError",
    "CorruptChunk",
    "CorruptManifest",
    "FileEntry",
    "FileInfo",
    "GcResult",
    "GetResult",
    "Holder",
    "InputError",
    "Link",
    "LinkAddress",
    "MissingChunks",
    "NetworkError",
    "NoNetwork",
    "Node",
    "NotFound",
    "OutputExists",
    "PeerBusy",
    "PeerError",
    "PeerMissing",
    "PinResult",
    "RemoveResult",
    "Store",
    "StoreFull",
    "TransferError",
    "UnsafeOutputName",
    "VerifyReport",
    "__version__",
    "add",
    "fetch",
    "gc",
    "get",
    "key",
    "link",
    "link_note",
    "ls",
    "peers",
    "pin",
    "pins",
    "providers",
    "rm",
    "stat",
    "trust",
    "trusted",
    "unpin",
    "untrust",
    "verify",
]


def __getattr__(name: str) -> Any:
    # Node needs the network stack (aiohttp, kademlia: ~0.3 s to import): loaded on first use,
    # so `import chunkstore` and a local get stay fast.
    if name == "Node":
        from chunkstore.net.node import Node

        return Node
    raise AttributeError(f"module 'chunkstore' has no attribute {name!r}")
