"""Acting on the instance: what a verdict may ask the instance itself to do about the
sender, through its admin API (relay.instance_actions, ``[upstream] software`` and
``token``).

- ``ban``: suspend the account (Mastodon ``suspend``, Lemmy's site ban with
  ``remove_data`` false, Misskey ``admin/suspend-user``).
- ``remove``: take the post off the instance (Lemmy ``post/remove``, reversible;
  Misskey ``notes/delete``, final). Mastodon has no admin API that deletes another
  user's status: there it silences the account and files a report naming the status,
  for a moderator to delete it in the web UI.
- ``purge``: delete for good (Lemmy ``admin/purge/post``, or ``admin/purge/person`` when
  the activity is about the actor itself); Mastodon and Misskey have none, so the effect
  is a dead letter at once, saying so.
- ``report``: a report the instance's moderators see (Mastodon ``POST /api/v1/reports``,
  not forwarded to the sender's server; Lemmy ``post/report``; Misskey: none known).

Evidence comes first: these effects are enqueued in the verdict's own transaction
(relay.outbox), after the quarantine's evidence is written, so none runs unless the
evidence committed. Nothing is purged while a report draft (``report_draft``, status
``draft``) or a legal hold (``evidence_hold`` not released) covers the activity: the
purge is deferred and looked at again later.

A post Sluice never delivered (the verdict came before delivery, as it does unless
``[hold] lazy``) is not on the instance through Sluice: ``remove`` and a post ``purge``
then do nothing, rather than have the instance resolve the post, which would fetch the
very media Sluice kept out. Accounts are resolved (an actor document, fetched by the
instance if new), so a ban holds even before the account ever reached the instance.

5xx, 429 and timeouts are retried; any other 4xx is a dead letter at once (401 and 403
name the token and the permission it lacks).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from relay.effects import Decided, EffectFailed, Plan
from relay.instance_actions import InstanceActions, InstanceRefused
from relay.outbox import Pending

__all__ = [
    "BAN",
    "KINDS",
    "PURGE",
    "REMOVE",
    "REPORT",
    "Ban",
    "Purge",
    "Remove",
    "Report",
    "planner",
]

log = structlog.get_logger(__name__)

BAN, REMOVE, PURGE, REPORT = "ban", "remove", "purge", "report"
#: The effect kinds of this module, as rules name them.
KINDS = (BAN, REMOVE, PURGE, REPORT)
#: Categories that make a Mastodon report's category ``legal``.
_LEGAL = frozenset({"csam", "terrorism", "ncii"})


def planner(kind: str) -> Plan:
    """A recorded verdict becomes one row of ``kind``, keyed by the verdict: the
    activity, whether it was delivered, the rule and the strongest match's category."""
    if kind not in KINDS:
        raise ValueError(f"no instance action {kind!r} (known: {KINDS})")

    def plan(decided: Decided) -> list[Pending]:
        activity = decided.activity
        if not isinstance(activity.get("actor"), str):
            return []
        if kind == REMOVE and not isinstance(activity.get("object"), str):
            return []  # nothing named to remove
        matches = [s for s in decided.verdict.signals if s.kind == "match"]
        category = matches[0].detail.get("category") if matches else None
        payload = {
            "row": decided.row,
            "activity": {k: activity.get(k) for k in ("id", "type", "actor", "signer", "object")},
            "evidence_id": decided.evidence_id,
            "delivered": decided.after,
            "rule": decided.verdict.rule,
            "category": str(category) if category else None,
        }
        return [Pending(kind, f"{decided.key}:{kind}", payload)]

    return plan


