"""Smoke tests of the swarm benchmark (benchmarks/swarm_bench): a tiny run completes, every
download is byte-identical, and nothing it started is left behind. Never a timing.

The aria2c rows run only where aria2c and nginx are installed (Debian: aria2, nginx-light),
the libtorrent rows where `import libtorrent` works (the test extra installs it); the netns
run only as root with `ip` and `tc` (iproute2), else it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from benchmarks import swarm as swarm_cli
from benchmarks.swarm_bench.errors import BenchUnavailable
from benchmarks.swarm_bench.models import (
    ARIA2C,
    CHUNKSTORE,
    FIRST_BYTE,
    FIRST_BYTE_GOAL,
    LIBTORRENT,
    LOCAL,
    MIXED,
    RANDOM,
    VIA_BOOTSTRAP,
    BenchConfig,
)
from benchmarks.swarm_bench.report import render_markdown, write_outputs
from benchmarks.swarm_bench.runner import run_bench
from benchmarks.swarm_bench.tools import have_aria2c
from benchmarks.swarm_bench.torrent import libtorrent_version

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MIB = 1024 * 1024


def children() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True)}


def test_tiny_loopback_run_is_complete_and_byte_identical(tmp_path: Path) -> None:
    aria = have_aria2c()
    torrent = libtorrent_version() is not None
    before = children()
    config = BenchConfig(
        size=8 * MIB,
        holders=(1, 2),
        rate=20e6,
        repeat=1,
        contents=(MIXED,),
        uncapped_holders=(1,),
        aria2c=aria,
        libtorrent=torrent,
        workdir=tmp_path,
    )
    lines: list[str] = []
    result = run_bench(config, lines.append)

    measured = {(m.tool, m.capped, m.holders) for m in result.measurements}
    expected = {
        (CHUNKSTORE, True, 1),
        (CHUNKSTORE, True, 2),
        (CHUNKSTORE, False, 1),
        (LOCAL, False, 0),
    }
    for tool, present in ((ARIA2C, aria), (LIBTORRENT, torrent)):
        if present:
            expected |= {(tool, True, 1), (tool, True, 2), (tool, False, 1)}
    assert measured == expected, lines
    assert all(m.identical for m in result.measurements)
    two = next(m for m in result.measurements if m.tool == CHUNKSTORE and m.holders == 2)
    assert len(two.sources) == 2 and sum(two.sources.values()) == config.size
    for m in result.measurements:
        if m.tool == LIBTORRENT:  # the seeders sent at least the whole file between them
            assert len(m.sources) == m.holders and m.wire_bytes >= config.size, m.sources
            assert m.first_byte_s is not None
            assert m.peers_cpu_s > 0
    assert list(tmp_path.iterdir()) == []  # the run's temporary directory is gone
    assert children() <= before  # every node, nginx and aria2c it started has exited

    # Time to first byte and the phases of every chunkstore get, from its `get --json`
    gets = [m for m in result.measurements if m.tool == CHUNKSTORE]
    for m in gets:
        assert m.first_byte_s is not None and 0 <= m.first_byte_s <= m.inner_s
        assert {"name", "manifest", "first_chunk", "done"} <= set(m.phases)

    markdown = render_markdown(result)
    assert "| 2 | 40 |" in markdown
    assert "first byte s (mixed)" in markdown  # a column of the capped and uncapped tables
    assert "**Phases of `chunkstore get`**" in markdown
    assert "**CPU seconds per GiB of file**" in markdown
    if torrent:
        assert "chunkstore/libtorrent (mixed)" in markdown
    plot = importlib.util.find_spec("matplotlib") is not None
    paths = write_outputs(result, tmp_path / "out", plot=plot)
    data = json.loads(paths["json"].read_text())
    assert len(data["measurements"]) == len(expected)
    for m in data["measurements"]:
        assert "first_byte_s" in m and "phases" in m
        if m["tool"] == CHUNKSTORE:
            assert m["first_byte_s"] is not None
    assert all("first_byte_s" in p for p in data["points"])
    for p in data["points"]:  # CPU per GiB of file on each side
        assert p["cpu_per_gib"] > 0
        assert p["node_cpu_per_gib"] >= 0 and p["peers_cpu_per_gib"] >= 0
    if plot:
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"),
    reason="netns mode needs root, ip and tc",
)
def test_tiny_netns_run_cleans_up_its_namespaces(tmp_path: Path) -> None:
    before = children()
    config = BenchConfig(
        size=4 * MIB,
        holders=(1, 2),
        rate=50e6,
        repeat=1,
        contents=(RANDOM,),
        aria2c=have_aria2c(),
        netns=True,
        workdir=tmp_path,
    )
    try:
        result = run_bench(config)
    except BenchUnavailable as e:
        pytest.skip(f"netns mode unavailable here: {e}")
    finally:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"csb{os.getpid()}-" not in names
    assert {m.holders for m in result.measurements if m.tool == CHUNKSTORE} == {1, 2}
    assert all(m.identical for m in result.measurements)
    if libtorrent_version() is not None:  # seeders in the holders' namespaces too
        assert {m.holders for m in result.measurements if m.tool == LIBTORRENT} == {1, 2}
    for m in result.measurements:
        if m.tool in (CHUNKSTORE, LIBTORRENT):
            assert all(a.startswith("10.213.0.") for a in m.sources), m.sources
    assert list(tmp_path.iterdir()) == []
    assert children() <= before


def test_first_byte_preset_via_bootstrap_with_departed_nodes(tmp_path: Path) -> None:
    # The --first-byte check as a fresh machine runs it (`get --bootstrap`, no node), in a
    # swarm that keeps the contact of a node that left; tiny, so it only shows it works.
    before = children()
    args = swarm_cli.parse_args(
        ["--first-byte", "--size", "2MiB", "--holders", "1,4", "--repeat", "1"]
        + ["--content", "random", "--via", "bootstrap", "--departed", "1"]
    )
    assert (
        args.rate,
        args.uncapped_holders,
        args.no_aria2c,
        args.no_libtorrent,
        args.no_local,
    ) == (8e6, (), True, True, True)
    config = BenchConfig(
        size=args.size,
        holders=args.holders,
        rate=args.rate,
        repeat=1,
        contents=(RANDOM,),
        uncapped_holders=args.uncapped_holders,
        aria2c=False,
        libtorrent=False,
        local_get=False,
        workdir=tmp_path,
        via=VIA_BOOTSTRAP,
        departed=1,
        ratio_goal=FIRST_BYTE_GOAL,
        preset=FIRST_BYTE,
    )
    result = run_bench(config)
    assert {(m.tool, m.holders) for m in result.measurements} == {(CHUNKSTORE, 1), (CHUNKSTORE, 4)}
    assert all(m.identical and m.first_byte_s is not None for m in result.measurements)
    assert all(m.node_cpu_s == 0 for m in result.measurements)  # no fetcher node: none ran
    [ratio] = [t for t in result.targets() if t.name.startswith("4 holders / 1 holder")]
    assert ratio.goal == FIRST_BYTE_GOAL and "first byte" in ratio.detail
    paths = write_outputs(result, tmp_path / "out", plot=False)
    assert paths["json"].name == "swarm-first-byte-bootstrap.json"
    assert "departed" in render_markdown(result)
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]
    assert children() <= before
