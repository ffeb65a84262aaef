"""PhotoDNA Cloud's Match operation, against a stand-in written from its public page:
key in ``Ocp-Apim-Subscription-Key``, the image inline in JSON, ``Status.Code`` 3000 or
3002/3004/3206/3208, ``IsMatch`` and ``MatchDetails.MatchFlags``. The stand-in lists
pictures by an average hash, so a resized copy still matches, as with PhotoDNA."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from relay.checkers import PhotoDna
from relay.checkers.photodna import MAX_BYTES, MIN_SIDE, fit
from relay.media.inspect import Inspector
from relay.policy import Policy, Rule
from relay.verdict import Disposition
from tests.checkers import MISBEHAVIOURS, Seen, StandIn, media_of, noise, picture, serve
from tests.conftest import free_port

KEY = "test-subscription-key"
LISTED = picture(1)
SMALL_LISTED = picture(7, (100, 80))


def average_hash(img: Image.Image) -> int:
    grey = img.convert("L").resize((8, 8), Image.Resampling.BOX)
    values = list(grey.tobytes())
    mean = sum(values) / 64
    return sum(1 << i for i, v in enumerate(values) if v > mean)


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


class PhotoDnaService:
    """What the Match operation does with one request."""

    def __init__(self) -> None:
        self.listed = {average_hash(_image(LISTED)), average_hash(_image(SMALL_LISTED))}
        self.received: list[Image.Image] = []

    async def __call__(self, seen: Seen) -> web.StreamResponse:
        if seen.path != "/photodna/v1.0/Match" or seen.method != "POST":
            return web.json_response({"statusCode": 404, "message": "Resource not found"}, 404)
        if seen.headers.get("Ocp-Apim-Subscription-Key") != KEY:
            message = "Access denied due to invalid subscription key."
            return web.json_response({"statusCode": 401, "message": message}, status=401)
        request = seen.json()
        if request.get("DataRepresentation") != "inline":
            return self.status(3002, "Invalid or missing request parameter(s).")
        data = base64.b64decode(request["Value"])
        try:
            img = _image(data)
            img.load()
        except Exception:
            return self.status(3206, "The file could not be verified as an image.")
        if img.format not in ("GIF", "JPEG", "PNG", "BMP", "TIFF"):
            return self.status(3206, "The file could not be verified as an image.")
        if min(img.size) < MIN_SIDE or len(data) > MAX_BYTES:
            return self.status(3208, "Image size in pixels is not within allowed range.")
        self.received.append(img)
        found = average_hash(img)
        is_match = any((found ^ listed).bit_count() <= 6 for listed in self.listed)
        answer = self.status(3000, "OK", body=True)
        answer.update(IsMatch=is_match, TrackingId="WUS_418b5903425346a1b1451821c5cd06ee_57c7457ae")
        if is_match:
            flag = {
                "AdvancedInfo": [{"Key": "MatchId", "Value": "117721"}],
                "Source": "Test",
                "Violations": ["A1"],
            }
            answer["MatchDetails"] = {"AdvancedInfo": [], "MatchFlags": [flag]}
        return web.json_response(answer)

    @staticmethod
    def status(code: int, description: str, *, body: bool = False) -> dict | web.Response:  # type: ignore[type-arg]
        document = {
            "Status": {"Code": code, "Description": description, "Exception": None},
            "ContentId": None,
            "IsMatch": False,
            "MatchDetails": None,
        }
        return document if body else web.json_response(document)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def service() -> AsyncIterator[tuple[StandIn, PhotoDnaService]]:
    photodna = PhotoDnaService()
    async with serve(photodna) as stand_in:
        yield stand_in, photodna


def checker(session: aiohttp.ClientSession, stand_in: StandIn, **options: object) -> PhotoDna:
    url = stand_in.url("/photodna/v1.0/Match")
    return PhotoDna(session, KEY, url=url, **options)  # type: ignore[arg-type]


async def test_a_listed_picture_is_a_perceptual_match(session, service) -> None:
    stand_in, _ = service
    media = media_of(LISTED)
    [signal] = await checker(session, stand_in).match(media)
    assert signal.kind == "match" and signal.source == "photodna"
    assert signal.detail["matcher"] == "photodna"
    assert signal.detail["category"] == "csam"
    assert signal.detail["exact"] is False
    assert signal.detail["sources"] == ["Test"]
    assert signal.detail["match_ids"] == ["117721"]
    assert signal.detail["violations"] == ["A1"]
    assert signal.detail["sent"] == "as is"
    assert signal.media is media
    [request] = stand_in.requests
    assert request.query == {"enhance": "false"}
    assert base64.b64decode(request.json()["Value"]) == LISTED


async def test_an_irreversible_effect_is_withheld_on_a_photodna_match_alone(
    session, service
) -> None:
    stand_in, _ = service
    signals = await Inspector([checker(session, stand_in)]).inspect(media_of(LISTED))
    rule = Rule("photodna", Disposition.QUARANTINE, ("report",))
    verdict = Policy((rule,), irreversible=frozenset({"report"})).decide(signals)
    assert verdict.disposition == Disposition.QUARANTINE
    assert verdict.effects == () and verdict.withheld == ("report",)


async def test_another_picture_is_no_match(session, service) -> None:
    stand_in, _ = service
    assert await checker(session, stand_in, category="other").match(media_of(picture(2))) == []
    assert len(stand_in.requests) == 1


async def test_the_same_bytes_are_asked_about_once(session, service) -> None:
    stand_in, _ = service
    photodna = checker(session, stand_in)
    first = await photodna.match(media_of(LISTED))
    again = await photodna.match(media_of(LISTED))
    assert [s.kind for s in again] == ["match"] and again[0].detail["cached"] is True
    assert {**first[0].detail, "cached": True} == dict(again[0].detail)
    assert await photodna.match(media_of(picture(2))) == []
    assert await photodna.match(media_of(picture(2))) == []  # "no match" is cached too
    assert len(stand_in.requests) == 2
    # At the same time: one request for both.
    together = await asyncio.gather(*(photodna.match(media_of(picture(3))) for _ in range(5)))
    assert together == [[]] * 5 and len(stand_in.requests) == 3


async def test_an_expired_answer_is_asked_again(session, service) -> None:
    stand_in, _ = service
    photodna = checker(session, stand_in, cache_seconds=0.2)
    await photodna.match(media_of(LISTED))
    await asyncio.sleep(0.3)
    await photodna.match(media_of(LISTED))
    assert len(stand_in.requests) == 2


async def test_requests_wait_their_turn_within_the_timeout(session, service) -> None:
    stand_in, _ = service
    photodna = checker(session, stand_in, rate_per_second=4, timeout_seconds=2)
    started = time.monotonic()
    for seed in range(10, 16):  # 4 at once, then one every 0.25 s
        assert await photodna.match(media_of(picture(seed))) == []
    assert time.monotonic() - started >= 0.45
    assert len(stand_in.requests) == 6


async def test_no_turn_within_the_timeout_is_an_error(session, service) -> None:
    stand_in, _ = service
    photodna = checker(session, stand_in, rate_per_second=1, timeout_seconds=0.3)
    assert await photodna.match(media_of(picture(2))) == []
    [signal] = await photodna.match(media_of(picture(3)))
    assert signal.kind == "error" and signal.source == "photodna"
    assert signal.detail["matcher"] == "photodna" and signal.detail["stage"] == "check"
    assert "rate limited" in signal.detail["error"]
    assert len(stand_in.requests) == 1


@pytest.mark.parametrize("misbehaviour", MISBEHAVIOURS)
async def test_a_failing_service_is_one_error_signal_never_cached(
    session, service, misbehaviour
) -> None:
    stand_in, _ = service
    stand_in.misbehave = misbehaviour
    photodna = checker(session, stand_in, timeout_seconds=0.5, max_answer_bytes=4096)
    started = time.monotonic()
    [signal] = await photodna.match(media_of(LISTED))
    assert time.monotonic() - started < 2
    assert signal.kind == "error" and signal.detail["stage"] == "check"
    assert signal.detail["matcher"] == "photodna"
    expected = {
        "slow": "no answer within 0.5s",
        "503": "service error (HTTP 503): down for maintenance",
        "429": "rate limited by the service (HTTP 429)",
        "huge": "answer too large",
        "huge-chunked": "answer too large",
    }[misbehaviour]
    assert expected in signal.detail["error"]
    assert KEY not in signal.detail["error"]
    if misbehaviour == "429":
        # Retry-After: 2 pauses the requests; the next one waits past its timeout.
        [paused] = await photodna.match(media_of(LISTED))
        assert "rate limited: no turn" in paused.detail["error"]
        assert len(stand_in.requests) == 1
        return
    stand_in.misbehave = None
    [match] = await photodna.match(media_of(LISTED))  # errors are not cached
    assert match.kind == "match" and len(stand_in.requests) == 2


async def test_refused_connections_and_keys_are_errors(session, service) -> None:
    stand_in, _ = service
    url = f"http://127.0.0.1:{free_port()}/photodna/v1.0/Match"
    [down] = await PhotoDna(session, KEY, url=url).match(media_of(LISTED))
    assert down.kind == "error" and "cannot reach the service" in down.detail["error"]
    wrong = PhotoDna(session, "wrong", url=stand_in.url("/photodna/v1.0/Match"))
    [refused] = await wrong.match(media_of(LISTED))
    assert refused.kind == "error" and refused.detail["status"] == 401
    assert "credentials refused" in refused.detail["error"]
    assert "invalid subscription key" in refused.detail["error"]


async def test_a_status_other_than_3000_is_an_error(session) -> None:
    async def refuses(seen: Seen) -> web.StreamResponse:
        return PhotoDnaService.status(3206, "The file could not be verified as an image.")

    async with serve(refuses) as stand_in:
        [signal] = await checker(session, stand_in).match(media_of(LISTED))
    assert signal.kind == "error" and signal.detail["status_code"] == 3206
    assert "PhotoDNA status 3206: The file could not be verified" in signal.detail["error"]


@pytest.mark.parametrize(
    "answer",
    [b"<html>oops</html>", b"[]", b'{"Status": {"Code": 3000}, "IsMatch": "yes"}', b"[" * 100_000],
)
async def test_an_unreadable_answer_is_an_error(session, answer) -> None:
    async def says(seen: Seen) -> web.StreamResponse:
        return web.Response(body=answer, content_type="application/json")

    async with serve(says) as stand_in:
        photodna = checker(session, stand_in, max_answer_bytes=200_000)
        [signal] = await photodna.match(media_of(LISTED))
    assert signal.kind == "error" and "unreadable answer" in signal.detail["error"]


async def test_a_small_picture_is_upscaled_to_160(session, service) -> None:
    stand_in, photodna = service
    [signal] = await checker(session, stand_in).match(media_of(SMALL_LISTED))
    assert signal.kind == "match"
    assert signal.detail["sent"] == "re-encoded as JPEG: upscaled from 100x80 to 200x160"
    [received] = photodna.received
    assert received.format == "JPEG" and received.size == (200, 160)


async def test_a_small_picture_may_be_left_unchecked(session, service) -> None:
    stand_in, _ = service
    [signal] = await checker(session, stand_in, small="skip").match(media_of(SMALL_LISTED))
    assert signal.kind == "unchecked" and signal.source == "photodna"
    assert "100x80 is smaller than 160x160" in signal.detail["reason"]
    assert stand_in.requests == []


async def test_a_sliver_is_left_unchecked(session, service) -> None:
    stand_in, _ = service
    [signal] = await checker(session, stand_in).match(media_of(picture(8, (2000, 40))))
    assert signal.kind == "unchecked" and "within 4096" in signal.detail["reason"]
    assert stand_in.requests == []


async def test_a_picture_over_4_mb_is_shrunk_to_fit(session, service) -> None:
    stand_in, photodna = service
    large = noise(2600)  # 20 MB as PNG, still over 4 MB as a JPEG of that size
    photodna_checker = checker(session, stand_in, category="other")
    assert await photodna_checker.match(media_of(large)) == []
    [request] = stand_in.requests
    assert len(base64.b64decode(request.json()["Value"])) <= MAX_BYTES
    [received] = photodna.received
    assert received.format == "JPEG" and received.size == (1950, 1950)
    # What was sent is said only with a match; the fitting itself says it too.
    assert fit(large, "image/png")[1] == (
        f"re-encoded as JPEG: {len(large)} bytes > {MAX_BYTES}; shrunk to 1950x1950"
    )


async def test_a_format_photodna_does_not_take_is_re_encoded(session, service) -> None:
    stand_in, photodna = service
    webp = io.BytesIO()
    Image.open(io.BytesIO(LISTED)).save(webp, "WEBP", quality=95)
    [signal] = await checker(session, stand_in).match(media_of(webp.getvalue()))
    assert signal.kind == "match"
    assert signal.detail["sent"] == "re-encoded as JPEG: image/webp is not taken"
    assert photodna.received[0].format == "JPEG"


async def test_what_is_not_a_picture_is_not_sent(session, service) -> None:
    stand_in, _ = service
    assert await checker(session, stand_in).match(media_of(b"plain text, not a picture")) == []
    [signal] = await checker(session, stand_in).match(media_of(LISTED).remembered())
    assert signal.kind == "error" and "not at hand" in signal.detail["error"]
    assert stand_in.requests == []
