"""What a run found, for people: markdown tables (capped, uncapped, where the CPU goes, the
targets, the notes), a matplotlib plot, and the files `write_outputs` puts them in."""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks.common import MB, MIXED, RANDOM, format_size
from benchmarks.swarm_bench.models import (
    ARIA2C,
    CHUNKSTORE,
    LOCAL,
    VIA_BOOTSTRAP,
    BenchResult,
    Point,
    phase_names,
)


def _cell(p: Point | None) -> str:
    if p is None:
        return "–"
    return f"{p.median:.1f} ({p.low:.0f}–{p.high:.0f})" if p.runs > 1 else f"{p.median:.1f}"


def _ratio(a: Point | None, b: Point | None) -> str:
    return f"{a.median / b.median:.2f}x" if a and b else "–"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _first_byte(p: Point | None) -> str:
    return _seconds(p.first_byte_s if p else None)


def _phase_table(result: BenchResult) -> list[str]:
    """When each phase of `chunkstore get` ended (median seconds since the library call),
    per point, with the wall time outside the call (start-up, imports, exit)."""
    points = sorted(
        (p for p in result.points() if p.tool == CHUNKSTORE and p.phases),
        key=lambda p: (not p.capped, p.content, p.holders),
    )
    if not points:
        return []
    names = phase_names([p.phases for p in points])
    lines = [
        "",
        "**Phases of `chunkstore get`**: median seconds since the library call at which each "
        "ended (`get --json` phases; chunk_holders runs alongside the transfers), and the wall "
        "time outside the call (process start-up, imports, exit)",
        "",
        "| file | cap | holders | wall s | outside the call | " + " | ".join(names) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(names),
    ]
    for p in points:
        cells = [_seconds(p.phases.get(n)) for n in names]
        lines.append(
            f"| {p.content} | {'capped' if p.capped else 'none'} | {p.holders} | "
            f"{p.wall_s:.2f} | {p.outside_s:.2f} | " + " | ".join(cells) + " |"
        )
    return lines


def render_markdown(result: BenchResult) -> str:
    """The result as markdown: capped and uncapped tables, the targets, and the notes."""
    cfg = result.config
    contents = cfg.contents
    aria_c = contents[0]
    has_aria = any(m.tool == ARIA2C for m in result.measurements)
    mode = "netns, shaped links" if cfg.netns else "loopback"
    if cfg.via == VIA_BOOTSTRAP:
        mode += ", gets via --bootstrap"
    if cfg.departed:
        mode += f", {cfg.departed} departed node(s)"
    lines = [
        f"**Capped ({mode}): {cfg.rate / MB:g} MB/s per holder / mirror**, "
        f"{format_size(cfg.size)} file, MB/s of file bytes, median (min–max) of "
        f"{cfg.repeat}",
        "",
    ]
    header = ["holders", "ideal H×R"] + [f"chunkstore, {c} file" for c in contents]
    header += [f"first byte s ({c})" for c in contents]
    if has_aria:
        header += ["aria2c"] + [f"chunkstore/aria2c ({c})" for c in contents]
    lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for h in cfg.holders:
        row = [str(h), f"{h * cfg.rate / MB:.0f}"]
        row += [_cell(result.point(CHUNKSTORE, c, True, h)) for c in contents]
        row += [_first_byte(result.point(CHUNKSTORE, c, True, h)) for c in contents]
        if has_aria:
            ar = result.point(ARIA2C, aria_c, True, h)
            row += [_cell(ar)] + [
                _ratio(result.point(CHUNKSTORE, c, True, h), ar) for c in contents
            ]
        lines.append("| " + " | ".join(row) + " |")
    uncapped = [p for p in result.points() if not p.capped]
    if uncapped:
        lines += ["", f"**Uncapped (loopback, CPU-bound on {os.cpu_count()} cores)**", ""]
        header = ["holders"] + [f"chunkstore, {c} file" for c in contents]
        header += [f"first byte s ({c})" for c in contents]
        if has_aria:
            header += ["aria2c"] + [f"chunkstore/aria2c ({c})" for c in contents]
        lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        for h in cfg.uncapped_holders:
            row = [str(h)] + [_cell(result.point(CHUNKSTORE, c, False, h)) for c in contents]
            row += [_first_byte(result.point(CHUNKSTORE, c, False, h)) for c in contents]
            if has_aria:
                ar = result.point(ARIA2C, aria_c, False, h)
                row += [_cell(ar)] + [
                    _ratio(result.point(CHUNKSTORE, c, False, h), ar) for c in contents
                ]
            lines.append("| " + " | ".join(row) + " |")
        if any(p.tool == LOCAL for p in uncapped):
            row = ["local get (ceiling)"] + [
                _cell(result.point(LOCAL, c, False, 0)) for c in contents
            ]
            row += ["–"] * (len(header) - len(row))
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"**Where the CPU goes**: median CPU seconds per download "
        f"({os.cpu_count()} cores: at most {os.cpu_count()} CPU-s per wall second)",
        "",
        "| tool | file | cap | holders | wall s | downloader | holders / mirrors "
        "| fetcher node | CPU / wall |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = {CHUNKSTORE: 0, ARIA2C: 1, LOCAL: 2}
    for p in sorted(
        result.points(), key=lambda p: (not p.capped, order[p.tool], p.content, p.holders)
    ):
        total = p.cpu_s + p.peers_cpu_s + p.node_cpu_s
        lines.append(
            f"| {p.tool} | {p.content if p.tool != ARIA2C else 'any'} | "
            f"{'capped' if p.capped else 'none'} | {p.holders or '–'} | "
            f"{p.wall_s:.2f} | {p.cpu_s:.2f} | "
            f"{p.peers_cpu_s:.2f} | {p.node_cpu_s:.2f} | {total / p.wall_s:.2f} |"
        )
    lines += _phase_table(result)
    targets = result.targets()
    if targets:
        lines += ["", "| target | measured | goal | |", "|---|---:|---:|---|"]
        for t in targets:
            rss = t.name.startswith("peak RSS")
            measured = f"{t.measured:.1f}" if rss else f"{t.measured:.3f}x"
            goal = f"< {t.goal:g}" if rss else f">= {t.goal:g}x"
            lines.append(
                f"| {t.name} ({t.detail}) | {measured} | {goal} | {'met' if t.met else 'missed'} |"
            )
    lines += ["", *[f"- {n}" for n in result.notes]]
    return "\n".join(lines) + "\n"


