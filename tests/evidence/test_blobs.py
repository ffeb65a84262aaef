"""The blob-store seam: evidence sealed the same way in any store, and a shared store
(PostgreSQL) read by every Sluice on the database."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import pytest

from relay.blobs import BlobMissing, LocalBlobs, PostgresBlobs
from relay.evidence import EvidenceError, EvidenceKey, EvidenceStore, MediaItem
from tests.test_evidence import MARKER, facts, png, write_key


@pytest.fixture
def key(tmp_path: Path) -> EvidenceKey:
    return write_key(tmp_path / "evidence.key")


async def test_two_sluices_on_one_database_share_postgres_blobs(
    migrated_pool: asyncpg.Pool, database_url: str, tmp_path: Path, key: EvidenceKey
) -> None:
    """Two processes' stores, each with its own data directory and its own pool: what
    one preserves, the other reads; neither writes a file."""
    other_pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        first = EvidenceStore(
            migrated_pool, tmp_path / "a" / "evidence", key, blobs=PostgresBlobs(migrated_pool)
        )
        second = EvidenceStore(
            other_pool, tmp_path / "b" / "evidence", key, blobs=PostgresBlobs(other_pool)
        )
        image = png()
        evidence_id = await first.preserve(
            activity_row=None,
            facts=facts(),
            media=[MediaItem("https://remote.example/media/a.png", image, {"sha256": "aa"})],
        )
        record, data = await second.read(evidence_id, who="alice", why="NCMEC report 1")
        assert (record.facts, data) == (facts(), [image])
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
        [entry] = await first.audit(evidence_id)
        assert (entry["who"], entry["outcome"]) == ("alice", "ok")

        # The rows hold the sealed bytes only: nothing of the facts or the media in clear.
        stored = await migrated_pool.fetch("SELECT name, data FROM evidence_blob ORDER BY name")
        assert len(stored) == 2
        for row in stored:
            assert row["data"][0] == 1  # the format version, as on disk
            assert MARKER.encode() not in row["data"]
            assert b"IHDR" not in row["data"]
        assert await first.orphans() == []
    finally:
        await other_pool.close()


async def test_postgres_blobs_are_bound_to_their_record(
    migrated_pool: asyncpg.Pool, tmp_path: Path, key: EvidenceKey
) -> None:
    store = EvidenceStore(migrated_pool, tmp_path, key, blobs=PostgresBlobs(migrated_pool))
    first = await store.preserve(
        activity_row=None, facts={"n": 1}, media=[MediaItem("u", os.urandom(100), {})]
    )
    second = await store.preserve(
        activity_row=None, facts={"n": 2}, media=[MediaItem("u", os.urandom(100), {})]
    )
    blobs = {r["id"]: {b["name"]: b["file"] for b in r["blobs"]} for r in await store.list()}
    await migrated_pool.execute(
        "UPDATE evidence_blob SET data = (SELECT data FROM evidence_blob WHERE name = $1) "
        "WHERE name = $2",
        blobs[first]["media-0"],
        blobs[second]["media-0"],
    )
    await store.read(first, who="a", why="b")
    with pytest.raises(EvidenceError, match=f"blob media-0 of evidence {second} failed auth"):
        await store.read(second, who="a", why="b")
    await migrated_pool.execute("DELETE FROM evidence_blob WHERE name = $1", blobs[first]["facts"])
    with pytest.raises(
        EvidenceError,
        match=f"blob facts of evidence {first} is missing: evidence_blob {blobs[first]['facts']}",
    ):
        await store.read(first, who="a", why="b")


async def test_postgres_orphans_are_listed(
    migrated_pool: asyncpg.Pool, tmp_path: Path, key: EvidenceKey
) -> None:
    store = EvidenceStore(migrated_pool, tmp_path, key, blobs=PostgresBlobs(migrated_pool))
    sealed = await store.seal(facts={}, media=[MediaItem("u", b"benign", {})])
    names = sorted(f"evidence_blob {b['file']}" for b in sealed.blobs)
    assert sorted(map(str, await store.orphans())) == names
    await store.record(sealed, activity_row=None)
    assert await store.orphans() == []


@pytest.mark.parametrize("kind", ["local", "postgresql"])
async def test_each_store_keeps_opaque_bytes(
    migrated_pool: asyncpg.Pool, tmp_path: Path, kind: str
) -> None:
    blobs = LocalBlobs(tmp_path / "blobs") if kind == "local" else PostgresBlobs(migrated_pool)
    name = "0" * 32 + ".blob"
    assert not await blobs.exists(name)
    with pytest.raises(BlobMissing):
        await blobs.get(name)
    await blobs.put(name, b"\x01sealed")
    assert await blobs.exists(name)
    assert await blobs.get(name) == b"\x01sealed"
    assert [str(p) for p in await blobs.orphans(set())] == [blobs.where(name)]
    assert await blobs.orphans({name}) == []
    await blobs.delete(name)
    await blobs.delete(name)  # twice: a purge may run again after a crash
    assert not await blobs.exists(name)


async def test_from_config_picks_the_store(
    make_config, migrated_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    key_file = tmp_path / "evidence.key"
    EvidenceKey.generate(key_file)
    config = make_config(evidence={"key_file": str(key_file)}, receipts={"jurisdictions": ["GB"]})
    local = EvidenceStore.from_config(migrated_pool, config)
    assert isinstance(local.blobs, LocalBlobs)
    assert local.blobs.directory == config.storage.data_dir / "evidence"
    # Kept as long as the jurisdictions the receipts name ask: the UK code's 90 days.
    assert local.keep() == ("GB", 90)
    assert local.keep(["GB", "US"]) == ("US", 365)
