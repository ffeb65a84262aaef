"""Arachnid Shield against a stand-in written from its SDKs (``api/v1.py``, the models):
HTTP Basic auth, ``v1/media/`` with the raw bytes, ``v1/pdq/`` with base64 PDQ hashes,
``ScannedMedia`` / ``ScannedPDQHashes`` answers, ``{"detail": …}`` on refusals."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from relay.checkers import ArachnidShield
from relay.checkers.arachnid import pdq_base64
from relay.hashing.pdq import Pdq
from relay.media.media import Media
from tests.checkers import MISBEHAVIOURS, Seen, StandIn, media_of, picture, serve
from tests.conftest import free_port

CREDENTIALS = "sluice-test:s3cret:with-colon"
LISTED = picture(21)  # listed by its SHA-1: an exact match
NEAR = picture(22)  # listed as a PhotoDNA near match
OTHER = picture(23)
#: The listed file a near match resembles (the SDK's test picture's hashes).
KNOWN = {
    "sha1_base32": "TTY4MGOMVNR5KI2ZZ62EMYDZALUTBOHN",
    "sha256_hex": "8C3B43FB9BA63B7120CEDF87BC9F348BBAAF5D39A97266D0C7587B5EFD6ABA2D",
}


def _flat() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (200, 200), (90, 120, 200)).save(out, "PNG")
    return out.getvalue()


FLAT = _flat()  # one colour: no PDQ hash of enough quality


def _larger() -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(LISTED)).resize((400, 300)).save(out, "JPEG", quality=85)
    return out.getvalue()


LARGER = _larger()  # the listed picture resized and recompressed: other bytes, same PDQ


def sha1_base32(data: bytes) -> str:
    return base64.b32encode(hashlib.sha1(data).digest()).decode()


@dataclass
class ArachnidService:
    """Arachnid Shield's v1 endpoints as its SDK calls them."""

    exact: set[str] = field(default_factory=set)  # SHA-256 of files listed by SHA-1
    near: set[str] = field(default_factory=set)  # SHA-256 of files PhotoDNA would match
    pdq: list[str] = field(default_factory=list)  # listed PDQ hashes (hex)
    lie_about_sha256: bool = False

    async def __call__(self, seen: Seen) -> web.StreamResponse:
        expected = "Basic " + base64.b64encode(b"sluice-test:s3cret:with-colon").decode()
        if seen.headers.get("Authorization") != expected:
            detail = "Please supply your API username and password in the Authorization header"
            return web.json_response({"detail": detail}, status=401)
        if seen.method == "POST" and seen.path == "/v1/media/":
            return web.json_response(self.scan(seen.body, seen.headers["Content-Type"]))
        if seen.method == "POST" and seen.path == "/v1/pdq/":
            return web.json_response(self.scan_pdq(seen.json()["hashes"]))
        return web.json_response({"detail": "Not found."}, status=404)

    def scan(self, data: bytes, mime: str) -> dict[str, object]:
        assert mime.startswith("image/")
        sha256 = hashlib.sha256(data).hexdigest()
        scanned: dict[str, object] = {
            "size_bytes": len(data),
            "sha1_base32": sha1_base32(data),
            "sha256_hex": ("0" * 64 if self.lie_about_sha256 else sha256).upper(),
            "classification": "no-known-match",
            "match_type": None,
            "near_match_details": [],
        }
        if sha256 in self.exact:
            scanned.update(classification="csam", match_type="exact")
        elif sha256 in self.near:
            near = {"timestamp": 0.0, **KNOWN, "classification": "harmful-abusive-material"}
            scanned.update(
                classification="harmful-abusive-material",
                match_type="near",
                near_match_details=[near],
            )
        return scanned

    def scan_pdq(self, hashes: list[str]) -> dict[str, object]:
        scanned: dict[str, object] = {}
        for b64 in hashes:
            value = base64.b64decode(b64).hex()
            if any(Pdq.distance(value, listed) <= 31 for listed in self.pdq):
                detail = {"timestamp": 0.0, **KNOWN, "classification": "csam"}
                found = {"classification": "csam", "match_type": "near"}
                scanned[b64] = {**found, "near_match_details": detail}
            else:
                scanned[b64] = None  # "If no match was found … the value … is null"
        return {"scanned_hashes": scanned}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def service() -> AsyncIterator[tuple[StandIn, ArachnidService]]:
    arachnid = ArachnidService(
        exact={hashlib.sha256(LISTED).hexdigest()},
        near={hashlib.sha256(NEAR).hexdigest()},
        pdq=list(media_of(LISTED).hashes["pdq"]),
    )
    async with serve(arachnid) as stand_in:
        yield stand_in, arachnid