class _Act:
    """What the four effects share: reading the payload, turning refusals into
    EffectFailed."""

    name = ""
    irreversible = False

    def __init__(self, actions: InstanceActions) -> None:
        self.actions = actions

    async def run(self, payload: dict[str, Any]) -> None:
        activity = payload.get("activity")
        if not isinstance(activity, dict) or not isinstance(activity.get("actor"), str):
            raise EffectFailed(f"{self.name} payload names no actor", permanent=True)
        try:
            await self._act(activity, payload)
        except InstanceRefused as exc:
            raise EffectFailed(f"{self.name}: {exc.reason}", permanent=exc.permanent) from exc

    async def _act(self, activity: dict[str, Any], payload: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _account(self, actor: str) -> str:
        found = await self.actions.account(actor)
        if found is None:
            raise EffectFailed(f"{self.name}: the instance cannot find {actor}", permanent=True)
        return found

    def _reason(self, payload: dict[str, Any]) -> str:
        activity = payload["activity"]
        category = payload.get("category")
        about = f" ({category})" if category else ""
        return f"Sluice{about}: {payload.get('rule') or 'a verdict'}; activity {activity.get('id')}"


class Ban(_Act):
    """Suspends the sender's account. Irreversible: a suspension severs the account's
    follows, which lifting it does not restore, and Lemmy federates a site ban."""

    name = BAN
    irreversible = True

    async def _act(self, activity: dict[str, Any], payload: dict[str, Any]) -> None:
        account = await self._account(activity["actor"])
        await self.actions.ban(account, self._reason(payload))
        log.info("instance_ban", actor=activity["actor"], account=account, row=payload.get("row"))


class Remove(_Act):
    """Takes the post off the instance. Irreversible: on Misskey a deleted note is gone
    (and the Delete federates); the flag is one per kind, so the strictest software
    decides, even though Lemmy can restore a removal and Mastodon unsilence."""

    name = REMOVE
    irreversible = True

    async def _act(self, activity: dict[str, Any], payload: dict[str, Any]) -> None:
        uri = activity.get("object")
        if not isinstance(uri, str) or not payload.get("delivered"):
            log.info("instance_remove_skipped", why="never delivered", row=payload.get("row"))
            return
        post = await self.actions.post(uri)
        if post is None:  # the instance has no such post: nothing to remove
            log.info("instance_remove_skipped", why="not on the instance", object=uri)
            return
        await self.actions.remove(post, activity["actor"], self._reason(payload))
        log.info("instance_remove", object=uri, post=post, row=payload.get("row"))


class Report(_Act):
    """Files a report for the instance's moderators: reversible (they dismiss it)."""

    name = REPORT
    irreversible = False

    async def _act(self, activity: dict[str, Any], payload: dict[str, Any]) -> None:
        account = await self._account(activity["actor"])
        uri = activity.get("object")
        post = None
        if isinstance(uri, str) and payload.get("delivered"):
            post = await self.actions.post(uri)
        category = "legal" if payload.get("category") in _LEGAL else "other"
        await self.actions.report(account, post, self._reason(payload), category)
        log.info("instance_report", account=account, post=post, row=payload.get("row"))


_HELD = """
SELECT
  EXISTS (SELECT 1 FROM report_draft d
          WHERE d.status = 'draft'
            AND (d.activity_row = $1 OR d.evidence_id = $2
                 OR ($3::text IS NOT NULL AND EXISTS (
                       SELECT 1 FROM activity a WHERE a.id = d.activity_row AND a.actor = $3))))
    AS draft,
  EXISTS (SELECT 1 FROM evidence_hold h JOIN evidence e ON e.id = h.evidence_id
          WHERE h.released_at IS NULL
            AND (e.id = $2 OR e.activity_row = $1
                 OR ($3::text IS NOT NULL AND EXISTS (
                       SELECT 1 FROM activity a WHERE a.id = e.activity_row AND a.actor = $3))))
    AS hold
"""


class Purge(_Act):
    """Deletes the post (or, for an activity about the actor itself, the person) for
    good. Irreversible by name; and so deferred while a report draft is open or a legal
    hold stands on the activity's evidence (a person's purge: on any of its activities),
    looked at again every ``recheck_seconds``."""

    name = PURGE
    irreversible = True

    def __init__(
        self, actions: InstanceActions, pool: asyncpg.Pool, *, recheck_seconds: float = 3600.0
    ) -> None:
        super().__init__(actions)
        self.pool = pool
        self.recheck_seconds = recheck_seconds

    async def _act(self, activity: dict[str, Any], payload: dict[str, Any]) -> None:
        actor: str = activity["actor"]
        uri = activity.get("object")
        target = "post" if isinstance(uri, str) and uri != actor else "person"
        if target not in self.actions.purges:
            raise EffectFailed(
                f"purge: {self.actions.software}'s API offers no way of purging a {target}",
                permanent=True,
            )
        if target == "post" and not payload.get("delivered"):
            log.info("instance_purge_skipped", why="never delivered", row=payload.get("row"))
            return
        await self._not_needed(payload, actor if target == "person" else None)
        found = await (self.actions.post(str(uri)) if target == "post" else self._person(actor))
        if found is None:
            log.info("instance_purge_skipped", why="not on the instance", object=uri)
            return
        await self.actions.purge(target, found, self._reason(payload))
        log.info("instance_purge", target=target, id=found, row=payload.get("row"))

    async def _person(self, actor: str) -> str | None:
        return await self.actions.account(actor)

    async def _not_needed(self, payload: dict[str, Any], actor: str | None) -> None:
        """Defers the purge while a draft or a hold needs what it would delete."""
        row, evidence = payload.get("row"), payload.get("evidence_id")
        try:
            held = await self.pool.fetchrow(
                _HELD,
                int(row) if isinstance(row, int) else None,
                int(evidence) if isinstance(evidence, int) else None,
                actor,
            )
        except (asyncpg.PostgresError, OSError) as exc:
            raise EffectFailed(f"purge: cannot read report drafts and holds: {exc}") from exc
        if held is None:  # a SELECT of two EXISTS has one row; belt and braces
            raise EffectFailed("purge: no answer about report drafts and holds")
        why = [
            name
            for name, on in (
                ("a report draft is open", held["draft"]),
                ("a legal hold", held["hold"]),
            )
            if on
        ]
        if why:
            log.info("instance_purge_deferred", why=why, row=row, evidence_id=evidence)
            raise EffectFailed(
                f"purge deferred: {' and '.join(why)} needs row {row}",
                deferred=self.recheck_seconds,
            )
