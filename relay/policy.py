"""The admin's policy: turns the signals the hold gathered into a verdict.

``[[rule]]`` entries name a bank, ``category:NAME`` or ``signal:unchecked`` and an
action. The strongest action among the rules that fire wins (quarantine > reject >
review > deliver); when media could not be fetched or decoded, ``[hold] on_error``
competes too, and when the hold stopped waiting for its checks, ``[hold] on_timeout``:
what was found before the timeout counts, so a bank match is never erased by a slow
URL. No rule fired, no error and no timeout: deliver.

One thing is never delivered unseen, whatever ``on_error`` says: media left
undecoded because its sender spent its decoding budget (``over_budget``), since a
sender could otherwise buy its way past the checks by sending more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.signal import Signal
from relay.verdict import Action, Verdict

__all__ = ["OVER_BUDGET", "TIMEOUT", "Policy", "Rule"]

#: The signal of media not decoded because its sender is over budget: at least review.
OVER_BUDGET = "over_budget"
#: The hold's signal that it stopped waiting for its checks: ``on_timeout`` competes.
TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Rule:
    match: str
    action: Action

    def fires(self, signal: Signal) -> bool:
        return self.match in signal.targets


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    on_error: Action = Action.REVIEW
    on_timeout: Action = Action.REVIEW

    @classmethod
    def from_config(
        cls, rules: Sequence[object], on_error: str, on_timeout: str = "review"
    ) -> Policy:
        return cls(
            tuple(Rule(r.match, Action(r.action)) for r in rules),  # type: ignore[attr-defined]
            Action(on_error),
            Action(on_timeout),
        )

    def decide(self, signals: Sequence[Signal]) -> Verdict:
        best: tuple[Action, str] = (Action.DELIVER, "default")
        for index, rule in enumerate(self.rules):
            if rule.action.strength > best[0].strength and any(rule.fires(s) for s in signals):
                best = (rule.action, f"rule[{index}] {rule.match} -> {rule.action}")
        if self.on_error.strength > best[0].strength and any(s.kind == "error" for s in signals):
            best = (self.on_error, "hold.on_error")
        if any(s.kind == TIMEOUT for s in signals) and (
            # Named even when it delivers: the admin chose to deliver what went unchecked.
            self.on_timeout.strength > best[0].strength or best[1] == "default"
        ):
            best = (self.on_timeout, "hold.on_timeout")
        if Action.REVIEW.strength > best[0].strength and any(
            s.kind == OVER_BUDGET for s in signals
        ):
            best = (Action.REVIEW, "media.over_budget")
        return Verdict(action=best[0], rule=best[1], signals=tuple(signals))