def checker(session: aiohttp.ClientSession, stand_in: StandIn, **options: object) -> ArachnidShield:
    return ArachnidShield(session, CREDENTIALS, url=stand_in.url("/"), **options)  # type: ignore[arg-type]


async def test_a_file_listed_by_its_sha1_is_an_exact_match(session, service) -> None:
    stand_in, _ = service
    media = media_of(LISTED)
    [signal] = await checker(session, stand_in).match(media)
    assert signal.kind == "match" and signal.source == "arachnid"
    detail = dict(signal.detail)
    assert detail["category"] == "csam" and detail["classification"] == "csam"
    assert detail["exact"] is True and detail["match_type"] == "exact"
    assert detail["hash_kind"] == "sha1" and detail["value"] == media.sha256
    [request] = stand_in.requests
    assert request.path == "/v1/media/" and request.body == LISTED
    assert request.headers["Content-Type"] == "image/png"


async def test_a_near_match_is_perceptual(session, service) -> None:
    stand_in, _ = service
    [signal] = await checker(session, stand_in).match(media_of(NEAR))
    assert signal.detail["category"] == "harmful-abusive-material"
    assert signal.detail["exact"] is False and signal.detail["hash_kind"] == "photodna"
    [near] = signal.detail["near_matches"]
    assert near["classification"] == "harmful-abusive-material" and near["timestamp"] == 0.0


async def test_exact_about_other_bytes_is_not_believed(session, service) -> None:
    stand_in, arachnid = service
    arachnid.lie_about_sha256 = True
    [signal] = await checker(session, stand_in).match(media_of(LISTED))
    assert signal.detail["exact"] is False and "counted as near" in signal.detail["note"]


async def test_no_known_match_is_nothing_and_cached(session, service) -> None:
    stand_in, _ = service
    arachnid = checker(session, stand_in)
    assert await arachnid.match(media_of(OTHER)) == []
    assert await arachnid.match(media_of(OTHER)) == []
    [first] = await arachnid.match(media_of(LISTED))
    [again] = await arachnid.match(media_of(LISTED))
    assert again.detail["cached"] is True and "cached" not in first.detail
    assert len(stand_in.requests) == 2


async def test_pdq_mode_sends_hashes_never_bytes(session, service) -> None:
    stand_in, _ = service
    arachnid = checker(session, stand_in, send="pdq")
    resized = media_of(LARGER)
    [signal] = await arachnid.match(resized)
    assert signal.kind == "match" and signal.detail["category"] == "csam"
    assert signal.detail["exact"] is False and signal.detail["hash_kind"] == "pdq"
    assert signal.detail["value"] == resized.hashes["pdq"][0]
    assert signal.detail["near_matches"][0]["classification"] == "csam"
    assert await arachnid.match(media_of(OTHER)) == []
    # Known from the media cache, without bytes: still checked by its hashes.
    assert await arachnid.match(media_of(NEAR).remembered()) == []
    assert [r.path for r in stand_in.requests] == ["/v1/pdq/"] * 3
    for request, media in zip(
        stand_in.requests, (resized, media_of(OTHER), media_of(NEAR)), strict=True
    ):
        assert request.headers["Content-Type"] == "application/json"
        assert request.json() == {"hashes": [pdq_base64(h) for h in media.hashes["pdq"]]}
        assert media.data is not None and media.data not in request.body
    everything = b"".join(r.body for r in stand_in.requests)
    for data in (LARGER, OTHER, NEAR):
        assert data[100:164] not in everything


async def test_pdq_base64_is_the_hash_s_32_bytes() -> None:
    hex_hash = Pdq.examples[0]
    assert base64.b64decode(pdq_base64(hex_hash)) == bytes.fromhex(hex_hash)
    assert len(pdq_base64(hex_hash)) == 44


async def test_pdq_mode_without_a_good_hash_is_unchecked(session, service) -> None:
    stand_in, _ = service
    media = media_of(FLAT)
    assert "pdq" not in media.hashes
    [signal] = await checker(session, stand_in, send="pdq").match(media)
    assert signal.kind == "unchecked" and "no PDQ hash" in signal.detail["reason"]
    assert stand_in.requests == []


