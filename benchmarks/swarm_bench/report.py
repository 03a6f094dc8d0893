"""What a run found, for people: markdown tables (capped, uncapped, CPU per GiB on each side,
the phases of the gets, the targets, the notes), a matplotlib plot, and the files
`write_outputs` puts them in."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from benchmarks.common import MB, MIXED, RANDOM, format_size
from benchmarks.swarm_bench.models import (
    ARIA2C,
    CHUNKSTORE,
    LIBTORRENT,
    LOCAL,
    REFERENCES,
    VIA_BOOTSTRAP,
    VIA_NODE,
    BenchConfig,
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


def _references(result: BenchResult) -> list[str]:
    """The reference tools this run measured, in table order."""
    return [t for t in REFERENCES if any(m.tool == t for m in result.measurements)]


def _throughput_table(result: BenchResult, capped: bool) -> list[str]:
    """One row per holder count: chunkstore on each file with its first byte, then each
    reference (measured on the first file) with its first byte where it has one, and the
    ratios chunkstore / reference."""
    cfg = result.config
    contents = cfg.contents
    references = _references(result)
    header = ["holders"] + (["ideal H×R"] if capped else [])
    header += [f"chunkstore, {c} file" for c in contents]
    header += [f"first byte s ({c})" for c in contents]
    for ref in references:
        header += [ref] + ([f"{ref} first piece s"] if ref == LIBTORRENT else [])
        header += [f"chunkstore/{ref} ({c})" for c in contents]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for h in cfg.holders if capped else cfg.uncapped_holders:
        row = [str(h)] + ([f"{h * cfg.rate / MB:.0f}"] if capped else [])
        row += [_cell(result.point(CHUNKSTORE, c, capped, h)) for c in contents]
        row += [_first_byte(result.point(CHUNKSTORE, c, capped, h)) for c in contents]
        for ref in references:
            rp = result.point(ref, contents[0], capped, h)
            row += [_cell(rp)] + ([_first_byte(rp)] if ref == LIBTORRENT else [])
            row += [_ratio(result.point(CHUNKSTORE, c, capped, h), rp) for c in contents]
        lines.append("| " + " | ".join(row) + " |")
    if not capped and any(p.tool == LOCAL for p in result.points()):
        row = ["local get (ceiling)"] + [_cell(result.point(LOCAL, c, False, 0)) for c in contents]
        row += ["–"] * (len(header) - len(row))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _cpu_tables(result: BenchResult) -> list[str]:
    """CPU seconds per GiB of file on each side: a summary per tool (medians over the capped
    and over the uncapped points), then every point."""
    cfg = result.config
    cores = os.cpu_count()
    order = {CHUNKSTORE: 0, ARIA2C: 1, LIBTORRENT: 2, LOCAL: 3}
    points = sorted(
        result.points(), key=lambda p: (not p.capped, order[p.tool], p.content, p.holders)
    )
    lines = [
        "",
        "**CPU seconds per GiB of file**, by side: the downloading process (`chunkstore get`, "
        "aria2c, the libtorrent leecher), the holders together (chunkstore nodes, nginx "
        "mirrors, libtorrent seeders), and the fetcher's node (chunkstore gets through a "
        f"node); medians over the points of each row ({format_size(cfg.size)} file, "
        f"{cores} cores)",
        "",
        "| tool | file | cap | points | downloader | holders / mirrors / seeders "
        "| fetcher node | total |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str, bool], list[Point]] = {}
    for p in points:
        if p.tool != LOCAL:
            groups.setdefault((p.tool, p.content, p.capped), []).append(p)
    for (tool, content, capped), ps in groups.items():
        lines.append(
            f"| {tool} | {_content(tool, content)} | {'capped' if capped else 'none'} | "
            f"{len(ps)} | {_median(ps, 'cpu_per_gib'):.2f} | "
            f"{_median(ps, 'peers_cpu_per_gib'):.2f} | "
            f"{_node(cfg, tool, _median(ps, 'node_cpu_per_gib'))} | "
            f"{_median(ps, 'total_cpu_per_gib'):.2f} |"
        )
    lines += [
        "",
        f"**Where the CPU goes**, per point: median CPU seconds per GiB of file "
        f"({cores} cores: CPU / wall at most {cores})",
        "",
        "| tool | file | cap | holders | wall s | downloader | holders / mirrors / seeders "
        "| fetcher node | total | CPU / wall |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        total_s = p.cpu_s + p.peers_cpu_s + p.node_cpu_s
        lines.append(
            f"| {p.tool} | {_content(p.tool, p.content)} | "
            f"{'capped' if p.capped else 'none'} | {p.holders or '–'} | "
            f"{p.wall_s:.2f} | {p.cpu_per_gib:.2f} | {p.peers_cpu_per_gib:.2f} | "
            f"{_node(cfg, p.tool, p.node_cpu_per_gib)} | {p.total_cpu_per_gib:.2f} | "
            f"{total_s / p.wall_s:.2f} |"
        )
    return lines


def _node(cfg: BenchConfig, tool: str, cpu: float) -> str:
    """The fetcher-node column: only network gets through a node have one."""
    return f"{cpu:.2f}" if tool == CHUNKSTORE and cfg.via == VIA_NODE else "–"


def _content(tool: str, content: str) -> str:
    """The file column: the references never look inside the bytes."""
    return "any" if tool in REFERENCES else content


def _median(points: list[Point], attribute: str) -> float:
    return statistics.median(getattr(p, attribute) for p in points)


def render_markdown(result: BenchResult) -> str:
    """The result as markdown: capped and uncapped tables, CPU per GiB, the phases of the
    gets, the targets, and the notes."""
    cfg = result.config
    mode = "netns, shaped links" if cfg.netns else "loopback"
    if cfg.via == VIA_BOOTSTRAP:
        mode += ", gets via --bootstrap"
    if cfg.departed:
        mode += f", {cfg.departed} departed node(s)"
    lines = [
        f"**Capped ({mode}): {cfg.rate / MB:g} MB/s per holder / mirror / seeder**, "
        f"{format_size(cfg.size)} file, MB/s of file bytes, median (min–max) of "
        f"{cfg.repeat}",
        "",
        *_throughput_table(result, capped=True),
    ]
    if any(not p.capped for p in result.points()):
        lines += ["", f"**Uncapped (loopback, CPU-bound on {os.cpu_count()} cores)**", ""]
        lines += _throughput_table(result, capped=False)
    lines += _cpu_tables(result)
    lines += _phase_table(result)
    targets = result.targets()
    if targets:
        lines += ["", "| target | measured | goal | |", "|---|---:|---:|---|"]
        for t in targets:
            measured = f"{t.measured:.3f}x" if t.unit == "x" else f"{t.measured:.1f}{t.unit}"
            goal = f"{'<=' if t.at_most else '>='} {t.goal:g}{t.unit}"
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
        (LIBTORRENT, None): "tab:purple",
        (LOCAL, MIXED): "lightsteelblue",
        (LOCAL, RANDOM): "darkseagreen",
    }
    series = [(CHUNKSTORE, c, f"chunkstore, {c} file", "o") for c in cfg.contents]
    series.append((ARIA2C, cfg.contents[0], "aria2c + nginx", "s"))
    series.append((LIBTORRENT, cfg.contents[0], "libtorrent", "^"))
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
                color=colors[(tool, None if tool in REFERENCES else content)],
                marker=marker,
                capsize=3,
                label=name,
            )
    how = "links shaped by tc in network namespaces" if cfg.netns else "loopback, cap per process"
    ax.set_title(f"capped at {cfg.rate / MB:g} MB/s per holder ({how})", fontsize=10)
    ax.set_xticks(xs)
    ax.set_xlabel("holders (chunkstore nodes / nginx mirrors / libtorrent seeders)")
    ax.set_ylabel("MB/s of file bytes (10^6 B/s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if uncapped:
        ax = axes[0][1]
        groups = [str(h) for h in cfg.uncapped_holders] + ["local"]
        bars = [(CHUNKSTORE, c, f"chunkstore, {c}") for c in cfg.contents]
        bars.append((ARIA2C, cfg.contents[0], "aria2c + nginx"))
        bars.append((LIBTORRENT, cfg.contents[0], "libtorrent"))
        bars = [b for b in bars if any(p.tool == b[0] for p in uncapped)]
        width = 0.8 / len(bars)
        for i, (tool, content, name) in enumerate(bars):
            heights, lows, highs, at = [], [], [], []
            for g, label in enumerate(groups):
                p = (
                    result.point(LOCAL, content, False, 0)
                    if label == "local"
                    else result.point(tool, content, False, int(label))
                )
                if p is None or (label == "local" and tool in REFERENCES):
                    continue
                at.append(g + (i - (len(bars) - 1) / 2) * width)
                heights.append(p.median)
                lows.append(p.median - p.low)
                highs.append(p.high - p.median)
            color = colors[(tool, None if tool in REFERENCES else content)]
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
        f"chunkstore get vs aria2c and libtorrent: {format_size(cfg.size)} file, median of "
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
