"""The durable outbox: effects (relay.effects) enqueued in the verdict's own transaction,
run at least once, retried with backoff, dead-lettered for an admin to list and replay.

Each effect has an idempotency key, unique in the table: enqueueing a key again adds
nothing, so a verdict recorded twice never repeats its effects, and a periodic job's
slot (``schedule:NAME:SLOT``) is enqueued once however many processes reach it. Rows
are claimed with a lease in one statement (``FOR UPDATE SKIP LOCKED``), as activities
are; leases of rows in flight are renewed, and a lease that runs out (a process killed
mid-effect) hands the row to the next runner, which runs it again with the same key.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from relay.effects import Effect, EffectFailed
from relay.retry import backoff
from relay.store.db import Connection, translated, translating

__all__ = ["STATES", "Outbox", "Pending", "enqueue_now"]

log = structlog.get_logger(__name__)

#: The states of an effect row.
STATES = ("pending", "done", "dead")

#: How much of a failure's text is kept on the row.
_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class Pending:
    """One effect to run; ``key`` is its idempotency key."""

    kind: str
    key: str
    payload: dict[str, Any]


@dataclass(slots=True)
class _Schedule:
    name: str
    every: float
    kind: str
    payload: dict[str, Any]
    slot: int | None = None  # the last slot this process enqueued


_ENQUEUE = """
INSERT INTO effect (key, kind, payload)
SELECT k, t, p::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS u (k, t, p)
ON CONFLICT (key) DO NOTHING
"""

_CLAIM = """
WITH c AS (
    SELECT id FROM effect
    WHERE state = 'pending' AND next_at <= now()
      AND (lease_until IS NULL OR lease_until < now())
      AND kind = ANY($4::text[])
    ORDER BY next_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE effect SET owner = $1, lease_until = now() + make_interval(secs => $3),
                  attempts = effect.attempts + 1
FROM c WHERE effect.id = c.id
RETURNING effect.id, effect.key, effect.kind, effect.payload::text AS payload, effect.attempts
"""

_COLUMNS = (
    "id, key, kind, payload::text AS payload, state, attempts, last_error, "
    "next_at, created_at, done_at"
)


async def enqueue_now(outbox: Outbox | None, pending: list[Pending], **context: object) -> None:
    """Enqueue the effects of a verdict a door gave at once (an upload, a fetch: no row
    to record it with). A failure is logged with ``context``, never the door's answer's
    business: the refusal stands either way."""
    if not pending:
        return
    if outbox is None:
        log.error("no_outbox", effects=[p.kind for p in pending], **context)
        return
    try:
        await outbox.enqueue(pending)
    except Exception as exc:
        log.error("effects_not_enqueued", error=str(exc), **context)


class _Job:
    """A periodic job as an effect: its payload is nothing, its run the callable's."""

    irreversible = False

    def __init__(self, name: str, job: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._job = job

    async def run(self, payload: dict[str, Any]) -> None:
        await self._job()


class Outbox:
    """Effects in PostgreSQL and the runner that carries them out."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_attempts: int = 10,
        backoff_initial: float = 5.0,
        backoff_max: float = 3600.0,
        lease: float = 60.0,
        poll_interval: float = 1.0,
        concurrency: int = 4,
    ) -> None:
        self.pool = pool
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.lease = lease
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.owner = f"outbox-{uuid.uuid4().hex[:12]}"
        self._handlers: dict[str, Effect] = {}
        self._schedules: list[_Schedule] = []
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    def register(self, kind: str, handler: Effect) -> None:
        """Run effects of ``kind`` with ``handler``; a runner claims only kinds it has."""
        self._handlers[kind] = handler

    def every(self, name: str, seconds: float, job: Callable[[], Awaitable[object]]) -> None:
        """Run ``job`` every ``seconds``, in one process of those sharing the database
        (a periodic job with no payload: a sweep, a purge)."""
        self.register(name, _Job(name, job))
        self.schedule(name, seconds, name, {})

    def schedule(self, name: str, every_seconds: float, kind: str, payload: dict[str, Any]) -> None:
        """A periodic job: every ``every_seconds`` (one slot of wall-clock time), one
        effect of ``kind``, keyed by its slot, so processes sharing the database
        enqueue it once."""
        if every_seconds <= 0:
            raise ValueError(f"schedule {name!r}: every_seconds must be positive")
        self._schedules.append(_Schedule(name, every_seconds, kind, dict(payload)))

    @translating
    async def enqueue(self, pending: Iterable[Pending], conn: Connection | None = None) -> int:
        """Add effects whose keys are new; with ``conn``, inside the caller's
        transaction (they commit with it or not at all). Returns the rows added."""
        items = list(pending)
        if not items:
            return 0
        args = (
            [p.key for p in items],
            [p.kind for p in items],
            [json.dumps(p.payload) for p in items],
        )
        if conn is not None:
            result = await conn.execute(_ENQUEUE, *args)
        else:
            result = await self.pool.execute(_ENQUEUE, *args)
        added = int(result.split()[-1])
        if added:
            self._wake.set()
        return added

    @translating
    async def list(
        self, state: str | None = None, limit: int = 100
    ) -> builtins.list[dict[str, Any]]:
        """Effects, newest first, in ``state`` if given."""
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM effect WHERE ($1::text IS NULL OR state = $1) "
            "ORDER BY id DESC LIMIT $2",
            state,
            limit,
        )
        return [
            {
                "id": r["id"],
                "key": r["key"],
                "kind": r["kind"],
                "state": r["state"],
                "attempts": r["attempts"],
                "last_error": r["last_error"],
                "payload": json.loads(r["payload"]),
                "next_at": r["next_at"].isoformat(),
                "created_at": r["created_at"].isoformat(),
                "done_at": r["done_at"].isoformat() if r["done_at"] else None,
            }
            for r in rows
        ]

    @translating
    async def replay(self, ids: builtins.list[int] | None) -> int:
        """Dead letters back to pending with their attempts reset: ``ids``, or all of
        them for None. Returns how many."""
        result = await self.pool.execute(
            "UPDATE effect SET state = 'pending', attempts = 0, next_at = now(), "
            "owner = NULL, lease_until = NULL, last_error = NULL "
            "WHERE state = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))",
            ids,
        )
        replayed = int(result.split()[-1])
        if replayed:
            self._wake.set()
        return replayed

    @translating
    async def prune(self, keep_days: int, *, schedules_after: float = 3600.0) -> int:
        """Delete effects done more than ``keep_days`` ago (0: keep them), and the
        done slots of periodic jobs after ``schedules_after`` seconds; dead letters stay
        for an admin. Returns how many."""
        result = await self.pool.execute(
            "DELETE FROM effect WHERE state = 'done' AND ("
            "($1 > 0 AND done_at < now() - make_interval(days => $1)) "
            "OR (key LIKE 'schedule:%' AND done_at < now() - make_interval(secs => $2)))",
            keep_days,
            schedules_after,
        )
        return int(result.split()[-1])

    @translating
    async def counts(self) -> dict[str, int]:
        """How many effects are in each state."""
        rows = await self.pool.fetch("SELECT state, count(*) AS n FROM effect GROUP BY state")
        found = {r["state"]: int(r["n"]) for r in rows}
        return {state: found.get(state, 0) for state in STATES}

    # -- the runner ---------------------------------------------------------------

    async def start(self) -> None:
        """Start claiming and running effects (and enqueueing scheduled ones)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._loop(), name="outbox-loop"),
            asyncio.create_task(self._renew(), name="outbox-leases"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give effects in flight ``grace`` seconds, then cut them and
        free their leases (they run again, with the same key, at the next claim)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        running = list(self._inflight.values())
        if running:
            await asyncio.wait(running, timeout=grace)
        cut = [item for item, task in self._inflight.items() if not task.done()]
        for task in self._inflight.values():
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if cut:
            try:
                with translated():
                    await self.pool.execute(
                        "UPDATE effect SET owner = NULL, lease_until = NULL "
                        "WHERE id = ANY($1::bigint[]) AND owner = $2 AND state = 'pending'",
                        cut,
                        self.owner,
                    )
            except Exception as exc:  # their leases run out instead
                log.warning("outbox_release_failed", error=str(exc))

    async def _loop(self) -> None:
        while True:
            try:
                await self._enqueue_scheduled()
                await self._claim_and_run()
            except Exception as exc:  # a database gone: try again at the next poll
                log.warning("outbox_poll_failed", error=f"{type(exc).__name__}: {exc}")
            self._wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation
            # that arrives as the event is set, and stop() would wait on this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def _enqueue_scheduled(self) -> None:
        now = time.time()
        for job in self._schedules:
            slot = math.floor(now / job.every)
            if slot == job.slot:
                continue
            key = f"schedule:{job.name}:{slot}"
            await self.enqueue([Pending(job.kind, key, job.payload)])
            job.slot = slot

    async def _claim_and_run(self) -> None:
        room = self.concurrency - len(self._inflight)
        if room <= 0 or not self._handlers:
            return
        with translated():
            rows = await self.pool.fetch(_CLAIM, self.owner, room, self.lease, list(self._handlers))
        for row in rows:
            task = asyncio.create_task(self._run(row), name=f"effect-{row['id']}")
            self._inflight[row["id"]] = task
            task.add_done_callback(functools.partial(self._finished, row["id"]))

    def _finished(self, item: int, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(item, None)
        self._wake.set()  # room for another

    async def _run(self, row: asyncpg.Record) -> None:
        item, key, kind, attempts = row["id"], row["key"], row["kind"], row["attempts"]
        payload = {"key": key, **json.loads(row["payload"])}
        try:
            await self._handlers[kind].run(payload)
        except asyncio.CancelledError:
            raise
        except EffectFailed as exc:
            if exc.deferred is not None and not exc.permanent:
                await self._defer(item, kind, exc.reason, exc.deferred)
                return
            await self._failed(item, key, kind, attempts, exc.reason, permanent=exc.permanent)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            await self._failed(item, key, kind, attempts, reason, permanent=False)
        else:
            await self._settle(
                "UPDATE effect SET state = 'done', done_at = now(), owner = NULL, "
                "lease_until = NULL, last_error = NULL WHERE id = $1 AND owner = $2",
                item,
                self.owner,
            )
            log.info("effect_done", effect=item, kind=kind, key=key, attempts=attempts)

    async def _failed(
        self, item: int, key: str, kind: str, attempts: int, reason: str, *, permanent: bool
    ) -> None:
        reason = reason[:_ERROR_CHARS]
        if permanent or attempts >= self.max_attempts:
            await self._settle(
                "UPDATE effect SET state = 'dead', owner = NULL, lease_until = NULL, "
                "last_error = $3 WHERE id = $1 AND owner = $2",
                item,
                self.owner,
                reason,
            )
            log.warning(
                "effect_dead", effect=item, kind=kind, key=key, attempts=attempts, reason=reason
            )
            return

        delay = backoff(attempts, self.backoff_initial, self.backoff_max)
        await self._settle(
            "UPDATE effect SET next_at = now() + make_interval(secs => $4), owner = NULL, "
            "lease_until = NULL, last_error = $3 WHERE id = $1 AND owner = $2",
            item,
            self.owner,
            reason,
            delay,
        )
        log.info("effect_retry", effect=item, kind=kind, attempts=attempts, reason=reason)

    async def _defer(self, item: int, kind: str, reason: str, delay: float) -> None:
        """Not tried: back in ``delay`` seconds, the claim's attempt given back."""
        await self._settle(
            "UPDATE effect SET attempts = greatest(attempts - 1, 0), "
            "next_at = now() + make_interval(secs => $4), owner = NULL, lease_until = NULL, "
            "last_error = $3 WHERE id = $1 AND owner = $2",
            item,
            self.owner,
            reason[:_ERROR_CHARS],
            max(0.0, delay),
        )
        log.info("effect_deferred", effect=item, kind=kind, seconds=round(delay, 1), reason=reason)

    async def _settle(self, query: str, *args: Any) -> None:
        """Record an outcome. Without the database, the lease runs out and the effect
        runs again (at least once): its key lets the receiver drop the repeat."""
        try:
            with translated():
                await self.pool.execute(query, *args)
        except Exception as exc:
            log.warning("effect_outcome_lost", effect=args[0], error=str(exc))

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if not self._inflight:
                continue
            try:
                with translated():
                    await self.pool.execute(
                        "UPDATE effect SET lease_until = now() + make_interval(secs => $3) "
                        "WHERE id = ANY($1::bigint[]) AND owner = $2",
                        list(self._inflight),
                        self.owner,
                        self.lease,
                    )
            except Exception as exc:
                log.warning("outbox_renew_failed", error=str(exc))
