"""The media check in the hold, end to end: a signed activity through the inbound
door, its media fetched from a real origin on loopback, hashed, matched against a
bank in PostgreSQL, and the policy carried out."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from relay.banks import BankStore
from relay.evidence import EvidenceKey, EvidenceStore
from relay.media.hashes import hash_media
from tests.conftest import Fediverse, Running, Upstream, settled_row, start_server, wait_for

PDQ = Path(__file__).resolve().parent.parent / "fixtures" / "pdq"
BRIDGE = (PDQ / "bridge-mods" / "aaa-orig.jpg").read_bytes()
BRIDGE_EDIT = (PDQ / "bridge-mods" / "blur-a-little.jpg").read_bytes()
PEN = (PDQ / "misc" / "pen-and-coaster.png").read_bytes()


def bomb() -> bytes:
    """A PNG declaring 40000x40000 pixels (1.6 Gpx) in a few dozen bytes: the size alone
    must stop it, before any pixel is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 40_000, 40_000, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 5001))
        + chunk(b"IEND", b"")
    )


@dataclass
class Origin:
    """A remote server hosting media; records what is fetched."""

    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    base: str = ""

    def url(self, name: str) -> str:
        return f"{self.base}/media/{name}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.fetched.append(name)
        if name == "hang":
            await asyncio.sleep(3600)
        if name not in self.files:
            return web.Response(status=404)
        data, content_type = self.files[name]
        return web.Response(body=data, content_type=content_type)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    media = Origin(
        files={
            "bridge.jpg": (BRIDGE, "image/jpeg"),
            "bridge-edit.jpg": (BRIDGE_EDIT, "image/jpeg"),
            "pen.png": (PEN, "image/png"),
            "lying.png": (BRIDGE, "text/html"),  # a lying Content-Type: the bytes decide
            "bomb.png": (bomb(), "image/png"),
            "clip.mp4": (
                b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(64),
                "video/mp4",
            ),
        }
    )
    app = web.Application()
    app.router.add_get("/media/{name}", media.handle)
    server = await start_server(app)
    media.base = str(server.make_url("")).rstrip("/")
    yield media
    await server.close()


def with_media(actor: Any, *urls: str, media_type: str | None = "image/jpeg") -> dict[str, Any]:
    activity = actor.activity()
    activity["object"]["attachment"] = [
        {"type": "Document", "url": url, **({"mediaType": media_type} if media_type else {})}
        for url in urls
    ]
    return activity


@pytest.fixture
def evidence_key(tmp_path: Path) -> Path:
    path = tmp_path / "evidence.key"
    EvidenceKey.generate(path)
    return path


@pytest.fixture
async def guarded(sluice_factory: Any, evidence_key: Path) -> Running:
    sluice = await sluice_factory(
        evidence={"key_file": str(evidence_key)},
        media={"fetch_timeout_seconds": 1.0},
        hold={"max_seconds": 10.0, "on_error": "reject"},
        bank=[
            {"name": "test-known", "category": "test"},
            {"name": "test-unwanted", "category": "unwanted"},
        ],
        rule=[
            {"match": "category:test", "action": "quarantine"},
            {"match": "test-unwanted", "action": "review"},
            {"match": "signal:unchecked", "action": "review"},
        ],
    )
    store = BankStore(sluice.parts.pool)
    await store.ensure("test-known", category="test")
    hashes = hash_media(BRIDGE)
    await store.add(
        "test-known",
        [("pdq", hashes.pdq[0].hash, "bridge photo"), ("md5", hashes.md5, "bridge photo")],
    )
    await store.ensure("test-unwanted", category="unwanted")
    await store.add("test-unwanted", [("sha256", hash_media(PEN).sha256, "pen")])
    await wait_for(lambda: len(sluice.parts.banks.index) >= 3, timeout=5)
    return sluice


async def _settled(sluice: Running, ap_id: str, timeout: float = 15) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        record = await sluice.parts.store.get(ap_id)
        return record if record and record["state"] not in ("received", "queued") else None

    return await wait_for(done, timeout=timeout)


