"""`get`: a file from the local store when it is complete there, else from the swarm.

The network stack is imported only when the network is needed, so a local get starts fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from chunkstore.errors import NotFound
from chunkstore.fetchresult import FetchResult
from chunkstore.restore import write_output
from chunkstore.store import Store

Progress = Callable[[int], None]


def get(store: Store, name_or_id: str, output: Path | BinaryIO, *,
        bootstrap: list[tuple[str, int]] | None = None, force: bool = False,
        progress: Progress | None = None,
        on_total: Callable[[int], None] | None = None) -> FetchResult:
    """`chunkstore get`: from the local store when the file is complete there, else from
    the swarm (through the running node, or a short-lived one joined via `bootstrap`)."""
    started = time.monotonic()
    try:
        mid, manifest = store.resolve(name_or_id)
    except NotFound:
        manifest = None
    if manifest is not None and not store.missing_chunks(r.chunk_id for r in manifest.chunks):
        if on_total:
            on_total(manifest.size)
        shown = write_output(store, manifest, output, force=force, progress=progress)
        return FetchResult(name=name_or_id if store.lookup_name(name_or_id) else "",
                           manifest_id=mid.hex(), size=manifest.size,
                           chunks=len(manifest.chunks), chunks_fetched=0,
                           chunks_reused=len({r.chunk_id for r in manifest.chunks}),
                           bytes_fetched=0, seconds=time.monotonic() - started, output=shown)
    import asyncio

    from chunkstore.node import running_node
    from chunkstore.swarm import fetch

    if not bootstrap and running_node(store.home) is None:
        state = "is incomplete in" if manifest is not None else "is not in"
        raise NotFound(f"{name_or_id!r} {state} the local store and no node serves "
                       f"{store.home} to fetch it: run `chunkstore serve` or pass "
                       "--bootstrap HOST:PORT")
    return asyncio.run(fetch(store, name_or_id, output, bootstrap=bootstrap, force=force,
                             progress=progress, on_total=on_total))
