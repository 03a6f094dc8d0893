"""Share links: the format (round trips, hostile tokens, random garbage, no sockets), the
library calls that make and take them, and the CLI as two users run it (slow: `serve`
processes on 127.0.0.1, a get from an empty home with no flag but the link).

Every address put into a link here is in 127.0.0.0/8."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

import chunkstore
from chunkstore.demo.local_swarm import LocalSwarm
from chunkstore.objects.link import (
    CHECKSUM_DOMAIN,
    MAX_ADDRESSES,
    MAX_LINK_CHARS,
    OPTIONAL_TAG,
    PREFIX,
    Link,
    LinkAddress,
    looks_like_link,
)
from chunkstore.objects.name_record import parse_key
from chunkstore.objects.name_syntax import validate_name
from tests.helpers import MIB, file_hash, port_free_for_tcp_and_udp, run_cli, wait_until, write_file

MID = bytes(range(32))
LOCAL = LinkAddress("127.0.0.1", 4100, 4101)


def token_of(body: bytes) -> str:
    """A token for any payload body, checksummed as the format says (written independently
    of the module, so these tests also check the documented layout)."""
    checksum = blake3.blake3(CHECKSUM_DOMAIN + body).digest()[:4]
    return PREFIX + base64.b32encode(body + checksum).decode().rstrip("=").lower()


def body_of(
    *,
    version: int = 1,
    mid: bytes = MID,
    name: bytes = b"f.bin",
    addresses: list[bytes] | None = None,
    fields: bytes = b"",
) -> bytes:
    addresses = [v4(127, 0, 0, 1, 4100, 4101)] if addresses is None else addresses
    return (
        bytes([version])
        + mid
        + bytes([len(name)])
        + name
        + bytes([len(addresses)])
        + b"".join(addresses)
        + fields
    )


def v4(a: int, b: int, c: int, d: int, dht: int, transfer: int) -> bytes:
    return bytes([4, a, b, c, d]) + struct.pack(">HH", dht, transfer)


def decode_error(token: str) -> str:
    with pytest.raises(chunkstore.InputError) as e:
        Link.decode(token)
    return str(e.value)


# -- the format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "link",
    [
        Link(MID),
        Link(MID, "f.bin", (LOCAL,)),
        Link(bytes(32), "report (final) $HOME `x` 'q' \"d\";&|*?.pdf", (LOCAL,)),
        Link(
            b"\xff" * 32,
            "é" * 127,
            tuple(LinkAddress(f"127.0.0.{i}", 1, 65535) for i in (1, 2, 3, 4)),
        ),
        Link(MID, "x" * 255, (LinkAddress("127.255.255.254", 65535, 1),)),
        Link(MID, "日本語 ファイル", (LinkAddress("::ffff:127.0.0.2", 9, 10),)),
    ],
)
def test_round_trip_and_shell_safe(link: Link) -> None:
    token = link.encode()
    assert Link.decode(token) == link
    assert re.fullmatch(r"chunkstore:[a-z2-7]+", token) and shlex.quote(token) == token
    assert looks_like_link(token) and len(token) <= MAX_LINK_CHARS
    assert Link.decode(token).encode() == token  # one token per link


def test_an_example_token_is_what_the_docs_show() -> None:
    token = Link(MID, "f.bin", (LOCAL,)).encode()
    assert token.startswith("chunkstore:ae")  # version 1 in the first byte
    assert len(token) < 100  # short enough to paste in a chat line


def test_address_forms_are_made_canonical_or_refused() -> None:
    assert LinkAddress("::ffff:127.0.0.9", 1, 2).host == "127.0.0.9"
    for host in ("localhost", "127.0.0.1:80", "", "127.1", "127.0.0.01", " 127.0.0.1"):
        with pytest.raises(chunkstore.InputError, match="IP address"):
            LinkAddress(host, 1, 2)
    for dht, transfer in ((0, 1), (1, 0), (65536, 1), (-1, 1), (True, 1), (1, "2")):
        with pytest.raises(chunkstore.InputError, match="port"):
            LinkAddress("127.0.0.1", dht, transfer)  # type: ignore[arg-type]


def test_links_that_cannot_be_made_are_refused() -> None:
    with pytest.raises(chunkstore.InputError, match="32 bytes"):
        Link(b"short")
    with pytest.raises(chunkstore.InputError, match="at most 4"):
        Link(MID, "f", tuple(LinkAddress(f"127.0.0.{i}", 1, 1) for i in range(1, 6)))
    with pytest.raises(chunkstore.InputError, match="once"):
        Link(MID, "f", (LOCAL, LOCAL))
    with pytest.raises(chunkstore.InputError, match="control"):
        Link(MID, "a\nb")
    with pytest.raises(chunkstore.InputError, match="Unicode"):
        Link(MID, "\ud800")
    with pytest.raises(chunkstore.InputError, match="bytes long"):
        Link(MID, "é" * 128)
    with pytest.raises(chunkstore.InputError, match="version"):
        Link(MID, version=2)


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "x" * 255,
        "x" * 256,
        "é" * 127,
        "é" * 128,
        "a\x00b",
        "\x1f",
        "tab\t",
        "\x7f",
        "ok (1).txt",
        "日本",
        "../up",
        "a/b",
        " lead",
        "\u202eevil",
    ],
)
def test_link_names_follow_the_store_rule(name: str) -> None:
    try:
        validate_name(name)
        store_accepts = True
    except chunkstore.InputError:
        store_accepts = False
    try:
        Link(MID, name)
        link_accepts = True
    except chunkstore.InputError:
        link_accepts = False
    assert link_accepts == store_accepts


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("", "does not start with"),
        ("magnet:?xt=urn:btih:abc", "does not start with"),
        ("CHUNKSTORE:aeaq", "does not start with"),
        (PREFIX, "too short"),
        (PREFIX + "aeaq", "too short"),
        (PREFIX + "a", "cut short"),
        (PREFIX + "aeaqAEAQ", "lowercase"),
        (PREFIX + "aea=", "unexpected characters"),
        (PREFIX + "aea q", "unexpected characters"),
        (PREFIX + "aeaq\n", "unexpected characters"),
        (PREFIX + "a" * (MAX_LINK_CHARS), "longer than"),
        (PREFIX + "é", "unexpected characters"),
    ],
)
def test_hostile_tokens(token: str, words: str) -> None:
    assert words in decode_error(token)


def test_damaged_and_cut_links_are_told_apart() -> None:
    token = Link(MID, "f.bin", (LOCAL,)).encode()
    flipped = token[:20] + ("b" if token[20] != "b" else "c") + token[21:]
    assert "copy it again" in decode_error(flipped)
    text = token[len(PREFIX) :].upper()
    payload = base64.b32decode(text + "=" * (-len(text) % 8))
    cut = PREFIX + base64.b32encode(payload[:-1]).decode().rstrip("=").lower()
    assert "copy it again" in decode_error(cut)  # a whole byte lost
    assert decode_error(token[:-1]) and decode_error(token + "a")  # a character lost or added


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (body_of(version=0), "version 0 link"),
        (body_of(version=2), "newer chunkstore"),
        (body_of()[:20], "ends inside the manifest id"),
        (body_of(name=b"")[:33], "ends inside the name length"),
        (bytes([1]) + MID + bytes([9]) + b"abc", "ends inside the name"),
        (body_of(name=b"\xff\xfe"), "not UTF-8"),
        (body_of(name=b"a\x1bb"), "printable"),
        (body_of(addresses=[v4(127, 0, 0, i, 1, 1) for i in range(1, 6)]), "5 addresses"),
        (body_of(addresses=[v4(127, 0, 0, 1, 1, 1)] * 2), "twice"),
        (body_of(addresses=[v4(127, 0, 0, 1, 0, 1)]), "DHT port"),
        (body_of(addresses=[v4(127, 0, 0, 1, 1, 0)]), "transfer port"),
        (body_of(addresses=[bytes([5]) + bytes(8)]), "address family 5"),
        (body_of(addresses=[v4(127, 0, 0, 1, 1, 1)[:6]]), "ends inside the address"),
        (
            body_of(addresses=[bytes([6]) + bytes(10) + b"\xff\xff\x7f\x00\x00\x01" + bytes(4)]),
            "IPv4 address written as IPv6",
        ),
        (body_of()[:-1] + b"", "ends inside the address"),
        (body_of(fields=b"\x01\x00"), "tag 1"),
        (body_of(fields=b"\x81"), "ends inside the field length"),
        (body_of(fields=b"\x81\x05ab"), "ends inside the field"),
        (body_of(fields=b"\x82\x00\x81\x00"), "out of order"),
        (body_of(fields=b"\x82\x00\x82\x00"), "out of order"),
        (body_of(fields=b"\x81\x05abcde"), "publisher key is not 32 bytes"),
    ],
)
def test_hostile_payloads(body: bytes, words: str) -> None:
    assert words in decode_error(token_of(body))


def test_optional_fields_of_later_versions_are_skipped() -> None:
    fields = bytes([OPTIONAL_TAG | 2, 32]) + b"k" * 32 + bytes([0xFF, 0])
    link = Link.decode(token_of(body_of(fields=fields)))
    assert link == Link(MID, "f.bin", (LOCAL,))


def test_the_publisher_key_travels_in_a_link() -> None:
    link = Link(MID, "f.bin", (LOCAL,), b"p" * 32)
    assert Link.decode(link.encode()) == link
    later = bytes([OPTIONAL_TAG | 1, 32]) + b"p" * 32 + bytes([0xFF, 0])  # and a later field
    assert Link.decode(token_of(body_of(fields=later))).publisher == b"p" * 32
    with pytest.raises(chunkstore.InputError, match="32 bytes"):
        Link(MID, "f.bin", publisher=b"short")


def test_random_garbage_never_escapes_as_anything_but_input_error() -> None:
    """Random tokens, random checksummed payloads, and valid payloads cut, grown and
    mutated: decoding either fails with InputError or gives a link that encodes back to
    the same token, less the optional fields it skipped (a fixed seed, so a failure can be
    replayed). Random bytes may form addresses outside 127.0.0.0/8 here: they stay in
    memory, never reach a socket."""
    rng = random.Random(8)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    valid = [
        body_of(),
        body_of(name="é".encode() * 40, addresses=[v4(127, 0, 0, i, i, i) for i in (1, 2, 3)]),
        body_of(name=b"", addresses=[]),
    ]
    decoded = 0
    for i in range(20_000):
        kind = i % 4
        if kind == 0:
            token = PREFIX + "".join(rng.choice(alphabet) for _ in range(rng.randrange(120)))
        elif kind == 1:
            token = token_of(bytes([1]) + rng.randbytes(rng.randrange(200)))
        elif kind == 2:
            body = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            token = token_of(bytes(body))
        else:
            body = rng.choice(valid)
            cut = rng.randrange(len(body) + 1)
            token = token_of(body[:cut] + rng.randbytes(rng.randrange(4)))
        try:
            link = Link.decode(token)
        except chunkstore.InputError:
            continue
        decoded += 1
        assert Link.decode(link.encode()) == link
        assert link.encode() == token or len(token) > len(link.encode())  # optional fields
        assert len(link.addresses) <= MAX_ADDRESSES
    assert decoded  # the mutations reach past the checks, not only into them


# -- the library ------------------------------------------------------------------------------


def test_add_and_link_without_a_node(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = write_file(tmp_path / "f.bin", MIB, seed=4)
    added = chunkstore.add(src, home=home, name="shared.bin")
    link = Link.decode(added.link)
    publisher = parse_key(chunkstore.key(home=home))
    assert link == Link(bytes.fromhex(added.manifest_id), "shared.bin", publisher=publisher)
    assert chunkstore.link("shared.bin", home=home) == added.link
    assert chunkstore.link(added.manifest_id, home=home) == added.link  # an id finds the name
    assert "no node serves" in chunkstore.link_note(home=home)
    with pytest.raises(chunkstore.NotFound):
        chunkstore.link("unknown", home=home)


def test_get_by_link_from_the_local_store_names_the_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = write_file(tmp_path / "f.bin", MIB, seed=5)
    added = chunkstore.add(src, home=home, name="first")
    token = Link(bytes.fromhex(added.manifest_id), "second").encode()
    got = chunkstore.get(token, tmp_path / "out", home=home)
    assert got.name == "second" and got.chunks_fetched == 0
    assert file_hash(tmp_path / "out") == file_hash(src)
    assert {f.name for f in chunkstore.ls(home=home)} == {"first", "second"}


def test_a_link_pins_its_name_to_its_publisher_and_never_makes_it_ours(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = write_file(tmp_path / "f.bin", 100_000, seed=6)
    mid = bytes.fromhex(chunkstore.add(src, home=home, name="mine").manifest_id)
    someone = b"s" * 32
    chunkstore.get(Link(mid, "theirs", publisher=someone).encode(), tmp_path / "a", home=home)
    chunkstore.get(Link(mid, "anonymous").encode(), tmp_path / "b", home=home)
    with chunkstore.Store(home) as store:
        assert store.pinned_publisher("theirs") == someone
        assert store.pinned_publisher("anonymous") == b""  # no publisher known: local only
        assert [name for name, _ in store.own_records()] == ["mine"]
        assert store.unpinned_names() == ["mine"]
    # a link to a name this home publishes leaves that name alone
    other = write_file(tmp_path / "g.bin", 100_000, seed=7)
    other_id = bytes.fromhex(chunkstore.add(other, home=home, name="g").manifest_id)
    chunkstore.get(Link(other_id, "mine", publisher=someone).encode(), tmp_path / "c", home=home)
    assert chunkstore.stat("mine", home=home).manifest_id == mid.hex()


def test_get_by_link_with_no_way_to_the_network(tmp_path: Path) -> None:
    token = Link(MID, "f.bin").encode()
    with pytest.raises(chunkstore.NoNetwork, match="carries no address"):
        chunkstore.get(token, tmp_path / "out", home=tmp_path / "empty")
    with pytest.raises(chunkstore.InputError, match="copy it again"):
        chunkstore.get(token[:-8], tmp_path / "out", home=tmp_path / "empty")
    assert not (tmp_path / "out").exists()


# -- the CLI ----------------------------------------------------------------------------------


def run_in(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`chunkstore ARGS` run in `cwd` with exactly those arguments (no --home added)."""
    return subprocess.run(
        [sys.executable, "-m", "chunkstore_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("garbage", "words"),
    [
        ("chunkstore:not-a-link", "unexpected characters"),
        ("chunkstore:" + "a" * 60, "copy it again"),
        ("chunkstore:ZZZ", "lowercase"),
    ],
)
def test_garbage_link_gives_a_one_line_error(tmp_path: Path, garbage: str, words: str) -> None:
    proc = run_in(tmp_path, "get", garbage, "--home", str(tmp_path / "empty"))
    assert words in one_line_error(proc)
    assert list(tmp_path.iterdir()) == []  # no output, not even an empty home


def test_link_command_errors(tmp_path: Path) -> None:
    assert "nope" in one_line_error(run_in(tmp_path, "link", "nope", "--home", str(tmp_path)))


@pytest.mark.slow
def test_link_whose_addresses_are_all_unreachable(tmp_path: Path) -> None:
    port = port_free_for_tcp_and_udp()
    token = Link(MID, "f.bin", (LinkAddress("127.0.0.1", port, port),)).encode()
    proc = run_in(tmp_path, "get", token, "--home", str(tmp_path / "empty"), "--wait", "1")
    line = one_line_error(proc)
    assert "none of the link's addresses answered" in line and f"127.0.0.1:{port}" in line
    assert not (tmp_path / "f.bin").exists()


def add_json(home: Path, src: Path) -> dict:
    proc = run_cli("add", str(src), "--json", home=home, check=True)
    return json.loads(proc.stdout)


def assert_fetched_from_empty_home(work: Path, token: str, src: Path) -> dict:
    """`chunkstore get LINK --home EMPTY` in `work`, no other flag: the file appears under
    the link's name, byte-identical, and the empty home names it too."""
    work.mkdir()
    empty = work.parent / f"{work.name}-home"
    proc = run_in(work, "get", token, "--home", str(empty), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    name = Link.decode(token).name
    assert [p.name for p in work.iterdir()] == [name]
    assert file_hash(work / name) == file_hash(src)
    assert got["name"] == name and got["chunks_fetched"] == got["chunks"]
    listed = json.loads(run_cli("ls", "--json", home=empty, check=True).stdout)
    assert [(f["name"], f["manifest_id"]) for f in listed] == [(name, got["manifest_id"])]
    return got


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_link_from_add_is_used_from_an_empty_home_with_no_flags(tmp_path: Path) -> None:
    src = write_file(tmp_path / "movie.bin", 6 * MIB, seed=6)
    with LocalSwarm(2, root=tmp_path / "swarm") as swarm:
        a, b = swarm.nodes
        added = add_json(a.home, src)
        link = Link.decode(added["link"])
        assert link.manifest_id.hex() == added["manifest_id"] and link.name == "movie.bin"
        assert link.addresses == (LinkAddress("127.0.0.1", a.info.dht_port, a.info.transfer_port),)
        shown = run_cli("link", "movie.bin", home=a.home, check=True).stdout.decode()
        assert shown.splitlines()[0] == added["link"]
        # A announces in a background loop: wait until the DHT (asked through B) lists a
        # holder, so that this get exercises the DHT path as well as the link's own holder
        # (the next test covers a get before any announcement).
        wait_until(
            lambda: (
                "127.0.0.1:"
                in run_cli("providers", added["manifest_id"], home=b.home).stdout.decode()
            ),
            "the DHT to list a holder of the file",
            timeout=20,
            interval=0.2,
        )
        got = assert_fetched_from_empty_home(tmp_path / "work", added["link"], src)
        assert got["sources"] and set(got["sources"]) <= {a.transfer_address}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_link_works_before_the_dht_has_learnt_of_the_file(tmp_path: Path) -> None:
    """No wait for announcements (deliberately): the link names its holder's transfer port,
    which the get asks directly while the DHT may not know the file yet."""
    src = write_file(tmp_path / "fresh.bin", 3 * MIB, seed=7)
    with LocalSwarm(1, root=tmp_path / "swarm") as swarm:
        (a,) = swarm.nodes
        added = add_json(a.home, src)
        got = assert_fetched_from_empty_home(tmp_path / "work", added["link"], src)
        assert set(got["sources"]) == {a.transfer_address}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_wildcard_node_alone_makes_links_without_address_until_a_peer_tells_it(
    tmp_path: Path,
) -> None:
    src = write_file(tmp_path / "late.bin", 2 * MIB, seed=8)
    with contextlib.closing(LocalSwarm(0, root=tmp_path / "swarm")) as swarm:
        a = swarm.start_node(host="0.0.0.0")  # listening on every interface, as by default
        proc = run_cli("add", str(src), "--json", home=a.home, check=True)
        added = json.loads(proc.stdout)
        assert Link.decode(added["link"]).addresses == ()
        notes = [line for line in proc.stderr.decode().splitlines() if line.strip()]
        assert len(notes) == 1 and notes[0].startswith("note: ") and "no address" in notes[0]

        swarm.start_node([a.dht_address])  # a peer (contacting A at 127.0.0.1) joins
        # A learns its address from the peer: its queued announcement, retried once a contact
        # joins, asks the peer what address it sees A at.

        def link_with_address() -> str:
            token = json.loads(run_cli("link", "late.bin", "--json", home=a.home).stdout)["link"]
            return token if Link.decode(token).addresses else ""

        token = wait_until(link_with_address, "A to learn its address", timeout=20, interval=0.2)
        assert Link.decode(token).addresses[0].host == "127.0.0.1"
        assert_fetched_from_empty_home(tmp_path / "work", token, src)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_link_used_where_a_node_of_another_swarm_serves_the_home(tmp_path: Path) -> None:
    """The receiver's own node answers its lookups (and knows nothing of the file): the
    link's holder, asked directly, is what makes the get work."""
    src = write_file(tmp_path / "across.bin", 2 * MIB, seed=10)
    with (
        LocalSwarm(1, root=tmp_path / "publisher") as publisher,
        LocalSwarm(1, root=tmp_path / "receiver") as receiver,
    ):
        added = add_json(publisher.nodes[0].home, src)
        work = tmp_path / "work"
        work.mkdir()
        proc = run_in(work, "get", added["link"], "--home", str(receiver.nodes[0].home))
        assert proc.returncode == 0, proc.stderr
        assert file_hash(work / "across.bin") == file_hash(src)