async def test_an_answer_missing_a_hash_sent_is_an_error(session) -> None:
    async def forgets(seen: Seen) -> web.StreamResponse:
        return web.json_response({"scanned_hashes": {}})

    async with serve(forgets) as stand_in:
        [signal] = await checker(session, stand_in, send="pdq").match(media_of(OTHER))
    assert signal.kind == "error" and "not in scanned_hashes" in signal.detail["error"]


async def test_bytes_mode_needs_the_bytes(session, service) -> None:
    stand_in, _ = service
    [signal] = await checker(session, stand_in).match(media_of(LISTED).remembered())
    assert signal.kind == "error" and "not at hand" in signal.detail["error"]
    assert stand_in.requests == []


async def test_refused_credentials_say_why(session, service) -> None:
    stand_in, _ = service
    wrong = ArachnidShield(session, "someone:else", url=stand_in.url("/"))
    [signal] = await wrong.match(media_of(LISTED))
    assert signal.kind == "error" and signal.detail["status"] == 401
    assert "Please supply your API username" in signal.detail["error"]
    assert "else" not in signal.detail["error"]
    with pytest.raises(ValueError, match="USERNAME:PASSWORD"):
        ArachnidShield(session, "no-colon")


async def test_the_rate_holds(session, service) -> None:
    stand_in, _ = service
    arachnid = checker(session, stand_in, rate_per_second=2, timeout_seconds=0.2)
    assert await arachnid.match(media_of(picture(30))) == []
    assert await arachnid.match(media_of(picture(31))) == []
    [limited] = await arachnid.match(media_of(picture(32)))
    assert limited.kind == "error" and "rate limited" in limited.detail["error"]
    await asyncio.sleep(0.5)
    assert await arachnid.match(media_of(picture(32))) == []
    assert len(stand_in.requests) == 3


@pytest.mark.parametrize("misbehaviour", MISBEHAVIOURS)
@pytest.mark.parametrize("send", ["bytes", "pdq"])
async def test_a_failing_service_is_one_error_signal(session, service, misbehaviour, send) -> None:
    stand_in, _ = service
    stand_in.misbehave = misbehaviour
    arachnid = checker(session, stand_in, send=send, timeout_seconds=0.5, max_answer_bytes=8192)
    started = time.monotonic()
    [signal] = await arachnid.match(media_of(LISTED))
    assert time.monotonic() - started < 2
    assert signal.kind == "error" and signal.source == "arachnid"
    assert signal.detail["matcher"] == "arachnid" and signal.detail["stage"] == "check"
    assert {
        "slow": "no answer within",
        "503": "HTTP 503",
        "429": "HTTP 429",
        "huge": "answer too large",
        "huge-chunked": "answer too large",
    }[misbehaviour] in signal.detail["error"]
    assert "s3cret" not in str(signal.detail)
    assert len(arachnid.answers) == 0


async def test_connection_refused_is_an_error(session) -> None:
    arachnid = ArachnidShield(session, CREDENTIALS, url=f"http://127.0.0.1:{free_port()}/")
    [signal] = await arachnid.match(media_of(LISTED))
    assert signal.kind == "error" and "cannot reach the service" in signal.detail["error"]


async def test_hostile_answers_are_bounded(session) -> None:
    async def boasts(seen: Seen) -> web.StreamResponse:
        near = {"classification": "csam\x00" + "x" * 300, "timestamp": float("nan")}
        return web.json_response(
            {
                "classification": "CSAM\n<script>",
                "match_type": "near" * 100,
                "sha256_hex": None,
                "near_match_details": [near] * 200,
            }
        )

    async with serve(boasts) as stand_in:
        [signal] = await checker(session, stand_in).match(media_of(OTHER))
    detail = signal.detail
    assert detail["category"] == "unknown" and detail["exact"] is False
    assert len(detail["match_type"]) == 16 and len(detail["near_matches"]) == 16
    assert detail["near_matches"][0]["timestamp"] is None
    assert "\x00" not in detail["near_matches"][0]["classification"]


async def test_what_is_not_a_picture_is_not_sent(session, service) -> None:
    stand_in, _ = service
    text = Media.of(b"just some text")
    assert await checker(session, stand_in).match(text) == []
    assert await checker(session, stand_in, send="pdq").match(text) == []
    assert stand_in.requests == []