async def posted(
    sluice: Running,
    fediverse: Fediverse,
    origin: Origin,
    name: str,
    *,
    media_type: str | None = "image/jpeg",
    timeout: float = 15,
) -> dict[str, Any]:
    """alice posts the origin's file ``name``; its row once the hold has decided."""
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url(name), media_type=media_type)
    assert (await sluice.post(alice, activity))[0] == 202
    return await _settled(sluice, activity["id"], timeout=timeout)


async def test_known_image_is_quarantined_never_delivered_and_evidence_kept(
    guarded: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,
    make_config: Any,
    evidence_key: Path,
) -> None:
    alice = fediverse.actor("alice")
    # An edit of the bridge photo: caught by its PDQ hash, not an exact one.
    activity = with_media(alice, origin.url("bridge-edit.jpg"))
    assert (await guarded.post(alice, activity))[0] == 202
    record = await _settled(guarded, activity["id"])
    assert record["state"] == "quarantined"
    verdict = record["verdict"]
    assert verdict["rule"] == "rule[0] category:test -> quarantine"
    [evidence] = [s for s in verdict["signals"] if s["kind"] == "evidence"]
    facts, media = await read_evidence(guarded, evidence_key, evidence["detail"]["evidence_id"])
    # The row keeps the outline of the verdict; the match's details are in the evidence.
    [match] = [s for s in facts.facts["verdict"]["signals"] if s["kind"] == "match"]
    assert match["source"] == "test-known"
    assert match["detail"]["hash_kind"] == "pdq"
    assert 0 < match["detail"]["distance"] <= 31
    assert match["detail"]["url"] == origin.url("bridge-edit.jpg")
    await asyncio.sleep(0.2)
    assert upstream.requests == []  # the instance never saw the activity, nor the image
    assert origin.fetched == ["bridge-edit.jpg"]

    assert media == [BRIDGE_EDIT]
    assert facts.facts["activity"]["id"] == activity["id"]
    assert facts.facts["signer"] == alice.id
    assert facts.facts["remote"] == "127.0.0.1"
    for blob in (guarded.parts.config.storage.data_dir / "evidence").glob("*.blob"):
        assert BRIDGE_EDIT[100:200] not in blob.read_bytes()  # never in clear on disk
    async with guarded.session.get(guarded.admin_url + "/metrics") as response:
        metrics = await response.text()
    assert 'sluice_media_total{outcome="image"} 1.0' in metrics
    assert 'sluice_bank_matches_total{bank="test-known",kind="pdq"} 1.0' in metrics
    assert 'sluice_verdicts_total{action="quarantine"} 1.0' in metrics


async def test_clean_media_is_delivered_with_its_hashes_on_record(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    alice = fediverse.actor("alice")
    # The bridge upside down is in no bank (and no bank of this test is dihedral).
    origin.files["upside-down.jpg"] = (hash_and_flip(BRIDGE), "image/jpeg")
    activity = with_media(alice, origin.url("upside-down.jpg"), media_type=None)
    assert (await guarded.post(alice, activity))[0] == 202
    record = await _settled(guarded, activity["id"])
    assert record["state"] == "delivered", record
    assert record["verdict"]["rule"] == "default"
    [hashed] = [s for s in record["verdict"]["signals"] if s["kind"] == "hashed"]
    assert hashed["detail"]["kind"] == "image"
    assert hashed["detail"]["quality"] >= 50
    assert len(hashed["detail"]["sha256"]) == 64
    assert upstream.ids() == [activity["id"]]


def hash_and_flip(data: bytes) -> bytes:
    """The bridge upside down: far from the bank's hash without dihedral matching."""
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_180).save(out, "JPEG")
    return out.getvalue()