def write_plot(result: BenchResult, path: Path) -> Path:
    """A PNG (matplotlib, headless). Left: throughput against holders with every tool capped,
    min–max bars, and the ideal H×R line. Right (loopback runs): the uncapped throughputs
    and the local-get ceiling as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    uncapped = [p for p in result.points() if not p.capped]
    fig, axes = plt.subplots(
        1,
        2 if uncapped else 1,
        figsize=(12 if uncapped else 7.5, 5.2),
        dpi=120,
        gridspec_kw={"width_ratios": [3, 2]} if uncapped else None,
        squeeze=False,
    )
    ax = axes[0][0]
    colors = {
        (CHUNKSTORE, MIXED): "tab:blue",
        (CHUNKSTORE, RANDOM): "tab:green",
        (ARIA2C, None): "tab:red",
        (LOCAL, MIXED): "lightsteelblue",
        (LOCAL, RANDOM): "darkseagreen",
    }
    series = [(CHUNKSTORE, c, f"chunkstore, {c} file", "o") for c in cfg.contents]
    series.append((ARIA2C, cfg.contents[0], "aria2c + nginx", "s"))
    xs = list(cfg.holders)
    ax.plot(xs, [h * cfg.rate / MB for h in xs], "k--", lw=1, label="ideal H×R")
    for tool, content, name, marker in series:
        pts = sorted(
            (p for p in result.points() if (p.tool, p.content, p.capped) == (tool, content, True)),
            key=lambda p: p.holders,
        )
        if pts:
            ax.errorbar(
                [p.holders for p in pts],
                [p.median for p in pts],
                yerr=[[p.median - p.low for p in pts], [p.high - p.median for p in pts]],
                color=colors[(tool, None if tool == ARIA2C else content)],
                marker=marker,
                capsize=3,
                label=name,
            )
    how = "links shaped by tc in network namespaces" if cfg.netns else "loopback, cap per process"
    ax.set_title(f"capped at {cfg.rate / MB:g} MB/s per holder ({how})", fontsize=10)
    ax.set_xticks(xs)
    ax.set_xlabel("holders (chunkstore nodes / nginx mirrors)")
    ax.set_ylabel("MB/s of file bytes (10^6 B/s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if uncapped:
        ax = axes[0][1]
        groups = [str(h) for h in cfg.uncapped_holders] + ["local"]
        bars = [(CHUNKSTORE, c, f"chunkstore, {c}") for c in cfg.contents]
        bars.append((ARIA2C, cfg.contents[0], "aria2c + nginx"))
        width = 0.8 / len(bars)
        for i, (tool, content, name) in enumerate(bars):
            heights, lows, highs, at = [], [], [], []
            for g, label in enumerate(groups):
                p = (
                    result.point(LOCAL, content, False, 0)
                    if label == "local"
                    else result.point(tool, content, False, int(label))
                )
                if p is None or (label == "local" and tool == ARIA2C):
                    continue
                at.append(g + (i - (len(bars) - 1) / 2) * width)
                heights.append(p.median)
                lows.append(p.median - p.low)
                highs.append(p.high - p.median)
            color = colors[(tool, None if tool == ARIA2C else content)]
            ax.bar(at, heights, width, yerr=[lows, highs], capsize=3, color=color, label=name)
            for x, h in zip(at, heights, strict=True):
                ax.annotate(
                    f"{h:.0f}",
                    (x, h),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
        ax.set_xticks(
            range(len(groups)),
            [
                f"{g} holder{'s' if g != '1' else ''}" if g != "local" else "local get\n(ceiling)"
                for g in groups
            ],
        )
        ax.set_title("uncapped, loopback (CPU-bound)", fontsize=10)
        ax.set_ylabel("MB/s of file bytes")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"chunkstore get vs aria2c: {format_size(cfg.size)} file, median of "
        f"{cfg.repeat} (bars: min–max)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(result: BenchResult, out_dir: Path, *, plot: bool = True) -> dict[str, Path]:
    """Write STEM.json, STEM.md and (with matplotlib) STEM.png into `out_dir`; STEM is
    `swarm`, with `-PRESET` and `-netns` as the config says (BenchConfig.stem). Returns the
    paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result.config.stem
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(result.to_json(), indent=2) + "\n")
    paths["markdown"].write_text(render_markdown(result))
    if plot:
        paths["png"] = write_plot(result, out_dir / f"{stem}.png")
    return paths
