"""A quarantined activity's row keeps a pointer to its evidence, not the facts in clear:
no body, no headers, no sender address, no media URLs or hashes."""

from __future__ import annotations

import importlib.resources
import json
from typing import Any

import asyncpg
import pytest

from relay.media.hashes import hash_media
from relay.signal import Signal
from relay.store import migrate
from relay.store.activities import PRUNABLE, ActivityStore, pointer_verdict
from relay.verdict import Disposition, Verdict
from tests.conftest import Fediverse, Running, Upstream
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import BRIDGE, BRIDGE_EDIT, Origin, read_evidence, with_media

# The media hold's setup: a Sluice with an evidence key and a bank that knows the bridge
# photo, an origin serving it.
guarded, origin, evidence_key = media_hold.guarded, media_hold.origin, media_hold.evidence_key
settled = media_hold._settled

MARKER = "victim-account-5e1d"


async def row_of(sluice: Running, ap_id: str) -> asyncpg.Record:
    return await sluice.parts.pool.fetchrow(
        "SELECT *, row_to_json(a)::text AS text FROM activity a WHERE ap_id = $1", ap_id
    )


async def test_a_quarantined_row_keeps_only_a_pointer_to_its_evidence(
    guarded: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,
    evidence_key: Any,
) -> None:
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("bridge-edit.jpg"))  # a PDQ match
    activity["object"]["content"] = f"<p>to @{MARKER}</p>"
    status, _ = await guarded.post(alice, activity, headers={"X-Real-IP": "203.0.113.77"})
    assert status == 202
    record = await settled(guarded, activity["id"])
    assert record["state"] == "quarantined"

    # "Why was this held?" still answers: the action, the rule, which bank, and where
    # the evidence is.
    verdict = record["verdict"]
    assert (verdict["action"], verdict["rule"]) == (
        "quarantine",
        "rule[0] category:test -> quarantine",
    )
    [evidence] = [s for s in verdict["signals"] if s["kind"] == "evidence"]
    evidence_id = evidence["detail"]["evidence_id"]
    assert record["evidence_id"] == verdict["evidence_id"] == evidence_id
    assert {(s["kind"], s["source"]) for s in verdict["signals"]} >= {("match", "test-known")}
    assert all(s["detail"] == {} for s in verdict["signals"] if s["kind"] != "evidence")

    # Nothing of what the evidence encrypts is left in clear in the row.
    row = await row_of(guarded, activity["id"])
    assert (row["body"], row["headers"], row["remote"]) == (None, None, None)
    seen, known = hash_media(BRIDGE_EDIT), hash_media(BRIDGE)
    for secret in (MARKER, "203.0.113.77", "/media/bridge-edit.jpg", seen.md5, seen.sha256):
        assert secret not in row["text"]
    assert seen.pdq[0].hash not in row["text"]
    assert known.pdq[0].hash not in row["text"]  # the bank's hash it matched

    # The evidence has it all.
    facts, media = await read_evidence(guarded, evidence_key, evidence_id)
    assert media == [BRIDGE_EDIT]
    assert MARKER in facts.facts["activity"]["object"]["content"]
    assert ["X-Real-IP", "203.0.113.77"] in facts.facts["headers"]
    assert facts.facts["remote"] is not None
    [match] = [s for s in facts.facts["verdict"]["signals"] if s["kind"] == "match"]
    assert match["detail"]["url"] == origin.url("bridge-edit.jpg")
    assert match["detail"]["value"] == known.pdq[0].hash
    assert upstream.requests == []


async def test_the_row_is_cleared_only_when_its_evidence_is_committed(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    """A failure after the evidence row is written, in the same transaction, takes both
    back: the activity goes to review with its bytes, the blobs are orphans."""
    await guarded.parts.pool.execute(
        """
        CREATE FUNCTION refuse_pointer() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'disk full (test)'; END $$;
        CREATE TRIGGER refuse_pointer BEFORE UPDATE ON activity FOR EACH ROW
            WHEN (NEW.evidence_id IS NOT NULL) EXECUTE FUNCTION refuse_pointer();
        """
    )
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("bridge-edit.jpg"))
    body = json.dumps(activity).encode()
    assert (await guarded.post(alice, body))[0] == 202
    record = await settled(guarded, activity["id"])
    assert record["state"] == "review"
    assert record["verdict"]["rule"] == "quarantine failed: held for review"
    [error] = [s for s in record["verdict"]["signals"] if s["source"] == "evidence"]
    assert "disk full (test)" in error["detail"]["error"]
    assert not [s for s in record["verdict"]["signals"] if s["kind"] == "evidence"]
    row = await row_of(guarded, activity["id"])
    assert bytes(row["body"]) == body
    assert row["headers"] is not None
    assert row["evidence_id"] is None
    assert await guarded.parts.pool.fetchval("SELECT count(*) FROM evidence") == 0
    assert guarded.parts.flow.evidence is not None
    assert len(await guarded.parts.flow.evidence.orphans()) == 2  # facts and the image


# -- the store, on its own ---------------------------------------------------------------

VERDICT = Verdict(
    Disposition.QUARANTINE,
    "rule[0] category:test -> quarantine",
    (
        Signal("hashed", "media", {"url": "https://remote.example/m/1.jpg", "sha256": "ab" * 32}),
        Signal("match", "test-known", {"url": "https://remote.example/m/1.jpg", "value": "cd"}),
        Signal("evidence", "evidence", {"evidence_id": 0, "media": 1}),
    ),
    {"hold_seconds": 0.25},
)