async def test_exact_hash_bank_sends_to_review_and_moderator_decides(
    guarded: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,
    monkeypatch: Any,
) -> None:
    alice = fediverse.actor("alice")
    first = with_media(alice, origin.url("pen.png"), media_type="image/png")
    second = with_media(alice, origin.url("pen.png"), media_type="image/png")
    for activity in (first, second):
        assert (await guarded.post(alice, activity))[0] == 202
    for activity in (first, second):
        record = await _settled(guarded, activity["id"])
        assert record["state"] == "review"
        assert record["verdict"]["rule"] == "rule[1] test-unwanted -> review"
    assert origin.fetched.count("pen.png") == 1  # the second used the cached hashes

    store = guarded.parts.store
    [a, b] = await store.in_review()
    assert await store.moderate(a["id"], "approve", "mod-alice") == "queued"
    guarded.parts.flow.wake()
    assert await store.moderate(b["id"], "reject", "mod-bob") == "rejected"
    assert await store.moderate(b["id"], "approve", "mod-bob") is None  # decided already
    await wait_for(upstream.inbox_posts)
    assert upstream.ids() == [first["id"]]

    record = await settled_row(guarded, first["id"])
    assert record["state"] == "delivered"
    assert record["verdict"]["moderator"] == "mod-alice"


@pytest.mark.parametrize(
    ("name", "stage"), [("hang", "fetch"), ("bomb.png", "decode"), ("missing.png", "fetch")]
)
async def test_unfetchable_or_undecodable_media_follows_on_error(
    guarded: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,
    name: str,
    stage: str,
) -> None:
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url(name), media_type="image/png")
    assert (await guarded.post(alice, activity))[0] == 202
    record = await _settled(guarded, activity["id"])
    assert record["state"] == "rejected"
    assert record["verdict"]["rule"] == "hold.on_error"
    [error] = [s for s in record["verdict"]["signals"] if s["kind"] == "error"]
    assert error["detail"]["stage"] == stage
    assert upstream.requests == []


async def test_an_unreadable_video_is_unchecked_and_follows_on_error(
    guarded: Running, fediverse: Fediverse, origin: Origin
) -> None:
    # An MP4 header and nothing else: its frames cannot be read (a readable video is
    # matched by vPDQ: tests/media/test_video_match.py).
    record = await posted(guarded, fediverse, origin, "clip.mp4", media_type="video/mp4")
    assert record["state"] == "rejected"
    assert record["verdict"]["rule"] == "hold.on_error"
    kinds = {s["kind"]: s["detail"] for s in record["verdict"]["signals"]}
    assert kinds["error"]["stage"] == "decode"
    assert kinds["unchecked"]["kind"] == "video"


async def test_lying_content_type_is_judged_by_the_bytes(
    guarded: Running, fediverse: Fediverse, origin: Origin
) -> None:
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("lying.png"), media_type=None)
    assert (await guarded.post(alice, activity))[0] == 202
    record = await _settled(guarded, activity["id"])
    assert record["state"] == "quarantined"  # served as text/html, but it is the bridge


async def read_evidence(sluice: Running, key: Path, evidence_id: Any) -> tuple[Any, list[bytes]]:
    store = EvidenceStore(
        sluice.parts.pool, sluice.parts.config.storage.data_dir / "evidence", EvidenceKey.load(key)
    )
    return await store.read(evidence_id, who="test", why="checking the evidence")


async def verdict_in_evidence(
    sluice: Running, key: Path, record: dict[str, Any]
) -> list[dict[str, Any]]:
    """A quarantined activity's signals in full: its row keeps only their outline."""
    [evidence] = [s for s in record["verdict"]["signals"] if s["kind"] == "evidence"]
    facts, _ = await read_evidence(sluice, key, evidence["detail"]["evidence_id"])
    return facts.facts["verdict"]["signals"]


