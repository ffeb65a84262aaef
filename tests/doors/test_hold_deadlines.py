"""The hold's deadlines: a slow URL is that URL's error, never a timeout that erases
what was found before it. Real origins on loopback trickle a byte every two seconds
(so no read timeout fires); the hold allows 3 s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.activity import parse_activity
from relay.banks import BankStore
from relay.evidence import EvidenceKey
from relay.hold import Findings, Hold
from relay.media.hashes import hash_media
from relay.media.media import Media
from relay.policy import Policy, Rule
from relay.signal import Signal
from relay.verdict import Disposition
from tests.conftest import Fediverse, Running, Upstream, start_server, wait_for
from tests.doors.test_media_hold import BRIDGE, read_evidence, with_media

_EVIDENCE = Media.of(b"evidence")


@dataclass
class Origin:
    """Serves the bridge photo at once, and ``/trickle`` one byte every two seconds."""

    base: str = ""
    trickling: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    async def bridge(self, request: web.Request) -> web.Response:
        return web.Response(body=BRIDGE, content_type="image/jpeg")

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        self.trickling.append(request.path)
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        for byte in BRIDGE[:600]:
            await response.write(bytes([byte]))
            await asyncio.sleep(2)
        return response


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    served = Origin()
    app = web.Application()
    app.router.add_get("/media/bridge.jpg", served.bridge)
    app.router.add_get("/media/trickle.jpg", served.trickle)
    app.router.add_get("/notes/trickle", served.trickle)
    server = await start_server(app)
    served.base = str(server.make_url("")).rstrip("/")
    yield served
    await server.close()


class Stuck:
    """A check that never finishes for the activities it is given."""

    name = "stuck"

    def __init__(self) -> None:
        self.held: set[str] = set()

    def applies(self, activity: Any) -> bool:
        return activity.id in self.held

    async def run(self, activity: Any) -> list[Signal]:
        await asyncio.sleep(3600)
        return []


async def guarded(sluice_factory: Any, tmp_path: Path, **hold: Any) -> Running:
    key = tmp_path / "evidence.key"
    if not key.exists():
        EvidenceKey.generate(key)
    sluice = await sluice_factory(
        checks=hold.pop("checks", ()),
        evidence={"key_file": str(key)},
        # The defaults a trickle defeated: a media fetch may take 2 x 30 s + 1 s.
        media={"fetch_timeout_seconds": 30.0, "dereference_seconds": 20.0},
        hold={"max_seconds": 3.0, **hold},
        bank=[{"name": "test-known", "category": "test"}],
        rule=[{"match": "category:test", "action": "quarantine"}],
    )
    store = BankStore(sluice.parts.pool)
    await store.ensure("test-known", category="test")
    await store.add("test-known", [("pdq", hash_media(BRIDGE).pdq[0].hash, "bridge photo")])
    await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)
    return sluice


async def settled(sluice: Running, ap_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        record = await sluice.parts.store.get(ap_id)
        return record if record and record["state"] not in ("received", "queued") else None

    return await wait_for(done, timeout=15)


def kinds(signals: list[dict[str, Any]]) -> list[str]:
    return [s["kind"] for s in signals]


async def test_a_trickling_url_does_not_erase_a_bank_match(
    sluice_factory: Any,
    tmp_path: Path,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,
) -> None:
    sluice = await guarded(sluice_factory, tmp_path)  # on_error, on_timeout: review
    alice = fediverse.actor("alice")
    known, slow = origin.url("/media/bridge.jpg"), origin.url("/media/trickle.jpg")
    activity = with_media(alice, known, slow)
    assert (await sluice.post(alice, activity))[0] == 202
    record = await settled(sluice, activity["id"])
    assert record["state"] == "quarantined", record["verdict"]
    assert record["verdict"]["rule"] == "rule[0] category:test -> quarantine"
    [evidence] = [s for s in record["verdict"]["signals"] if s["kind"] == "evidence"]
    facts, media = await read_evidence(
        sluice, tmp_path / "evidence.key", evidence["detail"]["evidence_id"]
    )
    assert media == [BRIDGE]  # the match kept its bytes
    signals = facts.facts["verdict"]["signals"]
    [match] = [s for s in signals if s["kind"] == "match"]
    assert match["detail"]["url"] == known
    # The slow URL ended inside the hold: its own error, not the hold's timeout.
    [error] = [s for s in signals if s["kind"] == "error"]
    assert error["detail"]["url"] == slow
    assert error["detail"]["stage"] == "fetch"
    assert "[hold] max_seconds" in error["detail"]["error"]
    assert "timeout" not in kinds(signals)
    assert origin.trickling == ["/media/trickle.jpg"]  # no retry past the deadline
    assert upstream.requests == []


async def test_a_trickling_url_alone_follows_on_error_not_on_timeout(
    sluice_factory: Any, tmp_path: Path, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    sluice = await guarded(sluice_factory, tmp_path, on_error="reject", on_timeout="deliver")
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("/media/trickle.jpg"))
    assert (await sluice.post(alice, activity))[0] == 202
    record = await settled(sluice, activity["id"])
    assert record["state"] == "rejected", record["verdict"]
    assert record["verdict"]["rule"] == "hold.on_error"
    assert kinds(record["verdict"]["signals"]) == ["error"]
    assert upstream.requests == []


async def test_a_trickling_boosted_post_ends_inside_the_hold(
    sluice_factory: Any, tmp_path: Path, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    # dereference_seconds (20) is longer than the hold (3): the hold's deadline bounds it.
    sluice = await guarded(sluice_factory, tmp_path, on_error="reject")
    alice = fediverse.actor("alice")
    announce = alice.activity("Announce", obj=origin.url("/notes/trickle"))
    assert (await sluice.post(alice, announce))[0] == 202
    record = await settled(sluice, announce["id"])
    assert record["state"] == "rejected", record["verdict"]
    assert record["verdict"]["rule"] == "hold.on_error"
    [error] = record["verdict"]["signals"]
    assert error["detail"]["stage"] == "dereference"
    assert error["detail"]["url"] == origin.url("/notes/trickle")


async def test_on_timeout_competes_with_what_was_found_before_it(
    sluice_factory: Any, tmp_path: Path, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    """The hold's own timeout, the last resort: a check that never ends. The admin
    chose to deliver on timeout, but the match found meanwhile is stronger."""
    stuck = Stuck()
    sluice = await guarded(
        sluice_factory, tmp_path, checks=(stuck,), max_seconds=1.5, on_timeout="deliver"
    )
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("/media/bridge.jpg"))
    stuck.held.add(activity["id"])
    assert (await sluice.post(alice, activity))[0] == 202
    record = await settled(sluice, activity["id"])
    assert record["state"] == "quarantined", record["verdict"]
    assert record["verdict"]["rule"] == "rule[0] category:test -> quarantine"
    [evidence] = [s for s in record["verdict"]["signals"] if s["kind"] == "evidence"]
    key = tmp_path / "evidence.key"
    facts, media = await read_evidence(sluice, key, evidence["detail"]["evidence_id"])
    assert media == [BRIDGE]
    [timeout] = [s for s in facts.facts["verdict"]["signals"] if s["kind"] == "timeout"]
    assert timeout["detail"]["unfinished"] == [{"check": "stuck"}]
    await asyncio.sleep(0.2)
    assert upstream.requests == []


class Slow:
    """A reporting check: finds a match at once, then waits on a URL for ever."""

    name = "slow"

    def applies(self, activity: Any) -> bool:
        return True

    async def run(self, activity: Any) -> list[Signal]:
        raise AssertionError("the hold calls report() on a reporting check")

    async def report(self, activity: Any, found: Findings) -> None:
        found.add(Signal("match", "test-known", {"category": "test"}, media=_EVIDENCE))
        found.begin("https://slow.example/a.jpg")
        await asyncio.sleep(3600)


@pytest.mark.parametrize("on_timeout", list(Disposition))
async def test_the_timeout_names_what_was_unfinished_and_the_strongest_action_wins(
    on_timeout: Disposition,
) -> None:
    policy = Policy((Rule("category:test", Disposition.REVIEW),))
    hold = Hold((Slow(),), policy=policy, max_seconds=0.3, on_timeout=on_timeout)
    activity = parse_activity(
        b'{"id": "https://a.example/1", "type": "Create", "actor": "https://a.example/u",'
        b' "object": {"id": "https://a.example/n", "type": "Note"}}'
    )
    verdict = await hold.decide(activity)
    expected = max(on_timeout, Disposition.REVIEW, key=lambda a: a.strength)
    assert verdict.disposition == expected
    rule = "hold.on_timeout" if on_timeout.strength > Disposition.REVIEW.strength else "rule[0]"
    assert verdict.rule.startswith(rule)
    timeout, match = verdict.signals
    assert timeout.kind == "timeout"
    assert timeout.detail["unfinished"] == [{"check": "slow", "url": "https://slow.example/a.jpg"}]
    assert match.payload == b"evidence"  # found before the timeout: kept, bytes and all
