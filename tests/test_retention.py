"""Finished activities are deleted after ``[database] keep_days``; nothing else is."""

from __future__ import annotations

import asyncpg
import pytest

from relay.effects.retention import KIND as RETENTION
from relay.outbox import Pending
from relay.state import State
from relay.store.activities import PRUNABLE, ActivityStore
from tests.conftest import Fediverse, Running, Upstream, wait_for


def store(pool: asyncpg.Pool, keep_days: int) -> ActivityStore:
    return ActivityStore(
        pool,
        owner="test",
        lease_seconds=30,
        dedup_window_seconds=60,
        max_age_seconds=60,
        keep_days=keep_days,
    )


async def add_row(pool: asyncpg.Pool, state: State, days_ago: float | None) -> int:
    """A row in ``state`` that finished ``days_ago`` (None: not finished)."""
    return await pool.fetchval(
        "INSERT INTO activity (type, actor, state, target, headers, body, deadline, finished_at) "
        "VALUES ('Create', 'https://remote.example/users/a', $1, '/inbox', '[]', '\\x7b7d', "
        "now() + interval '1 day', now() - make_interval(secs => $2 * 86400)) RETURNING id",
        state.value,
        days_ago,
    )


async def remaining(pool: asyncpg.Pool) -> set[int]:
    return {r["id"] for r in await pool.fetch("SELECT id FROM activity")}


async def test_finished_rows_past_their_days_are_deleted_and_nothing_else(
    migrated_pool: asyncpg.Pool,
) -> None:
    pool = migrated_pool
    old = {s: await add_row(pool, s, 31) for s in State}
    recent = {s: await add_row(pool, s, 29) for s in State}
    pending = [await add_row(pool, s, None) for s in (State.RECEIVED, State.REVIEW, State.QUEUED)]

    assert await store(pool, keep_days=30).prune_finished() == 4
    gone = {State.DELIVERED, State.REFUSED, State.REJECTED, State.CANCELLED}
    kept = {row for s, row in old.items() if s not in gone}  # quarantined, dead, unfinished
    assert await remaining(pool) == kept | set(recent.values()) | set(pending)


async def test_zero_days_keeps_everything(migrated_pool: asyncpg.Pool) -> None:
    rows = {await add_row(migrated_pool, State.DELIVERED, 3650) for _ in range(3)}
    assert await store(migrated_pool, keep_days=0).prune_finished() == 0
    assert await remaining(migrated_pool) == rows


async def test_pruning_goes_in_batches_until_done(migrated_pool: asyncpg.Pool) -> None:
    for _ in range(7):
        await add_row(migrated_pool, State.DELIVERED, 40)
    assert await store(migrated_pool, keep_days=30).prune_finished(batch=2) == 7
    assert await remaining(migrated_pool) == set()


async def test_a_row_that_evidence_names_is_kept_and_pruning_goes_on(
    migrated_pool: asyncpg.Pool,
) -> None:
    """A quarantine whose lease another worker took records its evidence, but the row,
    decided by that other worker, keeps no pointer: the evidence still needs it."""
    pool = migrated_pool
    named = await add_row(pool, State.DELIVERED, 40)
    await pool.execute(
        "INSERT INTO evidence (id, activity_row, retain_until, blobs, summary) "
        "VALUES (7, $1, now() + interval '365 days', '[]'::jsonb, '{}'::jsonb)",
        named,
    )
    other = await add_row(pool, State.DELIVERED, 40)
    assert await store(pool, keep_days=30).prune_finished() == 1
    assert await remaining(pool) == {named}
    assert other not in await remaining(pool)


async def test_pruning_finds_old_rows_through_an_index(migrated_pool: asyncpg.Pool) -> None:
    # The partial index's predicate must be provable from the query's text: a table of
    # millions of delivered rows must not be scanned every minute.
    async with migrated_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetch(f"EXPLAIN {PRUNABLE}", 30, 10)
    assert "activity_finished" in "\n".join(row[0] for row in plan)


@pytest.mark.parametrize("keep_days", [1])
async def test_a_running_sluice_prunes_what_it_finished(
    sluice_factory: object,
    fediverse: Fediverse,
    upstream: Upstream,
    keep_days: int,
) -> None:
    sluice: Running = await sluice_factory(  # type: ignore[operator]
        database={"keep_days": keep_days}, delivery={"lease_seconds": 0.9}
    )
    pool = sluice.parts.pool
    alice = fediverse.actor("alice")
    activity = alice.activity()
    status, _ = await sluice.post(alice, activity)
    assert status == 202
    await wait_for(upstream.inbox_posts)
    row = await wait_for(
        lambda: pool.fetchval(
            "SELECT id FROM activity WHERE ap_id = $1 AND state = 'delivered'", activity["id"]
        )
    )
    # Make it older than keep_days; then run the retention job now, not at its next slot.
    await pool.execute(
        "UPDATE activity SET finished_at = now() - interval '2 days' WHERE id = $1", row
    )
    assert sluice.parts.outbox is not None
    await sluice.parts.outbox.enqueue([Pending(RETENTION, "test:retention", {})])
    await wait_for(
        lambda: pool.fetchval("SELECT count(*) = 0 FROM activity WHERE id = $1", row),
        timeout=10,
    )


async def test_the_retention_job_prunes_done_effects_and_keeps_dead_letters(
    sluice_factory: object,
) -> None:
    sluice: Running = await sluice_factory(database={"keep_days": 1})  # type: ignore[operator]
    pool, outbox = sluice.parts.pool, sluice.parts.outbox
    assert outbox is not None
    # Each process schedules the job; the first slot is enqueued at start.
    await wait_for(lambda: pool.fetchval("SELECT count(*) FROM effect WHERE kind = $1", RETENTION))
    await pool.execute(
        "INSERT INTO effect (key, kind, payload, state, done_at) VALUES "
        "('old', 'notify', '{}', 'done', now() - interval '2 days'), "
        "('recent', 'notify', '{}', 'done', now()), "
        "('lost', 'notify', '{}', 'dead', now() - interval '2 days')"
    )
    await outbox.enqueue([Pending(RETENTION, "test:retention", {})])
    await wait_for(
        lambda: pool.fetchval("SELECT count(*) = 0 FROM effect WHERE key = 'old'"), timeout=10
    )
    left = {r["key"] for r in await pool.fetch("SELECT key FROM effect")}
    assert {"recent", "lost"} <= left
