"""The states an activity moves through, written down once, and the only edges allowed.

The database row carries the state. The store performs every change through one
path (``relay.store.activities``), which checks each edge a statement may take
against ``TRANSITIONS`` before it runs, and writes each statement's ``WHERE state
= <from>`` guard so that a concurrent change (a Delete cancelling a held Create,
an admin decision) wins cleanly. SQL names states only through ``sql_list``.

    received ──► queued ──► delivered
        │          ▲  ├───► refused       (the upstream answered 4xx)
        │          │  └───► dead          (retries exhausted)
        │          └─────── dead | review | quarantined
        │                   (an admin replays; a moderator approves; a moderator
        │                    releases a false positive, its evidence kept)
        ├──► review ──► rejected | quarantined | cancelled
        ├──► rejected | quarantined
        └──► cancelled                    (a Delete/Undo arrived while it was held)

``received`` is the hold: the activity is durably stored and its checks run (or
wait to run) before a verdict moves it on. Who is working on a row is not a
state: the ``owner`` and ``locked_until`` lease columns say so, and an expired
lease (a crashed worker) makes the row available again in the same state.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from relay.errors import SluiceError

__all__ = [
    "HELD",
    "PENDING",
    "RESTING",
    "TERMINAL",
    "TRANSITIONS",
    "State",
    "TransitionError",
    "check",
    "sql_list",
]


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
    # A peer's honoured receipt sends what waits for a moderator through the checks again.
    State.REVIEW: frozenset(
        {State.RECEIVED, State.QUEUED, State.REJECTED, State.QUARANTINED, State.CANCELLED}
    ),
    State.QUEUED: frozenset({State.DELIVERED, State.REFUSED, State.DEAD}),
    State.DEAD: frozenset({State.QUEUED}),
    State.DELIVERED: frozenset(),
    State.REFUSED: frozenset(),
    State.REJECTED: frozenset(),
    # A moderator releases a false positive; its evidence stays.
    State.QUARANTINED: frozenset({State.QUEUED}),
    State.CANCELLED: frozenset(),
}

#: Not yet with the instance: later activities about the same object wait behind these.
PENDING: frozenset[State] = frozenset({State.RECEIVED, State.REVIEW, State.QUEUED})
#: Still in the hold: a Delete or Undo of their object cancels them.
HELD: frozenset[State] = frozenset({State.RECEIVED, State.REVIEW})
TERMINAL: frozenset[State] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
#: No worker moves these on (``finished_at`` is set on arrival): the terminal states,
#: and those only a person's decision moves (a release, a replay).
RESTING: frozenset[State] = TERMINAL | {State.QUARANTINED, State.DEAD}


class TransitionError(SluiceError):
    """A state change the graph does not allow; nothing was written."""

    def __init__(self, source: State, target: State) -> None:
        allowed = ", ".join(s for s in State if s in TRANSITIONS[source])
        why = f"from {source} it may go to {allowed}" if allowed else f"{source} is final"
        super().__init__(f"an activity cannot go from {source} to {target}: {why}")
        self.source = source
        self.target = target


def check(source: State, target: State) -> None:
    """Raise TransitionError unless ``source`` → ``target`` is an edge of the graph."""
    if target not in TRANSITIONS[source]:
        raise TransitionError(source, target)


def sql_list(states: State | Iterable[State]) -> str:
    """``'received', 'queued'``: states as SQL literals for ``state IN (…)``, in the
    order ``State`` declares them (so a set always gives the same text).

    Written into the statement's text rather than passed as a parameter, so that the
    planner matches the partial indexes whose predicates name the same states.
    """
    chosen = {states} if isinstance(states, State) else {State(s) for s in states}
    return ", ".join(f"'{s.value}'" for s in State if s in chosen)
