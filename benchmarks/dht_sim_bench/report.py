"""A simulation's report for people: a markdown table, the JSON, and a plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    ann = report["announce"]
    before, after = report["lookups"]["before"], report["lookups"]["after"]
    mode = (
        f"{cfg['churn']:.0%} of the nodes stop at once"
        if cfg["churn_mode"] == "stop"
        else f"Weibull sessions (shape {cfg['shape']:g}), {cfg['churn']:.0%} gone at T"
    )
    lookups = "–" if ann["lookups"] is None else str(ann["lookups"])
    lines = [
        f"**DHT simulator**: {cfg['nodes']} nodes in {cfg['processes']} process(es), "
        f"{cfg['keys']} keys announced by one node (`{ann['method']}`, "
        f"{'batched by region' if ann.get('batched') else 'one lookup per key'}), {cfg['lookups']} "
        f"lookups before and after churn ({mode}), seed {cfg['seed']}",
        "",
        "| announce | figure |",
        "|---|---:|",
        f"| UDP datagrams sent by the announcer per key | {ann['datagrams_per_key']:.2f} |",
        f"| UDP datagrams sent by all nodes per key (answers included) | "
        f"{ann['datagrams_all_nodes_per_key']:.2f} |",
        f"| lookups per announce round ({cfg['keys']} keys) | {lookups} |",
        f"| keys accepted by at least one node | {ann['accepted']} of {cfg['keys']} |",
        f"| of each key's 20 closest nodes (brute force), share keeping its record | "
        f"{ann['placement']['mean_fraction_of_k_closest']:.1%} (min "
        f"{ann['placement']['min_fraction_of_k_closest']:.0%}) |",
        f"| announce time, s | {ann['seconds']:.1f} |",
        "",
        "| lookups | success | p50 s | p95 s | p99 s | max s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, st in (("before churn", before), ("after churn", after)):
        lines.append(
            f"| {label} ({st['count']}) | {st['success']:.1%} | {_s(st['p50_s'])} | "
            f"{_s(st['p95_s'])} | {_s(st['p99_s'])} | {_s(st['max_s'])} |"
        )
    sweeps = report.get("sweeps", {})
    if sweeps:
        lines += [
            "",
            f"| one node looks up all {cfg['keys']} keys, as a download its chunks "
            "| found | seconds | datagrams sent per key |",
            "|---|---:|---:|---:|",
        ]
        for label, key in (("before churn", "before"), ("after churn", "after")):
            sw = sweeps.get(key)
            if sw is not None:
                lines.append(
                    f"| {label} | {sw['found']}/{sw['keys']} | {sw['seconds']:.1f} | "
                    f"{sw['datagrams_per_key']:.1f} |"
                )
    lines += [
        "",
        "| time (T) | nodes gone | keys findable |",
        "|---:|---:|---:|",
    ]
    for row in report["survival"]:
        lines.append(
            f"| {row['t']:g} | {row['gone']:.0%} | {row['fraction']:.1%} "
            f"({row['found']}/{row['asked']}) |"
        )
    lines += ["", "| goal | measured | target | met |", "|---|---:|---:|---|"]
    for g in report["goals"]:
        m = g["measured"]
        shown = "–" if m is None else (f"{m:.1%}" if "success" in g["goal"] else f"{m:.2f}")
        lines.append(f"| {g['goal']} | {shown} | {g['target']} | {'yes' if g['met'] else 'no'} |")
    lines += [
        "",
        f"Joined in {report['join_seconds']:.1f} s; whole run {report['wall_seconds']:.1f} s; "
        f"peak RSS {report['peak_rss_mib']['controller']:.0f} MiB (controller), "
        f"{report['peak_rss_mib']['shards_max']:.0f} MiB (largest shard process).",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Lookup latency (CDF, before and after churn) and record survival over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report["config"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    for label, key in (("before churn", "before"), ("after churn", "after")):
        st = report["lookups"][key]
        lat = sorted(st["latencies_s"])
        ys = [(i + 1) / len(lat) for i in range(len(lat))]
        left.step(lat, ys, where="post", label=f"{label}: {st['success']:.1%} found")
    left.set_xscale("log")
    left.set_xlabel("lookup time, s (log)")
    left.set_ylabel("fraction of lookups")
    left.set_title("Provider lookups")
    left.grid(alpha=0.3)
    left.legend(loc="lower right", fontsize=8)

    rows = report["survival"]
    ts = [r["t"] for r in rows]
    right.plot(ts, [r["fraction"] for r in rows], "o-", label="keys findable")
    right.plot(ts, [1 - r["gone"] for r in rows], "s--", label="nodes still up")
    right.set_xscale("symlog", linthresh=1.0)
    right.set_ylim(0, 1.05)
    right.set_xlabel("time, units of T (no re-announce)")
    right.set_title("Record survival under churn")
    right.grid(alpha=0.3)
    right.legend(loc="lower left", fontsize=8)
    fig.suptitle(
        f"{cfg['nodes']} nodes, {cfg['keys']} keys, churn {cfg['churn_mode']} "
        f"{cfg['churn']:.0%} at T, {report['announce']['datagrams_per_key']:.1f} datagrams/key",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out: Path, stem: str = "dht_sim") -> list[Path]:
    """Write STEM.json, STEM.md and STEM.png under `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    for path, write in (
        (paths[0], lambda p: p.write_text(json.dumps(report, indent=1) + "\n")),
        (paths[1], lambda p: p.write_text(render_markdown(report))),
        (paths[2], lambda p: plot(report, p)),
    ):
        partial = path.with_name(path.name + ".partial" + path.suffix)
        write(partial)
        os.replace(partial, path)
    return paths
