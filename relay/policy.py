"""The admin's policy: turns the signals the hold gathered into a verdict.

The rules of ``[[rule]]`` (match a bank or a category, name an action) arrive
with the media checks; until then the policy has no rules, and an activity that
raised no signal is delivered. The strongest action among the rules that fire
wins (quarantine > reject > review > deliver).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.signal import Signal
from relay.verdict import Action, Verdict

__all__ = ["Policy", "Rule"]


@dataclass(frozen=True, slots=True)
class Rule:
    """Fires when a signal's ``source`` equals ``match`` (a bank name or ``category:NAME``)."""

    match: str
    action: Action

    def fires(self, signal: Signal) -> bool:
        return signal.source == self.match or signal.detail.get("category_rule") == self.match


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()

    def decide(self, signals: Sequence[Signal]) -> Verdict:
        best: tuple[Action, str] = (Action.DELIVER, "default")
        for index, rule in enumerate(self.rules):
            if rule.action.strength > best[0].strength and any(rule.fires(s) for s in signals):
                best = (rule.action, f"rule[{index}] {rule.match} -> {rule.action}")
        return Verdict(action=best[0], rule=best[1], signals=tuple(signals))
