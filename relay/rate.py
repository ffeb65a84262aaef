"""Token buckets per key: how Sluice makes a sender pay for the work it asks for.

Each key (a signer, a sender) holds at most ``per_minute`` tokens, refilled evenly
over a minute, so a burst of a minute's worth passes and then the rate holds. A key
whose bucket is full again is forgotten (a full bucket is the same as none), so the
memory holds only the keys that are spending.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["TokenBuckets"]


class TokenBuckets:
    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.per_minute = float(per_minute)
        self.rate = self.per_minute / 60.0  # tokens a second
        self._clock = clock
        # key -> (tokens left, when), least recently charged first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, amount: float = 1) -> float:
        """Spend ``amount`` of ``key``'s tokens and return 0; or spend none and return the
        seconds until there would be enough. An amount larger than the whole bucket
        passes when the bucket is full (one large image, once a minute)."""
        now = self._clock()
        self._forget_full(now)
        left, when = self._buckets.pop(key, (self.per_minute, now))
        left = min(self.per_minute, left + (now - when) * self.rate)
        cost = min(float(amount), self.per_minute)
        if cost > left:
            self._buckets[key] = (left, now)
            return (cost - left) / self.rate
        self._buckets[key] = (left - cost, now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        while self._buckets:
            key, (left, when) = next(iter(self._buckets.items()))
            if left + (now - when) * self.rate < self.per_minute:
                return
            del self._buckets[key]
