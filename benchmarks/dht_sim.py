#!/usr/bin/env python3
"""The DHT simulator: N real DhtNodes on 127.0.0.1, one announcing K keys, lookups before and
after churn, and how long records stay findable.

Run from the repository root with the project's virtualenv:

    .venv/bin/pip install -q -e '.[bench]' && .venv/bin/python benchmarks/dht_sim.py

N nodes (each bootstrapped off a random earlier node) run in one process, or in several
(--processes) for large N. One node announces K keys through DhtNode's own announce path;
L provider lookups run from random nodes; then churn (--churn-mode stop: a fraction of the
nodes stops at once; weibull: session times from a Weibull distribution, departures played
live, the same fraction gone at T) and L lookups again; then record survival at later times
(no re-announce). Prints a table and writes dht_sim.json, dht_sim.md and dht_sim.png to --out.
The logic is the package benchmarks/dht_sim_bench; this is only the command line.
Exit codes: 0 done (missed goals are reported, not failures); 1 the simulation failed;
2 bad options; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path; the harness is imported as the
# package `benchmarks.dht_sim_bench`, so the repository root goes there too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dht_sim_bench.models import CHURN_MODES, SimConfig
from benchmarks.dht_sim_bench.report import render_markdown, write_outputs
from benchmarks.dht_sim_bench.runner import run_sim

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def times(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of times: {text!r} (e.g. 2,4,8)") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    d = SimConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--nodes", type=int, default=d.nodes, help="DHT nodes (default 500)")
    p.add_argument(
        "-k",
        "--keys",
        type=int,
        default=d.keys,
        help="keys announced by one node (default 800: a 1 GiB file's chunks)",
    )
    p.add_argument(
        "-l",
        "--lookups",
        type=int,
        default=d.lookups,
        help="provider lookups before and after churn (default 200)",
    )
    p.add_argument(
        "--churn", type=float, default=d.churn, help="fraction of nodes gone at T (default 0.4)"
    )
    p.add_argument(
        "--churn-mode",
        choices=CHURN_MODES,
        default=d.churn_mode,
        help="stop: that fraction stops at once; weibull: Weibull session times, "
        "departures played live (default stop)",
    )
    p.add_argument("--shape", type=float, default=d.shape, help="Weibull shape (default 0.5)")
    p.add_argument(
        "--t-seconds",
        type=float,
        default=d.t_seconds,
        help="real seconds per unit of T in weibull mode (default 10)",
    )
    p.add_argument(
        "--checkpoints",
        type=times,
        default=d.checkpoints,
        help="times after T (in T) at which record survival is measured (default 2,4,8,16)",
    )
    p.add_argument(
        "--survival-keys",
        type=int,
        default=d.survival_keys,
        help="keys looked up at each survival checkpoint (default 100)",
    )
    p.add_argument(
        "-p",
        "--processes",
        type=int,
        default=d.processes,
        help="processes the nodes are spread over (default 1)",
    )
    p.add_argument(
        "--lookup-concurrency",
        type=int,
        default=d.lookup_concurrency,
        help="lookups in flight per process (default 4)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        nodes=args.nodes,
        keys=args.keys,
        lookups=args.lookups,
        churn=args.churn,
        churn_mode=args.churn_mode,
        shape=args.shape,
        t_seconds=args.t_seconds,
        checkpoints=tuple(args.checkpoints),
        survival_keys=args.survival_keys,
        processes=args.processes,
        lookup_concurrency=args.lookup_concurrency,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from(args)
    try:
        config.check()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(f"# {line}", file=sys.stderr, flush=True)

    try:
        report = asyncio.run(run_sim(config, progress))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user, not a traceback
        print(f"error: the simulation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(render_markdown(report))
    for path in write_outputs(report, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
