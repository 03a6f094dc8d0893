"""What a simulation is asked to do, and the plain arithmetic of its figures (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

STOP = "stop"
WEIBULL = "weibull"
CHURN_MODES = (STOP, WEIBULL)

# The goals (500 nodes, 800 keys, 40% churn, same run).
GOAL_DATAGRAMS_PER_KEY = 5.0
GOAL_SUCCESS = 0.995
GOAL_P95_AFTER_S = 1.5


@dataclass(frozen=True)
class SimConfig:
    """One simulation. Time after the announce is in units of T: the after-churn lookups run
    at T = 1, when a fraction `churn` of the nodes has left; record survival is measured at
    each of `checkpoints` (multiples of T) as more leave, with no re-announce in between."""

    nodes: int = 500
    keys: int = 800  # the chunks of a 1 GiB file
    lookups: int = 200
    churn: float = 0.4
    churn_mode: str = STOP
    shape: float = 0.5
    t_seconds: float = 10.0  # real seconds per unit of T (weibull mode plays departures live)
    checkpoints: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    survival_keys: int = 100
    processes: int = 1
    seed: int = 1
    lookup_concurrency: int = 4
    settle_seconds: float = 1.0

    def check(self) -> None:
        """Raises ValueError for a configuration that cannot run."""
        if self.nodes < 3:
            raise ValueError("--nodes must be at least 3")
        if self.keys < 1 or self.lookups < 1 or self.survival_keys < 1:
            raise ValueError("--keys, --lookups and --survival-keys must be at least 1")
        if not 0.0 < self.churn < 1.0:
            raise ValueError("--churn is a fraction in (0, 1), e.g. 0.4")
        if self.churn_mode not in CHURN_MODES:
            raise ValueError(f"--churn-mode is one of {', '.join(CHURN_MODES)}")
        if self.processes < 1 or self.processes > self.nodes:
            raise ValueError("--processes must be between 1 and --nodes")
        if self.shape <= 0 or self.t_seconds <= 0:
            raise ValueError("--shape and --t-seconds must be positive")
        if any(c <= 1.0 for c in self.checkpoints):
            raise ValueError("checkpoints are times after T (> 1)")
        if self.lookup_concurrency < 1:
            raise ValueError("--lookup-concurrency must be at least 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-th percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LookupStats:
    """Lookups of one phase: successes and latencies (failed lookups included, at the time
    they took: that is what a downloader waits)."""

    results: list[tuple[bool, float]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.results)

    @property
    def succeeded(self) -> int:
        return sum(1 for ok, _ in self.results if ok)

    @property
    def success(self) -> float:
        return self.succeeded / self.count if self.count else 0.0

    def latency(self, q: float) -> float | None:
        return percentile([s for _, s in self.results], q)

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "succeeded": self.succeeded,
            "success": self.success,
            "p50_s": self.latency(50),
            "p95_s": self.latency(95),
            "p99_s": self.latency(99),
            "max_s": self.latency(100),
            "latencies_s": [round(s, 4) for _, s in self.results],
        }


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals against a report's figures."""
    per_key = report["announce"]["datagrams_per_key"]
    before, after = report["lookups"]["before"], report["lookups"]["after"]
    rows = [
        (
            "UDP datagrams sent per announced key",
            per_key,
            f"<= {GOAL_DATAGRAMS_PER_KEY:g}",
            per_key <= GOAL_DATAGRAMS_PER_KEY,
        ),
        (
            "lookup success before churn",
            before["success"],
            f">= {GOAL_SUCCESS:.1%}",
            before["success"] >= GOAL_SUCCESS,
        ),
        (
            "lookup success after churn",
            after["success"],
            f">= {GOAL_SUCCESS:.1%}",
            after["success"] >= GOAL_SUCCESS,
        ),
        (
            "p95 lookup latency after churn (s)",
            after["p95_s"],
            f"<= {GOAL_P95_AFTER_S:g}",
            after["p95_s"] is not None and after["p95_s"] <= GOAL_P95_AFTER_S,
        ),
    ]
    return [{"goal": g, "measured": m, "target": t, "met": ok} for g, m, t, ok in rows]
