"""What the store holds: the named files and the details of one."""

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
