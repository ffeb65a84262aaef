"""The evidence lifecycle: kept as long as its jurisdiction asks, held on a legal hold,
purged after, exported for an authority on the record."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from relay.blobs import PostgresBlobs
from relay.evidence import EvidenceError, EvidenceKey, EvidenceStore, MediaItem
from tests.test_evidence import facts, png, write_key


@pytest.fixture
def key(tmp_path: Path) -> EvidenceKey:
    return write_key(tmp_path / "evidence.key")


@pytest.fixture
def store(migrated_pool: asyncpg.Pool, tmp_path: Path, key: EvidenceKey) -> EvidenceStore:
    return EvidenceStore(migrated_pool, tmp_path / "data" / "evidence", key)


async def kept(store: EvidenceStore, evidence_id: int) -> tuple[timedelta, str | None]:
    row = await store.pool.fetchrow(
        "SELECT retain_until - created_at AS days, jurisdiction FROM evidence WHERE id = $1",
        evidence_id,
    )
    return row["days"], row["jurisdiction"]


async def expire(store: EvidenceStore, evidence_id: int) -> None:
    """As if its retention ran out yesterday."""
    await store.pool.execute(
        "UPDATE evidence SET retain_until = now() - interval '1 day' WHERE id = $1", evidence_id
    )


async def files_of(store: EvidenceStore, evidence_id: int) -> list[Path]:
    [meta] = [m for m in await store.list() if m["id"] == evidence_id]
    return [store.directory / b["file"] for b in meta["blobs"]]


# -- retention per jurisdiction ----------------------------------------------------


@pytest.mark.parametrize(
    ("jurisdictions", "by_jurisdiction", "days", "named"),
    [
        ((), None, 365, None),  # 18 U.S.C. 2258A(h) since the REPORT Act
        (("GB",), None, 90, "GB"),  # the UK code's minimum
        (("gb", "US"), None, 365, "US"),  # the longest wins
        (("DE",), None, 365, None),  # unknown: the default
        (("GB", "EU"), {"GB": 180, "EU": 200}, 200, "EU"),
    ],
)
async def test_retention_per_jurisdiction(
    migrated_pool: asyncpg.Pool,
    tmp_path: Path,
    key: EvidenceKey,
    jurisdictions: tuple[str, ...],
    by_jurisdiction: dict[str, int] | None,
    days: int,
    named: str | None,
) -> None:
    extra = {"keep_days_by_jurisdiction": by_jurisdiction} if by_jurisdiction else {}
    store = EvidenceStore(migrated_pool, tmp_path / "ev", key, jurisdictions=jurisdictions, **extra)
    evidence_id = await store.preserve(activity_row=None, facts={}, media=[])
    assert await kept(store, evidence_id) == (timedelta(days=days), named)
    [meta] = await store.list()
    assert (meta["jurisdiction"], meta["purged_at"]) == (named, None)


async def test_a_case_may_name_its_own_jurisdictions(store: EvidenceStore) -> None:
    sealed = await store.seal(facts={}, media=[])
    await store.record(sealed, activity_row=None, jurisdictions=["GB"])
    assert await kept(store, sealed.id) == (timedelta(days=90), "GB")


def test_retention_of_zero_days_is_refused(migrated_pool: asyncpg.Pool, tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match=r"at least 1 day, not 0 \(jurisdiction GB\)"):
        EvidenceStore(migrated_pool, tmp_path, None, keep_days_by_jurisdiction={"GB": 0})


# -- legal hold and purge ----------------------------------------------------------


async def test_purge_honours_retention_and_legal_hold(store: EvidenceStore) -> None:
    media = [MediaItem("https://remote.example/a.png", png(), {})]
    past, fresh, held = [
        await store.preserve(activity_row=None, facts=facts(), media=media) for _ in range(3)
    ]
    await expire(store, past)
    await expire(store, held)
    await store.hold(held, who="alice", why="police preservation request 2703(f) #77")
    past_files = await files_of(store, past)
    assert all(p.is_file() for p in past_files)

    [purged] = await store.purge()
    assert (purged.id, purged.blobs, purged.jurisdiction) == (past, 2, None)
    assert not any(p.exists() for p in past_files)
    assert all(p.is_file() for p in await files_of(store, fresh) + await files_of(store, held))
    [meta] = [m for m in await store.list() if m["id"] == past]
    assert meta["purged_at"] is not None
    [entry] = await store.audit(past)
    assert (entry["who"], entry["what"], entry["outcome"]) == (
        "retention",
        "purge",
        "ok: 2 blobs deleted",
    )
    assert entry["why"].endswith("(the default retention), not held")
    with pytest.raises(EvidenceError, match=f"evidence {past} was purged on"):
        await store.read(past, who="bob", why="too late")
    assert (await store.read(held, who="bob", why="still here"))[1] == [media[0].data]

    assert await store.purge() == []  # nothing more is due
    # A purge as of a year and a day from now takes what is due by then, held or not.
    later = await store.purge(datetime.now(UTC) + timedelta(days=366))
    assert [p.id for p in later] == [fresh]

    await store.unhold(held, who="carol", why="case closed")
    assert [p.id for p in await store.purge()] == [held]
    holds = await store.holds(held)
    assert [(h["held_by"], h["released_by"], h["released_why"]) for h in holds] == [
        ("alice", "carol", "case closed")
    ]
    assert [(e["who"], e["what"]) for e in await store.audit(held)] == [
        ("alice", "hold"),
        ("bob", "read"),
        ("carol", "unhold"),
        ("retention", "purge"),
    ]


async def test_hold_rules(store: EvidenceStore) -> None:
    evidence_id = await store.preserve(activity_row=None, facts={}, media=[])
    with pytest.raises(EvidenceError, match="needs a `who` and a `why`"):
        await store.hold(evidence_id, who="alice", why=" ")
    with pytest.raises(EvidenceError, match=f"evidence {evidence_id} is not held"):
        await store.unhold(evidence_id, who="alice", why="nothing to lift")
    await store.hold(evidence_id, who="alice", why="NCMEC report 12")
    with pytest.raises(EvidenceError, match=r"is held already, since .* by alice: NCMEC report 12"):
        await store.hold(evidence_id, who="bob", why="again")
    with pytest.raises(EvidenceError, match="no evidence with id 424242"):
        await store.hold(424242, who="alice", why="typo")
    await store.unhold(evidence_id, who="alice", why="done")
    await store.hold(evidence_id, who="bob", why="a second request")  # held anew
    assert [h["held_by"] for h in await store.holds(evidence_id)] == ["alice", "bob"]

    other = await store.preserve(activity_row=None, facts={}, media=[])
    await expire(store, other)
    await store.purge()
    with pytest.raises(EvidenceError, match="nothing is left to hold"):
        await store.hold(other, who="alice", why="late")


async def test_purge_deletes_postgres_blobs(
    migrated_pool: asyncpg.Pool, tmp_path: Path, key: EvidenceKey
) -> None:
    store = EvidenceStore(migrated_pool, tmp_path, key, blobs=PostgresBlobs(migrated_pool))
    gone = await store.preserve(activity_row=None, facts={}, media=[MediaItem("u", b"x", {})])
    stays = await store.preserve(activity_row=None, facts={}, media=[])
    await expire(store, gone)
    assert [p.id for p in await store.purge()] == [gone]
    assert await migrated_pool.fetchval("SELECT count(*) FROM evidence_blob") == 1
    assert (await store.read(stays, who="a", why="b"))[0].facts == {}


# -- export ------------------------------------------------------------------------


def digest(path: Path) -> tuple[int, str, str]:
    data = path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


async def test_export_of_one_case(store: EvidenceStore, tmp_path: Path) -> None:
    body = b'{"type": "Create",  "id": "https://remote.example/a/1"}'  # as sent, spacing kept
    image, other = png(), os.urandom(300)
    evidence_id = await store.preserve(
        activity_row=None,
        facts=facts(body_base64=base64.b64encode(body).decode()),
        media=[
            MediaItem("https://remote.example/m/a", image, {"sha256": "aa", "pdq": "f0"}),
            MediaItem("https://remote.example/m/b.png", other, {}),
        ],
    )
    into = tmp_path / "for-ncmec"
    package = await store.export(evidence_id, who="alice", why="NCMEC report 1234", into=into)
    assert package == into / f"evidence-{evidence_id}"
    assert stat.S_IMODE(package.stat().st_mode) == 0o700

    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["evidence_id"] == evidence_id
    assert (manifest["exported_by"], manifest["why"]) == ("alice", "NCMEC report 1234")
    assert manifest["received_at"] == facts()["received_at"]
    assert datetime.fromisoformat(manifest["retain_until"]) - datetime.fromisoformat(
        manifest["created_at"]
    ) == timedelta(days=365)
    assert [f["path"] for f in manifest["files"]] == [
        "activity.json",
        "facts.json",
        "media/media-0.png",  # a PNG by its bytes, whatever its URL
        "media/media-1.bin",
    ]
    for entry in manifest["files"]:
        path = package / entry["path"]
        assert (entry["size"], entry["sha256"], entry["md5"]) == digest(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert datetime.fromisoformat(entry["written_at"]).tzinfo is not None
    assert (package / "activity.json").read_bytes() == body
    assert json.loads((package / "facts.json").read_text())["remote"] == "203.0.113.7"
    assert (package / "media/media-0.png").read_bytes() == image
    assert (package / "media/media-1.bin").read_bytes() == other
    assert [(f.get("url"), f.get("hashes")) for f in manifest["files"][2:]] == [
        ("https://remote.example/m/a", {"sha256": "aa", "pdq": "f0"}),
        ("https://remote.example/m/b.png", {}),
    ]
    [entry] = await store.audit(evidence_id)
    assert (entry["who"], entry["why"], entry["what"], entry["outcome"]) == (
        "alice",
        "NCMEC report 1234",
        f"export to {package}",
        "ok",
    )

    with pytest.raises(EvidenceError, match="exists already; nothing was overwritten"):
        await store.export(evidence_id, who="alice", why="again", into=into)
    assert (package / "media/media-0.png").read_bytes() == image


async def test_export_needs_who_and_why_and_unpurged_evidence(
    store: EvidenceStore, tmp_path: Path
) -> None:
    evidence_id = await store.preserve(activity_row=None, facts={"activity": {}}, media=[])
    with pytest.raises(EvidenceError, match="needs a `who` and a `why`"):
        await store.export(evidence_id, who="", why="x", into=tmp_path / "out")
    await expire(store, evidence_id)
    await store.purge()
    with pytest.raises(EvidenceError, match="was purged"):
        await store.export(evidence_id, who="alice", why="late", into=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert (await store.audit(evidence_id))[-1]["outcome"].startswith("failed: evidence")


async def test_purge_runs_as_a_periodic_job_of_the_outbox(store: EvidenceStore) -> None:
    """As the lead wires it: ``outbox.every(name, seconds, store.purge)``."""
    from relay.outbox import Outbox
    from tests.conftest import wait_for

    due = await store.preserve(activity_row=None, facts={}, media=[MediaItem("u", b"x", {})])
    held = await store.preserve(activity_row=None, facts={}, media=[])
    await expire(store, due)
    await expire(store, held)
    await store.hold(held, who="alice", why="court order")
    outbox = Outbox(store.pool, poll_interval=0.05)
    outbox.every("evidence-purge", 1.0, store.purge)
    await outbox.start()
    try:

        async def purged() -> list[int]:
            rows = await store.pool.fetch("SELECT id FROM evidence WHERE purged_at IS NOT NULL")
            return [r["id"] for r in rows]

        assert await wait_for(purged) == [due]
    finally:
        await outbox.stop()
    assert not any(p.exists() for p in await files_of(store, due))
    assert (await store.read(held, who="a", why="b"))[0].facts == {}
