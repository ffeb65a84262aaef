"""Transparency figures counted from real verdicts on a real migrated database, rows
inserted and decided through ActivityStore as the hold and moderators do."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg

from relay.reports.transparency import figures
from relay.signal import Signal
from relay.store.activities import ActivityStore
from relay.verdict import LAZY, Disposition, Verdict
from tests.test_state_graph import evidence_for, insert, note


def match(bank: str, category: str | None) -> Signal:
    detail = {"matcher": "banks", "exact": True, "hash_kind": "md5", "distance": 0}
    if category is not None:
        detail["category"] = category
    return Signal("match", bank, detail)


async def test_figures_count_per_category_disposition_and_who_decided(
    migrated_pool: asyncpg.Pool,
) -> None:
    pool = migrated_pool
    store = ActivityStore(
        pool, owner="worker-1", lease_seconds=30, dedup_window_seconds=60, max_age_seconds=60
    )
    await pool.execute(
        "INSERT INTO bank (name, category) VALUES ('ncmec-md5', 'csam'), ('spam', 'unwanted')"
    )

    async def decided(verdict: Verdict) -> int:
        row = await insert(store, note())
        assert await store.decide(row, verdict)
        return row

    async def quarantined(verdict: Verdict) -> int:
        row = await insert(store, note())
        async with store.transaction() as conn:
            assert await store.quarantine(conn, row, verdict, await evidence_for(conn, row))
        return row

    # Delivered: nothing matched.
    await decided(Verdict(Disposition.DELIVER, "default"))
    # Held for review on an unwanted match, approved by a moderator.
    row = await decided(Verdict(Disposition.REVIEW, "rule[1] spam", (match("spam", "unwanted"),)))
    assert await store.moderate(row, "approve", "mod-a")
    # Held on two categories, rejected by a moderator: once in each, once in the totals.
    row = await decided(
        Verdict(
            Disposition.REVIEW,
            "rule[2] banks",
            (match("ncmec-md5", "csam"), match("ncii-list", "ncii"), match("x", "csam")),
        )
    )
    assert await store.moderate(row, "reject", "mod-b")
    # Quarantined automatically: the row keeps only the outline (no category in the
    # signal), so the bank says which.
    csam = Verdict(Disposition.QUARANTINE, "rule[0] category:csam", (match("ncmec-md5", "csam"),))
    row = await quarantined(csam)
    assert (
        await pool.fetchval(
            "SELECT verdict -> 'signals' -> 0 -> 'detail' FROM activity WHERE id = $1", row
        )
        == "{}"
    )
    # Quarantined, then released by a moderator as a false positive.
    row = await quarantined(csam)
    evidence_id = await pool.fetchval("SELECT evidence_id FROM activity WHERE id = $1", row)
    assert await store.release_quarantined(
        row, evidence_id=evidence_id, body=b"{}", headers=[("Content-Type", "application/json")],
        remote=None, moderator="mod-a", reason="a false positive",
    )  # fmt: skip
    # Delivered lazily, then its check found unwanted material: counted as a reject.
    row = await decided(Verdict(Disposition.DELIVER, LAZY))
    assert await store.checked_after(
        row, Verdict(Disposition.REJECT, "rule[1] spam", (match("spam", "unwanted"),)).as_json()
    )
    # Decided before the period: not counted.
    row = await decided(Verdict(Disposition.REJECT, "rule[1] spam", (match("spam", None),)))
    await pool.execute(
        "UPDATE activity SET decided_at = now() - interval '2 days' WHERE id = $1", row
    )
    # Still in the hold: not decided, not counted.
    await insert(store, note())

    now = datetime.now(UTC)
    out = await figures(pool, now - timedelta(hours=1), now + timedelta(hours=1))
    json.dumps(out)
    assert out["decisions"] == 6
    assert out["by_disposition"] == {"deliver": 1, "review": 2, "reject": 1, "quarantine": 2}
    assert (out["automated"], out["human"]) == (3, 3)
    assert out["released_after_review"] == {
        "total": 2, "by_action": {"approve": 1, "release": 1}
    }  # fmt: skip
    assert out["checked_after"] == 1
    by = out["by_category"]
    assert sorted(by) == ["csam", "ncii", "none", "unwanted"]
    assert by["csam"]["decisions"] == 3
    assert by["csam"]["by_disposition"] == {"deliver": 0, "review": 1, "reject": 0,
                                             "quarantine": 2}  # fmt: skip
    assert (by["csam"]["automated"], by["csam"]["human"]) == (1, 2)
    assert by["csam"]["released_after_review"] == {"total": 1, "by_action": {"release": 1}}
    assert by["ncii"]["decisions"] == 1 and by["ncii"]["human"] == 1
    assert by["unwanted"]["decisions"] == 2
    assert by["unwanted"]["by_disposition"]["reject"] == 1
    assert by["unwanted"]["released_after_review"]["by_action"] == {"approve": 1}
    assert by["none"]["by_disposition"]["deliver"] == 1

    # A period with nothing in it.
    empty = await figures(pool, now - timedelta(days=10), now - timedelta(days=9))
    assert empty["decisions"] == 0 and empty["by_category"] == {}
