"""What the public operations return: plain values, printable and JSON-serialisable.

Every field is a str, int, float, bool, list or dict, so `dataclasses.asdict` of any of
them is JSON as it stands (the CLI's `--json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AddResult:
    """`chunkstore.add`: the file stored, and how much of it was new."""

    name: str
    manifest_id: str
    size: int
    chunks: int
    new_chunks: int
    dedup_chunks: int
    stored_bytes: int  # bytes this add wrote to the store (new chunks only)
    link: str = ""  # a share link for `get` on another machine (see chunkstore.link)


@dataclass
class GetResult:
    """`chunkstore.get` / `fetch`: the file written, where its bytes came from, how fast.

    A local get has `chunks_fetched == 0` and no `sources`."""

    name: str
    manifest_id: str
    size: int
    chunks: int
    chunks_fetched: int  # distinct chunks that came over the network
    chunks_reused: int  # distinct chunks already in the local store
    bytes_fetched: int  # raw bytes that came over the network
    seconds: float
    output: str  # the path written, "-" for a stream, "" for the store only
    sources: dict[str, int] = field(default_factory=dict)  # "host:port" -> raw bytes delivered
    first_byte_seconds: float | None = None  # from the call to the first verified chunk
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds it ended at

    @property
    def throughput(self) -> float:
        """Network bytes per second (0.0 for a local get)."""
        return self.bytes_fetched / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class FileEntry:
    """One file of `chunkstore.ls` (named files; with `incomplete`, also how many of its
    chunks are stored and what holds it: "download", "pin" or "name")."""

    name: str
    manifest_id: str
    size: int
    chunks: int
    chunks_present: int = -1  # -1: not counted (a named file, whole)
    held_by: str = "name"


@dataclass(frozen=True)
class FileInfo:
    """`chunkstore.stat`: one file's manifest and how much of it is local."""

    name: str
    manifest_id: str
    size: int
    chunks: int
    chunks_present: int
    chunker: str
    stored_bytes: int


@dataclass
class VerifyReport:
    """`chunkstore.verify`: what was re-hashed, every corrupt or missing chunk, unfinished
    downloads, and partial outputs left by killed gets."""

    chunks_checked: int = 0
    bytes_checked: int = 0
    corrupt: list[str] = field(default_factory=list)  # chunk ids (hex)
    missing: list[str] = field(default_factory=list)  # referenced by a manifest, absent
    # manifests of downloads not finished (neither named nor complete): their absent chunks
    # are to come, so they are not counted as missing
    incomplete: list[str] = field(default_factory=list)
    # partial outputs of this home's gets that were killed (no live get holds them): not
    # damage to the store, so `ok` does not count them; a get of the same output removes them
    leftover_partials: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


@dataclass(frozen=True)
class RemoveResult:
    """`chunkstore.rm`: the name dropped and the manifest it pointed at; `unpublished` when a
    signed removal of the name replaced this home's record of it."""

    name: str
    manifest_id: str
    unpublished: bool = False
    names: list[str] = field(default_factory=list)  # every name dropped
    still_held: str = ""  # "pin" or "name" when something else still holds the file


@dataclass(frozen=True)
class PinResult:
    """`chunkstore.pin` / `unpin`: the file, whether it is pinned now, and whether that
    changed anything."""

    manifest_id: str
    pinned: bool
    changed: bool


@dataclass(frozen=True)
class GcResult:
    """`chunkstore.gc`: chunks deleted and their stored bytes, manifests nothing held any
    more, manifests skipped because they could not be decoded (ids, hex), and the store
    file's size on disk before and after (equal when it was not compacted; `compact_note`
    says why when a compaction was tried and could not be done)."""

    chunks_deleted: int
    bytes_freed: int
    manifests_dropped: int = 0
    undecodable: list[str] = field(default_factory=list)
    store_bytes_before: int = 0
    store_bytes_after: int = 0
    compacted: bool = False
    compact_note: str = ""

    @property
    def bytes_returned(self) -> int:
        """Bytes the compaction gave back to the filesystem."""
        return max(0, self.store_bytes_before - self.store_bytes_after)
