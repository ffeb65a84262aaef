"""A matcher is one class: a test-only one, run through MediaCheck, the Hold and the
Policy, fires a rule that names it; signals stay facts nobody changes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.activity import Activity, parse_activity
from relay.banks import BankIndex
from relay.hold import Hold
from relay.matcher import Matcher
from relay.media.check import MediaCheck
from relay.media.fetch import HashCache, MediaFetcher
from relay.media.hasher import MediaHasher
from relay.media.media import Media
from relay.network import NetworkPolicy, client_session
from relay.policy import Policy, Rule
from relay.signal import Signal
from relay.verdict import Disposition
from tests.conftest import start_server

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pdq"
PEN = (FIXTURES / "misc" / "pen-and-coaster.png").read_bytes()
BRIDGE = (FIXTURES / "bridge-mods" / "aaa-orig.jpg").read_bytes()


class KnownFiles:
    """Flags files whose SHA-256 is in a set: the smallest external checker."""

    name = "known-files"

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.seen: list[Media] = []

    async def match(self, media: Media) -> Sequence[Signal]:
        self.seen.append(media)
        if media.sha256 not in self.known:
            return []
        detail = {"category": "known", "hash_kind": "sha256", "exact": True, "distance": 0}
        return [Signal("match", "known-list", detail, media=media)]


class Broken:
    name = "broken"

    async def match(self, media: Media) -> Sequence[Signal]:
        raise RuntimeError("the checker's service is down")


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    files = {"pen.png": PEN, "bridge.jpg": BRIDGE}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=files[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = await start_server(app)
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def note(*urls: str) -> Activity:
    actor = "https://remote.example/users/mallory"
    attachment = [{"type": "Document", "url": url} for url in urls]
    document = {"type": "Create", "id": f"{actor}/1", "actor": actor}
    document["object"] = {"type": "Note", "id": f"{actor}/n", "attachment": attachment}
    return parse_activity(json.dumps(document).encode())


async def checked(matchers: Sequence[Any], *urls: str, rules: Sequence[Rule] = ()) -> Any:
    policy = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)
    async with client_session(policy) as session:
        check = MediaCheck(
            MediaFetcher(session, policy, max_bytes=1 << 24),
            lambda: BankIndex(),
            HashCache(60),
            hasher=MediaHasher(workers=1),
            matchers=matchers,
        )
        try:
            hold = Hold([check], policy=Policy(rules=tuple(rules)))
            return await hold.decide(note(*urls))
        finally:
            check.hasher.close()


async def test_a_rule_naming_a_matcher_fires_on_its_match(origin: str) -> None:
    known = KnownFiles({hashlib.sha256(PEN).hexdigest()})
    assert isinstance(known, Matcher)
    rule = Rule(match="known-files", disposition=Disposition.QUARANTINE)
    verdict = await checked([known], f"{origin}/pen.png", f"{origin}/bridge.jpg", rules=[rule])
    assert verdict.disposition is Disposition.QUARANTINE
    assert verdict.rule.endswith(rule.label)
    [found] = [s for s in verdict.signals if s.kind == "match"]
    assert found.source == "known-list"
    assert found.detail["matcher"] == "known-files"
    assert found.detail["url"] == f"{origin}/pen.png"
    assert {"known-files", "known-list", "category:known"} <= found.targets
    # The evidence rides on the signal: the Media, its bytes included.
    assert found.media is not None and found.payload == PEN
    assert found.media.url == f"{origin}/pen.png"
    # Every file met the matcher, hashed by every registered kind.
    assert sorted(m.url or "" for m in known.seen) == [f"{origin}/bridge.jpg", f"{origin}/pen.png"]
    bridge = next(m for m in known.seen if m.url and m.url.endswith("bridge.jpg"))
    assert bridge.hashes["pdq"] and bridge.variants["pdq"] and bridge.kind == "image"


async def test_a_rule_naming_another_matcher_does_not_fire(origin: str) -> None:
    known = KnownFiles({hashlib.sha256(PEN).hexdigest()})
    rule = Rule(match="banks", disposition=Disposition.QUARANTINE)
    verdict = await checked([known], f"{origin}/pen.png", rules=[rule])
    assert verdict.disposition is Disposition.DELIVER


async def test_a_failed_matcher_is_an_error_not_a_pass(origin: str) -> None:
    verdict = await checked([Broken()], f"{origin}/pen.png")
    [error] = [s for s in verdict.signals if s.kind == "error"]
    assert error.detail["matcher"] == "broken" and error.detail["stage"] == "match"
    assert "service is down" not in error.detail["error"]  # internals stay in the log
    assert verdict.disposition is Disposition.REVIEW  # [hold] on_error's default


async def test_signals_are_facts_nobody_changes(origin: str) -> None:
    verdict = await checked([KnownFiles(set())], f"{origin}/pen.png")
    [hashed] = [s for s in verdict.signals if s.kind == "hashed"]
    with pytest.raises(TypeError):
        hashed.detail["seconds"] = 0  # type: ignore[index]
    assert hashed.detail["seconds"] is not None
    assert hashed.media is not None and hashed.payload == PEN
    assert hashed.as_json()["detail"] == dict(hashed.detail)
    assert type(hashed.as_json()["detail"]) is dict
    detail = {"a": 1}
    signal = Signal("match", "x", detail)
    detail["a"] = 2
    assert signal.detail == {"a": 1}


def test_matcher_names_must_differ() -> None:
    from relay.media.inspect import Inspector

    with pytest.raises(ValueError, match="matcher names must differ"):
        Inspector([KnownFiles(set()), KnownFiles(set())])
