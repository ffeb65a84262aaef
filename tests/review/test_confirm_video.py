"""A moderator confirming a held video banks its vPDQ frames, hashed again from the
sealed copy: a re-encoded, larger copy of the same film is then caught by them.

The films are drawn and encoded in memory (tests/media/test_video.py): moving bands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.banks import BankStore
from relay.hashing.vpdq import hash_video
from relay.media.hashes import hash_media
from relay.people import ApiTokens
from tests.conftest import Fediverse, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import Origin
from tests.media.test_video import mp4, reencoded
from tests.media.test_video_match import posted_video
from tests.review.support import reviewing

origin, evidence_key = media_hold.origin, media_hold.evidence_key


async def test_a_confirmed_video_banks_its_frames_and_a_reencoded_copy_is_caught(
    sluice_factory: Any, evidence_key: Path, fediverse: Fediverse, origin: Origin
) -> None:
    sluice = await reviewing(
        sluice_factory,
        evidence_key,
        bank=[{"name": "test-videos", "category": "test"}],
        rule=[{"match": "category:test", "action": "review"}],
    )
    film = mp4()
    store = BankStore(sluice.parts.pool)
    await store.ensure("test-videos", category="test")
    await store.add("test-videos", [("sha256", hash_media(film).sha256, "the film, exactly")])
    await wait_for(lambda: "test-videos" in sluice.parts.banks.index.counts(), timeout=5)
    origin.files["film.mp4"] = (film, "video/mp4")
    origin.files["copy.webm"] = (reencoded(), "video/webm")

    # Before: the re-encoded copy is not the listed file, and no frame of it is banked.
    before = await posted_video(sluice, fediverse, origin, "copy.webm")
    assert before["state"] == "delivered"

    held = await posted_video(sluice, fediverse, origin, "film.mp4")
    assert held["state"] == "review"
    token = (await ApiTokens(sluice.parts.pool).issue("mo")).secret
    async with sluice.session.post(
        f"{sluice.admin_url}/_sluice/api/review/{held['id']}/confirm",
        json={"reason": "seen: it is what the bank says", "bank": True},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 200, await response.text()
    frames = {f.hash for f in hash_video(film).usable()}
    banked = await sluice.parts.pool.fetch(
        "SELECT e.kind, e.value, e.note FROM bank_entry e JOIN bank b ON b.id = e.bank_id "
        "WHERE b.name = 'confirmed-test'"
    )
    pdq = {r["value"] for r in banked if r["kind"] == "pdq"}
    assert pdq == frames and len(frames) == 6
    assert all("vpdq frame" in r["note"] for r in banked if r["kind"] == "pdq")
    assert {r["kind"] for r in banked} == {"sha256", "md5", "pdq"}
    access = await sluice.parts.pool.fetch(
        "SELECT who, what FROM evidence_access WHERE evidence_id = $1", held["evidence_id"]
    )
    assert ("mo", "hash") in {(a["who"], a["what"]) for a in access}  # the read is on record

    await wait_for(lambda: "confirmed-test" in sluice.parts.banks.index.counts(), timeout=5)
    after = await posted_video(sluice, fediverse, origin, "copy.webm")
    assert after["state"] == "review"
    [found] = [s for s in after["verdict"]["signals"] if s["kind"] == "match"]
    assert found["source"] == "confirmed-test" and found["detail"]["hash_kind"] == "vpdq"
