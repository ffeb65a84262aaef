"""A moderator's decisions on an item held for review, the same from the UI and the API.

- **confirm**: the item is quarantined on its review evidence (which already holds
  every file judged), report drafts are recorded (never sent by themselves), the
  quarantine's effects run (notify, and a receipt once Sluice has an actor: a human
  confirmed, so a perceptual-only match may now have irreversible effects), and on
  request its files' hashes go into a local bank of the match's category, so the
  same material is known next time: a video's (or an animation's) vPDQ frames too,
  hashed again from the sealed copy, so a re-encoded, resized or trimmed copy of it
  is caught as well.
- **false positive**: the item is delivered (or, if it was quarantined, released)
  and its files' SHA-256 go into the ``allow`` bank: an exact allow match
  suppresses every bank match of the same file, so it never holds again. Only
  SHA-256: an MD5 or a perceptual hash could be forged to collide.
- **escalate**: the item stays held, marked for an admin, who alone may then
  decide it; the admins are notified.

Every decision is audited (who, what, why) and written into the row's verdict.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from relay.banks import ALLOW
from relay.banks.store import BankStore
from relay.effects import Decided
from relay.errors import DecodeError
from relay.evidence import EvidenceError, EvidenceStore
from relay.media.hashes import hash_media
from relay.media.video import VideoLimits
from relay.outbox import Outbox, Pending
from relay.people import AuditLog, Principal
from relay.release import ReleaseError, release
from relay.review.queue import ReviewQueue
from relay.signal import Signal
from relay.state import State
from relay.store.activities import ActivityStore
from relay.verdict import Disposition, Verdict

if TYPE_CHECKING:
    from relay.effects import Plan

__all__ = ["DECISIONS", "DecisionError", "Decisions", "Outcome"]

log = structlog.get_logger(__name__)

DECISIONS = ("confirm", "false_positive", "escalate")


class DecisionError(Exception):
    """The decision was not taken; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Outcome:
    row: int
    state: str
    drafts: tuple[str, ...] = ()
    banked: int = 0