def store(pool: asyncpg.Pool) -> ActivityStore:
    return ActivityStore(
        pool,
        owner="worker-1",
        lease_seconds=30,
        dedup_window_seconds=60,
        max_age_seconds=60,
        keep_days=1,
    )


async def held_row(pool: asyncpg.Pool, state: str = "received") -> int:
    return await pool.fetchval(
        "INSERT INTO activity (type, actor, state, target, headers, body, remote, deadline, "
        "owner, verdict) VALUES ('Create', 'https://remote.example/users/a', $1, '/inbox', "
        "'[[\"X-Real-IP\", \"203.0.113.7\"]]', '\\x7b7d', '203.0.113.7', now() + interval '1 day', "
        "'worker-1', NULL) RETURNING id",
        state,
    )


async def evidence_row(pool: asyncpg.Pool, activity_row: int) -> int:
    return await pool.fetchval(
        "INSERT INTO evidence (activity_row, retain_until, blobs, summary) "
        "VALUES ($1, now() + interval '1 year', '[]', '{}') RETURNING id",
        activity_row,
    )


async def test_a_row_cancelled_while_its_evidence_was_sealed_is_cleared_and_kept(
    migrated_pool: asyncpg.Pool,
) -> None:
    """A Delete cancelled the row meanwhile: the evidence still names it, so it loses
    its copy, keeps its state, and retention leaves it (the evidence refers to it)."""
    pool, activities = migrated_pool, store(migrated_pool)
    row = await held_row(pool)
    await pool.execute(
        "UPDATE activity SET state = 'cancelled', finished_at = now() - interval '3 days' "
        "WHERE id = $1",
        row,
    )
    async with activities.transaction() as conn:
        evidence_id = await evidence_row(conn, row)
        assert not await activities.quarantine(conn, row, VERDICT, evidence_id)
    got = await pool.fetchrow("SELECT * FROM activity WHERE id = $1", row)
    assert got["state"] == "cancelled"
    assert (got["body"], got["headers"], got["remote"]) == (None, None, None)
    assert got["evidence_id"] == evidence_id
    assert await activities.prune_finished() == 0  # no foreign key error either
    assert await pool.fetchval("SELECT count(*) FROM activity") == 1
    assert "evidence_id IS NULL" in PRUNABLE


async def test_a_row_another_worker_holds_is_left_alone(migrated_pool: asyncpg.Pool) -> None:
    pool, activities = migrated_pool, store(migrated_pool)
    row = await held_row(pool)
    await pool.execute("UPDATE activity SET owner = 'worker-2' WHERE id = $1", row)
    async with activities.transaction() as conn:
        evidence_id = await evidence_row(conn, row)
        assert not await activities.quarantine(conn, row, VERDICT, evidence_id)
    got = await pool.fetchrow("SELECT * FROM activity WHERE id = $1", row)
    assert (got["state"], bytes(got["body"]), got["evidence_id"]) == ("received", b"{}", None)


async def test_a_row_without_bytes_needs_its_evidence(migrated_pool: asyncpg.Pool) -> None:
    row = await held_row(migrated_pool)
    with pytest.raises(asyncpg.CheckViolationError):
        await migrated_pool.execute("UPDATE activity SET body = NULL WHERE id = $1", row)


async def test_migration_clears_rows_quarantined_before_it(database_url: str) -> None:
    """Rows quarantined by an older Sluice lose their copy at upgrade, their verdict
    cut down exactly as a new quarantine's is."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        scripts = sorted(
            (
                p
                for p in importlib.resources.files("relay.store.migrations").iterdir()
                if p.name.endswith(".sql")
            ),
            key=lambda p: p.name,
        )
        before = [s for s in scripts if s.name < "0007"]
        await pool.execute(
            "CREATE TABLE schema_migration "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for script in before:
            await pool.execute(script.read_text())
            await pool.execute("INSERT INTO schema_migration (name) VALUES ($1)", script.name)

        quarantined = await held_row(pool, "quarantined")
        cancelled = await held_row(pool, "cancelled")
        delivered = await held_row(pool, "delivered")
        queued = await held_row(pool, "queued")  # evidence names it: its lease was lost
        ids = {r: await evidence_row(pool, r) for r in (quarantined, cancelled, queued)}
        old = VERDICT.as_json()
        old["signals"][2]["detail"]["evidence_id"] = ids[quarantined]
        await pool.execute(
            "UPDATE activity SET verdict = $2::jsonb WHERE id = $1", quarantined, json.dumps(old)
        )

        assert "0007_quarantine_pointer.sql" in await migrate(pool)

        rows = {r["id"]: r for r in await pool.fetch("SELECT * FROM activity")}
        for row in (quarantined, cancelled):
            got = rows[row]
            assert (got["body"], got["headers"], got["remote"]) == (None, None, None)
            assert got["evidence_id"] == ids[row]
        signals = tuple(
            Signal(**{**s.as_json(), "detail": dict(s.detail, evidence_id=ids[quarantined])})
            if s.kind == "evidence"
            else s
            for s in VERDICT.signals
        )
        expected = pointer_verdict(
            Verdict(VERDICT.disposition, VERDICT.rule, signals, VERDICT.timings), ids[quarantined]
        )
        assert json.loads(rows[quarantined]["verdict"]) == expected
        assert rows[cancelled]["verdict"] is None
        for row in (delivered, queued):  # still whole
            assert bytes(rows[row]["body"]) == b"{}"
            assert rows[row]["remote"] == "203.0.113.7"
        assert rows[queued]["evidence_id"] == ids[queued]
        assert rows[delivered]["evidence_id"] is None
    finally:
        await pool.close()
