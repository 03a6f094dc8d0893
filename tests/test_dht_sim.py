"""Smoke tests of the DHT simulator (benchmarks/dht_sim.py): a small run gives a complete
report and finds every key before churn; the churn arithmetic; nothing is left behind.
Never a timing."""

from __future__ import annotations

import asyncio
import json
import random

import psutil
import pytest

from benchmarks import dht_sim
from benchmarks.dht_sim_bench.churn import Weibull, departures, due, stop_at_once
from benchmarks.dht_sim_bench.models import WEIBULL, SimConfig, percentile
from benchmarks.dht_sim_bench.report import render_markdown, write_outputs
from benchmarks.dht_sim_bench.runner import run_sim

pytestmark = pytest.mark.timeout(120)

SMALL = SimConfig(
    nodes=40, keys=50, lookups=20, checkpoints=(2.0, 4.0), survival_keys=10, settle_seconds=0.2
)


def children() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True)}


def check_report(report: dict, config: SimConfig) -> None:
    ann = report["announce"]
    assert ann["keys"] == config.keys
    assert ann["accepted"] == config.keys
    assert ann["method"] in ("announce_many", "announce_batched")
    assert ann["datagrams_sent"] > 0 and ann["datagrams_all_nodes"] >= ann["datagrams_sent"]
    assert ann["datagrams_per_key"] == ann["datagrams_sent"] / config.keys
    assert ann["lookups"] >= 1
    before, after = report["lookups"]["before"], report["lookups"]["after"]
    for phase in (before, after):
        assert phase["count"] == config.lookups == len(phase["latencies_s"])
        assert phase["p50_s"] <= phase["p95_s"] <= phase["p99_s"] <= phase["max_s"]
    assert before["succeeded"] == config.lookups  # every key is found before churn
    times = [row["t"] for row in report["survival"]]
    assert times == [0.0, 1.0, *config.checkpoints]
    gone = [row["gone"] for row in report["survival"]]
    assert gone == sorted(gone) and gone[0] == 0.0
    assert abs(gone[1] - config.churn) < 0.1
    assert [g["goal"] for g in report["goals"]][0] == "UDP datagrams sent per announced key"


def test_a_small_run_in_one_process_reports_every_figure(tmp_path):
    report = asyncio.run(run_sim(SMALL))
    check_report(report, SMALL)
    table = render_markdown(report)
    assert "datagrams sent by the announcer per key" in table and "after churn" in table
    paths = write_outputs(report, tmp_path)
    assert json.loads(paths[0].read_text())["config"]["nodes"] == SMALL.nodes
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dht_sim.json",
        "dht_sim.md",
        "dht_sim.png",
    ]


@pytest.mark.slow
def test_a_run_over_two_processes_with_live_weibull_churn_leaves_no_process(tmp_path):
    before = children()
    config = SimConfig(
        nodes=40,
        keys=30,
        lookups=20,
        churn_mode=WEIBULL,
        t_seconds=0.5,
        checkpoints=(2.0,),
        survival_keys=10,
        processes=2,
        settle_seconds=0.2,
    )
    report = asyncio.run(run_sim(config))
    check_report(report, config)
    assert report["config"]["processes"] == 2
    assert children() <= before


def test_the_command_line_refuses_bad_options_in_one_line(capsys, tmp_path):
    assert dht_sim.main(["--churn", "1.5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --churn") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_weibull_scale_puts_the_asked_fraction_gone_at_t():
    dist = Weibull.gone_by(0.4, 1.0, 0.5)
    assert dist.gone(1.0) == pytest.approx(0.4)
    # with shape 0.5: 1 - 0.6 ** sqrt(t)
    assert dist.gone(4.0) == pytest.approx(1 - 0.6**2)
    draws = departures(range(20_000), dist, random.Random(3))
    assert draws == sorted(draws)
    assert due(draws, 0, 1.0) / 20_000 == pytest.approx(0.4, abs=0.02)


def test_stop_mode_stops_the_distribution_s_fraction_at_each_checkpoint():
    dist = Weibull.gone_by(0.4)
    plan = stop_at_once(range(1000), dist, [1.0, 4.0], random.Random(1))
    assert due(plan, 0, 0.99) == 0
    assert due(plan, 0, 1.0) == 400
    assert due(plan, 0, 4.0) == round(dist.gone(4.0) * 1000) == len(plan)
    assert len({node for _, node in plan}) == len(plan)


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None
