#!/usr/bin/env python3
"""Multi-source vs single-source get throughput, against aria2c from nginx mirrors and
libtorrent from seeders.

Run from the repository root with the project's virtualenv (root installs aria2 and
nginx-light with apt-get if they are missing; --netns needs root):

    .venv/bin/pip install -q -e '.[bench]' && .venv/bin/python benchmarks/swarm.py

Starts H holder nodes on 127.0.0.1 (each capped at --rate), fetches one generated file on a
fresh node with 1, 2, 4 and 8 holders, and does the same with aria2c from H nginx mirrors and
with a libtorrent leecher from H libtorrent seeders, capped at the same rate; then uncapped,
and the local `get` as the ceiling. Prints the tables (throughput, time to first byte, CPU
seconds per GiB on each side, the phases of each get) and writes swarm.json, swarm.md and
swarm.png (swarm-netns.* with --netns) to --out. libtorrent comes with the `bench` extra
(PyPI `libtorrent`); if it cannot be imported its rows are skipped and the run says so.

`--first-byte` is the short check of a get's fixed cost (about a minute): a 64 MiB file
from 1 and 4 holders capped at 8 MB/s each, target 4 holders >= 3.5x one, with the phases;
it writes swarm-first-byte.*.
The logic is the package benchmarks/swarm_bench; this is only the command line.
Exit codes: 0 done (missed targets are reported, not failures) or netns skipped; 1 a download
failed or wrote wrong bytes; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path; the harness is imported as the
# package `benchmarks.swarm_bench`, so the repository root goes there too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RANDOM, parse_rate, parse_size, stop_on_signals
from benchmarks.swarm_bench.errors import BenchError, BenchUnavailable
from benchmarks.swarm_bench.models import (
    CONTENTS,
    FIRST_BYTE,
    FIRST_BYTE_GOAL,
    VIA_BOOTSTRAP,
    VIA_NODE,
    BenchConfig,
)
from benchmarks.swarm_bench.report import render_markdown, write_outputs
from benchmarks.swarm_bench.runner import run_bench
from benchmarks.swarm_bench.tools import install_tools, missing_tools
from chunkstore.errors import InputError

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def counts(text: str) -> tuple[int, ...]:
    """Holder counts as users write them: '1,2,4,8' -> (1, 2, 4, 8); '' or 'none' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a list of holder counts: {text!r} (example: 1,2,4,8)"
        ) from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"holder counts must be at least 1: {text!r}")
    return values


def size(text: str) -> int:
    try:
        return parse_size(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def rate(text: str) -> float:
    try:
        value = parse_rate(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value is None:
        raise argparse.ArgumentTypeError(
            "the cap must be a rate (uncapped runs are separate: --uncapped-holders)"
        )
    return value


# Defaults of the full run, and of --first-byte (issue 8: a 64 MiB file from 1 and 4 holders
# capped at 8 MB/s each, 4 holders to reach 3.5x one; chunkstore only).
DEFAULTS = {"size": "512MiB", "holders": "1,2,4,8", "rate": "25MB", "uncapped_holders": "1,3"}
FIRST_BYTE_DEFAULTS = {"size": "64MiB", "holders": "1,4", "rate": "8MB", "uncapped_holders": ""}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--first-byte",
        action="store_true",
        help="the fixed-cost check: 64MiB, holders 1,4 at 8MB, no uncapped runs, no aria2c, "
        "no libtorrent, no local get; target 4 holders >= 3.5x one, with the phases of each get "
        "(options given explicitly still apply); writes swarm-first-byte.*",
    )
    p.add_argument("--size", type=size, help="file size (512MiB)")
    p.add_argument("--holders", type=counts, help="holder counts of the capped sweep (1,2,4,8)")
    p.add_argument(
        "--rate", type=rate, help="cap per holder and per mirror, bytes/s (25MB = 25*10^6 B/s)"
    )
    p.add_argument("--repeat", type=int, default=3, help="repetitions of each point (3)")
    p.add_argument(
        "--content",
        choices=[*CONTENTS, "both"],
        default="both",
        help="file: mixed (half random, half text), random (incompressible: "
        "equal wire bytes for both tools) or both (default)",
    )
    p.add_argument("--incompressible", action="store_true", help="same as --content random")
    p.add_argument(
        "--uncapped-holders", type=counts, help="holder counts of the uncapped runs, or none (1,3)"
    )
    p.add_argument(
        "--via",
        choices=[VIA_NODE, VIA_BOOTSTRAP],
        default=VIA_NODE,
        help="how a chunkstore get reaches the DHT: a node serving its home (node, default) "
        "or, as a fresh machine, --bootstrap to a holder from an empty home (bootstrap)",
    )
    p.add_argument(
        "--departed",
        type=int,
        default=0,
        help="nodes that join the swarm and are killed before each get (0): the contacts "
        "getters that came and went leave behind",
    )
    p.add_argument("--no-aria2c", action="store_true", help="skip the aria2c comparison")
    p.add_argument("--no-libtorrent", action="store_true", help="skip the libtorrent comparison")
    p.add_argument("--no-local", action="store_true", help="skip the local-get ceiling")
    p.add_argument(
        "--netns",
        action="store_true",
        help="holders and mirrors in network namespaces, links shaped by tc to --rate (root only)",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install missing aria2 / nginx-light",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory ({DEFAULT_OUT})"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="make the temporary directory inside DIR (default: system temp)",
    )
    args = p.parse_args(argv)
    defaults = FIRST_BYTE_DEFAULTS if args.first_byte else DEFAULTS
    parse = {"size": size, "holders": counts, "rate": rate, "uncapped_holders": counts}
    for key, text in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, parse[key](text))
    if args.first_byte:
        args.no_aria2c = args.no_libtorrent = args.no_local = True
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if not args.holders:
        p.error("--holders needs at least one count")
    if args.departed < 0:
        p.error("--departed must be at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    if args.incompressible:
        contents: tuple[str, ...] = (RANDOM,)
    else:
        contents = CONTENTS if args.content == "both" else (args.content,)

    def report(line: str) -> None:
        print(line, flush=True)

    try:
        config = BenchConfig(
            size=args.size,
            holders=args.holders,
            rate=args.rate,
            repeat=args.repeat,
            contents=contents,
            uncapped_holders=args.uncapped_holders,
            aria2c=not args.no_aria2c,
            libtorrent=not args.no_libtorrent,
            local_get=not args.no_local,
            netns=args.netns,
            workdir=args.workdir,
            via=args.via,
            departed=args.departed,
            **({"ratio_goal": FIRST_BYTE_GOAL, "preset": FIRST_BYTE} if args.first_byte else {}),
        )
        missing = missing_tools(config)
        if missing and not args.no_install:
            install_tools(missing, report)
        result = run_bench(config, report)
    except BenchUnavailable as e:
        print(f"skipped: {e}", file=sys.stderr)
        return 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print()
    print(render_markdown(result))
    paths = write_outputs(result, args.out, plot=not args.no_plot)
    print(f"took {result.seconds / 60:.1f} min; wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
