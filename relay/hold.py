"""The hold: the stage between storing an activity and delivering it.

Checks plug in here. Each check declares cheaply whether it applies; an activity no
check applies to takes the fast path: a "deliver" verdict without waiting. The
checks that apply run concurrently, bounded by ``[hold] max_seconds``.

A bank match found early must not be erased by a slow URL found late, so the hold
decides from everything found, whenever it stops: a check that can report as it
goes (``Reporting``) adds each signal to its ``Findings`` the moment it knows it,
and ends its own work by ``Findings.deadline``, a little before the hold's. Past
``max_seconds`` (the last resort) the hold stops waiting, adds a ``timeout`` signal
naming what was unfinished, and the policy decides, ``on_timeout`` competing with
the rules like ``on_error``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import structlog

from relay.activity import Activity
from relay.policy import TIMEOUT, Policy
from relay.signal import Signal
from relay.verdict import Disposition, Verdict

__all__ = ["Check", "Findings", "Hold", "Reporting"]

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


@runtime_checkable
class Reporting(Check, Protocol):
    """A check that reports signals as it finds them, so that they count even if the
    hold stops waiting for the rest. The hold calls ``report`` instead of ``run``."""

    async def report(self, activity: Activity, found: Findings) -> None:
        """Inspect the activity, adding each signal to ``found`` as soon as it is known
        and finishing (with an ``error`` signal for what was cut short) by
        ``found.deadline``."""
        ...


class Findings:
    """What one check found about one activity so far, what it is still working on,
    and when it must be done (``time.monotonic()`` seconds)."""

    def __init__(self, check: str, deadline: float = float("inf")) -> None:
        self.check = check
        self.deadline = deadline
        self.signals: list[Signal] = []
        self._unfinished: dict[str, int] = {}

    def add(self, signal: Signal) -> None:
        self.signals.append(signal)

    def extend(self, signals: Iterable[Signal]) -> None:
        self.signals.extend(signals)

    def remaining(self) -> float:
        """Seconds left until the deadline (never below zero)."""
        return max(0.0, self.deadline - time.monotonic())

    def begin(self, url: str) -> None:
        """``url`` is being looked at: the timeout signal names it until ``end``."""
        self._unfinished[url] = self._unfinished.get(url, 0) + 1

    def end(self, url: str) -> None:
        count = self._unfinished.pop(url, 0) - 1
        if count > 0:
            self._unfinished[url] = count

    def unfinished(self) -> list[dict[str, str]]:
        return [{"check": self.check, "url": url} for url in self._unfinished] or [
            {"check": self.check}
        ]


class Hold:
    def __init__(
        self,
        checks: Sequence[Check] = (),
        *,
        policy: Policy | None = None,
        max_seconds: float = 60.0,
        on_timeout: Disposition | None = None,
        grace_seconds: float | None = None,
    ) -> None:
        """``on_timeout``, when given, replaces the policy's. ``grace_seconds`` (by
        default a fifth of ``max_seconds``, at most 5 s) is how long before the hold's
        own timeout the checks must be done: time to hash and match the last file."""
        self.checks = tuple(checks)
        policy = policy or Policy()
        if on_timeout is not None:
            policy = replace(policy, on_timeout=on_timeout)
        self.policy = policy
        self.max_seconds = max_seconds
        self.grace_seconds = min(5.0, max_seconds / 5) if grace_seconds is None else grace_seconds

    async def decide(self, activity: Activity) -> Verdict:
        started = time.monotonic()
        try:
            applicable = [c for c in self.checks if c.applies(activity)]
        except Exception as exc:  # a check that cannot even tell is an error signal
            log.warning("check_applies_failed", activity_id=activity.id, error=str(exc))
            signal = Signal("error", "hold", {"error": f"a check failed to start: {exc}"})
            return self.policy.decide([signal])
        if not applicable:
            # The policy still names the effects of a delivery ([notify] on = ["deliver"]).
            return replace(self.policy.decide(()), rule="fast path: nothing to check")
        deadline = started + max(0.0, self.max_seconds - self.grace_seconds)
        found = [Findings(c.name, deadline) for c in applicable]
        tasks = [
            asyncio.ensure_future(self._run(c, activity, f))
            for c, f in zip(applicable, found, strict=True)
        ]
        signals: list[Signal] = []
        try:
            _, pending = await asyncio.wait(tasks, timeout=self.max_seconds)
            if pending:  # named before cancelling: cancelled work forgets what it was doing
                unfinished = [
                    entry
                    for task, findings in zip(tasks, found, strict=True)
                    if task in pending
                    for entry in findings.unfinished()
                ]
                detail = {"max_seconds": self.max_seconds, "unfinished": unfinished}
                signals.append(Signal(TIMEOUT, "hold", detail))
                log.warning("hold_timeout", activity_id=activity.id, unfinished=unfinished)
        finally:
            for task in tasks:  # timed out, or the hold itself cancelled: stop the checks
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for findings in found:
            signals.extend(findings.signals)
        verdict = self.policy.decide(signals)
        timings = {"hold_seconds": time.monotonic() - started}
        return replace(verdict, timings=timings)

    @staticmethod
    async def _run(check: Check, activity: Activity, found: Findings) -> None:
        try:
            if isinstance(check, Reporting):
                await check.report(activity, found)
            else:
                found.extend(await check.run(activity))
        except Exception as exc:  # a broken check is a signal, never a lost activity
            # Found first: a log that fails must not take the signal with it.
            found.add(Signal("error", check.name, {"error": str(exc)}))
            log.warning("check_failed", check=check.name, activity_id=activity.id, error=str(exc))
