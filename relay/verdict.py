"""The policy's decision about one activity, with what it rests on.

A verdict has two parts: a *disposition* (where the activity goes: delivered, held
for review, rejected or quarantined, exactly one) and *effects* (what else must
happen because of it, any number: preserve evidence, notify the admins, and later a
receipt to peers, a report to authorities, an action through the instance's API).
Effects run through the durable outbox (``relay.outbox``), committed with the
verdict, so a crash between the two loses nothing and repeats nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from relay.signal import Signal
from relay.state import State

__all__ = ["LAZY", "Disposition", "Verdict"]


#: The rule of the verdict that hands an activity on before its check ([hold] lazy);
#: the check's own verdict is recorded beside it, as ``checked_after``.
LAZY = "lazy: delivered before its check"


class Disposition(StrEnum):
    """Where a held activity goes. Ordered from weakest to strongest."""

    DELIVER = "deliver"
    REVIEW = "review"
    REJECT = "reject"
    QUARANTINE = "quarantine"

    @property
    def strength(self) -> int:
        return list(Disposition).index(self)

    @property
    def state(self) -> State:
        """The state a verdict with this disposition moves the activity to."""
        return _STATE[self]


_STATE = {
    Disposition.DELIVER: State.QUEUED,
    Disposition.REVIEW: State.REVIEW,
    Disposition.REJECT: State.REJECTED,
    Disposition.QUARANTINE: State.QUARANTINED,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """``rule`` names the policy rule that decided (or ``"default"``/``"hold.on_timeout"``).

    ``effects`` names the effects to run (``relay.effects``); ``withheld`` those a
    rule asked for but the policy held back (an irreversible effect resting on
    perceptual matches only), so the record says why it did not happen.
    """

    disposition: Disposition
    rule: str
    signals: tuple[Signal, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    effects: tuple[str, ...] = ()
    withheld: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        # "action" is the stored name of the disposition (records and the admin API).
        out: dict[str, Any] = {
            "action": self.disposition.value,
            "rule": self.rule,
            "signals": [s.as_json() for s in self.signals],
            "timings": self.timings,
        }
        if self.effects:
            out["effects"] = list(self.effects)
        if self.withheld:
            out["withheld"] = list(self.withheld)
        return out
