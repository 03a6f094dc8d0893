"""The errors chunkstore raises: one hierarchy, each with a message a user can act on."""


class ChunkstoreError(Exception):
    """Base of every error chunkstore raises on purpose."""


class InputError(ChunkstoreError):
    """A path, name or option given by the user cannot be used."""


class NotFound(ChunkstoreError):
    """An unknown name, manifest id or chunk id."""


class CorruptChunk(ChunkstoreError):
    """Stored or received bytes do not hash to the id they were stored under."""

    def __init__(self, chunk_id: str, detail: str = "") -> None:
        self.chunk_id = chunk_id
        super().__init__(f"chunk {chunk_id} is corrupt" + (f": {detail}" if detail else ""))


class StoreFull(ChunkstoreError):
    """The disk (or the store's size limit) is full; the store is left consistent."""


class NetworkError(ChunkstoreError):
    """A peer or the DHT could not be reached or answered wrongly."""


class MissingChunks(NetworkError):
    """Some chunks had no reachable holder; what was fetched stays in the store."""

    def __init__(self, missing: int, total: int) -> None:
        self.missing = missing
        self.total = total
        super().__init__(f"{missing} of {total} chunks could not be fetched from any holder")