async def test_a_bank_change_applies_to_the_next_activity(
    guarded: Running, fediverse: Fediverse, origin: Origin, evidence_key: Path
) -> None:
    alice = fediverse.actor("alice")
    flipped = hash_and_flip(BRIDGE)
    origin.files["flipped.jpg"] = (flipped, "image/jpeg")
    before = with_media(alice, origin.url("flipped.jpg"))
    assert (await guarded.post(alice, before))[0] == 202
    assert (await _settled(guarded, before["id"]))["state"] == "delivered"
    await BankStore(guarded.parts.pool).add(
        "test-known", [("sha256", hash_media(flipped).sha256, "added later")]
    )
    await asyncio.sleep(1.0)  # "within one second"
    after = with_media(alice, origin.url("flipped.jpg"))  # same URL: cached hashes, new bank
    assert (await guarded.post(alice, after))[0] == 202
    record = await _settled(guarded, after["id"])
    assert record["state"] == "quarantined"
    # The cache knew the hashes; the file was fetched again for the evidence.
    assert origin.fetched == ["flipped.jpg", "flipped.jpg"]
    [evidence] = [s for s in record["verdict"]["signals"] if s["kind"] == "evidence"]
    assert evidence["detail"]["media"] == 1
    _, media = await read_evidence(guarded, evidence_key, evidence["detail"]["evidence_id"])
    assert media == [flipped]


async def test_a_cached_match_whose_file_is_gone_is_still_acted_on(
    guarded: Running, fediverse: Fediverse, origin: Origin, evidence_key: Path
) -> None:
    alice = fediverse.actor("alice")
    flipped = hash_and_flip(BRIDGE)
    origin.files["gone.jpg"] = (flipped, "image/jpeg")
    before = with_media(alice, origin.url("gone.jpg"))
    assert (await guarded.post(alice, before))[0] == 202
    assert (await _settled(guarded, before["id"]))["state"] == "delivered"
    await BankStore(guarded.parts.pool).add(
        "test-known", [("sha256", hash_media(flipped).sha256, "added later")]
    )
    del origin.files["gone.jpg"]
    await asyncio.sleep(1.0)
    after = with_media(alice, origin.url("gone.jpg"))
    assert (await guarded.post(alice, after))[0] == 202
    record = await _settled(guarded, after["id"])
    assert record["state"] == "quarantined"  # on the cached hashes
    signals = await verdict_in_evidence(guarded, evidence_key, record)
    [match] = [s for s in signals if s["kind"] == "match"]
    assert "404" in match["detail"]["refetch_error"]


async def test_undecodable_file_still_meets_the_exact_hash_banks(
    guarded: Running, fediverse: Fediverse, origin: Origin
) -> None:
    broken = BRIDGE[:20_000]  # a truncated JPEG: no picture, but an MD5 all the same
    origin.files["broken.jpg"] = (broken, "image/jpeg")
    await BankStore(guarded.parts.pool).add(
        "test-known", [("md5", hashlib.md5(broken).hexdigest(), "truncated copy")]
    )
    await asyncio.sleep(1.0)
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("broken.jpg"))
    assert (await guarded.post(alice, activity))[0] == 202
    record = await _settled(guarded, activity["id"])
    assert record["state"] == "quarantined"  # stronger than on_error's reject
    kinds = {s["kind"] for s in record["verdict"]["signals"]}
    assert {"error", "match", "evidence"} <= kinds


async def test_a_new_actors_avatar_is_checked(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, origin: Origin, evidence_key: Path
) -> None:
    mallory = fediverse.actor("mallory")
    mallory.profile = {"icon": {"type": "Image", "url": origin.url("bridge.jpg")}}
    like = mallory.activity("Like", obj="https://social.example/notes/1")
    assert (await guarded.post(mallory, like))[0] == 202
    record = await _settled(guarded, like["id"])
    assert record["state"] == "quarantined"
    signals = await verdict_in_evidence(guarded, evidence_key, record)
    matches = [s for s in signals if s["kind"] == "match"]
    assert {m["detail"]["hash_kind"] for m in matches} == {"pdq", "md5"}
    for match in matches:
        assert match["detail"]["role"] == "avatar"
        assert match["detail"]["where"].startswith("signer's actor document")
    # The key is cached now: later activities do not check the avatar again.
    second = mallory.activity("Like", obj="https://social.example/notes/2")
    assert (await guarded.post(mallory, second))[0] == 202
    assert (await _settled(guarded, second["id"]))["state"] == "delivered"
