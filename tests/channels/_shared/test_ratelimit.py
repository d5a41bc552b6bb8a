"""Token buckets: a burst, then the refill rate; idle keys are forgotten."""

from __future__ import annotations

import pytest

from channels._shared.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_burst_then_the_refill_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    clock.now = 0.5  # one token back
    assert [limiter.allow("a") for _ in range(2)] == [True, False]


def test_keys_are_limited_apart() -> None:
    limiter = RateLimiter(1.0, 1, clock=Clock())
    assert limiter.allow("a") and limiter.allow("b")
    assert not limiter.allow("a")


def test_full_buckets_are_forgotten_and_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock, max_keys=10)
    for n in range(100):
        limiter.allow(f"k{n}")
    assert len(limiter) == 10
    clock.now = 10.0
    limiter.allow("k99")
    limiter.allow("k99")  # refilled to full before, so it is tracked again after use
    assert len(limiter) <= 10


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_limit_that_admits_nothing_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate, burst)
