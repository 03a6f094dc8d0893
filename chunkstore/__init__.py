"""chunkstore: content-addressed chunked file distribution over a Kademlia DHT."""

__version__ = "0.1.0"
