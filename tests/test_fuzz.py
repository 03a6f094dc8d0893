"""Fuzz tests (hypothesis) for the decoders that see network bytes: DHT answers and
datagrams, name records, manifests, share links. Each decoder either returns a value or
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

from chunkstore.errors import ChunkstoreError, CorruptManifest, InputError
from chunkstore.net.dht import DhtNode
from chunkstore.net.protocol import INVALID, parse_nodes, parse_providers
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
