"""Renewal schedule and retry backoff: pure functions checked without a clock."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from controlplane.agent.rotation import backoff_delay, next_renewal, renewal_delay

NOT_BEFORE = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
NOT_AFTER = NOT_BEFORE + timedelta(hours=24)


class FixedUniform:
    """A random source whose uniform(a, b) returns a, b or the midpoint, as chosen."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.calls: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return {"low": low, "high": high, "mid": (low + high) / 2}[self.where]


def test_renewal_without_jitter_is_half_the_lifetime() -> None:
    renew_at = next_renewal(NOT_BEFORE, NOT_AFTER, jitter=0.0, rng=random.Random(1))

    assert renew_at == NOT_BEFORE + timedelta(hours=12)


def test_renewal_jitter_bounds_are_ten_percent_of_the_half() -> None:
    earliest = next_renewal(NOT_BEFORE, NOT_AFTER, jitter=0.1, rng=FixedUniform("low"))
    latest = next_renewal(NOT_BEFORE, NOT_AFTER, jitter=0.1, rng=FixedUniform("high"))

    assert earliest == NOT_BEFORE + timedelta(hours=12) - timedelta(hours=1.2)
    assert latest == NOT_BEFORE + timedelta(hours=12) + timedelta(hours=1.2)


def test_renewal_jitter_draws_from_symmetric_range() -> None:
    rng = FixedUniform("mid")

    next_renewal(NOT_BEFORE, NOT_AFTER, jitter=0.1, rng=rng)

    assert rng.calls == [(-0.1, 0.1)]


def test_renewal_stays_inside_jitter_window_for_many_draws() -> None:
    rng = random.Random(7)
    low = NOT_BEFORE + timedelta(hours=10.8)
    high = NOT_BEFORE + timedelta(hours=13.2)
    draws = [next_renewal(NOT_BEFORE, NOT_AFTER, jitter=0.1, rng=rng) for _ in range(500)]

    assert all(low <= d <= high for d in draws)
    assert len(set(draws)) > 400


def test_renewal_of_short_lifetime_scales() -> None:
    renew_at = next_renewal(NOT_BEFORE, NOT_BEFORE + timedelta(seconds=4), jitter=0.0, rng=random.Random(0))

    assert renew_at == NOT_BEFORE + timedelta(seconds=2)


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 2.5])
def test_renewal_rejects_jitter_outside_unit_interval(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        next_renewal(NOT_BEFORE, NOT_AFTER, jitter=jitter, rng=random.Random(0))


def test_renewal_rejects_empty_validity() -> None:
    with pytest.raises(ValueError, match="not after"):
        next_renewal(NOT_AFTER, NOT_BEFORE, jitter=0.1, rng=random.Random(0))


def test_renewal_delay_never_negative() -> None:
    assert renewal_delay(NOT_BEFORE, NOT_BEFORE + timedelta(seconds=5)) == 0.0
    assert renewal_delay(NOT_BEFORE + timedelta(seconds=5), NOT_BEFORE) == 5.0


def test_backoff_doubles_until_cap() -> None:
    highs = [backoff_delay(n, base=0.5, cap=30.0, rng=FixedUniform("high")) for n in range(10)]

    assert highs == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_backoff_jitter_keeps_at_least_half() -> None:
    lows = [backoff_delay(n, base=0.5, cap=30.0, rng=FixedUniform("low")) for n in (0, 3, 20)]

    assert lows == [0.25, 2.0, 15.0]


def test_backoff_huge_attempt_does_not_overflow() -> None:
    assert backoff_delay(10_000, base=1.0, cap=60.0, rng=FixedUniform("high")) == 60.0


def test_backoff_rejects_negative_attempt() -> None:
    with pytest.raises(ValueError, match="negative"):
        backoff_delay(-1, base=1.0, cap=2.0, rng=random.Random(0))
