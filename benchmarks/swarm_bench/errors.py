"""Why a swarm benchmark run stops."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from chunkstore.errors import ChunkstoreError


class BenchError(ChunkstoreError):
    """The benchmark could not run or a download was wrong (failed, or bytes differ)."""


class BenchUnavailable(BenchError):
    """The requested mode cannot run on this machine (e.g. --netns without root)."""


class ProcessFailed(BenchError):
    """A measured process exited non-zero (retried once; a byte mismatch never is)."""

    def __init__(self, argv: Sequence[str], code: int, tail: str) -> None:
        lines = [ln for ln in tail.splitlines() if ln.strip()]
        program = argv[4] if list(argv[:3]) == ["ip", "netns", "exec"] else argv[0]
        self.summary = f"{Path(program).name} exited with {code}: " + (
            lines[-1][:300] if lines else "no output"
        )
        super().__init__(f"{' '.join(argv)} exited with {code}:\n{tail}")
