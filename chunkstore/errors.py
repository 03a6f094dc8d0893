"""The errors chunkstore raises: one hierarchy, each with a message a user can act on.

Messages speak of the library's own terms (paths, names, bootstrap addresses), never of a
command line's flags: the CLI adds those where it has one to offer.

    ChunkstoreError
    ├── InputError            a path, name, id or option cannot be used
    │   ├── OutputExists      the output exists and overwriting was not asked for
    │   ├── UnsafeOutputName  a name cannot serve as a file name in the current directory
    │   ├── InputChanged      a file changed while it was being added: nothing was named
    │   └── AmbiguousName     several publishers have published a name: choose one
    ├── NotFound              an unknown name, manifest id or chunk id
    │   └── NoNetwork         the file is not (completely) local and no way to peers is known
    ├── CorruptChunk          bytes do not hash to the chunk id they were stored under
    ├── CorruptManifest       bytes are not a valid manifest, or not the one asked for
    ├── StoreFull             the disk is full; the store keeps its last committed state
    └── NetworkError          a peer or the DHT could not be reached or answered wrongly
        ├── BootstrapFailed   none of the bootstrap addresses answered
        ├── MissingChunks     some chunks had no reachable holder (what came stays stored)
        └── TransferError     one fetch from one peer failed
            ├── PeerBusy      HTTP 503: try later or elsewhere
            ├── PeerMissing   HTTP 404: the peer does not hold the object
            └── PeerError     refused, reset, timed out, a bad status or too large an answer
"""

from __future__ import annotations


class ChunkstoreError(Exception):
    """Base of every error chunkstore raises on purpose."""


class InputError(ChunkstoreError):
    """A path, name or option given by the user cannot be used."""


class OutputExists(InputError):
    """The output path exists and `force` was not given; `path` is that path."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} already exists (pass force to overwrite it)")


class UnsafeOutputName(InputError):
    """A file name (from a user or the network) that could write outside the current
    directory, so it cannot name the output: an output path must be given instead."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"name {name!r} cannot be used as an output file name; give an output path"
        )


class InputChanged(InputError):
    """The file changed while `add` read it (truncated, grown, rewritten or replaced): what
    was read is no snapshot of any state of the file, so no name was stored for it.
    `path` is the file, `detail` says what changed."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"{path} changed while it was being read ({detail}); nothing was stored under "
            "its name: add it again once it has stopped changing"
        )


class AmbiguousName(InputError):
    """A bare name that several publishers have published, none of them pinned for it here
    or trusted (or several trusted): `name` and `publishers` (their keys' text forms), to
    choose from with NAME@KEY or by trusting one."""

    def __init__(self, name: str, publishers: list[str], detail: str = "") -> None:
        self.name = name
        self.publishers = publishers
        self.detail = detail
        super().__init__(
            f"{len(publishers)} publishers have published {name!r}{detail}: "
            + ", ".join(publishers)
            + f"; choose one as {name}@KEY (a prefix of 8 or more characters will do), "
            "or trust one"
        )


class NotFound(ChunkstoreError):
    """An unknown name, manifest id or chunk id."""


class NoNetwork(NotFound):
    """There is no way to the network: no node serves the home and no bootstrap address was
    given. `detail` says what was wanted; `bootstrap_helps` whether bootstrap addresses would
    have done (listing a node's peers needs a running node)."""

    def __init__(self, detail: str, *, bootstrap_helps: bool = True) -> None:
        self.detail = detail
        self.bootstrap_helps = bootstrap_helps
        remedy = "start a node on this home" + (
            " or give bootstrap addresses" if bootstrap_helps else ""
        )
        super().__init__(f"{detail}: {remedy}")


class CorruptChunk(ChunkstoreError):
    """Stored or received bytes do not hash to the chunk id they were stored under."""

    def __init__(self, chunk_id: str, detail: str = "") -> None:
        self.chunk_id = chunk_id
        super().__init__(f"chunk {chunk_id} is corrupt" + (f": {detail}" if detail else ""))


class CorruptManifest(ChunkstoreError):
    """Bytes that are not a valid manifest, or not the manifest whose id was asked for."""

    def __init__(self, manifest_id: str, detail: str) -> None:
        self.manifest_id = manifest_id
        super().__init__(f"manifest {manifest_id} is corrupt: {detail}")


class StoreFull(ChunkstoreError):
    """The disk (or the store's size limit) is full; the store is left consistent."""


class NetworkError(ChunkstoreError):
    """A peer or the DHT could not be reached or answered wrongly."""


class BootstrapFailed(NetworkError):
    """None of the bootstrap addresses answered; `addresses` lists them as "host:port"."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        super().__init__("none of the bootstrap addresses answered: " + ", ".join(addresses))


class MissingChunks(NetworkError):
    """Some chunks had no reachable holder; what was fetched stays in the store."""

    def __init__(self, missing: int, total: int) -> None:
        self.missing = missing
        self.total = total
        super().__init__(f"{missing} of {total} chunks could not be fetched from any holder")


class TransferError(NetworkError):
    """A fetch from one peer failed; `peer` is "host:port", `detail` says how."""

    def __init__(self, peer: str, detail: str) -> None:
        self.peer = peer
        self.detail = detail
        super().__init__(f"peer {peer}: {detail}")


class PeerBusy(TransferError):
    """The peer is at its concurrency limit (HTTP 503): try later or elsewhere."""

    def __init__(self, peer: str, detail: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(peer, detail)


class PeerMissing(TransferError):
    """The peer does not hold the object (HTTP 404)."""


class PeerError(TransferError):
    """Anything else: refused, reset, timed out, a bad status, or a too large response."""
