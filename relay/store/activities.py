"""Queries on the ``activity`` table: the durable hold and the delivery queue.

Every state change is one statement guarded by the state it leaves, run through
``change``, which first checks each edge the statement may take against the graph
in ``relay.state`` (a forbidden one raises TransitionError and writes nothing), so
concurrent workers, cancellations and admin decisions cannot overwrite each other
and no statement moves a row along an edge the graph lacks. States reach SQL only
through ``relay.state.sql_list``. Leases (``owner``, ``locked_until``) let several
Sluice processes share one database: a crashed worker's rows come back when its
lease expires.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from relay.activity import Activity, parse_activity
from relay.envelope import Envelope
from relay.signal import Signal
from relay.state import HELD, PENDING, RESTING, State, check, sql_list
from relay.store.db import Connection, translated, translating
from relay.verdict import LAZY, Verdict

__all__ = [
    "CANCELLING_TYPES",
    "PRUNABLE",
    "ActivityStore",
    "Edge",
    "Item",
    "Stored",
    "change",
    "lock_order",
    "outline",
    "pointer_verdict",
]

#: A state change a statement may make: (from, to).
Edge = tuple[State, State]


async def change(
    db: asyncpg.Pool | Connection,
    edges: Iterable[Edge],
    how: str,
    statement: str,
    *args: Any,
) -> Any:
    """The one path by which the store changes a row's state: each edge ``statement``
    may take is checked against ``relay.state.TRANSITIONS`` first (in Python: no round
    trip), then ``db.<how>(statement, *args)`` runs (``how``: execute, fetchval,
    fetchrow). A forbidden edge raises TransitionError and nothing is written."""
    for source, target in edges:
        check(source, target)
    return await getattr(db, how)(statement, *args)


#: Activities that take back an earlier one: they cancel it if it is still held.
CANCELLING_TYPES = frozenset({"Delete", "Undo"})
_CANCELS: tuple[Edge, ...] = tuple((s, State.CANCELLED) for s in HELD)

# One statement, one round trip: suppress a duplicate; cancel what a Delete or Undo
# takes back (a Delete: the held Create and Updates of its object; an Undo: the held
# activity it undoes; both only by the same, verified actor); store the activity; and
# claim it for this worker unless an earlier activity of the same actor about the same
# object is still pending (then the poller takes it once that one is done).
_INSERT = f"""
WITH fresh AS (
    INSERT INTO seen (key) VALUES ($1)
    ON CONFLICT (key) DO UPDATE SET seen_at = now()
        WHERE seen.seen_at < now() - make_interval(secs => $2::float8)
    RETURNING key
), cancelled AS (
    UPDATE activity SET state = {sql_list(State.CANCELLED)}, finished_at = now(),
           last_error = 'cancelled by ' || $4 || ' ' || coalesce($3, '(no id)')
    WHERE $5::boolean AND $7::text IS NOT NULL
      AND state IN ({sql_list(HELD)}) AND actor = $6
      AND (($4 = 'Delete' AND object_id = $8 AND type IN ('Create', 'Update'))
           OR ($4 = 'Undo' AND ap_id = $8))
      AND destination IS NOT DISTINCT FROM $19::text
      AND EXISTS (SELECT 1 FROM fresh)
    RETURNING id
), blocked AS (
    SELECT EXISTS (
        SELECT 1 FROM activity
        WHERE $8::text IS NOT NULL AND (object_id = $8 OR ap_id = $8) AND actor = $6
          AND state IN ({sql_list(PENDING)}) AND destination IS NOT DISTINCT FROM $19::text
          AND id NOT IN (SELECT id FROM cancelled)
    ) AS b
)
INSERT INTO activity (ap_id, type, actor, signer, key_id, object_id, target, headers, body,
                      remote, received_at, deadline, owner, locked_until, destination)
SELECT $3::text, $4::text, $6::text, $7::text, $9::text, $8::text, $10::text, $11::jsonb,
       $12::bytea, $13::text, to_timestamp($14::float8),
       least(to_timestamp($14::float8) + make_interval(secs => $15::float8),
             to_timestamp($20::float8)),
       CASE WHEN blocked.b OR NOT $18 THEN NULL ELSE $16::text END,
       CASE WHEN blocked.b OR NOT $18 THEN NULL
            ELSE now() + make_interval(secs => $17::float8) END,
       $19::text
