"""Videos matched by vPDQ against PDQ banks: a bank filled from a video's vPDQ file,
the same film re-encoded found in it, another film not, and the hold acting on it end
to end (a signed activity, its video fetched from an origin on loopback).

The films are drawn and encoded in memory (tests/media/test_video.py): moving bands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from relay.banks import BankIndex, BankStore, parse_hash_file, read_hash_file
from relay.banks.matcher import BankMatcher
from relay.errors import DecodeError
from relay.hashing.vpdq import format_hash, hash_video
from relay.media.hasher import MediaHasher
from relay.media.inspect import Inspector
from relay.media.media import Media
from relay.policy import exact
from tests.conftest import Fediverse, Running, Upstream, start_server, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import Origin
from tests.media.test_video import encode, mp4, other, reencoded


@pytest.fixture
def vpdq_file(tmp_path: Path) -> Path:
    """The known film's vPDQ hash, as vpdq writes it."""
    path = tmp_path / "known.vpdq"
    path.write_text(format_hash(hash_video(mp4())))
    return path


def test_a_vpdq_file_reads_as_the_pdq_hashes_of_its_good_frames(vpdq_file: Path) -> None:
    value = hash_video(mp4())
    entries = read_hash_file(vpdq_file)
    assert [v for _, v, _ in entries] == [f.hash for f in value.usable()]
    assert {k for k, _, _ in entries} == {"pdq"}
    assert entries[0][2] is not None and entries[0][2].startswith("vpdq frame 0 at 0.000 s")
    h = value.frames[0].hash
    # Frames of low quality are no entries; a bad line is named, nothing is returned.
    assert parse_hash_file(f"0,49,{h},0.000\n1,50,{h},1.000\n") == [
        ("pdq", h, "vpdq frame 1 at 1.000 s, quality 50")
    ]
    with pytest.raises(Exception, match=r"<text>:2: not a vPDQ line"):
        parse_hash_file(f"0,90,{h},0.000\n1,90,{h[:-1]},1.000\n")
    # Other formats are read as before.
    assert parse_hash_file(f"pdq {h}\n") == [("pdq", h, None)]


@pytest.fixture
async def known(migrated_pool: asyncpg.Pool, vpdq_file: Path) -> BankIndex:
    store = BankStore(migrated_pool)
    await store.ensure("known-videos", category="test")
    assert await store.add("known-videos", read_hash_file(vpdq_file)) > 0
    return await BankIndex.load(migrated_pool)


async def _signals(index: BankIndex, data: bytes) -> list[Any]:
    hasher = MediaHasher(workers=2)
    try:
        media = Media.of(data, await hasher.hash(data, sender="https://a.example/actor"))
    finally:
        hasher.close()
    return await Inspector([BankMatcher(lambda: index)]).inspect(media)


async def test_the_same_film_reencoded_matches_by_vpdq(known: BankIndex) -> None:
    signals = await _signals(known, reencoded())
    assert [s.kind for s in signals] == ["hashed", "match"]  # checked: no "unchecked"
    [found] = [s for s in signals if s.kind == "match"]
    assert found.source == "known-videos"
    detail = found.detail
    assert (detail["matcher"], detail["category"], detail["hash_kind"]) == (
        "banks",
        "test",
        "vpdq",
    )
    assert detail["exact"] is False and not exact(found)  # perceptual: never alone final
    assert detail["query_percent"] >= 80
    assert 0 < detail["frames"] <= detail["usable_frames"]
    assert 0 <= detail["distance"] <= 31
    assert found.media is not None and found.media.vpdq is not None
    assert signals[0].detail["vpdq_complete"] is True


async def test_a_trimmed_resized_reencoded_copy_matches(known: BankIndex) -> None:
    """The listed film's first 4 of 6 seconds, larger, as VP9: all its frames are the
    film's, so it matches, though vpdq's compared share (4/6) would say no."""
    trimmed = encode(seconds=4, size=(480, 360), codec="libvpx-vp9", container="webm")
    signals = await _signals(known, trimmed)
    [found] = [s for s in signals if s.kind == "match"]
    assert found.source == "known-videos" and found.detail["hash_kind"] == "vpdq"
    assert found.detail["usable_frames"] == 4 and found.detail["query_percent"] >= 80


async def test_another_film_does_not_match(known: BankIndex) -> None:
    signals = await _signals(known, other())
    assert [s.kind for s in signals] == ["hashed"]


