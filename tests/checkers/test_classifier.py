"""The generic classifier against a stand-in model server: the bytes POSTed with their
type and a token, a JSON answer with a score at a dotted path; thresholds turn scores
into ``match`` (perceptual), ``suspect`` or nothing."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.checkers import Classifier
from relay.checkers.classifier import score_at
from relay.media.inspect import Inspector
from relay.policy import Policy, Rule
from relay.verdict import Disposition
from tests.checkers import MISBEHAVIOURS, Seen, StandIn, media_of, picture, serve
from tests.conftest import free_port

TOKEN = "model-token"
HIGH, MIDDLE, LOW = picture(41), picture(42), picture(43)
SCORES = {hashlib.sha256(d).hexdigest(): s for d, s in ((HIGH, 0.97), (MIDDLE, 0.7), (LOW, 0.02))}


async def model(seen: Seen) -> web.StreamResponse:
    """A model server: scores by the file, as a classifier would by its pixels."""
    if seen.headers.get("Authorization") != f"Bearer {TOKEN}":
        return web.json_response({"error": "bad token"}, status=401)
    if not seen.headers.get("Content-Type", "").startswith("image/"):
        return web.json_response({"error": "not an image"}, status=415)
    score = SCORES.get(hashlib.sha256(seen.body).hexdigest(), 0.0)
    answer = {"predictions": {"csam": score, "nsfw": score}, "is_csam": score > 0.9}
    return web.json_response(answer)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    async with serve(model) as server:
        yield server


def checker(session: aiohttp.ClientSession, stand_in: StandIn, **options: Any) -> Classifier:
    options = {"score_key": "predictions.csam", "match_at": 0.9, "review_at": 0.5, **options}
    return Classifier(session, stand_in.url("/classify"), token=TOKEN, **options)


async def test_a_score_above_match_at_is_a_perceptual_match(session, stand_in) -> None:
    media = media_of(HIGH)
    [signal] = await checker(session, stand_in, category="nsfw-csam").match(media)
    assert signal.kind == "match" and signal.source == "classifier"
    assert dict(signal.detail) == {
        "matcher": "classifier",
        "category": "nsfw-csam",
        "score": 0.97,
        "exact": False,
        "match_at": 0.9,
    }
    [request] = stand_in.requests
    assert request.path == "/classify" and request.body == HIGH
    assert request.headers["Content-Type"] == "image/png"


async def test_a_classifier_alone_never_runs_an_irreversible_effect(session, stand_in) -> None:
    signals = await Inspector([checker(session, stand_in)]).inspect(media_of(HIGH))
    rule = Rule("category:csam", Disposition.QUARANTINE, ("receipt",))
    verdict = Policy((rule,), irreversible=frozenset({"receipt"})).decide(signals)
    assert verdict.disposition == Disposition.QUARANTINE
    assert verdict.withheld == ("receipt",) and verdict.effects == ()


async def test_a_score_between_the_thresholds_is_a_suspect(session, stand_in) -> None:
    [signal] = await checker(session, stand_in).match(media_of(MIDDLE))
    assert signal.kind == "suspect" and signal.targets == {"signal:suspect"}
    assert signal.detail["score"] == 0.7 and signal.detail["review_at"] == 0.5
    rule = Rule("signal:suspect", Disposition.REVIEW)
    assert Policy((rule,)).decide([signal]).disposition == Disposition.REVIEW
    # Without review_at, nothing.
    assert await checker(session, stand_in, review_at=None).match(media_of(MIDDLE)) == []


async def test_a_low_score_is_nothing(session, stand_in) -> None:
    assert await checker(session, stand_in).match(media_of(LOW)) == []


async def test_a_boolean_counts_as_one_or_zero(session, stand_in) -> None:
    classifier = checker(session, stand_in, score_key="is_csam", match_at=1.0, review_at=None)
    [signal] = await classifier.match(media_of(HIGH))
    assert signal.kind == "match" and signal.detail["score"] == 1.0
    assert await classifier.match(media_of(MIDDLE)) == []


async def test_no_score_at_the_key_is_an_error(session, stand_in) -> None:
    [signal] = await checker(session, stand_in, score_key="predictions.gore").match(media_of(HIGH))
    assert signal.kind == "error" and signal.detail["stage"] == "check"
    assert "no number at 'predictions.gore'" in signal.detail["error"]


def test_score_paths() -> None:
    document = {"a": {"b": [0.1, {"c": 0.5}]}, "n": float("nan"), "big": 10**400, "t": True}
    assert score_at(document, "a.b.0") == 0.1
    assert score_at(document, "a.b.1.c") == 0.5
    assert score_at(document, "a.b.2") is None
    assert score_at(document, "a.x") is None
    assert score_at(document, "n") is None and score_at(document, "big") is None
    assert score_at(document, "t") == 1.0
    assert score_at(document, "a") is None


async def test_the_same_bytes_are_classified_once(session, stand_in) -> None:
    classifier = checker(session, stand_in)
    for _ in range(3):
        [signal] = await classifier.match(media_of(HIGH))
        assert signal.kind == "match"
        assert await classifier.match(media_of(LOW)) == []
    assert len(stand_in.requests) == 2


async def test_the_rate_holds(session, stand_in) -> None:
    classifier = checker(session, stand_in, rate_per_second=1, timeout_seconds=0.3)
    assert await classifier.match(media_of(LOW)) == []
    [limited] = await classifier.match(media_of(MIDDLE))
    assert (
        limited.kind == "error" and "rate limited: no turn within 0.3s" in limited.detail["error"]
    )
    assert len(stand_in.requests) == 1


@pytest.mark.parametrize("misbehaviour", MISBEHAVIOURS)
async def test_a_failing_service_is_one_error_signal(session, stand_in, misbehaviour) -> None:
    stand_in.misbehave = misbehaviour
    classifier = checker(session, stand_in, timeout_seconds=0.5, max_answer_bytes=2048)
    started = time.monotonic()
    [signal] = await classifier.match(media_of(HIGH))
    assert time.monotonic() - started < 2
    assert signal.kind == "error" and signal.source == "classifier"
    assert signal.detail["matcher"] == "classifier" and signal.detail["stage"] == "check"
    assert TOKEN not in str(signal.detail)
    assert {
        "slow": "no answer within 0.5s",
        "503": "service error (HTTP 503)",
        "429": "rate limited by the service (HTTP 429): slow down",
        "huge": "answer too large: 1000011 > 2048 bytes",
        "huge-chunked": "answer too large: over 2048 bytes",
    }[misbehaviour] in signal.detail["error"]
    if misbehaviour in ("503", "429"):
        assert signal.detail["status"] == int(misbehaviour)
    assert len(classifier.answers) == 0


async def test_refused_tokens_and_connections_are_errors(session, stand_in) -> None:
    wrong = Classifier(session, stand_in.url("/classify"), token="nope")
    [refused] = await wrong.match(media_of(HIGH))
    assert (
        refused.kind == "error"
        and "credentials refused (HTTP 401): bad token" in (refused.detail["error"])
    )
    down = Classifier(session, f"http://127.0.0.1:{free_port()}/classify", token=TOKEN)
    [error] = await down.match(media_of(HIGH))
    assert error.kind == "error" and "cannot reach the service" in error.detail["error"]


async def test_only_the_kinds_asked_for_are_sent(session, stand_in) -> None:
    assert await checker(session, stand_in).match(media_of(b"%PDF-1.4 not a picture")) == []
    [error] = await checker(session, stand_in).match(media_of(HIGH).remembered())
    assert error.kind == "error" and "not at hand" in error.detail["error"]
    assert stand_in.requests == []


def test_thresholds_must_be_in_order() -> None:
    with pytest.raises(ValueError, match="review_at"):
        Classifier(None, "http://x/", match_at=0.5, review_at=0.8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score_key"):
        Classifier(None, "http://x/", score_key="a..b")  # type: ignore[arg-type]
