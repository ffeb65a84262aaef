"""Token buckets: a minute's burst, then the rate; full buckets are forgotten."""

from __future__ import annotations

import pytest

from relay.rate import TokenBuckets


def test_a_burst_then_the_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(6, clock=lambda: now[0])  # one every 10 s
    assert [buckets.take("a") for _ in range(6)] == [0.0] * 6
    assert buckets.take("a") == pytest.approx(10.0)
    assert buckets.take("b") == 0.0  # each key its own
    now[0] += 10
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(10.0)


def test_a_refusal_spends_nothing() -> None:
    now = [0.0]
    buckets = TokenBuckets(60, clock=lambda: now[0])
    assert buckets.take("a", 50) == 0.0
    assert buckets.take("a", 20) == pytest.approx(10.0)  # 10 left, 10 more needed
    assert buckets.take("a", 10) == 0.0


def test_more_than_the_bucket_passes_only_when_full() -> None:
    now = [0.0]
    buckets = TokenBuckets(100, clock=lambda: now[0])
    assert buckets.take("a", 1000) == 0.0  # counts as the whole bucket
    assert buckets.take("a", 1000) == pytest.approx(60.0)
    now[0] += 60
    assert buckets.take("a", 1000) == 0.0


def test_full_buckets_are_forgotten() -> None:
    now = [0.0]
    buckets = TokenBuckets(60, clock=lambda: now[0])
    for n in range(1000):
        buckets.take(f"k{n}")
    now[0] += 2  # every bucket is full again
    buckets.take("new")
    assert len(buckets._buckets) == 1


def test_the_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBuckets(0)
