"""Effects: the side effects of a verdict that must happen exactly once in what anyone
can see — a webhook notified, and later a receipt to a peer, a report, an action on an
instance. A verdict enqueues them in its own transaction (relay.outbox), so they exist
if and only if the verdict does; a runner then carries each out at least once, and
its idempotency key lets the receiver drop a repeat (a runner killed mid-effect).

Irreversible effects (reports to authorities, receipts to peers, bans) are never
triggered by a perceptual-only match unless a rule says so: the policy enforces that,
from the ``irreversible`` flag each effect declares here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from relay.outbox import Pending
    from relay.verdict import Verdict

__all__ = [
    "EFFECTS",
    "INSTANCE_EFFECTS",
    "IRREVERSIBLE",
    "Decided",
    "Effect",
    "EffectFailed",
    "Plan",
]

#: Every effect a rule may name (``[[rule]] effects``): notify the admins, a receipt to
#: peers, and actions on the instance (relay.effects.act).
EFFECTS = ("notify", "receipt", "ban", "remove", "purge", "report")
#: Those that cannot be taken back once done: a receipt tells peers; a suspension cuts
#: follows that lifting it does not restore; a Misskey note deleted is gone, and its
#: deletion federates; a purge deletes for good.
IRREVERSIBLE: frozenset[str] = frozenset({"receipt", "ban", "remove", "purge"})
#: The effects that act through the instance's admin API ([upstream] software, token).
INSTANCE_EFFECTS = ("ban", "remove", "purge", "report")


class EffectFailed(Exception):
    """An effect did not happen. ``permanent``: trying again cannot help (a webhook
    answering 400), so the effect becomes a dead letter at once; otherwise it is
    retried with backoff until the outbox's ``max_attempts``. ``deferred`` (seconds): it
    was not even tried (a host's circuit is open), so it waits that long and the try
    does not count towards ``max_attempts``."""

    def __init__(
        self, reason: str, *, permanent: bool = False, deferred: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.deferred = deferred


class Effect(Protocol):
    """One kind of effect. ``run`` gets the payload as enqueued, with ``key`` (the
    effect's idempotency key) added when the payload has none; it returns once the
    effect happened, and raises EffectFailed (or any exception, retried) otherwise."""

    name: str
    irreversible: bool

    async def run(self, payload: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Decided:
    """A verdict recorded about one activity: what an effect's plan is made from."""

    row: int
    activity: dict[str, Any]  # id, type, actor, signer, object (its id)
    verdict: Verdict
    evidence_id: int | None = None
    #: A lazy check's verdict: the activity was delivered before it ([hold] lazy).
    after: bool = False
    #: A later decision about the same row (a moderator's ``confirm``): its own key.
    stage: str = ""
    #: What a notification about it says happened (``escalated``: a moderator's call).
    event: str = "verdict"

    @property
    def key(self) -> str:
        """The verdict's idempotency key: the hold decides about a row once, and a
        moderator each stage once."""
        return f"verdict:{self.row}:{self.stage}" if self.stage else f"verdict:{self.row}"


#: Turns a recorded verdict into the outbox rows of one effect (one per webhook…).
Plan = Callable[[Decided], "list[Pending]"]
