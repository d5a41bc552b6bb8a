"""Token buckets per key (a sender, a peer address), bounded in memory.

A bucket holds up to `burst` tokens and refills at `rate_per_s`; each message
takes one. Buckets that are full again are forgotten, so a flood of distinct keys
costs memory only while they are actually sending.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

MAX_KEYS: Final = 100_000
"""Beyond this many active keys the least recently seen is dropped (it refills to full)."""


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str) -> bool:
        """Take one token from `key`'s bucket; False when it is empty."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if tokens < self._burst:
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        return allowed

    def has_token(self, key: str) -> bool:
        """Whether `key` could take a token now, without taking it."""
        found = self._buckets.get(key)
        if found is None:
            return True
        tokens, at = found
        return tokens + (self._clock() - at) * self._rate >= 1.0

    def __len__(self) -> int:
        return len(self._buckets)
