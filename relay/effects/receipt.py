"""The receipt effect: Sluice tells what it removed, and why (FEP-bc20, relay.receipt).

A verdict that names the effect ``receipt`` (by default, every quarantine once Sluice
has an actor) enqueues one row. Running it:

1. builds the receipt (the DSA words for the matched bank's category, the matched
   files' hashes, whether a human decided) under an id made from the verdict's key, so
   a retry issues the same receipt, never a second one; signs it with the actor's
   Ed25519 key;
2. in one transaction: keeps it (served at its id and in the actor's ``receipts``
   collection), a Flag carrying it to the origin author's inbox (the report stock
   servers show their moderators) unless ``[receipts]`` says not to tell the origin,
   and a Delete carrying it to each follower (what receipt-aware peers honour), each a
   ``send`` row of the outbox: signed, retried, dead-lettered where it must.

It is irreversible (peers act on it): the policy withholds it from perceptual-only
matches unless a rule allows them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from relay.effects import Decided, EffectFailed, Plan
from relay.effects.send import sends
from relay.outbox import Outbox, Pending
from relay.receipt import (
    ALGORITHMS,
    AS_CONTEXT,
    LEGAL_GROUNDS,
    ContentHash,
    Receipt,
    content_hashes,
    context_url,
    dsa_for,
    timestamp,
)
from relay.store.receipts import ReceiptStore

__all__ = ["KIND", "ReceiptSettings", "Receipts", "planner"]

log = structlog.get_logger(__name__)

KIND = "receipt"
_HUMAN = "AUTOMATED_DECISION_NOT_AUTOMATED"
_AUTOMATED = "AUTOMATED_DECISION_FULLY"

#: Fetches an actor's document (signed, SSRF-guarded): its inbox is where a Flag goes.
_ActorFetcher = Callable[[str], Awaitable[Mapping[str, Any]]]


class _Speaker(Protocol):
    """What the effect needs of Sluice's actor (relay.actor.Actor)."""

    id: str
    base_url: str
    receipts: str

    def sign_object(self, document: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class ReceiptSettings:
    """``[receipts]``, as the effect reads it."""

    jurisdictions: tuple[str, ...]
    flag: bool = True
    flag_skip_categories: tuple[str, ...] = ()
    legal_ground: str = ""
    appeal: str = ""


def planner() -> Plan:
    """A recorded verdict becomes one receipt row, keyed by the verdict: what the receipt
    is about, the matched files' hashes and the category of the strongest match."""

    def plan(decided: Decided) -> list[Pending]:
        matches = [s for s in decided.verdict.signals if s.kind == "match"]
        if not matches:  # a receipt says which material: nothing matched, nothing to say
            return []
        files: dict[str, dict[str, str]] = {}
        # A moderator's decision is made from the record, without the bytes: the
        # ``hashed`` signal of the same file says its hashes.
        hashed = {
            s.detail.get("url"): s.detail
            for s in decided.verdict.signals
            if s.kind == "hashed" and isinstance(s.detail.get("sha256"), str)
        }
        for signal in matches:
            media = signal.media
            if media is not None:
                found = {kind: values[0] for kind, values in media.hashes.items() if values}
                files.setdefault(media.sha256, {"sha256": media.sha256, **found})
                continue
            known = hashed.get(signal.detail.get("url"))
            if known is not None:
                found = {k: v for k, v in known.items() if k in ALGORITHMS and isinstance(v, str)}
                files.setdefault(known["sha256"], found)
        activity = decided.activity
        payload = {
            "row": decided.row,
            "activity": dict(activity),
            "category": str(matches[0].detail.get("category") or "unwanted"),
            "hashes": list(files.values()),
            "human": bool(decided.verdict.rule.startswith("moderator")),
        }
        return [Pending(KIND, f"{decided.key}:{KIND}", payload)]

    return plan


class Receipts:
    """The effect. ``fetch_actor`` reads the origin author's inbox for the Flag."""

    name = KIND
    irreversible = True

    def __init__(
        self,
        actor: _Speaker,
        store: ReceiptStore,
        outbox: Outbox,
        fetch_actor: _ActorFetcher,
        settings: ReceiptSettings,
    ) -> None:
        self.actor = actor
        self.store = store
        self.outbox = outbox
        self.fetch_actor = fetch_actor
        self.settings = settings

    async def run(self, payload: dict[str, Any]) -> None:
        key = str(payload["key"])
        activity: Mapping[str, Any] = payload.get("activity") or {}
        category = str(payload.get("category") or "unwanted")
        ident = f"{self.actor.receipts.rstrip('/')}/{hashlib.sha256(key.encode()).hexdigest()[:32]}"
        kept = await self.store.receipt(ident)
        if kept is not None:
            signed = dict(kept.document)
        else:
            signed = self.actor.sign_object(self._receipt(ident, activity, category, payload))
        author = activity.get("actor")
        flag_to = None
        if self._tells_origin(category) and isinstance(author, str):
            try:
                flag_to = await self._inbox_of(author)
            except EffectFailed as exc:
                if not exc.permanent:  # the origin may answer later: all of it waits
                    raise
                # No inbox to tell: the receipt is still published and pushed.
                log.warning("flag_not_sent", receipt=ident, author=author, reason=exc.reason)
        pending = [
            *(
                sends(
                    self._flag(signed, str(author), activity.get("audience")),
                    [flag_to],
                    f"{ident}:flag",
                )
                if flag_to is not None
                else []
            ),
            *sends(self._delete(signed), await self.store.inboxes(), ident),
        ]
        published = datetime.fromisoformat(str(signed["published"]).replace("Z", "+00:00"))
        async with self.store.pool.acquire() as conn, conn.transaction():
            await self.store.add_receipt(
                signed,
                published=published,
                activity_id=payload.get("row"),
                category=category,
                conn=conn,
            )
            await self.outbox.enqueue(pending, conn)
        log.info(
            "receipt_issued",
            receipt=ident,
            row=payload.get("row"),
            flag=flag_to,
            followers=len(pending) - (flag_to is not None),
        )

    def _tells_origin(self, category: str) -> bool:
        return self.settings.flag and category not in self.settings.flag_skip_categories

    async def _inbox_of(self, author: str) -> str:
        """The author's own inbox: GoToSocial takes a Flag there only."""
        try:
            document = await self.fetch_actor(author)
        except Exception as exc:  # the origin may be down: the outbox tries again later
            raise EffectFailed(f"cannot fetch {author} for its inbox: {exc}") from exc
        inbox = document.get("inbox")
        if not isinstance(inbox, str) or not inbox.startswith(("https://", "http://")):
            raise EffectFailed(f"{author} names no inbox to send the Flag to", permanent=True)
        return inbox

    def _receipt(
        self, ident: str, activity: Mapping[str, Any], category: str, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        dsa_category, keywords, ground = dsa_for(category)
        removed = [v for v in (activity.get("object"), activity.get("id")) if isinstance(v, str)]
        author = activity.get("actor")
        hashes: list[ContentHash] = []
        for found in payload.get("hashes") or ():
            hashes.extend(ContentHash(**h) for h in content_hashes(found))
        human = bool(payload.get("human"))
        receipt = Receipt(
            id=ident,
            actor=self.actor.id,
            object=(*removed[:1], *([author] if isinstance(author, str) else [])),
            published=timestamp(datetime.now(UTC)),
            jurisdiction=self.settings.jurisdictions,
            category=dsa_category,
            category_specification=keywords,
            decision_ground=ground,
            legal_ground=self.settings.legal_ground
            or LEGAL_GROUNDS.get(category, "")
            or LEGAL_GROUNDS["unwanted"],
            automated_detection=True,
            automated_decision=_HUMAN if human else _AUTOMATED,
            content_hash=tuple(dict.fromkeys(hashes)),
            should_propagate=True,
            context=context_url(self.actor.base_url),
            appeal=self.settings.appeal or None,
        )
        return receipt.to_json()

    def _reason(self, receipt: Mapping[str, Any]) -> str:
        words = ", ".join(receipt.get("categorySpecification") or ()) or receipt["category"]
        how = (
            "Detected automatically by a hash match and decided by a moderator"
            if receipt["automatedDecision"] == _HUMAN
            else "Detected and decided automatically by a hash match"
        )
        return (
            f"Removed under {', '.join(receipt['jurisdiction'])} law "
            f"({receipt['legalGround']}): {receipt['category']} ({words}). {how}. "
            f"Moderation receipt: {receipt['id']}"
        )

    def _flag(
        self, receipt: Mapping[str, Any], account: str, audience: object = None
    ) -> dict[str, Any]:
        """The report stock servers understand: the account, then the posts, in
        ``object``; the reason in ``content`` (Mastodon, Misskey) and ``summary``
        (Lemmy); ``to`` the account, or the group a post was made in (Lemmy wants
        exactly one community there)."""
        posts: Sequence[str] = [o for o in receipt["object"] if o != account]
        reason = self._reason(receipt)
        return {
            "@context": [AS_CONTEXT, context_url(self.actor.base_url)],
            "id": f"{receipt['id']}/flag",
            "type": "Flag",
            "actor": self.actor.id,
            "to": [audience if isinstance(audience, str) else account],
            "object": [account, *posts],
            "summary": reason,
            "content": reason,
            "moderationReceipt": dict(receipt),
        }

    def _delete(self, receipt: Mapping[str, Any]) -> dict[str, Any]:
        """What followers get: receipt-aware peers honour it; stock servers ignore a
        Delete from anyone but the author."""
        return {
            "@context": [AS_CONTEXT, context_url(self.actor.base_url)],
            "id": f"{receipt['id']}/delete",
            "type": "Delete",
            "actor": self.actor.id,
            "to": ["https://www.w3.org/ns/activitystreams#Public"],
            "object": receipt["object"][0],
            "moderationReceipt": dict(receipt),
        }