class Decisions:
    """``quarantine_effects``: what every quarantine does (``[notify] on``, the receipt
    when Sluice speaks); ``plans``: the effects' planners, the flow's own;
    ``report_categories``: whose confirmed cases get NCMEC and UK drafts; ``video``: what
    hashing a confirmed video again may cost (``[media]``'s, as when it was held)."""

    def __init__(
        self,
        store: ActivityStore,
        evidence: EvidenceStore | None,
        banks: BankStore,
        outbox: Outbox | None,
        plans: Mapping[str, Plan],
        *,
        quarantine_effects: Sequence[str] = (),
        report_categories: Sequence[str] = ("csam",),
        video: VideoLimits | None = None,
    ) -> None:
        self.store = store
        self.video = video or VideoLimits()
        self.evidence = evidence
        self.banks = banks
        self.outbox = outbox
        self.plans = plans
        self.quarantine_effects = tuple(quarantine_effects)
        self.report_categories = frozenset(report_categories)
        self.audit = AuditLog(store.pool)
        self.queue = ReviewQueue(store.pool)

    async def _held(self, row: int, who: Principal) -> dict[str, Any]:
        record = await self.queue.item(row)
        if record is None:
            raise DecisionError(f"no activity row {row}", 404)
        escalated = (record.get("verdict") or {}).get("escalated")
        if escalated and who.role != "admin":
            raise DecisionError(
                f"row {row} was escalated by {escalated.get('by')}: an admin decides it", 403
            )
        return record

    async def confirm(
        self, row: int, who: Principal, *, why: str | None = None, bank: bool = False
    ) -> Outcome:
        record = await self._held(row, who)
        if record["state"] != State.REVIEW or record.get("evidence_id") is None:
            raise DecisionError(
                f"row {row} is {record['state']}"
                + ("" if record.get("evidence_id") else " with no media kept")
                + ": only an item in review with its media kept can be confirmed"
            )
        held = record["verdict"] or {}
        signals = tuple(
            Signal(s["kind"], s["source"], s.get("detail") or {})
            for s in held.get("signals", [])
            if isinstance(s, dict)
        )
        category = _category(signals)
        # A person confirmed it: what the policy withheld from a perceptual-only match
        # (a receipt, a ban…) may now run, beside what every quarantine does.
        withheld = [e for e in held.get("withheld") or [] if isinstance(e, str)]
        verdict = Verdict(
            Disposition.QUARANTINE,
            f"moderator: confirmed by {who.name} (held by {held.get('rule')})",
            signals,
            effects=tuple(dict.fromkeys((*self.quarantine_effects, *withheld))),
        )
        evidence_id = int(record["evidence_id"])
        # Every decision gets a statement of reasons; abuse material, the law's reports.
        drafts = ("ncmec", "uk", "sor") if category in self.report_categories else ("sor",)
        decided = Decided(row, _about(record), verdict, evidence_id, stage="confirm")
        pending = [p for name in verdict.effects for p in self._plan(name, decided)]
        moderated = {
            "moderator": who.name,
            "moderator_action": "confirm",
            "moderator_reason": why,
            "held_by": held.get("rule"),
        }
        async with self.store.transaction() as conn:
            done = await self.store.quarantine(
                conn, row, verdict, evidence_id, source=State.REVIEW, moderated=moderated
            )
            if not done:
                raise DecisionError(f"row {row} left review meanwhile")
            await conn.executemany(
                "INSERT INTO report_draft (activity_row, evidence_id, kind, created_by) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (activity_row, kind) DO NOTHING",
                [(row, evidence_id, kind, who.name) for kind in drafts],
            )
            if pending and self.outbox is not None:
                await self.outbox.enqueue(pending, conn)
        banked = 0
        if bank and category:
            name = f"confirmed-{category}"
            await self.banks.ensure(name, category, "moderators' confirmed cases")
            entries = _hashes(signals) + await self._played(evidence_id, signals, who)
            banked = await self.banks.add(name, entries)
        await self.audit.record(
            who.name,
            "review.confirm",
            why=why,
            detail={"row": row, "evidence": evidence_id, "drafts": list(drafts), "banked": banked},
        )
        log.info("confirmed", row=row, moderator=who.name, drafts=drafts, banked=banked)
        return Outcome(row, State.QUARANTINED.value, drafts, banked)

    async def false_positive(self, row: int, who: Principal, *, why: str) -> Outcome:
        if not why.strip():
            raise DecisionError("a false positive needs a reason (it goes to the audit log)", 400)
        record = await self._held(row, who)
        state = record["state"]
        signals = (record.get("verdict") or {}).get("signals") or []
        if state == State.REVIEW:
            moved = await self.store.moderate(row, "approve", who.name)
            if moved is None:
                raise DecisionError(f"row {row} left review meanwhile")
            hashes = [
                s["detail"]["sha256"]
                for s in signals
                if isinstance(s, dict)
                and s.get("kind") == "hashed"
                and isinstance((s.get("detail") or {}).get("sha256"), str)
            ]
        elif state == State.QUARANTINED:
            try:
                moved = await release(
                    self.store, self.evidence, row, moderator=who.name, reason=why
                )
            except ReleaseError as exc:
                raise DecisionError(str(exc), 404 if exc.kind == "missing" else 409) from exc
            hashes = await self._quarantined_sha256(int(record["evidence_id"]), who)
        else:
            raise DecisionError(f"row {row} is {state}: neither in review nor quarantined")
        entries = [("sha256", h, f"false positive, row {row}") for h in sorted(set(hashes))]
        banked = 0
        if entries:
            await self.banks.ensure(ALLOW, ALLOW, "moderators' false positives")
            banked = await self.banks.add(ALLOW, entries)
        await self.audit.record(
            who.name,
            "review.false_positive",
            why=why,
            detail={"row": row, "state": moved, "allowed": banked},
        )
        log.info("false_positive", row=row, moderator=who.name, allowed=banked)
        return Outcome(row, moved, banked=banked)

    async def _played(
        self, evidence_id: int, signals: Sequence[Signal], who: Principal
    ) -> list[tuple[str, str, str | None]]:
        """The usable vPDQ frames of each matched video or animation, as PDQ entries,
        hashed from the sealed copy (the verdict keeps only their count); none when the
        evidence cannot be read or a file no longer decodes."""
        played = {s.detail.get("sha256") for s in _matched_files(signals)}
        played &= {
            s.detail.get("sha256")
            for s in signals
            if s.kind == "hashed" and s.detail.get("vpdq_usable")
        }
        if not played or self.evidence is None:
            return []
        try:
            _, files = await self.evidence.read(
                evidence_id, who=who.name, why="confirmed: bank its video frames", what="hash"
            )
        except EvidenceError as exc:
            log.warning("confirm_frames_unread", evidence=evidence_id, error=str(exc))
            return []
        entries: list[tuple[str, str, str | None]] = []
        for data in files:
            if hashlib.sha256(data).hexdigest() not in played:
                continue
            try:
                value = (await asyncio.to_thread(hash_media, data, video=self.video)).vpdq
            except DecodeError:
                continue
            for f in value.usable() if value is not None else ():
                note = f"vpdq frame {f.number} at {f.timestamp:.3f} s, confirmed by a moderator"
                entries.append(("pdq", f.hash, note))
        return entries

    async def _quarantined_sha256(self, evidence_id: int, who: Principal) -> list[str]:
        """The quarantined files' SHA-256, from the evidence's summary (no decryption)."""
        if self.evidence is None:
            return []
        meta = await self.evidence.metadata(evidence_id)
        found = ((meta or {}).get("summary") or {}).get("sha256") or []
        return [h for h in found if isinstance(h, str)]

    async def escalate(self, row: int, who: Principal, *, why: str) -> Outcome:
        if not why.strip():
            raise DecisionError("say why it needs an admin (it goes to the audit log)", 400)
        record = await self._held(row, who)
        if record["state"] != State.REVIEW:
            raise DecisionError(f"row {row} is {record['state']}, not in review")
        marked = await self.store.escalate(row, who.name, why)
        if not marked:
            raise DecisionError(f"row {row} left review meanwhile")
        if self.outbox is not None:  # the admins' webhooks hear of it, if any are set
            verdict = Verdict(Disposition.REVIEW, f"escalated by {who.name}: {why}")
            decided = Decided(
                row,
                _about(record),
                verdict,
                record.get("evidence_id"),
                stage="escalate",
                event="escalated",
            )
            await self.outbox.enqueue(self._plan("notify", decided))
        await self.audit.record(who.name, "review.escalate", why=why, detail={"row": row})
        return Outcome(row, State.REVIEW.value)

    def _plan(self, name: str, decided: Decided) -> list[Pending]:
        plan = self.plans.get(name)
        if plan is None:
            log.error("effect_not_configured", effect=name, row=decided.row)
            return []
        return plan(decided)


