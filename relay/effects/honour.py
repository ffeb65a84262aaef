"""Peers' receipts: verified, recorded, and honoured as the admin's ``[[trust]]`` says.

A receipt reaches Sluice embedded in a Delete or a Flag (``moderationReceipt``), through
the inbound door or Sluice's own inbox. The door enqueues it here, keyed by the
receipt's id, so a receipt is considered once however often it arrives, and a key
server that is down is tried again later. Considering it:

1. checks every field (relay.receipt.parse_receipt) and its eddsa-jcs-2022 proof, by a
   key on the receipt actor's own host that belongs to that actor;
2. judges it by the ``[[trust]]`` entries (relay.trust);
3. when honoured, puts its hashes into the peer's own bank (``receipts:PEER``), whose
   category follows the receipt's, so rules on that category act on the same media
   arriving from anywhere; the bank write comes first and repeats harmlessly; what waits
   for a moderator about the receipt's objects goes through the checks again, so the
   policy decides it with the new hashes;
4. tells the admins (``[notify] webhooks``, event ``receipt``) of each activity about the
   receipt's objects that was already delivered: the instance must remove it itself;
5. records it with the decision (honoured or not, and why): the admin API lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
import yarl

from relay.banks.store import BankStore
from relay.effects import EffectFailed
from relay.effects.notify import message, notifications
from relay.errors import KeyFetchError, ReceiptError, SignatureError
from relay.outbox import Outbox, Pending
from relay.receipt import Receipt, category_for, parse_receipt
from relay.signal import Signal
from relay.signature.keys import KeyResolver
from relay.signature.proof import verify_proof
from relay.store.activities import ActivityStore
from relay.store.receipts import ReceiptStore
from relay.trust import TrustRule, bank_for, judge

__all__ = ["KIND", "Honour", "carried_receipt", "consider"]

log = structlog.get_logger(__name__)

KIND = "honour"
#: A receipt dated further ahead than this is refused (a clock, or a forgery).
_SKEW = timedelta(hours=1)


def carried_receipt(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The receipt a Delete or a Flag carries, if it carries one."""
    if document.get("type") not in ("Delete", "Flag"):
        return None
    receipt = document.get("moderationReceipt")
    return receipt if isinstance(receipt, Mapping) else None


def consider(receipt: Mapping[str, Any], *, via: str | None) -> list[Pending]:
    """The outbox row that considers a carried receipt, keyed by its id (a receipt
    arriving twice is considered once). ``via``: who delivered it (the HTTP signer)."""
    ident = receipt.get("id")
    if not isinstance(ident, str) or not ident:
        return []
    return [Pending(KIND, f"{KIND}:{ident}", {"receipt": dict(receipt), "via": via})]


class Honour:
    """The effect. ``rules``: the ``[[trust]]`` entries."""

    name = KIND
    irreversible = False  # it changes only Sluice's own banks

    def __init__(
        self,
        rules: Sequence[TrustRule],
        keys: KeyResolver,
        receipts: ReceiptStore,
        banks: BankStore,
        *,
        outbox: Outbox | None = None,
        webhooks: Sequence[str] = (),
        admin_url: Callable[[], str | None] = lambda: None,
        activities: ActivityStore | None = None,
    ) -> None:
        """``outbox``, ``webhooks``: where the admins hear of an honoured receipt about
        something the instance already has (removing it is the instance's to do);
        ``activities``: where what waits for a moderator, or was delivered, about the
        receipt's objects is found."""
        self.rules = tuple(rules)
        self.keys = keys
        self.receipts = receipts
        self.banks = banks
        self.outbox = outbox
        self.webhooks = tuple(webhooks)
        self.admin_url = admin_url
        self.activities = activities

    async def run(self, payload: dict[str, Any]) -> None:
        document = payload.get("receipt")
        if not isinstance(document, Mapping):
            raise EffectFailed("honour payload has no receipt", permanent=True)
        ident = str(document.get("id"))
        if await self.receipts.seen_received(ident):
            log.info("receipt_replayed", receipt=ident, via=payload.get("via"))
            return
        peer = (yarl.URL(str(document.get("actor", ""))).host or "").lower()
        try:
            receipt = parse_receipt(document)
            _not_ahead(receipt)
            await verify_proof(document, receipt.actor, self.keys)
        except KeyFetchError as exc:
            if not exc.gone:  # the peer's key server may come back: try again later
                raise EffectFailed(f"receipt {ident}: {exc}") from exc
            await self._record(ident, peer, document, False, f"not verified: {exc}")
            return
        except (ReceiptError, SignatureError) as exc:
            await self._record(ident, peer, document, False, f"not verified: {exc}")
            return
        judged = judge(
            self.rules,
            peer=peer,
            category=receipt.category,
            jurisdictions=receipt.jurisdiction,
            automated_decision=receipt.automated_decision,
        )
        reason = judged.reason
        if judged.hashes:
            ours = category_for(receipt.category, receipt.category_specification)
            if ours is None:
                judged_reason = f"honoured, but {receipt.category} has no bank category here"
                await self._record(ident, peer, document, True, judged_reason)
                return
            added = await self._bank(peer, ours, receipt)
            reason = f"{reason}; {added} new hashes in {bank_for(peer, ours)}"
            if self.activities is not None:
                rows = await self.activities.recheck(receipt.object, f"receipt {receipt.id}")
                if rows:
                    reason = f"{reason}; rows {', '.join(map(str, rows))} checked again"
        if judged.honoured:
            await self._tell_about_delivered(receipt, peer)
        await self._record(ident, peer, document, judged.honoured, reason)

    async def _tell_about_delivered(self, receipt: Receipt, peer: str) -> None:
        """Notify the admins of each activity already delivered that the receipt is
        about: Sluice cannot take it back from the instance."""
        if self.outbox is None or not self.webhooks or self.activities is None:
            return
        rows = await self.activities.delivered_about(receipt.object)
        signal = Signal(
            "receipt",
            peer,
            {"url": receipt.id, "category": receipt.category, "actor": receipt.actor},
        )
        pending = []
        for row in rows:
            about = {
                "id": row["ap_id"],
                "type": row["type"],
                "actor": row["actor"],
                "signer": row["signer"],
                "row": row["id"],
            }
            told = message(
                disposition="delivered",
                rule=f"receipt {receipt.id} honoured",
                activity=about,
                signals=[signal],
                admin_url=self.admin_url() or "",
                event="receipt",
            )
            pending += notifications(
                key=f"{KIND}:{receipt.id}:row:{row['id']}", message=told, webhooks=self.webhooks
            )
        await self.outbox.enqueue(pending)

    async def _bank(self, peer: str, category: str, receipt: Receipt) -> int:
        """The receipt's hashes into the peer's own bank (made on its first receipt)."""
        name = bank_for(peer, category)
        await self.banks.ensure(name, category=category, source=f"receipts from {peer}")
        entries = [(h.algorithm, h.value, receipt.id) for h in receipt.content_hash]
        return await self.banks.add(name, entries) if entries else 0

    async def _record(
        self, ident: str, peer: str, document: Mapping[str, Any], honoured: bool, reason: str
    ) -> None:
        await self.receipts.record_received(
            ident, peer=peer or "?", document=document, honoured=honoured, reason=reason
        )
        log.info("receipt_considered", receipt=ident, peer=peer, honoured=honoured, reason=reason)


def _not_ahead(receipt: Receipt) -> None:
    published = datetime.fromisoformat(receipt.published.replace("Z", "+00:00"))
    if published > datetime.now(UTC) + _SKEW:
        raise ReceiptError("published: is in the future")
