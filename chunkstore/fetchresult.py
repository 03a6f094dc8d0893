"""What a `get` reports: the file, where its bytes came from, how fast."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FetchResult:
    name: str
    manifest_id: str
    size: int
    chunks: int
    chunks_fetched: int       # distinct chunks that came over the network
    chunks_reused: int        # distinct chunks already in the local store
    bytes_fetched: int        # raw bytes that came over the network
    seconds: float
    output: str
    sources: dict[str, int] = field(default_factory=dict)  # "host:port" -> raw bytes delivered

    @property
    def throughput(self) -> float:
        return self.bytes_fetched / self.seconds if self.seconds > 0 else 0.0
