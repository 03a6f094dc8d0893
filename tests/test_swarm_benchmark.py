"""Smoke tests of the swarm benchmark (benchmarks/swarm_bench): a tiny run completes, every
download is byte-identical, and nothing it started is left behind. Never a timing.

The aria2c rows run only where aria2c and nginx are installed (Debian: aria2, nginx-light);
the netns run only as root with `ip` and `tc` (iproute2), else it is skipped.
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

from benchmarks.swarm_bench.errors import BenchUnavailable
from benchmarks.swarm_bench.models import ARIA2C, CHUNKSTORE, LOCAL, MIXED, RANDOM, BenchConfig
from benchmarks.swarm_bench.report import render_markdown, write_outputs
from benchmarks.swarm_bench.runner import run_bench
from benchmarks.swarm_bench.tools import have_aria2c

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MIB = 1024 * 1024


def children() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True)}


def test_tiny_loopback_run_is_complete_and_byte_identical(tmp_path: Path) -> None:
    aria = have_aria2c()
    before = children()
    config = BenchConfig(
        size=8 * MIB,
        holders=(1, 2),
        rate=20e6,
        repeat=1,
        contents=(MIXED,),
        uncapped_holders=(1,),
        aria2c=aria,
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
    if aria:
        expected |= {(ARIA2C, True, 1), (ARIA2C, True, 2), (ARIA2C, False, 1)}
    assert measured == expected, lines
    assert all(m.identical for m in result.measurements)
    two = next(m for m in result.measurements if m.tool == CHUNKSTORE and m.holders == 2)
    assert len(two.sources) == 2 and sum(two.sources.values()) == config.size
    assert list(tmp_path.iterdir()) == []  # the run's temporary directory is gone
    assert children() <= before  # every node, nginx and aria2c it started has exited

    markdown = render_markdown(result)
    assert "| 2 | 40 |" in markdown
    plot = importlib.util.find_spec("matplotlib") is not None
    paths = write_outputs(result, tmp_path / "out", plot=plot)
    data = json.loads(paths["json"].read_text())
    assert len(data["measurements"]) == len(expected)
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
    for m in result.measurements:
        if m.tool == CHUNKSTORE:
            assert all(a.startswith("10.213.0.") for a in m.sources), m.sources
    assert list(tmp_path.iterdir()) == []
    assert children() <= before
