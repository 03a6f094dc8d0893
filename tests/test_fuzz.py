"""Fuzz tests (hypothesis) for the decoders that see network bytes: DHT answers and
datagrams, name records, manifests, share links, chunks' stored forms and the HTTP responses
the transfer client reads. Each decoder either returns a value or
refuses with its own error, never anything else; a node fed garbage keeps answering. The
number of examples is bounded (CI runs these on every change); HYPOTHESIS_PROFILE=deep runs
more."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest
import umsgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkstore.errors import (
    ChunkstoreError,
    CorruptChunk,
    CorruptManifest,
    InputError,
    TransferError,
)
from chunkstore.net.dht import DhtNode
from chunkstore.net.protocol import INVALID, parse_nodes, parse_providers
from chunkstore.net.transfer_client import TransferClient
from chunkstore.objects.codec import ZSTD_PREFIX, ChunkCodec
from chunkstore.objects.ids import object_id
from chunkstore.objects.link import PREFIX, Link
from chunkstore.objects.manifest import Manifest
from chunkstore.objects.name_record import InvalidRecord, NameRecord
from tests.helpers import signed_record
from tests.test_dht import LOCAL, raw_socket, request, run

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("deep", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# msgpack-shaped values as a hostile peer can send them (rpcudp decodes with umsgpack)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(["", "127.0.0.1", "providers", "nodes", "records", "token", "value"])
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=10) | st.sampled_from(["providers", "nodes"]), inner)
    ),
    max_leaves=30,
)


@given(VALUES)
def test_answer_parsers_return_a_value_or_invalid(raw: object) -> None:
    nodes = parse_nodes(raw, 20)
    assert nodes is INVALID or isinstance(nodes, list)
    parsed = parse_providers(raw, "127.0.0.1", 20)
    assert parsed is INVALID or (isinstance(parsed, tuple) and len(parsed) == 3)


VALID = signed_record("fuzz.bin", "ab" * 32).encoded


@given(
    st.binary(max_size=600)
    | st.builds(
        lambda i, b: VALID[:i] + bytes([b]) + VALID[i + 1 :],
        st.integers(0, len(VALID) - 1),
        st.integers(0, 255),
    )
    | st.builds(lambda n: VALID[:n], st.integers(0, len(VALID)))
)
def test_name_records_decode_or_are_refused(data: bytes) -> None:
    try:
        record = NameRecord.decode(data)
    except InvalidRecord:
        return
    assert record.encoded == data  # only an intact signature gets here


@given(st.binary(max_size=2000))
def test_manifests_decode_or_are_refused(data: bytes) -> None:
    with contextlib.suppress(CorruptManifest):
        Manifest.from_bytes(data)


@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", max_size=300).map(lambda t: PREFIX + t)
    | st.text(max_size=100)
)
def test_links_decode_or_are_refused(token: str) -> None:
    try:
        Link.decode(token)
    except InputError:
        pass
    except ChunkstoreError as e:  # pragma: no cover - a wrong error type is the failure
        pytest.fail(f"{type(e).__name__}: {e}")


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "ping",
                    "find_node",
                    "find_value",
                    "store",
                    "store_name",
                    "find_names",
                    "add_provider",
                    "get_providers",
                    "stun",
                    "nope",
                ]
            ),
            VALUES,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_node_fed_hostile_requests_keeps_answering(requests: list) -> None:
    async def main() -> None:
        node = DhtNode()
        await node.start(LOCAL, 0)
        try:
            target = (LOCAL, node.port)
            async with raw_socket() as (transport, peer):
                for rpc, args in requests:
                    payload = [rpc, args if isinstance(args, list) else [args]]
                    try:
                        packed = umsgpack.packb(payload)
                    except (umsgpack.UnsupportedTypeException, OverflowError):
                        continue
                    transport.sendto(b"\x00" + os.urandom(20) + packed, target)
                    transport.sendto(b"\x01" + os.urandom(20) + packed, target)  # stray answer
                ping = os.urandom(20)
                transport.sendto(request(["ping", [os.urandom(20)]], ping), target)
                while True:  # answers to earlier well-formed requests may come first
                    data = await asyncio.wait_for(peer.received.get(), 10)
                    if data[1:21] == ping:
                        assert umsgpack.unpackb(data[21:]) == node.node_id
                        break
        finally:
            await node.stop()

    run(main)


# -- stored forms: what a holder sends for a chunk ------------------------------------------

RAW_CHUNK = bytes(range(256)) * 64 + b"chunkstore" * 400  # compressible: a real zstd frame
STORED = ChunkCodec().encode(RAW_CHUNK)
assert STORED[:1] == ZSTD_PREFIX
RAW_ID = object_id(RAW_CHUNK)


@given(
    st.binary(max_size=400).map(lambda b: ZSTD_PREFIX + b"\x28\xb5\x2f\xfd" + b)
    | st.binary(max_size=400)
    | st.builds(
        lambda i, b: STORED[:i] + bytes([b]) + STORED[i + 1 :],
        st.integers(0, len(STORED) - 1),
        st.integers(0, 255),
    )
    | st.builds(lambda n: STORED[:n], st.integers(0, len(STORED)))
    | st.builds(lambda tail: STORED + tail, st.binary(min_size=1, max_size=64)),
    st.sampled_from([None, len(RAW_CHUNK), len(RAW_CHUNK) - 1, 0, 1 << 20]),
)
def test_stored_forms_decode_to_the_chunk_or_are_corrupt(stored: bytes, size: int | None) -> None:
    # Anything but the chunk's own bytes (and, with a size, exactly that many) is CorruptChunk.
    try:
        raw = ChunkCodec().decode_verified(RAW_ID, stored, size)
    except CorruptChunk:
        return
    assert bytes(raw) == RAW_CHUNK and size in (None, len(RAW_CHUNK))


# -- HTTP responses: what a holder answers a chunk request with ------------------------------

STATUS_LINES = st.sampled_from(
    [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 503 Busy", b"HTTP/1.0 200 OK",
     b"HTTP/1.1 301 Moved", b"HTTP/1.1 999 X", b"HTTP/9.9 200 OK", b"HTTP/1.1 200", b"garbage"]
)  # fmt: skip
HEADERS = st.lists(
    st.sampled_from(
        [b"Content-Length: 0", b"Content-Length: 5", b"Content-Length: 100000000",
         b"Content-Length: -1", b"Content-Length: x", b"Content-Length: 3\r\nContent-Length: 9",
         b"Transfer-Encoding: chunked", b"Content-Encoding: gzip", b"Retry-After: 1e308",
         b"Retry-After: -5", b"Retry-After: nan", b"Location: http://127.0.0.1:1/",
         b"Connection: close", b"X: \xff\xfe"]
    )
    | st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
    max_size=5,
)  # fmt: skip
BODIES = (
    st.binary(max_size=3000)
    | st.just(b"ffffffff\r\n" + b"x" * 100)
    | st.just(b"5\r\nhello\r\n0\r\n\r\n")
    | st.just(STORED)
)
CHUNK_BOUND = 2000  # the size the downloader would allow this chunk


@settings(max_examples=80)
@given(st.one_of(st.tuples(STATUS_LINES, HEADERS, BODIES), st.binary(max_size=600)))
def test_the_transfer_client_returns_bounded_bytes_or_a_transfer_error(response) -> None:
    if isinstance(response, tuple):
        status, headers, body = response
        response = b"\r\n".join([status, *headers, b"", b""]) + body

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(answer, LOCAL, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with TransferClient(timeout=5.0) as client:
                try:
                    data = await client.fetch_chunk(LOCAL, port, RAW_ID, max_size=CHUNK_BOUND)
                except TransferError:
                    return
                assert isinstance(data, bytes) and len(data) <= CHUNK_BOUND
        finally:
            server.close()
            await server.wait_closed()

    run(main)
