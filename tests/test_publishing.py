"""Publishing names from a home: the key made at first use, own records signed by `add`
(the next sequence number only when the name moves), published by the home's node and
re-signed on its re-announce timer, never names fetched from others; removal, trust and
the CLI's `key`, `trust`, `untrust`, `rm --unpublish`. In-process nodes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

import chunkstore
from chunkstore.local.add import add_file
from chunkstore.local.identity import IDENTITY_FILE
from chunkstore.local.own_names import read_own_record
from chunkstore.local.store import Store
from chunkstore.objects.name_record import parse_key
from tests.helpers import MIB, file_hash, run_cli, wait_until_async, write_file

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


def own(home: Path, name: str):
    with Store(home) as store:
        return read_own_record(store, name)


def test_add_signs_the_next_sequence_number_only_when_the_name_moves(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = write_file(tmp_path / "a.bin", 100_000, seed=1)
    b = write_file(tmp_path / "b.bin", 100_000, seed=2)
    first = chunkstore.add(a, name="n", home=home)
    record = own(home, "n")
    assert record.manifest_id.hex() == first.manifest_id
    assert record.publisher_text == chunkstore.key(home=home)
    key_file = home / IDENTITY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    chunkstore.add(a, name="n", home=home)  # the same file: the record stands
    assert own(home, "n") == record
    chunkstore.add(b, name="n", home=home)
    moved = own(home, "n")
    assert moved.seq > record.seq and moved.manifest_id != record.manifest_id
    # plain rm: the home stops publishing (records elsewhere expire); --unpublish: a removal
    chunkstore.rm("n", home=home)
    assert own(home, "n") is None
    chunkstore.add(b, name="m", home=home)
    with pytest.raises(chunkstore.InputError, match="not published"):
        chunkstore.rm("n", home=home, unpublish=True)
    result = chunkstore.rm("m", home=home, unpublish=True)
    assert result.unpublished and own(home, "m").removed
    assert chunkstore.ls(home=home) == []


def test_a_node_publishes_its_own_names_only_and_re_signs_them(tmp_path: Path) -> None:
    src = write_file(tmp_path / "f.bin", MIB, seed=3)
    legacy = write_file(tmp_path / "old.bin", 50_000, seed=4)
    publisher_home, fetcher_home = tmp_path / "publisher", tmp_path / "fetcher"
    chunkstore.add(src, name="f.bin", home=publisher_home)
    with Store(publisher_home) as store:
        add_file(store, legacy, name="old.bin")  # as an older chunkstore did: no record

    async def main() -> None:
        async with chunkstore.Node(publisher_home, host=HOST, reannounce_seconds=1) as node:
            key = chunkstore.key(home=publisher_home)
            async with chunkstore.Node(fetcher_home, host=HOST, bootstrap=[node.dht_address]) as f:

                async def found(name: str) -> set[str]:
                    return {r.publisher_text for r in await f.dht.find_name_records(name)}

                await wait_until_async(lambda: found("f.bin"), "the name record")
                assert await found("f.bin") == {key}
                # a name without a record (made by an older version) becomes the home's own
                await wait_until_async(lambda: found("old.bin"), "the adopted name")
                assert await found("old.bin") == {key}
                result = await f.fetch("f.bin", tmp_path / "out.bin")
                assert result.name == "f.bin" and file_hash(tmp_path / "out.bin") == file_hash(src)
                # the fetcher holds the name, pinned to its publisher, and publishes nothing
                assert f.store.own_records() == []
                assert f.store.pinned_publisher("f.bin") == parse_key(key)
                await f.publish_names(force=True)
                assert await found("f.bin") == {key}
                # the publisher re-signs its record once it is older than the interval
                signed = own(publisher_home, "f.bin")
                await asyncio.sleep(1.2)
                await wait_until_async(
                    lambda: own(publisher_home, "f.bin").expires > signed.expires, "a re-sign"
                )
                again = own(publisher_home, "f.bin")
                assert (again.seq, again.manifest_id) == (signed.seq, signed.manifest_id)

    asyncio.run(main())


def test_trusting_a_publisher_decides_a_shared_name(tmp_path: Path) -> None:
    homes = [tmp_path / f"h{i}" for i in range(3)]
    sources = [write_file(tmp_path / f"{i}.bin", 200_000, seed=10 + i) for i in range(2)]
    for home, src in zip(homes, sources, strict=False):
        chunkstore.add(src, name="report.pdf", home=home)
    keys = [chunkstore.key(home=h) for h in homes[:2]]

    async def main() -> None:
        async with RunningNodes(homes[:2]) as (first, second):
            bootstrap = [first.dht_address]
            await second.flush_announcements()
            await first.flush_announcements()
            reader = homes[2]

            async def names_seen() -> int:
                return len(await first.dht.find_name_records("report.pdf"))

            await wait_until_async(lambda: _at_least(names_seen, 2), "both records")
            with pytest.raises(chunkstore.AmbiguousName) as caught:
                await chunkstore.fetch("report.pdf", None, home=reader, bootstrap=bootstrap)
            assert sorted(caught.value.publishers) == sorted(keys)
            assert chunkstore.trust(keys[1], home=reader)
            assert not chunkstore.trust(keys[1], home=reader)  # already
            assert chunkstore.trusted(home=reader) == [keys[1]]
            out = tmp_path / "trusted.bin"
            await chunkstore.fetch("report.pdf", out, home=reader, bootstrap=bootstrap)
            assert file_hash(out) == file_hash(sources[1])
            assert chunkstore.untrust(keys[1], home=reader)
            assert chunkstore.trusted(home=reader) == []
            # the get pinned the name: untrusting changes nothing for it
            await chunkstore.fetch("report.pdf", out, home=reader, bootstrap=bootstrap, force=True)
            assert file_hash(out) == file_hash(sources[1])
            # with no way to the network, a pinned name means the file last fetched under it
            offline = tmp_path / "offline.bin"
            await chunkstore.fetch("report.pdf", offline, home=reader)
            assert file_hash(offline) == file_hash(sources[1])
            # NAME@KEY still reaches the other publisher
            other = tmp_path / "other.bin"
            await chunkstore.fetch(
                f"report.pdf@{keys[0][:12]}", other, home=reader, bootstrap=bootstrap
            )
            assert file_hash(other) == file_hash(sources[0])

    asyncio.run(main())


async def _at_least(count, wanted: int) -> bool:
    return await count() >= wanted


class RunningNodes:
    """Nodes on `homes`, each bootstrapped off the first, stopped on exit."""

    def __init__(self, homes: list[Path]) -> None:
        self.homes = homes
        self.nodes: list[chunkstore.Node] = []

    async def __aenter__(self) -> list[chunkstore.Node]:
        try:
            for home in self.homes:
                bootstrap = [self.nodes[0].dht_address] if self.nodes else []
                node = chunkstore.Node(home, host=HOST, bootstrap=bootstrap)
                await node.start()
                self.nodes.append(node)
        except BaseException:
            await self.__aexit__()
            raise
        return self.nodes

    async def __aexit__(self, *exc: object) -> None:
        for node in reversed(self.nodes):
            await node.stop()


def test_key_trust_and_unpublish_on_the_command_line(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    src = write_file(tmp_path / "f.bin", 10_000)
    key = run_cli("key", home=home, check=True).stdout.decode().strip()
    assert len(key) == 52 and run_cli("key", home=home).stdout.decode().strip() == key
    other_key = run_cli("key", home=other, check=True).stdout.decode().strip()
    assert run_cli("trust", other_key, home=home, check=True).stdout.decode().startswith("trusted")
    assert run_cli("trust", home=home, check=True).stdout.decode().split() == [other_key]
    assert b"was not trusted" in run_cli("untrust", key, home=home, check=True).stdout
    run_cli("untrust", other_key, home=home, check=True)
    bad = run_cli("trust", "not-a-key", home=home)
    assert bad.returncode != 0 and b"not a publisher key" in bad.stderr
    assert b"Traceback" not in bad.stderr
    run_cli("add", str(src), "--name", "f.bin", home=home, check=True)
    proc = run_cli("rm", "f.bin", "--unpublish", home=home, check=True)
    assert b"unpublished" in proc.stdout
    assert own(home, "f.bin").removed
    for name, words in (
        ("evil\u202etxt.exe", b"printable"),
        ("a\x85b", b"printable"),
        ("f@abcdefghij", b"NAME@KEY"),
        ("x" * 256, b"255"),
    ):
        proc = run_cli("add", str(src), "--name", name, home=home)
        assert proc.returncode != 0 and words in proc.stderr, (name, proc.stderr)
        assert b"Traceback" not in proc.stderr
