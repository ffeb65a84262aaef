"""The state graph of ``relay.state`` is what the store does: every allowed edge is
reachable through the store's API against a real PostgreSQL, every other edge is
refused before any SQL runs, and SQL names states only as ``relay.state`` spells them."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Awaitable
from pathlib import Path

import asyncpg
import pytest

import relay.store.activities as activities_module
from relay.activity import parse_activity
from relay.envelope import Envelope
from relay.state import TRANSITIONS, State, TransitionError, check, sql_list
from relay.store.activities import ActivityStore, change
from relay.verdict import Disposition, Verdict

ACTOR = "https://remote.example/users/a"
_n = itertools.count(1)


def store(pool: asyncpg.Pool) -> ActivityStore:
    return ActivityStore(
        pool, owner="worker-1", lease_seconds=30, dedup_window_seconds=60, max_age_seconds=60
    )


def note() -> dict[str, object]:
    n = next(_n)
    return {
        "@context": "https://www.w3.org/ns/activitystreams",
        "id": f"{ACTOR}/activities/{n}",
        "type": "Create",
        "actor": ACTOR,
        "object": {"id": f"{ACTOR}/statuses/{n}", "type": "Note", "attributedTo": ACTOR},
    }


async def insert(activities: ActivityStore, document: dict[str, object]) -> int:
    body = json.dumps(document).encode()
    envelope = Envelope(
        "POST", "/inbox", (("Content-Type", "application/activity+json"),), body, None, time.time()
    )
    stored = await activities.insert(envelope, parse_activity(body), signer=ACTOR, key_id=None)
    assert stored is not None
    return stored.id


async def state_of(pool: asyncpg.Pool, row: int) -> State:
    return State(await pool.fetchval("SELECT state FROM activity WHERE id = $1", row))


async def evidence_for(conn: asyncpg.Connection, row: int) -> int:
    evidence_id: int = await conn.fetchval(
        "INSERT INTO evidence (activity_row, retain_until, blobs, summary) "
        "VALUES ($1, now() + interval '1 year', '[]', '{}') RETURNING id",
        row,
    )
    return evidence_id


QUARANTINE = Verdict(Disposition.QUARANTINE, "rule[0] category:test -> quarantine")


async def test_every_allowed_edge_is_reachable_through_the_store(
    migrated_pool: asyncpg.Pool,
) -> None:
    pool = migrated_pool
    activities = store(pool)
    walked: set[tuple[State, State]] = set()

    async def new_row(state: State) -> tuple[int, dict[str, object]]:
        """A row brought to ``state`` through the store's API, each step recorded."""
        document = note()
        row = await insert(activities, document)
        assert await state_of(pool, row) == State.RECEIVED
        if state == State.RECEIVED:
            return row, document
        first = {State.REVIEW: Disposition.REVIEW}.get(state, Disposition.DELIVER)
        await step(row, State.RECEIVED, first.state, decide(row, first))
        if state in (State.QUEUED, State.REVIEW):
            return row, document
        assert state == State.DEAD
        await step(row, State.QUEUED, State.DEAD, dead(row))
        return row, document

    async def step(row: int, source: State, target: State, move: Awaitable[object]) -> None:
        assert await state_of(pool, row) == source
        await move
        assert await state_of(pool, row) == target, (source, target)
        walked.add((source, target))

    async def decide(row: int, action: Disposition) -> None:
        assert await activities.decide(row, Verdict(action, "test"))

    async def quarantine(row: int, source: State) -> None:
        async with activities.transaction() as conn:
            assert await activities.quarantine(
                conn, row, QUARANTINE, await evidence_for(conn, row), source=source
            )

    async def dead(row: int) -> None:
        # The next attempt would come after the deadline (60 s after it arrived).
        assert await activities.retry(row, 503, "upstream down", delay=3600.0) == State.DEAD

    async def cancel(document: dict[str, object]) -> None:
        delete = {**note(), "type": "Delete", "object": document["object"]["id"]}  # type: ignore[index]
        await insert(activities, delete)

    # From the hold.
    for action in (Disposition.DELIVER, Disposition.REVIEW, Disposition.REJECT):
        row, _ = await new_row(State.RECEIVED)
        await step(row, State.RECEIVED, action.state, decide(row, action))
    row, _ = await new_row(State.RECEIVED)
    await step(row, State.RECEIVED, State.QUARANTINED, quarantine(row, State.RECEIVED))
    row, document = await new_row(State.RECEIVED)
    await step(row, State.RECEIVED, State.CANCELLED, cancel(document))

    # A moderator's decisions, and a Delete, on a row in review.
    row, _ = await new_row(State.REVIEW)
    await step(row, State.REVIEW, State.QUEUED, activities.moderate(row, "approve", "mod"))
    row, _ = await new_row(State.REVIEW)
    await step(row, State.REVIEW, State.REJECTED, activities.moderate(row, "reject", "mod"))
    row, _ = await new_row(State.REVIEW)
    await step(row, State.REVIEW, State.QUARANTINED, quarantine(row, State.REVIEW))
    row, document = await new_row(State.REVIEW)
    await step(row, State.REVIEW, State.CANCELLED, cancel(document))
    row, document = await new_row(State.REVIEW)
    recheck = activities.recheck([document["object"]["id"]], "a peer's receipt")  # type: ignore[index]
    await step(row, State.REVIEW, State.RECEIVED, recheck)

    # Delivery, and the dead letters an admin replays.
    row, _ = await new_row(State.QUEUED)
    await step(row, State.QUEUED, State.DELIVERED, activities.delivered(row, 202))
    row, _ = await new_row(State.QUEUED)
    await step(row, State.QUEUED, State.REFUSED, activities.refused(row, 401, "expired"))
    row, _ = await new_row(State.DEAD)
    await step(row, State.DEAD, State.QUEUED, activities.replay([row]))

    # A moderator releases a false positive from quarantine.
    row, _ = await new_row(State.RECEIVED)
    await step(row, State.RECEIVED, State.QUARANTINED, quarantine(row, State.RECEIVED))
    evidence_id = await pool.fetchval("SELECT evidence_id FROM activity WHERE id = $1", row)
    release = activities.release_quarantined(
        row,
        evidence_id=evidence_id,
        body=b"{}",
        headers=[("Content-Type", "application/activity+json")],
        remote=None,
        moderator="mod",
        reason="a false positive",
    )
    await step(row, State.QUARANTINED, State.QUEUED, release)

    allowed = {(s, t) for s, targets in TRANSITIONS.items() for t in targets}
    assert walked == allowed