FROM fresh, blocked
RETURNING id, owner IS NOT NULL AS claimed, (SELECT count(*) FROM cancelled) AS cancelled
"""

# Two activities about one object arriving in the same instant would not see each other
# (each statement's snapshot misses the other's uncommitted row): a Delete would pass
# the Create it should cancel, which then reaches the instance after it. So an insert
# first takes a transaction lock on its own id and on its object's (sorted: no
# deadlock), and the statement after it sees whatever the other committed. Hashes to
# 32 bits: a collision only makes two unrelated inserts take turns.
_ORDER_LOCK = 0x0B1E
_LOCK_ORDER = "SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k"


async def lock_order(conn: Connection, activity: Activity) -> bool:
    """Within ``conn``'s transaction, wait for and take the locks of ``activity``'s id
    (which an Undo names as its object) and of its object (which a Create, its Updates
    and its Delete share); False if it has neither."""
    ids = {i for i in (activity.id, activity.object_id) if i}
    if not ids:
        return False
    keys = sorted({zlib.crc32(i.encode()) - 2**31 for i in ids})
    await conn.execute(_LOCK_ORDER, _ORDER_LOCK, keys)
    return True


_CLAIM = f"""
WITH c AS (
    SELECT a.id FROM activity a
    WHERE a.state IN ({sql_list((State.RECEIVED, State.QUEUED))}) AND a.next_attempt_at <= now()
      AND (a.locked_until IS NULL OR a.locked_until < now())
      AND NOT EXISTS (
          SELECT 1 FROM activity p
          WHERE a.object_id IS NOT NULL AND p.id < a.id
            AND (p.object_id = a.object_id OR p.ap_id = a.object_id) AND p.actor = a.actor
            AND p.destination IS NOT DISTINCT FROM a.destination
            AND p.state IN ({sql_list(PENDING)}))
    ORDER BY a.next_attempt_at, a.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE activity SET owner = $1, locked_until = now() + make_interval(secs => $3)
FROM c WHERE activity.id = c.id
RETURNING activity.id, activity.state, activity.target, activity.headers, activity.body,
          activity.attempts, activity.ap_id, activity.actor, activity.signer,
          activity.key_id, activity.remote, activity.destination,
          extract(epoch FROM activity.received_at)::float8 AS received_at
"""


# A quarantine, in the transaction that records its evidence: the row keeps what the
# queue and "why was this held?" need, and the evidence id; body, headers and sender
# address go (the evidence holds them). A row a Delete or Undo cancelled meanwhile
# keeps its state but loses its copy all the same. $5 is the state it leaves: received
# (the hold's verdict, by the worker holding the lease $2) or review (a moderator's,
# on a row no worker holds: $2 is NULL).
_QUARANTINE = f"""
UPDATE activity SET
    state = CASE WHEN state = $5 THEN {sql_list(State.QUARANTINED)} ELSE state END,
    verdict = CASE WHEN state = $5 THEN $3::jsonb ELSE verdict END,
    decided_at = CASE WHEN state = $5 THEN now() ELSE decided_at END,
    finished_at = coalesce(finished_at, now()),
    owner = NULL, locked_until = NULL,
    body = NULL, headers = NULL, remote = NULL, evidence_id = $4
WHERE id = $1
  AND ((state = $5 AND owner IS NOT DISTINCT FROM $2) OR state = {sql_list(State.CANCELLED)})
RETURNING state
"""


def outline(signals: Iterable[Signal]) -> list[dict[str, Any]]:
    """Which checks found what (kind and source) without the details (media URLs, hashes,
    errors), which the evidence keeps; the evidence signal, the pointer, stays whole."""
    return [
        s.as_json() if s.kind == "evidence" else {"kind": s.kind, "source": s.source, "detail": {}}
        for s in signals
    ]


def pointer_verdict(verdict: Verdict, evidence_id: int) -> dict[str, Any]:
    """What a quarantined row keeps of its verdict: the action, the rule, the effects,
    the timings and the ``outline`` of its signals. The whole verdict is in the
    evidence."""
    whole = verdict.as_json()
    return {
        **{k: whole[k] for k in ("action", "rule", "effects", "withheld") if k in whole},
        "signals": outline(verdict.signals),
        "timings": verdict.timings,
        "evidence_id": evidence_id,
    }


@dataclass(slots=True)
class Item:
    """A claimed activity, in the memory of the worker that holds its lease."""

    id: int
    state: State
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    attempts: int
    received_at: float
    ap_id: str | None = None
    actor: str | None = None
    signer: str | None = None
    key_id: str | None = None
    remote: str | None = None
    #: The remote inbox (full URL) of one of the instance's deliveries; None: inbound.
    destination: str | None = None
    _activity: Activity | None = field(default=None, repr=False)

    @property
    def activity(self) -> Activity:
        if self._activity is None:
            self._activity = parse_activity(self.body)
        return self._activity


# The rule is written into the text, as in migration 0012's index, so that the planner
# uses it: lazily handed-on rows whose check is missing are few among millions.
_UNCHECKED = (
    "SELECT id, state, target, headers, body, attempts, ap_id, actor, signer, key_id, "
    "remote, destination, extract(epoch FROM received_at)::float8 AS received_at "
    "FROM activity WHERE checked_after IS NULL AND body IS NOT NULL "
    f"AND verdict ->> 'rule' = '{LAZY}' "
    "AND decided_at < now() - make_interval(secs => $1) ORDER BY id LIMIT $2"
)

# The fixed edges of the statements below, checked by ``change`` each time they run.
_DELIVERED: tuple[Edge, ...] = ((State.QUEUED, State.DELIVERED),)
_REFUSED: tuple[Edge, ...] = ((State.QUEUED, State.REFUSED),)
_DEAD: tuple[Edge, ...] = ((State.QUEUED, State.DEAD),)
_REPLAY: tuple[Edge, ...] = ((State.DEAD, State.QUEUED),)
_RELEASE: tuple[Edge, ...] = ((State.QUARANTINED, State.QUEUED),)
_RECHECK: tuple[Edge, ...] = ((State.REVIEW, State.RECEIVED),)


@dataclass(frozen=True, slots=True)
class Stored:
    id: int
    claimed: bool
    cancelled: int


class ActivityStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        lazy: asyncpg.Pool | None = None,
        owner: str,
        lease_seconds: float,
        dedup_window_seconds: float,
        max_age_seconds: float,
        keep_days: int = 0,
    ) -> None:
        self.pool = pool
        self.lazy = lazy or pool  # synchronous_commit off: see relay.store.db.Database
        self.owner = owner
        self.lease = float(lease_seconds)
        self.dedup_window = float(dedup_window_seconds)
        self.max_age = float(max_age_seconds)
        self.keep_days = keep_days

    async def insert(
        self,
        envelope: Envelope,
        activity: Activity,
        *,
        signer: str | None,
        key_id: str | None,
        claim: bool = True,
        destination: str | None = None,
        deadline: float | None = None,
    ) -> Stored | None:
        """Commit the activity; None when it is a duplicate within the window.

        With ``claim`` the row is leased to this worker at once (the fast path);
        without, the poller of any process takes it. ``destination``: a delivery's
        remote inbox (one activity goes to many, each a row of its own); ``deadline``
        (epoch seconds): retries end sooner than ``max_age`` (a delivery's signature
        expires). Raises StoreUnavailable when the database cannot be reached or
        written: then nothing was stored.
        """
        key = activity.dedup_key
        if destination is not None:
            key = f"{key} to {destination}"
        arguments = (
            key,
            self.dedup_window,
            activity.id,
            activity.type,
            activity.type in CANCELLING_TYPES,
            activity.actor,
            signer,
            activity.object_id,
            key_id,
            envelope.target,
            json.dumps(envelope.headers),
            envelope.body,
            envelope.remote,
            envelope.received_at,
            self.max_age,
            self.owner,
            self.lease,
            claim,
            destination,
            deadline,
        )
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                await lock_order(conn, activity)
                row = await change(conn, _CANCELS, "fetchrow", _INSERT, *arguments)
        if row is None:
            return None
        return Stored(id=row["id"], claimed=row["claimed"], cancelled=row["cancelled"])

    @translating
    async def claim(self, limit: int) -> list[Item]:
        """Take up to ``limit`` rows whose turn has come and whose lease is free."""
        return _items(await self.pool.fetch(_CLAIM, self.owner, limit, self.lease))

    @translating
    async def unchecked(self, older_than: float, limit: int = 100) -> list[Item]:
        """Rows handed on before their check ([hold] lazy) whose check was never
        recorded ``older_than`` seconds after: a process stopped between the two. Only
        rows that still hold their body can be checked."""
        return _items(await self.pool.fetch(_UNCHECKED, older_than, limit))

    @translating
    async def renew_leases(self, ids: list[int]) -> int:
        """Extend the leases of the rows this worker still has in hand."""
        if not ids:
            return 0
        result = await self.lazy.execute(
            "UPDATE activity SET locked_until = now() + make_interval(secs => $3) "
            "WHERE id = ANY($2::bigint[]) AND owner = $1",
            self.owner,
            ids,
            self.lease,
        )
        return int(result.split()[-1])

    @translating
    async def decide(
        self,
        item_id: int,
        verdict: Verdict,
        *,
        conn: Connection | None = None,
        evidence_id: int | None = None,
    ) -> bool:
        """Record the hold's verdict; False when the row left the hold meanwhile.

        ``conn``: within that transaction (the verdict's effects commit with it);
        otherwise on the lazily committed pool (a lost verdict is simply decided
        again). ``evidence_id``: the media judged, sealed (an activity held for
        review keeps what the moderator will see); the row keeps its body."""
        target = verdict.disposition.state
        done = target != State.QUEUED
        result: str = await change(
            conn or self.lazy,
            [(State.RECEIVED, target)],
            "execute",
            "UPDATE activity SET state = $3, verdict = $4::jsonb, decided_at = now(), "
            "finished_at = CASE WHEN $6 THEN now() END, "
            "owner = CASE WHEN $5 THEN NULL ELSE owner END, "
            "locked_until = CASE WHEN $5 THEN NULL ELSE locked_until END, "
            "evidence_id = coalesce($7, evidence_id) "
            f"WHERE id = $1 AND owner = $2 AND state = {sql_list(State.RECEIVED)}",
            item_id,
            self.owner,
            target.value,
            json.dumps(verdict.as_json()),
            done,
            target in RESTING,
            evidence_id,
        )
        return result.endswith(" 1")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection in a transaction that commits synchronously, for writes that
        must land together (a quarantine and its evidence)."""
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn

    @translating
    async def quarantine(
        self,
        conn: Connection,
        item_id: int,
        verdict: Verdict,
        evidence_id: int,
        *,
        source: State = State.RECEIVED,
        moderated: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a quarantine within ``conn``'s transaction, the one that records its
        evidence ``evidence_id``: the row keeps ``pointer_verdict`` and loses its body,
        headers and sender address. ``source``: received (the hold's verdict, on a row
        this worker holds) or review (a moderator's, who and why in ``moderated``, kept
        in the verdict with ``moderated_at``). False when the row is no longer in
        ``source``."""
        kept = pointer_verdict(verdict, evidence_id)
        if moderated is not None:
            kept |= {**moderated, "moderated_at": datetime.now(UTC).isoformat()}
        state: str | None = await change(
            conn,
            [(source, State.QUARANTINED)],
            "fetchval",
            _QUARANTINE,
            item_id,
            self.owner if source == State.RECEIVED else None,
            json.dumps(kept),
            evidence_id,
            source.value,
        )
        return state == State.QUARANTINED.value

    @translating
    async def checked_after(
        self,
        item_id: int,
        verdict: dict[str, Any],
        *,
        conn: Connection | None = None,
        evidence_id: int | None = None,
    ) -> bool:
        """Record the verdict of a lazy check on a row already handed on: no state
        changes (the instance has it), so any state goes. ``verdict``: as stored (the
        whole verdict, or ``pointer_verdict`` for a quarantine-grade hit). False when
        the row was checked after already (its effects were planned then)."""
        result: str = await (conn or self.lazy).execute(
            "UPDATE activity SET checked_after = $2::jsonb, "
            "evidence_id = coalesce($3, evidence_id) "
            "WHERE id = $1 AND checked_after IS NULL",
            item_id,
            json.dumps(verdict),
            evidence_id,
        )
        return result.endswith(" 1")

    @translating
    async def delivered(self, item_id: int, status: int) -> None:
        await change(
            self.lazy,
            _DELIVERED,
            "execute",
            f"UPDATE activity SET state = {sql_list(State.DELIVERED)}, last_status = $2, "
            "attempts = attempts + 1, finished_at = now(), owner = NULL, locked_until = NULL "
            f"WHERE id = $1 AND state = {sql_list(State.QUEUED)} AND owner = $3",
            item_id,
            status,
            self.owner,
        )

    @translating
    async def refused(self, item_id: int, status: int, error: str) -> None:
        """The upstream said no (4xx): recorded, not retried."""
        await change(
            self.lazy,
            _REFUSED,
            "execute",
            f"UPDATE activity SET state = {sql_list(State.REFUSED)}, last_status = $2, "
            "last_error = $3, attempts = attempts + 1, finished_at = now(), owner = NULL, "
            "locked_until = NULL "
            f"WHERE id = $1 AND state = {sql_list(State.QUEUED)} AND owner = $4",
            item_id,
            status,
            error,
            self.owner,
        )

    @translating
    async def expired(self, item_id: int, error: str) -> bool:
        """Dead-letter a row that can no longer be sent (its signature is stale and it
        cannot go another way): listed for the admin with ``error``, not retried."""
        changed = await change(
            self.lazy,
            _DEAD,
            "execute",
            f"UPDATE activity SET state = {sql_list(State.DEAD)}, last_status = NULL, "
            "last_error = $2, finished_at = now(), owner = NULL, locked_until = NULL "
            f"WHERE id = $1 AND state = {sql_list(State.QUEUED)} AND owner = $3",
            item_id,
            error,
            self.owner,
        )
        return bool(changed.endswith(" 1"))

    @translating
    async def retry(
        self, item_id: int, status: int | None, error: str, delay: float
    ) -> State | None:
        """Schedule another attempt, or dead-letter the row once past its deadline."""
        state = await change(
            self.lazy,
            _DEAD,  # or it stays queued: no change of state
            "fetchval",
            "UPDATE activity SET attempts = attempts + 1, last_status = $2, last_error = $3, "
            "  state = CASE WHEN now() + make_interval(secs => $4) > deadline "
            f"              THEN {sql_list(State.DEAD)} ELSE {sql_list(State.QUEUED)} END, "
            "  finished_at = CASE WHEN now() + make_interval(secs => $4) > deadline "
            "                     THEN now() END, "
            "  next_attempt_at = now() + make_interval(secs => $4), "
            "  owner = NULL, locked_until = NULL "
            f"WHERE id = $1 AND state = {sql_list(State.QUEUED)} AND owner = $5 RETURNING state",
            item_id,
            status,
            error,
            delay,
            self.owner,
        )
        return State(state) if state else None  # None: another worker has the row now

    @translating
    async def release(self, item_id: int, *, delay: float = 0.0) -> None:
        """Give a row back (shutting down, or after an unexpected fault: then with a pause)."""
        await self.pool.execute(
            "UPDATE activity SET owner = NULL, locked_until = NULL, "
            "next_attempt_at = now() + make_interval(secs => $3) "
            "WHERE id = $1 AND owner = $2",
            item_id,
            self.owner,
            float(delay),
        )

    # -- admin ---------------------------------------------------------------

    @translating
    async def in_review(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT id, ap_id, type, actor, signer, received_at, decided_at, verdict, "
            f"evidence_id FROM activity WHERE state = {sql_list(State.REVIEW)} "
            "ORDER BY id LIMIT $1",
            limit,
        )
        return [_record(r) for r in rows]

    @translating
    async def delivered_about(
        self, objects: Sequence[str], limit: int = 100
    ) -> list[dict[str, Any]]:
        """Activities already delivered about ``objects`` (their object, or their own id):
        id, ap_id, type, actor and signer, newest first."""
        rows = await self.pool.fetch(
            "SELECT id, ap_id, type, actor, signer FROM activity "
            f"WHERE state = {sql_list(State.DELIVERED)} "
            "AND (object_id = ANY($1::text[]) OR ap_id = ANY($1::text[])) "
            "ORDER BY id DESC LIMIT $2",
            list(objects),
            limit,
        )
        return [dict(row) for row in rows]

    @translating
    async def recheck(self, objects: Sequence[str], why: str) -> list[int]:
        """Send rows waiting for a moderator about ``objects`` (their object, or their own
        id) through the checks again: new knowledge (a peer's receipt, its hashes now in
        a bank) lets the policy decide what a moderator otherwise would. The rows."""
        rows = await change(
            self.pool,
            _RECHECK,
            "fetch",
            f"UPDATE activity SET state = {sql_list(State.RECEIVED)}, next_attempt_at = now(), "
            "finished_at = NULL, owner = NULL, locked_until = NULL, "
            "verdict = coalesce(verdict, '{}'::jsonb) || jsonb_build_object('rechecked', $2::text) "
            f"WHERE state = {sql_list(State.REVIEW)} "
            "AND (object_id = ANY($1::text[]) OR ap_id = ANY($1::text[])) RETURNING id",
            list(objects),
            why,
        )
        return [int(r["id"]) for r in rows]

    @translating
    async def moderate(self, row: int, action: str, moderator: str) -> str | None:
        """A moderator's decision on a row in review: ``approve`` delivers it, ``reject``
        drops it (with the record kept). Returns the new state, None if not in review."""
        target = {"approve": State.QUEUED, "reject": State.REJECTED}[action]
        state: str | None = await change(
            self.pool,
            [(State.REVIEW, target)],
            "fetchval",
            "UPDATE activity SET state = $2, next_attempt_at = now(), "
            "deadline = greatest(deadline, now() + make_interval(secs => $5)), "
            "finished_at = CASE WHEN $6 THEN now() END, "
            "verdict = coalesce(verdict, '{}'::jsonb) || jsonb_build_object("
            "  'moderator', $3::text, 'moderator_action', $4::text, 'moderated_at', now()) "
            f"WHERE id = $1 AND state = {sql_list(State.REVIEW)} RETURNING state",
            row,
            target.value,
            moderator,
            action,
            self.max_age,
            target in RESTING,
        )
        return state

    @translating
    async def escalate(self, row: int, who: str, why: str) -> bool:
        """Mark a row in review for an admin (``verdict.escalated``: by, why, at); it
        stays in review. False when it is no longer there."""
        done = await self.pool.execute(
            "UPDATE activity SET verdict = coalesce(verdict, '{}'::jsonb) || "
            "jsonb_build_object('escalated', jsonb_build_object("
            "  'by', $2::text, 'why', $3::text, 'at', now())) "
            f"WHERE id = $1 AND state = {sql_list(State.REVIEW)}",
            row,
            who,
            why,
        )
        return str(done).endswith(" 1")

    @translating
    async def release_quarantined(
        self,
        row: int,
        *,
        evidence_id: int,
        body: bytes,
        headers: Sequence[Sequence[str]],
        remote: str | None,
        moderator: str,
        reason: str,
    ) -> str | None:
        """A moderator found quarantined row ``row`` a false positive: queue it for
        delivery again with the body, headers and sender address its evidence
        ``evidence_id`` kept (read on the record by the caller). The row keeps its
        pointer to the evidence, which stays; who and why go into its verdict
        (``moderator``, ``moderator_action`` = "release", ``moderator_reason``,
        ``moderated_at``). The new state, or None if the row is not quarantined with
        that evidence."""
        state: str | None = await change(
            self.pool,
            _RELEASE,
            "fetchval",
            f"UPDATE activity SET state = {sql_list(State.QUEUED)}, body = $3, "
            "headers = $4::jsonb, remote = $5, attempts = 0, next_attempt_at = now(), "
            "deadline = greatest(deadline, now() + make_interval(secs => $8)), "
            "finished_at = NULL, owner = NULL, locked_until = NULL, last_error = NULL, "
            "verdict = coalesce(verdict, '{}'::jsonb) || jsonb_build_object("
            "  'moderator', $6::text, 'moderator_action', 'release', "
            "  'moderator_reason', $7::text, 'moderated_at', now()) "
            f"WHERE id = $1 AND state = {sql_list(State.QUARANTINED)} AND evidence_id = $2 "
            "RETURNING state",
            row,
            evidence_id,
            body,
            json.dumps([list(h) for h in headers]),
            remote,
            moderator,
            reason,
            self.max_age,
        )
        return state

    @translating
    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT id, ap_id, type, actor, target, destination, attempts, last_status, "
            "last_error, received_at, finished_at FROM activity "
            f"WHERE state = {sql_list(State.DEAD)} ORDER BY id LIMIT $1",
            limit,
        )
        return [_jsonable(dict(r)) for r in rows]

    @translating
    async def replay(self, ids: list[int] | None) -> int:
        """Put dead letters back in the queue with a fresh deadline; None replays all."""
        result = await change(
            self.pool,
            _REPLAY,
            "execute",
            f"UPDATE activity SET state = {sql_list(State.QUEUED)}, attempts = 0, "
            "next_attempt_at = now(), deadline = now() + make_interval(secs => $2), "
            "finished_at = NULL, owner = NULL, locked_until = NULL "
            f"WHERE state = {sql_list(State.DEAD)} AND ($1::bigint[] IS NULL OR id = ANY($1))",
            ids,
            self.max_age,
        )
        return int(result.split()[-1])

    @translating
    async def get(self, key: int | str) -> dict[str, Any] | None:
        """One activity's record, by row id or activity id, for "why was this held?"."""
        column = "id" if isinstance(key, int) else "ap_id"
        row = await self.pool.fetchrow(
            "SELECT id, ap_id, type, actor, signer, key_id, object_id, state, target, "
            "destination, remote, received_at, decided_at, finished_at, attempts, last_status, "
            "last_error, verdict, checked_after, "
            f"evidence_id FROM activity WHERE {column} = $1 ORDER BY id DESC LIMIT 1",
            key,
        )
        return None if row is None else _record(row)

    @translating
    async def counts(self) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT state, count(*) AS n FROM activity GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    @translating
    async def prune_seen(self) -> int:
        result = await self.pool.execute(
            "DELETE FROM seen WHERE seen_at < now() - make_interval(secs => $1)",
            self.dedup_window,
        )
        return int(result.split()[-1])

    @translating
    async def prune_finished(self, batch: int = 5_000) -> int:
        """Delete finished activities older than ``keep_days``; how many.

        In batches, so a first run over months of rows neither holds locks for long nor
        stalls the workers. Quarantined rows are left to their evidence, dead letters
        to an admin: neither is finished business. Nor is a row that evidence names
        (one cancelled while its quarantine was being sealed): the evidence refers to it.
        """
        if self.keep_days <= 0:
            return 0
        pruned = 0
        while True:
            result = await self.pool.execute(
                f"DELETE FROM activity WHERE id IN ({PRUNABLE})", self.keep_days, batch
            )
            deleted = int(result.split()[-1])
            pruned += deleted
            if deleted < batch:
                return pruned


# Finished business past its days ($1), a batch ($2) at a time. The states are written
# into the text, as in the index of migration 0005, so that the planner can use it.
_FINISHED = (State.DELIVERED, State.REFUSED, State.REJECTED, State.CANCELLED)
PRUNABLE = (
    f"SELECT id FROM activity WHERE state IN ({sql_list(_FINISHED)}) "
    "AND finished_at < now() - make_interval(days => $1) AND evidence_id IS NULL "
    # Evidence may name a row that kept no pointer (its quarantine lost the lease to
    # another worker, which decided otherwise): evidence outlives the row's days.
    "AND NOT EXISTS (SELECT 1 FROM evidence WHERE evidence.activity_row = activity.id) "
    "LIMIT $2"
)


def _record(row: asyncpg.Record) -> dict[str, Any]:
    record = _jsonable(dict(row))
    for column in ("verdict", "checked_after"):
        if record.get(column) is not None:
            record[column] = json.loads(record[column])
    return record


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in record.items()}


def _items(rows: Iterable[asyncpg.Record]) -> list[Item]:
    return [
        Item(
            id=r["id"],
            state=State(r["state"]),
            target=r["target"],
            headers=[tuple(h) for h in json.loads(r["headers"])],
            body=r["body"],
            attempts=r["attempts"],
            received_at=r["received_at"],
            ap_id=r["ap_id"],
            actor=r["actor"],
            signer=r["signer"],
            key_id=r["key_id"],
            remote=r["remote"],
            destination=r["destination"],
        )
        for r in rows
    ]
