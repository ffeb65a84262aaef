"""How long to wait before trying again: shared by deliveries and effects."""

from __future__ import annotations

import random

__all__ = ["backoff"]


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with ±20 % jitter, so a recovering upstream is not stampeded."""
    delay = min(maximum, initial * 2.0 ** max(0, attempt - 1))
    return delay * random.uniform(0.8, 1.2)