FORBIDDEN = [(s, t) for s in State for t in State if s != t and t not in TRANSITIONS[s]]


@pytest.mark.parametrize(("source", "target"), FORBIDDEN, ids=lambda s: s.value)
async def test_every_forbidden_edge_is_refused_and_nothing_written(
    migrated_pool: asyncpg.Pool, source: State, target: State
) -> None:
    row = await migrated_pool.fetchval(
        "INSERT INTO activity (type, actor, state, target, headers, body, deadline) "
        "VALUES ('Create', $2, $1, '/inbox', '[]', '\\x7b7d', now() + interval '1 day') "
        "RETURNING id",
        source.value,
        ACTOR,
    )
    with pytest.raises(TransitionError, match=f"cannot go from {source} to {target}"):
        check(source, target)
    with pytest.raises(TransitionError):
        await change(
            migrated_pool,
            [(source, target)],
            "execute",
            "UPDATE activity SET state = $2 WHERE id = $1 AND state = $3",
            row,
            target.value,
            source.value,
        )
    assert await state_of(migrated_pool, row) == source


def test_a_final_state_says_so() -> None:
    with pytest.raises(TransitionError, match="delivered is final"):
        check(State.DELIVERED, State.QUEUED)


def test_a_quarantine_may_only_be_released() -> None:
    assert TRANSITIONS[State.QUARANTINED] == {State.QUEUED}


STATE_LITERAL = re.compile(r"'({})'".format("|".join(s.value for s in State)))


def test_the_store_writes_no_state_as_a_literal() -> None:
    """States reach the store's SQL through ``sql_list`` only: none is spelt in its source."""
    source = Path(activities_module.__file__).read_text()
    assert STATE_LITERAL.findall(source) == []


def test_sql_lists_match_the_partial_indexes() -> None:
    """Written as the migrations' index predicates are, so the planner can use them."""
    assert sql_list((State.QUEUED, State.RECEIVED)) == "'received', 'queued'"
    finished = (State.CANCELLED, State.REJECTED, State.REFUSED, State.DELIVERED)
    assert sql_list(finished) == "'delivered', 'refused', 'rejected', 'cancelled'"
    assert "state IN ('received', 'queued')" in activities_module._CLAIM


async def test_the_hot_path_statements_check_before_they_run(
    migrated_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the graph to lose an edge, the statement that takes it is refused, unrun."""
    activities = store(migrated_pool)
    row = await insert(activities, note())
    assert await activities.decide(row, Verdict(Disposition.DELIVER, "test"))
    graph = dict(TRANSITIONS)
    graph[State.QUEUED] = frozenset({State.REFUSED, State.DEAD})
    monkeypatch.setattr("relay.state.TRANSITIONS", graph)
    with pytest.raises(TransitionError, match="from queued to delivered"):
        await activities.delivered(row, 202)
    assert await state_of(migrated_pool, row) == State.QUEUED
