"""The token bucket that caps uploads: pure logic with explicit times, plus `acquire`."""

from __future__ import annotations

import asyncio
import types

import pytest

from chunkstore.net import ratelimit
from chunkstore.net.ratelimit import TokenBucket, acquire


def test_bucket_starts_full_then_paces_at_rate():
    bucket = TokenBucket(rate=100.0, burst=50.0)
    assert bucket.reserve(50, now=10.0) == 0.0  # the first burst is free
    assert bucket.reserve(100, now=10.0) == pytest.approx(1.0)
    assert bucket.reserve(100, now=10.0) == pytest.approx(2.0)  # queued behind the first
    assert bucket.available(now=12.0) == pytest.approx(0.0)  # the debt is paid off
    assert bucket.available(now=20.0) == pytest.approx(50.0)


def test_bucket_credit_is_capped_at_burst_and_time_never_goes_back():
    bucket = TokenBucket(rate=10.0, burst=5.0)
    bucket.reserve(0, now=0.0)
    assert bucket.available(now=1000.0) == pytest.approx(5.0)
    bucket.reserve(5, now=1000.0)
    assert bucket.available(now=900.0) == pytest.approx(0.0)  # a clock step back earns nothing
    assert bucket.reserve(10, now=1000.0) == pytest.approx(1.0)


def test_bucket_rejects_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(rate=0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1).reserve(-1, now=0)


def test_acquire_sleeps_exactly_the_reserved_wait(monkeypatch):
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    # Only this module's view of asyncio changes: nothing really sleeps, nothing else is hit.
    monkeypatch.setattr(ratelimit, "asyncio", types.SimpleNamespace(sleep=fake_sleep))
    bucket = TokenBucket(rate=100.0, burst=10.0)
    clock = iter([0.0, 0.0, 0.5]).__next__  # a fake clock: no real time passes

    async def main() -> None:
        await acquire(bucket, 10, clock)  # within the burst: no wait
        await acquire(bucket, 100, clock)  # 100 tokens of debt at 100/s
        await acquire(bucket, 25, clock)  # half a second later: 50 paid off, 75 + 25 owed

    asyncio.run(main())
    assert slept == [pytest.approx(1.0), pytest.approx(0.75)]
