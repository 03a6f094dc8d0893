"""Churn: when each simulated node leaves. Pure: no I/O, randomness passed in.

Session times follow a Weibull distribution, as measured in deployed DHTs (Stutzbach and
Rejaie, "Understanding churn in peer-to-peer networks", IMC 2006, fit shapes of about
0.34-0.59 for Kad, Gnutella and BitTorrent; shape < 1 means most sessions are short and a few
very long). Time is in units of T, the moment the after-churn lookups start; the scale is
chosen so that a fraction `gone_at_t` of the nodes has left by T, and the fraction gone at any
later time follows from the same distribution.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_SHAPE = 0.5


@dataclass(frozen=True)
class Weibull:
    """Session times with CDF F(t) = 1 - exp(-(t / scale) ** shape)."""

    shape: float
    scale: float

    @classmethod
    def gone_by(cls, fraction: float, at: float = 1.0, shape: float = DEFAULT_SHAPE) -> Weibull:
        """The distribution under which `fraction` of the sessions have ended at time `at`."""
        if not 0.0 < fraction < 1.0:
            raise ValueError("the fraction gone is in (0, 1)")
        if shape <= 0 or at <= 0:
            raise ValueError("shape and time are positive")
        return cls(shape, at / (-math.log1p(-fraction)) ** (1.0 / shape))

    def gone(self, t: float) -> float:
        """The fraction of sessions ended by time `t`."""
        return 0.0 if t <= 0 else 1.0 - math.exp(-((t / self.scale) ** self.shape))

    def draw(self, rng: random.Random) -> float:
        return rng.weibullvariate(self.scale, self.shape)


def departures(nodes: Sequence[int], dist: Weibull, rng: random.Random) -> list[tuple[float, int]]:
    """(session end, node) for every node in `nodes`, earliest first."""
    return sorted((dist.draw(rng), node) for node in nodes)


def stop_at_once(
    nodes: Sequence[int], dist: Weibull, checkpoints: Sequence[float], rng: random.Random
) -> list[tuple[float, int]]:
    """The "stop" mode as departures: at each checkpoint time, enough randomly chosen nodes
    leave at once that the fraction gone is the distribution's (`dist.gone(t)`); none leave
    in between. At T = 1 that is the issue's "X% of the nodes stop"."""
    order = list(nodes)
    rng.shuffle(order)
    plan: list[tuple[float, int]] = []
    for t in sorted(checkpoints):
        target = round(dist.gone(t) * len(order))
        plan += [(t, node) for node in order[len(plan) : target]]
    return plan


def due(plan: Sequence[tuple[float, int]], start: int, now: float) -> int:
    """The index in `plan` (sorted by time) past the departures due by `now`, from `start`."""
    end = start
    while end < len(plan) and plan[end][0] <= now:
        end += 1
    return end