def _about(record: Mapping[str, Any]) -> dict[str, Any]:
    """What an effect's plan reads of the activity (``Decided.activity``)."""
    document = record.get("document") or {}
    found = document.get("object")
    audience = (found if isinstance(found, dict) else {}).get("audience") or document.get(
        "audience"
    )
    return {
        "id": record.get("ap_id"),
        "type": record.get("type"),
        "actor": record.get("actor"),
        "signer": record.get("signer"),
        "object": record.get("object_id"),
        "audience": audience if isinstance(audience, str) else None,
    }


#: Categories from the most to the least severe (migration 0016's review_severity).
_SEVERE = ("csam", "terrorism", "ncii")


def _category(signals: Sequence[Signal]) -> str | None:
    """The category of the most severe bank match, None when nothing matched."""
    found = [
        str(s.detail.get("category"))
        for s in signals
        if s.kind == "match" and s.detail.get("category")
    ]
    for category in _SEVERE:
        if category in found:
            return category
    return found[0] if found else None


def _hashes(signals: Sequence[Signal]) -> list[tuple[str, str, str | None]]:
    """The matched files' hashes, every kind the hashing gave (bank entries): never
    those of a clean file posted beside them."""
    entries: list[tuple[str, str, str | None]] = []
    for s in _matched_files(signals):
        for kind in ("sha256", "md5", "pdq"):
            value = s.detail.get(kind)
            if isinstance(value, str) and value:
                entries.append((kind, value, "confirmed by a moderator"))
    return entries


def _matched_files(signals: Sequence[Signal]) -> list[Signal]:
    """The ``hashed`` signals of the files a bank matched: never a clean file posted
    beside them."""
    matched = {s.detail.get("url") for s in signals if s.kind == "match"}
    return [s for s in signals if s.kind == "hashed" and s.detail.get("url") in matched]
