"""The states an activity moves through, written down once.

The database row carries the state; workers move it along these edges only,
with ``UPDATE … WHERE state = <from>`` so that a concurrent change (a Delete
cancelling a held Create, an admin decision) wins cleanly.

    received ──► queued ──► delivered
        │          │  ▲ └──► refused     (the upstream answered 4xx)
        │          │  │ └──► dead ───┐   (retries exhausted; an admin may replay)
        │          │  └─────────────┘
        ├──► review ──► queued | rejected | quarantined
        ├──► rejected | quarantined
        └──► cancelled                   (a Delete/Undo arrived while it was held)

``received`` is the hold: the activity is durably stored and its checks run (or
wait to run) before a verdict moves it on. Who is working on a row is not a
state: the ``owner`` and ``locked_until`` lease columns say so, and an expired
lease (a crashed worker) makes the row available again in the same state.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["HELD", "PENDING", "TERMINAL", "TRANSITIONS", "State"]


class State(StrEnum):
    RECEIVED = "received"
    REVIEW = "review"
    QUEUED = "queued"
    DELIVERED = "delivered"
    REFUSED = "refused"
    REJECTED = "rejected"
    QUARANTINED = "quarantined"
    CANCELLED = "cancelled"
    DEAD = "dead"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.RECEIVED: frozenset(
        {State.QUEUED, State.REVIEW, State.REJECTED, State.QUARANTINED, State.CANCELLED}
    ),
    State.REVIEW: frozenset({State.QUEUED, State.REJECTED, State.QUARANTINED, State.CANCELLED}),
    State.QUEUED: frozenset({State.DELIVERED, State.REFUSED, State.DEAD}),
    State.DEAD: frozenset({State.QUEUED}),
    State.DELIVERED: frozenset(),
    State.REFUSED: frozenset(),
    State.REJECTED: frozenset(),
    State.QUARANTINED: frozenset(),
    State.CANCELLED: frozenset(),
}

#: Not yet with the instance: later activities about the same object wait behind these.
PENDING: frozenset[State] = frozenset({State.RECEIVED, State.REVIEW, State.QUEUED})
#: Still in the hold: a Delete or Undo of their object cancels them.
HELD: frozenset[State] = frozenset({State.RECEIVED, State.REVIEW})
TERMINAL: frozenset[State] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