async def test_a_corrupt_video_is_a_decode_error_never_a_crash() -> None:
    hasher = MediaHasher(workers=2)
    try:
        with pytest.raises(DecodeError):
            await hasher.hash(mp4()[: len(mp4()) // 3], sender="https://a.example/actor")
        with pytest.raises(DecodeError):
            await hasher.hash(mp4()[:64] + bytes(500), sender="https://a.example/actor")
    finally:
        hasher.close()


# -- end to end ----------------------------------------------------------------------


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    media = Origin(
        files={
            "known.webm": (reencoded(), "video/webm"),
            "other.mp4": (other(), "video/mp4"),
            "broken.mp4": (mp4()[:64] + bytes(2000), "video/mp4"),
        }
    )
    app = web.Application()
    app.router.add_get("/media/{name}", media.handle)
    server = await start_server(app)
    media.base = str(server.make_url("")).rstrip("/")
    yield media
    await server.close()


@pytest.fixture
async def guarded(sluice_factory: Any, vpdq_file: Path) -> Running:
    sluice = await sluice_factory(
        media={"fetch_timeout_seconds": 5.0},
        hold={"max_seconds": 30.0, "on_error": "reject"},
        bank=[{"name": "known-videos", "category": "test"}],
        rule=[
            {"match": "category:test", "action": "review"},
            {"match": "signal:unchecked", "action": "review"},
        ],
    )
    store = BankStore(sluice.parts.pool)
    await store.ensure("known-videos", category="test")
    await store.add("known-videos", read_hash_file(vpdq_file))
    await wait_for(lambda: len(sluice.parts.banks.index) >= 2, timeout=5)
    return sluice


async def posted_video(sluice: Running, fediverse: Fediverse, origin: Origin, name: str) -> Any:
    """alice posts the origin's video ``name``; its row once decided (decoding takes longer)."""
    kind = "video/webm" if name.endswith(".webm") else "video/mp4"
    return await media_hold.posted(sluice, fediverse, origin, name, media_type=kind, timeout=30)


async def test_a_known_video_is_held_for_review_never_delivered(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    record = await posted_video(guarded, fediverse, origin, "known.webm")
    assert record["state"] == "review"
    assert record["verdict"]["rule"] == "rule[0] category:test -> review"
    [found] = [s for s in record["verdict"]["signals"] if s["kind"] == "match"]
    assert found["source"] == "known-videos"
    assert found["detail"]["hash_kind"] == "vpdq"
    assert found["detail"]["query_percent"] >= 80
    assert not [s for s in record["verdict"]["signals"] if s["kind"] == "unchecked"]
    await asyncio.sleep(0.2)
    assert upstream.requests == []


async def test_another_video_is_delivered(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    record = await posted_video(guarded, fediverse, origin, "other.mp4")
    assert record["state"] == "delivered", record["verdict"]
    [hashed] = [s for s in record["verdict"]["signals"] if s["kind"] == "hashed"]
    assert hashed["detail"]["kind"] == "video"
    assert hashed["detail"]["vpdq_complete"] is True


async def test_a_corrupt_video_goes_where_on_error_says(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    record = await posted_video(guarded, fediverse, origin, "broken.mp4")
    assert record["state"] == "rejected"
    assert record["verdict"]["rule"] == "hold.on_error"
    kinds = {s["kind"]: s["detail"] for s in record["verdict"]["signals"]}
    assert kinds["error"]["stage"] == "decode"
    assert kinds["unchecked"]["kind"] == "video"
    assert upstream.requests == []


async def test_a_video_past_video_max_seconds_is_checked_from_its_start_and_says_so(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    """``[media] video_max_seconds = 2``: of the 6 s film, two seconds are hashed; the
    rest is an ``unchecked`` signal, which this policy sends to review."""
    sluice = await sluice_factory(
        media={"fetch_timeout_seconds": 5.0, "video_max_seconds": 2.0},
        hold={"max_seconds": 30.0, "on_error": "reject"},
        rule=[{"match": "signal:unchecked", "action": "review"}],
    )
    record = await posted_video(sluice, fediverse, origin, "other.mp4")
    assert record["state"] == "review", record["verdict"]
    kinds = {s["kind"]: s["detail"] for s in record["verdict"]["signals"]}
    assert kinds["hashed"]["vpdq_complete"] is False
    assert kinds["hashed"]["vpdq_frames"] <= 3
    assert "read in part" in kinds["unchecked"]["reason"]
    assert upstream.requests == []
