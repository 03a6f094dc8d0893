"""What the store holds: the named, pinned and incomplete files and the details of one."""

from __future__ import annotations

from chunkstore.local.store import Store
from chunkstore.results import FileEntry, FileInfo


def file_info(store: Store, name_or_id: str) -> FileInfo:
    """Details of one file, by name or manifest id; raises NotFound."""
    mid, manifest = store.resolve(name_or_id)
    ids = [r.chunk_id for r in manifest.chunks]
    missing = store.missing_chunks(ids)
    c = manifest.chunker
    chunker = (
        f"fixed {c.avg_size} B"
        if c.kind == "fixed"
        else f"fastcdc avg {c.avg_size} min {c.min_size} max {c.max_size}"
    )
    name = name_or_id if store.lookup_name(name_or_id) == mid else ""
    return FileInfo(
        name=name,
        manifest_id=mid.hex(),
        size=manifest.size,
        chunks=len(ids),
        chunks_present=len(ids) - len(missing),
        chunker=chunker,
        stored_bytes=store.stored_size(ids),
    )


def list_files(store: Store) -> list[FileEntry]:
    """Every named file, in name order."""
    entries = []
    for name, mid in store.names():
        manifest = store.get_manifest(mid)
        if manifest is not None:
            entries.append(FileEntry(name, mid.hex(), manifest.size, len(manifest.chunks)))
    return entries


def _entry(store: Store, mid: bytes, name: str, held_by: str, count: bool) -> FileEntry | None:
    manifest = store.get_manifest(mid)
    if manifest is None:
        return None
    present = -1
    if count:
        present = len(manifest.chunks) - len(
            store.missing_chunks(r.chunk_id for r in manifest.chunks)
        )
    return FileEntry(name, mid.hex(), manifest.size, len(manifest.chunks), present, held_by)


def incomplete_files(store: Store) -> list[FileEntry]:
    """Every held file not whole here: downloads not completed (name: what the get asked
    for, "" for an id), then pinned and named files missing chunks; with the count of their
    chunks stored."""
    entries = []
    seen = set()
    for mid, asked in store.downloads():
        entry = _entry(store, mid, asked, "download", True)
        if entry is not None:
            entries.append(entry)
            seen.add(mid)
    named = store.names()
    holds = [(mid, "pin") for mid in store.pins()] + [(mid, "name") for _, mid in named]
    for mid, held_by in holds:
        if mid in seen or store.is_complete(mid):
            continue
        seen.add(mid)
        name = next((n for n, m in named if m == mid), "")
        entry = _entry(store, mid, name, held_by, True)
        if entry is not None and entry.chunks_present < entry.chunks:
            entries.append(entry)
    return entries


def pinned_files(store: Store) -> list[FileEntry]:
    """Every pinned file (name: one of its names, if any), with its chunks stored."""
    named = store.names()
    entries = []
    for mid in store.pins():
        name = next((n for n, m in named if m == mid), "")
        entry = _entry(store, mid, name, "pin", True)
        if entry is not None:
            entries.append(entry)
    return entries
