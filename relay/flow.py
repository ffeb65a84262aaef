"""The workers that move stored activities through the hold and on to the instance.

An activity stored by the inbound door is usually claimed in the same statement
and handed over in memory (the fast path: no polling delay). Everything else —
retries, activities that waited behind another about the same object, rows a
crashed process left — is claimed by the poller once its lease has expired.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import structlog

from relay.activity import Activity
from relay.deliver import Upstream, is_retryable
from relay.effects import Decided, Plan
from relay.envelope import Envelope
from relay.errors import DecodeError
from relay.evidence import EvidenceError, EvidenceStore, MediaItem, Sealed
from relay.hold import Hold
from relay.metrics import Metrics
from relay.outbox import Outbox, Pending
from relay.resend import Resend, Way, delivery_url
from relay.retry import backoff
from relay.signal import Signal
from relay.signature import Verified
from relay.state import State
from relay.store.activities import ActivityStore, Item, Stored, outline, pointer_verdict
from relay.store.db import Connection
from relay.verdict import LAZY, Disposition, Verdict

__all__ = ["Flow"]

log = structlog.get_logger(__name__)

#: The rule of the verdict a lazily checked activity is delivered on, before its check.


class Flow:
    def __init__(
        self,
        store: ActivityStore,
        hold: Hold,
        upstream: Upstream,
        metrics: Metrics,
        *,
        concurrency: int = 32,
        backoff_initial: float = 1.0,
        backoff_max: float = 600.0,
        poll_interval: float = 0.5,
        evidence: EvidenceStore | None = None,
        outbox: Outbox | None = None,
        plans: Mapping[str, Plan] | None = None,
        remote: Upstream | None = None,
        lazy: bool = False,
        resend: Resend | None = None,
    ) -> None:
        """``plans``: per effect a rule may name, how a recorded verdict becomes its
        outbox rows (``relay.effects.Plan``); ``outbox`` runs them. ``remote``: what
        sends the instance's own deliveries to remote inboxes (the outbound door's);
        the flow closes it when it stops, once deliveries in flight have ended.
        ``lazy``: deliver inbound activities at once and check them after (``[hold]
        lazy``); a hit then runs its effects and seals its evidence, but cannot hold
        what the instance already has. ``resend``: how what is held past its sender's
        signature still goes (re-signed, fetched by the instance, or expired); None:
        always as sent."""
        self.store = store
        self.hold = hold
        self.upstream = upstream
        self.remote = remote
        self.metrics = metrics
        self.concurrency = concurrency
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self.evidence = evidence
        self.outbox = outbox
        self.plans: Mapping[str, Plan] = plans or {}
        self.lazy = lazy
        self.resend = resend
        #: Seconds between refreshes of the per-state gauges. (Pruning is a periodic
        #: job of the outbox, run by one process: ``relay.effects.retention``.)
        self.tidy_interval = 60.0
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._blocked_at = float("-inf")
        self._workers: list[asyncio.Task[None]] = []
        self._loops: list[asyncio.Task[None]] = []
        #: Rows this process holds the lease of (queued here or being worked on):
        #: the only ones whose leases it renews.
        self.held: set[int] = set()
        self._delivering = 0
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        self._loops = [
            asyncio.create_task(self._poller()),
            asyncio.create_task(self._housekeeper()),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking work, let deliveries in flight finish, give the rest back."""
        self._stopping = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        # A delivery cut short would be sent again by the next process: let it end.
        # (Checks still running in the hold are cut short: they simply run again.)
        deadline = time.monotonic() + grace
        while self._delivering and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            await self.store.release(item.id)
            self.held.discard(item.id)
        if self.remote is not None:
            await self.remote.close()

    async def accept(
        self,
        envelope: Envelope,
        activity: Activity,
        verified: Verified | None,
        *,
        destination: str | None = None,
        deadline: float | None = None,
    ) -> Stored | None:
        """The only way in: commit the activity, then hand it on. None: a duplicate.

        ``destination``: one of the instance's own deliveries, to that remote inbox
        (full URL), not to the instance; ``deadline`` (epoch seconds): no retry after
        it (its signature expires), however long ``[delivery] max_age`` is.

        A row claimed as it was stored goes to this process's workers in memory (no
        polling delay); one stored behind another about the same object waits for the
        poller, and a cancellation may have freed rows for it. Raises StoreUnavailable
        when nothing could be stored, so the door can tell the sender to retry.
        """
        signer = verified.signer if verified else None
        key_id = verified.key_id if verified else None
        stored = await self.store.insert(
            envelope,
            activity,
            signer=signer,
            key_id=key_id,
            claim=self.has_room(),
            destination=destination,
            deadline=deadline,
        )
        if stored is None:
            return None
        if stored.claimed:
            self.submit(
                Item(
                    id=stored.id,
                    state=State.RECEIVED,
                    target=envelope.target,
                    headers=list(envelope.headers),
                    body=envelope.body,
                    attempts=0,
                    received_at=envelope.received_at,
                    ap_id=activity.id,
                    actor=activity.actor,
                    signer=signer,
                    key_id=key_id,
                    remote=envelope.remote,
                    destination=destination,
                    _activity=activity,
                )
            )
        else:
            self.note_blocked()
            self.wake()
        if stored.cancelled:
            self.wake()
        return stored

    def has_room(self) -> bool:
        """Whether the door should claim what it stores: bounded memory, shared work."""
        return not self._stopping and self.queue.qsize() < 4 * self.concurrency

    def submit(self, item: Item) -> None:
        """Hand over an activity this process claimed when storing it."""
        self.held.add(item.id)
        self.queue.put_nowait(item)

    def wake(self) -> None:
        """Something may have become claimable (a cancellation, a replay)."""
        self._wake.set()

    def note_blocked(self) -> None:
        """An activity was stored behind another about the same object."""
        self._blocked_at = time.monotonic()

    def _finished(self) -> None:
        # Claiming costs a query: only look at once when something here was waiting
        # lately; otherwise (or in another process) the poll interval finds it.
        if time.monotonic() - self._blocked_at < 60:
            self._wake.set()

    # -- loops -----------------------------------------------------------------

    async def _worker(self) -> None:
        while not self._stopping:
            item = await self.queue.get()
            try:
                await self.process(item)
            except asyncio.CancelledError:
                await asyncio.shield(self.store.release(item.id))
                raise
            except Exception:
                # Give the row back with a pause, so a persistent fault is neither a
                # row stuck in this process nor a tight loop.
                log.exception("flow_error", row=item.id, activity_id=item.ap_id)
                delay = backoff(item.attempts + 1, self.backoff_initial, self.backoff_max)
                with contextlib.suppress(Exception):
                    await self.store.release(item.id, delay=delay)
            finally:
                self.held.discard(item.id)

    async def _poller(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            room = 2 * self.concurrency - self.queue.qsize()
            if room <= 0:
                continue
            try:
                for item in await self.store.claim(room):
                    self.submit(item)
            except Exception:
                log.exception("claim_failed")

    async def _housekeeper(self) -> None:
        interval = max(0.2, self.store.lease / 3)
        last_tidy = float("-inf")
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.renew_leases(list(self.held))
                if time.monotonic() - last_tidy > self.tidy_interval:
                    last_tidy = time.monotonic()
                    counts = await self.store.counts()
                    for state in State:
                        self.metrics.held.labels(state.value).set(counts.get(state.value, 0))
                    if self.outbox is not None:  # dead letters an admin can alert on
                        for name, n in (await self.outbox.counts()).items():
                            self.metrics.effects.labels(name).set(n)
            except Exception:
                log.exception("housekeeping_failed")

    # -- one activity ----------------------------------------------------------

    async def process(self, item: Item) -> None:
        if item.state == State.RECEIVED and self.lazy and item.destination is None:
            await self._lazily(item)
            return
        if item.state == State.RECEIVED:
            verdict = await self._decide(item)
            verdict, decided = await self._record(item, verdict)
            if not decided:
                log.info("left_hold_meanwhile", row=item.id, activity_id=item.ap_id)
                return
            self.metrics.verdicts.labels(verdict.disposition.value).inc()
            self.metrics.hold_seconds.observe(verdict.timings.get("hold_seconds", 0.0))
            if verdict.disposition == Disposition.QUARANTINE:  # details: the evidence's only
                signals = outline(verdict.signals)
            else:
                signals = [s.as_json() for s in verdict.signals]
            log.info(
                "verdict",
                row=item.id,
                activity_id=item.ap_id,
                actor=item.actor,
                signer=item.signer,
                verdict=verdict.disposition.value,
                rule=verdict.rule,
                signals=signals,
                effects=verdict.effects,
                timings=verdict.timings,
            )
            if verdict.disposition != Disposition.DELIVER:
                self._finished()  # later activities about the same object may proceed
                return
            item.state = State.QUEUED
        await self._deliver(item)

    async def _lazily(self, item: Item) -> None:
        """Lazy checking: deliver first, then judge with the same hold and record the
        verdict on the row beside its delivery, its evidence and effects as a held
        activity's. The check runs whatever the delivery's outcome (a retry, a refusal):
        the sender sent it either way."""
        if not await self.store.decide(item.id, Verdict(Disposition.DELIVER, LAZY)):
            log.info("left_hold_meanwhile", row=item.id, activity_id=item.ap_id)
            return
        item.state = State.QUEUED
        failed: Exception | None = None
        try:
            await self._deliver(item)
        except Exception as exc:  # the worker gives the row back; check it all the same
            failed = exc
        verdict = await self._decide(item)
        verdict, recorded = await self._record_after(item, verdict)
        if recorded:
            self.metrics.verdicts.labels(verdict.disposition.value).inc()
            log.info(
                "checked_after",
                row=item.id,
                activity_id=item.ap_id,
                actor=item.actor,
                signer=item.signer,
                verdict=verdict.disposition.value,
                rule=verdict.rule,
                signals=outline(verdict.signals),
                effects=verdict.effects,
                timings=verdict.timings,
            )
        if failed is not None:
            raise failed

    async def check_overdue(self, older_than: float = 600.0, limit: int = 100) -> int:
        """Check the rows handed on lazily whose check a stopped process never recorded
        (``older_than`` seconds after they were handed on); how many. A periodic job:
        no lazily delivered activity goes unchecked for good."""
        items = await self.store.unchecked(older_than, limit)
        for item in items:
            verdict, recorded = await self._record_after(item, await self._decide(item))
            if recorded:
                log.info(
                    "checked_after",
                    row=item.id,
                    activity_id=item.ap_id,
                    verdict=verdict.disposition.value,
                    rule=verdict.rule,
                    overdue=True,
                )
        return len(items)

    async def _record_after(self, item: Item, verdict: Verdict) -> tuple[Verdict, bool]:
        """Record a lazy check's verdict on the delivered row with its effects; a hit
        the hold would have quarantined seals the media matched (for review: the media
        judged), so the admin has exactly what the instance was sent."""
        quarantine = verdict.disposition == Disposition.QUARANTINE
        sealed: Sealed | None = None
        if quarantine or (verdict.disposition == Disposition.REVIEW and self._can_seal(verdict)):
            media = _judged(verdict.signals, matched_only=quarantine)
            try:
                if self.evidence is None:
                    raise EvidenceError("no evidence store configured")
                sealed = await self.evidence.seal(facts=self._facts(item, verdict), media=media)
            except Exception as exc:
                log.error("evidence_failed", row=item.id, activity_id=item.ap_id, error=str(exc))
                signal = Signal("error", "evidence", {"error": f"evidence not preserved: {exc}"})
                verdict = replace(verdict, signals=(*verdict.signals, signal))
            else:
                signal = Signal(
                    "evidence", "evidence", {"evidence_id": sealed.id, "media": len(media)}
                )
                verdict = replace(verdict, signals=(*verdict.signals, signal))
        evidence_id = sealed.id if sealed is not None else None
        if quarantine and evidence_id is not None:
            stored = pointer_verdict(verdict, evidence_id)
        else:
            stored = verdict.as_json()
        async with self.store.transaction() as conn:
            if sealed is not None:
                assert self.evidence is not None
                await self.evidence.record(sealed, activity_row=item.id, conn=conn)
            recorded = await self.store.checked_after(
                item.id, stored, conn=conn, evidence_id=evidence_id
            )
            if recorded:
                await self._enqueue(self._plan(item, verdict, evidence_id, after=True), conn)
        return verdict, recorded

    async def _decide(self, item: Item) -> Verdict:
        try:
            activity = item.activity
        except DecodeError as exc:  # stored bytes were checked on the way in; belt and braces
            return Verdict(Disposition.REVIEW, f"stored body unreadable: {exc}")
        return await self.hold.decide(activity)

    async def _record(self, item: Item, verdict: Verdict) -> tuple[Verdict, bool]:
        """Record the verdict with what must commit with it: the evidence of a
        quarantine, the media an activity held for review was judged on, and the
        verdict's effects (the outbox). Returns the verdict recorded and whether the row
        was still in the hold."""
        if verdict.disposition == Disposition.QUARANTINE:
            return await self._quarantine(item, verdict)
        if verdict.disposition == Disposition.REVIEW and self._can_seal(verdict):
            return await self._review(item, verdict)
        pending = self._plan(item, verdict)
        if not pending:
            return verdict, await self.store.decide(item.id, verdict)
        async with self.store.transaction() as conn:
            decided = await self.store.decide(item.id, verdict, conn=conn)
            if decided:
                await self._enqueue(pending, conn)
        return verdict, decided

    def _plan(
        self,
        item: Item,
        verdict: Verdict,
        evidence_id: int | None = None,
        *,
        after: bool = False,
    ) -> list[Pending]:
        """The outbox rows of the verdict's effects, keyed by the row: a verdict recorded
        again adds none. ``after``: a lazy check's, on an activity already delivered."""
        if not verdict.effects:
            return []
        decided = Decided(
            item.id,
            {
                "id": item.ap_id,
                "type": item.activity.type,
                "actor": item.actor,
                "signer": item.signer,
                "object": item.activity.object_id,
                "audience": _audience(item.activity.document),
            },
            verdict,
            evidence_id,
            after=after,
        )
        pending: list[Pending] = []
        for name in verdict.effects:
            plan = self.plans.get(name)
            if plan is None:  # check-config refuses unknown effects; belt and braces
                log.error("effect_not_configured", effect=name, row=item.id)
                continue
            pending.extend(plan(decided))
        return pending

    async def _enqueue(self, pending: list[Pending], conn: Connection) -> None:
        if not pending:
            return
        if self.outbox is None:
            log.error("no_outbox", effects=[p.kind for p in pending])
            return
        await self.outbox.enqueue(pending, conn)

    def _can_seal(self, verdict: Verdict) -> bool:
        return (
            self.evidence is not None
            and self.evidence.key is not None
            and any(s.media is not None and s.media.data is not None for s in verdict.signals)
        )

    def _facts(self, item: Item, verdict: Verdict) -> dict[str, Any]:
        """What the evidence records about the activity, beside its media."""
        return {
            "activity": item.activity.document,
            "actor": item.actor,
            "signer": item.signer,
            "key_id": item.key_id,
            "remote": item.remote,
            "target": item.target,
            **({"destination": item.destination} if item.destination else {}),
            "headers": item.headers,
            # The exact bytes as sent (the document above is parsed): what a release
            # delivers, under the sender's signature.
            "body_base64": base64.b64encode(item.body).decode("ascii"),
            "received_at": item.received_at,
            "signals": [s.as_json() for s in verdict.signals],
            "verdict": verdict.as_json(),
            # Matched media known from the cache is fetched again for its bytes; these
            # could not be (gone from the origin: the match's refetch_error says why).
            "media_without_bytes": [
                s.detail.get("url")
                for s in verdict.signals
                if s.kind == "match" and s.payload is None
            ],
        }

    async def _review(self, item: Item, verdict: Verdict) -> tuple[Verdict, bool]:
        """Hold for review with the media judged sealed like evidence, so the moderator
        sees exactly those bytes, never a re-fetch; the row keeps its body (a moderator
        may deliver it). If sealing fails, the activity is held for review all the same,
        the failure named in its verdict."""
        media = _judged(verdict.signals)
        try:
            assert self.evidence is not None
            sealed = await self.evidence.seal(facts=self._facts(item, verdict), media=media)
        except Exception as exc:
            log.error("review_media_not_kept", row=item.id, activity_id=item.ap_id, error=str(exc))
            signal = Signal("error", "evidence", {"error": f"media not kept for review: {exc}"})
            verdict = replace(verdict, signals=(*verdict.signals, signal))
            return verdict, await self._decide_with(item, verdict, None)
        signal = Signal("evidence", "evidence", {"evidence_id": sealed.id, "media": len(media)})
        verdict = replace(verdict, signals=(*verdict.signals, signal))
        decided = await self._decide_with(item, verdict, sealed)
        log.info("review_media_kept", evidence=sealed.id, activity_row=item.id, media=len(media))
        return verdict, decided

    async def _decide_with(self, item: Item, verdict: Verdict, sealed: Sealed | None) -> bool:
        """The verdict, its evidence (if sealed) and its effects, in one transaction."""
        evidence_id = sealed.id if sealed is not None else None
        async with self.store.transaction() as conn:
            if sealed is not None:
                assert self.evidence is not None
                await self.evidence.record(sealed, activity_row=item.id, conn=conn)
            decided = await self.store.decide(item.id, verdict, conn=conn, evidence_id=evidence_id)
            if decided:
                await self._enqueue(self._plan(item, verdict, evidence_id), conn)
        return decided

    async def _quarantine(self, item: Item, verdict: Verdict) -> tuple[Verdict, bool]:
        """Seal the evidence, then in one transaction record it, the verdict, the row's
        pointer to it and the verdict's effects, clearing the row's copy of what the
        evidence holds. If that fails, keep the activity held for review instead:
        nothing is dropped without its evidence, nothing cleared before the evidence is
        committed. Returns the verdict recorded and whether the row was still in the
        hold."""
        media = _judged(verdict.signals, matched_only=True)
        try:
            if self.evidence is None:
                raise EvidenceError("no evidence store configured")
            sealed = await self.evidence.seal(facts=self._facts(item, verdict), media=media)
            signal = Signal("evidence", "evidence", {"evidence_id": sealed.id, "media": len(media)})
            verdict = replace(verdict, signals=(*verdict.signals, signal))
            async with self.store.transaction() as conn:
                await self.evidence.record(sealed, activity_row=item.id, conn=conn)
                decided = await self.store.quarantine(conn, item.id, verdict, sealed.id)
                if decided:
                    await self._enqueue(self._plan(item, verdict, sealed.id), conn)
        except Exception as exc:
            log.error("evidence_failed", row=item.id, activity_id=item.ap_id, error=str(exc))
            signal = Signal("error", "evidence", {"error": f"evidence not preserved: {exc}"})
            verdict = replace(
                verdict,
                disposition=Disposition.REVIEW,
                rule="quarantine failed: held for review",
                signals=(*(s for s in verdict.signals if s.kind != "evidence"), signal),
            )
            return verdict, await self._decide_with(item, verdict, None)
        log.info("evidence_preserved", evidence=sealed.id, activity_row=item.id, media=len(media))
        return verdict, decided

    async def _deliver(self, item: Item) -> None:
        way = Way("as_sent")
        if self.resend is not None:
            url = delivery_url(item.headers, item.target, item.destination)
            way = self.resend.way(item.headers, item.body, url)
            if item.destination is not None and way.kind != "resigned":
                # The instance's own delivery: a remote cannot be asked to fetch it, and
                # its retries already end when its signature does (the row's deadline).
                way = Way("as_sent")
        if way.kind == "expired":
            await self._expire(item, way.reason)
            return
        headers = way.headers if way.kind == "resigned" else item.headers
        self._delivering += 1
        try:
            if way.kind == "fetch":
                assert self.resend is not None and self.resend.instance is not None
                assert way.url is not None
                result = await self.resend.instance.resolve(way.url)
            elif item.destination is None:
                result = await self.upstream.deliver(item.target, headers, item.body)
            else:  # one of the instance's own, to a remote inbox: the same bytes
                if self.remote is None:
                    raise RuntimeError("a delivery to a remote inbox, but no remote upstream")
                result = await self.remote.deliver(item.destination, headers, item.body)
        finally:
            self._delivering -= 1
        self.metrics.upstream_seconds.observe(result.seconds)
        fields = dict(
            row=item.id, activity_id=item.ap_id, status=result.status, attempt=item.attempts + 1
        )
        if item.destination is not None:
            fields["destination"] = item.destination
        if way.kind != "as_sent":
            fields["way"] = way.kind
        if result.ok:
            assert result.status is not None
            await self.store.delivered(item.id, result.status)
            self.metrics.delivered.inc()
            self.metrics.delivery_seconds.observe(max(0.0, time.time() - item.received_at))
            log.info("delivered", seconds=round(result.seconds, 4), **fields)
            self._finished()
        elif is_retryable(result):
            delay = backoff(item.attempts + 1, self.backoff_initial, self.backoff_max)
            state = await self.store.retry(item.id, result.status, result.error or "", delay)
            if state is None:
                log.warning("lease_lost", **fields)
            elif state == State.DEAD:
                self.metrics.dead_lettered.inc()
                log.warning("dead_lettered", error=result.error, **fields)
                self._finished()
            else:
                self.metrics.retried.inc()
                log.info("retry_scheduled", error=result.error, delay=round(delay, 2), **fields)
        else:
            assert result.status is not None
            await self.store.refused(item.id, result.status, result.error or "")
            self.metrics.refused.inc()
            log.warning("refused_by_upstream", error=result.error, **fields)
            self._finished()

    async def _expire(self, item: Item, reason: str) -> None:
        """Dead-letter what can no longer go: the admin sees it, with why."""
        if await self.store.expired(item.id, reason):
            self.metrics.dead_lettered.inc()
            log.warning("expired", row=item.id, activity_id=item.ap_id, reason=reason)
        else:
            log.warning("lease_lost", row=item.id, activity_id=item.ap_id)
        self._finished()


def _audience(document: Mapping[str, Any]) -> str | None:
    """The group a post was made in (Lemmy's community: its ``audience``), if it names
    one: where a report about it goes."""
    found = document.get("object")
    for where in (found if isinstance(found, Mapping) else {}, document):
        audience = where.get("audience")
        if isinstance(audience, str):
            return audience
    return None


def _judged(signals: Iterable[Signal], *, matched_only: bool = False) -> list[MediaItem]:
    """The media the signals are about, with their bytes, once per file: what a
    quarantine's evidence holds (the matched media) or a review keeps (all of it)."""
    items: dict[str, MediaItem] = {}
    for signal in signals:
        media = signal.media
        if media is None or media.data is None or (matched_only and signal.kind != "match"):
            continue
        url = signal.detail.get("url") or media.url or ""
        if signal.kind == "match":
            hashes = {k: signal.detail.get(k) for k in ("hash_kind", "value", "distance")}
        else:
            hashes = {"sha256": media.sha256, **{k: v[0] for k, v in media.hashes.items() if v}}
        if matched_only or url not in items:
            items.setdefault(url, MediaItem(url=url, data=media.data, hashes=hashes))
    return list(items.values())
