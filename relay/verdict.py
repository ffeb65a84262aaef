"""The policy's decision about one activity, with what it rests on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from relay.signal import Signal
from relay.state import State

__all__ = ["Action", "Verdict"]


class Action(StrEnum):
    """What happens to a held activity. Ordered from weakest to strongest."""

    DELIVER = "deliver"
    REVIEW = "review"
    REJECT = "reject"
    QUARANTINE = "quarantine"

    @property
    def strength(self) -> int:
        return list(Action).index(self)

    @property
    def state(self) -> State:
        """The state a verdict with this action moves the activity to."""
        return _STATE[self]


_STATE = {
    Action.DELIVER: State.QUEUED,
    Action.REVIEW: State.REVIEW,
    Action.REJECT: State.REJECTED,
    Action.QUARANTINE: State.QUARANTINED,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """``rule`` names the policy rule that decided (or ``"default"``/``"hold.on_timeout"``)."""

    action: Action
    rule: str
    signals: tuple[Signal, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "rule": self.rule,
            "signals": [s.as_json() for s in self.signals],
            "timings": self.timings,
        }
