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
import random
import time

import structlog

from relay.activity import Activity
from relay.deliver import Upstream, is_retryable
from relay.envelope import Envelope
from relay.errors import DecodeError
from relay.evidence import EvidenceError, EvidenceStore, MediaItem
from relay.hold import Hold
from relay.metrics import Metrics
from relay.signal import Signal
from relay.signature import Verified
from relay.state import State
from relay.store.activities import ActivityStore, Item, Stored, outline
from relay.verdict import Action, Verdict

__all__ = ["Flow", "backoff"]

log = structlog.get_logger(__name__)


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with ±20 % jitter, so a recovering upstream is not stampeded."""
    delay = min(maximum, initial * 2.0 ** max(0, attempt - 1))
    return delay * random.uniform(0.8, 1.2)


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
    ) -> None:
        self.store = store
        self.hold = hold
        self.upstream = upstream
        self.metrics = metrics
        self.concurrency = concurrency
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self.evidence = evidence
        #: Seconds between tidying passes: expired duplicate keys and activities past
        #: ``keep_days`` deleted, the per-state gauges refreshed.
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

    async def accept(
        self, envelope: Envelope, activity: Activity, verified: Verified | None
    ) -> Stored | None:
        """The only way in: commit the activity, then hand it on. None: a duplicate.

        A row claimed as it was stored goes to this process's workers in memory (no
        polling delay); one stored behind another about the same object waits for the
        poller, and a cancellation may have freed rows for it. Raises StoreUnavailable
        when nothing could be stored, so the door can tell the sender to retry.
        """
        signer = verified.signer if verified else None
        key_id = verified.key_id if verified else None
        stored = await self.store.insert(
            envelope, activity, signer=signer, key_id=key_id, claim=self.has_room()
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
                    await self.store.prune_seen()
                    if pruned := await self.store.prune_finished():
                        log.info("activities_pruned", count=pruned, keep_days=self.store.keep_days)
                    counts = await self.store.counts()
                    for state in State:
                        self.metrics.held.labels(state.value).set(counts.get(state.value, 0))
            except Exception:
                log.exception("housekeeping_failed")

    # -- one activity ----------------------------------------------------------

    async def process(self, item: Item) -> None:
        if item.state == State.RECEIVED:
            verdict = await self._decide(item)
            if verdict.action == Action.QUARANTINE:
                verdict, decided = await self._quarantine(item, verdict)
            else:
                decided = await self.store.decide(item.id, verdict)
            if not decided:
                log.info("left_hold_meanwhile", row=item.id, activity_id=item.ap_id)
                return
            self.metrics.verdicts.labels(verdict.action.value).inc()
            self.metrics.hold_seconds.observe(verdict.timings.get("hold_seconds", 0.0))
            if verdict.action == Action.QUARANTINE:  # the details are the evidence's only
                signals = outline(verdict.signals)
            else:
                signals = [s.as_json() for s in verdict.signals]
            log.info(
                "verdict",
                row=item.id,
                activity_id=item.ap_id,
                actor=item.actor,
                signer=item.signer,
                verdict=verdict.action.value,
                rule=verdict.rule,
                signals=signals,
                timings=verdict.timings,
            )
            if verdict.action != Action.DELIVER:
                self._finished()  # later activities about the same object may proceed
                return
            item.state = State.QUEUED
        await self._deliver(item)

    async def _decide(self, item: Item) -> Verdict:
        try:
            activity = item.activity
        except DecodeError as exc:  # stored bytes were checked on the way in; belt and braces
            return Verdict(Action.REVIEW, f"stored body unreadable: {exc}")
        return await self.hold.decide(activity)

    async def _quarantine(self, item: Item, verdict: Verdict) -> tuple[Verdict, bool]:
        """Seal the evidence, then in one transaction record it, the verdict, and the
        row's pointer to it, clearing the row's copy of what the evidence holds. If that
        fails, keep the activity held for review instead: nothing is dropped without its
        evidence, nothing cleared before the evidence is committed. Returns the verdict
        recorded and whether the row was still in the hold."""
        media = [
            MediaItem(
                url=s.detail.get("url", ""),
                data=s.payload,
                hashes={k: s.detail.get(k) for k in ("hash_kind", "value", "distance")},
            )
            for s in verdict.signals
            if s.kind == "match" and s.payload is not None
        ]
        facts = {
            "activity": item.activity.document,
            "actor": item.actor,
            "signer": item.signer,
            "key_id": item.key_id,
            "remote": item.remote,
            "target": item.target,
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
        try:
            if self.evidence is None:
                raise EvidenceError("no evidence store configured")
            sealed = await self.evidence.seal(facts=facts, media=media)
            signal = Signal("evidence", "evidence", {"evidence_id": sealed.id, "media": len(media)})
            verdict = Verdict(
                verdict.action, verdict.rule, (*verdict.signals, signal), verdict.timings
            )
            async with self.store.transaction() as conn:
                await self.evidence.record(sealed, activity_row=item.id, conn=conn)
                decided = await self.store.quarantine(conn, item.id, verdict, sealed.id)
        except Exception as exc:
            log.error("evidence_failed", row=item.id, activity_id=item.ap_id, error=str(exc))
            signal = Signal("error", "evidence", {"error": f"evidence not preserved: {exc}"})
            verdict = Verdict(
                Action.REVIEW,
                "quarantine failed: held for review",
                (*(s for s in verdict.signals if s.kind != "evidence"), signal),
                verdict.timings,
            )
            return verdict, await self.store.decide(item.id, verdict)
        log.info("evidence_preserved", evidence=sealed.id, activity_row=item.id, media=len(media))
        return verdict, decided

    async def _deliver(self, item: Item) -> None:
        self._delivering += 1
        try:
            result = await self.upstream.deliver(item.target, item.headers, item.body)
        finally:
            self._delivering -= 1
        self.metrics.upstream_seconds.observe(result.seconds)
        fields = dict(
            row=item.id, activity_id=item.ap_id, status=result.status, attempt=item.attempts + 1
        )
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
