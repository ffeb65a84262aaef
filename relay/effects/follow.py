"""Following peers' actors (``[receipts] follow``), to receive their receipts as they
publish them.

At start each configured peer gets one outbox row, keyed by the peer, so processes
sharing the database follow it once. Running it fetches the peer's actor (signed) for
its inbox, then enqueues the Follow as a ``send``: signed by Sluice's actor, retried,
dead-lettered where it must. The peer's Accept arrives at Sluice's inbox; its receipts
then arrive there too, and ``[[trust]]`` judges them like any others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from relay.effects import EffectFailed
from relay.effects.send import sends
from relay.outbox import Outbox, Pending
from relay.receipt import AS_CONTEXT

__all__ = ["KIND", "Follow", "follows"]

KIND = "follow"


def follows(peers: Iterable[str]) -> list[Pending]:
    """One row per peer actor to follow."""
    return [Pending(KIND, f"{KIND}:{peer}", {"peer": peer}) for peer in dict.fromkeys(peers)]


class Follow:
    """The effect: ``actor_id`` is Sluice's actor; ``fetch_actor`` reads a peer's actor."""

    name = KIND
    irreversible = False

    def __init__(
        self,
        actor_id: str,
        outbox: Outbox,
        fetch_actor: Callable[[str], Awaitable[Mapping[str, Any]]],
    ) -> None:
        self.actor_id = actor_id
        self.outbox = outbox
        self.fetch_actor = fetch_actor

    async def run(self, payload: dict[str, Any]) -> None:
        peer = str(payload.get("peer"))
        try:
            document = await self.fetch_actor(peer)
        except Exception as exc:  # the peer may be down: the outbox tries again later
            raise EffectFailed(f"cannot fetch {peer} to follow it: {exc}") from exc
        inbox = document.get("inbox")
        if document.get("id") != peer or not isinstance(inbox, str):
            raise EffectFailed(f"{peer} is not an actor with an inbox", permanent=True)
        digest = hashlib.sha256(peer.encode()).hexdigest()[:16]
        activity = {
            "@context": AS_CONTEXT,
            "id": f"{self.actor_id}#follow-{digest}",
            "type": "Follow",
            "actor": self.actor_id,
            "object": peer,
        }
        await self.outbox.enqueue(sends(activity, [inbox], f"{KIND}:{peer}"))
