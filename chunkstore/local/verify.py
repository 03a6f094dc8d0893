"""Checking that the store is intact: every chunk re-hashed, every manifest complete; and
listing the partial outputs killed gets left."""

from __future__ import annotations

from collections.abc import Callable

from chunkstore.errors import CorruptChunk
from chunkstore.local.output import PartialLog
from chunkstore.local.pipeline import ordered_map
from chunkstore.local.store import Store
from chunkstore.objects.codec import ChunkCodec
from chunkstore.results import VerifyReport


def verify_store(
    store: Store, name_or_id: str | None = None, progress: Callable[[int], None] | None = None
) -> VerifyReport:
    """Re-hash every chunk of the store (or of one file) and list what is corrupt or missing,
    and the partial outputs that gets of this home left when they were killed."""
    codec = ChunkCodec()
    report = VerifyReport()
    present: set[bytes] = set()

    def check(item: tuple[bytes, bytes | None]) -> tuple[bytes, int, str]:
        cid, stored = item
        if stored is None:
            return cid, 0, "missing"
        try:
            return cid, len(codec.decode_verified(cid, stored)), "ok"
        except CorruptChunk:
            return cid, 0, "corrupt"

    if name_or_id is None:
        items = iter(store.iter_chunks())
        # A manifest held by a download entry and not recorded complete is a download in
        # progress or interrupted (a get resumes it): its absent chunks are still to come.
        downloading = {mid for mid, _ in store.downloads()}
        manifests = []
        for mid, manifest in store.iter_manifests():
            if mid in downloading and not store.is_complete(mid):
                report.incomplete.append(mid.hex())
            else:
                manifests.append((mid, manifest))
    else:
        _, manifest = store.resolve(name_or_id)
        ids = list(dict.fromkeys(r.chunk_id for r in manifest.chunks))
        items = ((cid, store.get_stored(cid)) for cid in ids)
        manifests = []

    for cid, size, state in ordered_map(check, items):
        report.chunks_checked += 1
        report.bytes_checked += size
        if state == "corrupt":
            report.corrupt.append(cid.hex())
        elif state == "missing":
            report.missing.append(cid.hex())
        present.add(cid)
        if progress:
            progress(size)
    absent = {ref.chunk_id for _, m in manifests for ref in m.chunks} - present
    report.missing.extend(sorted(cid.hex() for cid in absent))
    report.leftover_partials = PartialLog(store.home).leftovers()
    return report
