"""The hold: the stage between storing an activity and delivering it.

Checks plug in here (media fetch and hash matching come next). Each check
declares cheaply whether it applies; an activity no check applies to takes the
fast path: a "deliver" verdict without waiting. The checks that apply run
concurrently, bounded by ``[hold] max_seconds``; past that, ``on_timeout``
decides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

import structlog

from relay.activity import Activity
from relay.policy import Policy
from relay.signal import Signal
from relay.verdict import Action, Verdict

__all__ = ["Check", "Hold"]

log = structlog.get_logger(__name__)


class Check(Protocol):
    """One kind of inspection of a held activity."""

    name: str

    def applies(self, activity: Activity) -> bool:
        """Cheap and synchronous: does this activity need this check at all?"""
        ...

    async def run(self, activity: Activity) -> Sequence[Signal]:
        """Inspect the activity; raise only for a failure the policy should see as such."""
        ...


class Hold:
    def __init__(
        self,
        checks: Sequence[Check] = (),
        *,
        policy: Policy | None = None,
        max_seconds: float = 60.0,
        on_timeout: Action = Action.REVIEW,
    ) -> None:
        self.checks = tuple(checks)
        self.policy = policy or Policy()
        self.max_seconds = max_seconds
        self.on_timeout = on_timeout

    async def decide(self, activity: Activity) -> Verdict:
        started = time.perf_counter()
        try:
            applicable = [c for c in self.checks if c.applies(activity)]
        except Exception as exc:  # a check that cannot even tell is an error signal
            log.warning("check_applies_failed", activity_id=activity.id, error=str(exc))
            signal = Signal("error", "hold", {"error": f"a check failed to start: {exc}"})
            return self.policy.decide([signal])
        if not applicable:
            return Verdict(Action.DELIVER, "fast path: nothing to check")
        try:
            async with asyncio.timeout(self.max_seconds):
                results = await asyncio.gather(*(self._run(c, activity) for c in applicable))
        except TimeoutError:
            elapsed = time.perf_counter() - started
            signal = Signal("timeout", "hold", {"max_seconds": self.max_seconds})
            return Verdict(self.on_timeout, "hold.on_timeout", (signal,), {"hold_seconds": elapsed})
        signals = [s for found in results for s in found]
        verdict = self.policy.decide(signals)
        timings = {"hold_seconds": time.perf_counter() - started}
        return Verdict(verdict.action, verdict.rule, verdict.signals, timings)

    @staticmethod
    async def _run(check: Check, activity: Activity) -> Sequence[Signal]:
        try:
            return await check.run(activity)
        except Exception as exc:  # a broken check is a signal, never a lost activity
            log.warning("check_failed", check=check.name, activity_id=activity.id, error=str(exc))
            return [Signal("error", check.name, {"error": str(exc)})]
