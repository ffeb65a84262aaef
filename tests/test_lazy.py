"""Lazy checking ([hold] lazy = true), end to end: an activity reaches the instance
before its media is even fetched, then the same hold judges it; the verdict is
recorded on the delivered row, a quarantine-grade hit seals its evidence and the
rule's effects run (the admin's webhook is told once). With lazy off, the known
image is held and never delivered: tests/doors/test_media_hold.py's
test_known_image_is_quarantined_never_delivered_and_evidence_kept. Uploads ([upload]
lazy = true) reach the instance, then are judged: a known image is told to the admins;
with lazy off it is refused (tests/doors/test_upload.py's
test_mastodon_upload_of_a_known_image_never_reaches_the_instance)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.banks import BankStore
from relay.media.hashes import hash_media
from tests.conftest import FAST_OUTBOX, Fediverse, Running, Upstream, start_server, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors import test_upload as upload_door
from tests.doors.test_media_hold import BRIDGE, PEN, read_evidence, with_media
from tests.doors.test_upload import Instance, Start, multipart, send
from tests.webhook_support import Webhook, serving

evidence_key = media_hold.evidence_key
instance, start = upload_door.instance, upload_door.start
SLOW = 0.5  # seconds the origin takes to answer each fetch


class SlowOrigin:
    """Hosts media and answers slowly; ``served`` lists each fetch once it is answered."""

    def __init__(self) -> None:
        self.files = {"bridge.jpg": (BRIDGE, "image/jpeg"), "pen.png": (PEN, "image/png")}
        self.fetched: list[str] = []
        self.served: list[str] = []
        self.base = ""

    def url(self, name: str) -> str:
        return f"{self.base}/media/{name}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.fetched.append(name)
        await asyncio.sleep(SLOW)
        data, content_type = self.files[name]
        self.served.append(name)
        return web.Response(body=data, content_type=content_type)


@pytest.fixture
async def origin() -> AsyncIterator[SlowOrigin]:
    media = SlowOrigin()
    app = web.Application()
    app.router.add_get("/media/{name}", media.handle)
    server = await start_server(app)
    media.base = str(server.make_url("")).rstrip("/")
    yield media
    await server.close()


@pytest.fixture
async def hook() -> AsyncIterator[Webhook]:
    async with serving() as webhook:
        yield webhook


@pytest.fixture
async def lazy(sluice_factory: Any, evidence_key: Path, hook: Webhook) -> Running:
    sluice: Running = await sluice_factory(
        evidence={"key_file": str(evidence_key)},
        hold={"max_seconds": 10.0, "on_error": "reject", "lazy": True},
        bank=[{"name": "test-known", "category": "test"}],
        rule=[{"match": "category:test", "action": "quarantine", "effects": ["notify"]}],
        notify={"webhooks": [hook.url], "on": []},
        outbox=FAST_OUTBOX,
    )
    store = BankStore(sluice.parts.pool)
    await store.ensure("test-known", category="test")
    await store.add("test-known", [("md5", hash_media(BRIDGE).md5, "bridge photo")])
    await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)
    return sluice


async def _checked(sluice: Running, ap_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        record = await sluice.parts.store.get(ap_id)
        return record if record and record.get("checked_after") is not None else None

    return await wait_for(done, timeout=15)


async def test_a_known_image_is_delivered_first_then_caught_sealed_and_notified(
    lazy: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: SlowOrigin,
    hook: Webhook,
    evidence_key: Path,
) -> None:
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("bridge.jpg"))
    assert (await lazy.post(alice, activity))[0] == 202

    await wait_for(lambda: activity["id"] in upstream.ids(), timeout=10)
    assert origin.served == []  # the instance had it before the media check could finish

    record = await _checked(lazy, activity["id"])
    assert record["state"] == "delivered"  # the verdict does not move a delivered row
    assert record["verdict"]["action"] == "deliver"
    checked = record["checked_after"]
    assert checked["action"] == "quarantine"
    assert checked["rule"] == "rule[0] category:test -> quarantine"  # the rule that would hold
    assert checked["effects"] == ["notify"]
    [evidence] = [s for s in checked["signals"] if s["kind"] == "evidence"]
    assert record["evidence_id"] == evidence["detail"]["evidence_id"]
    facts, media = await read_evidence(lazy, evidence_key, record["evidence_id"])
    assert media == [BRIDGE]
    assert facts.facts["verdict"]["rule"] == "rule[0] category:test -> quarantine"
    assert origin.served == ["bridge.jpg"]

    await wait_for(lambda: len(hook.requests) >= 1, timeout=10)
    await asyncio.sleep(0.5)  # once
    [request] = hook.requests
    message = json.loads(request.body)
    assert message["disposition"] == "quarantine"
    assert message["checked_after"] is True  # delivered already: what Sluice would have done
    assert message["activity"]["id"] == activity["id"]
    assert upstream.ids() == [activity["id"]]


async def test_a_clean_activity_is_delivered_and_its_check_recorded(
    lazy: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: SlowOrigin,
    hook: Webhook,
) -> None:
    bob = fediverse.actor("bob")
    activity = with_media(bob, origin.url("pen.png"), media_type="image/png")
    assert (await lazy.post(bob, activity))[0] == 202

    await wait_for(lambda: activity["id"] in upstream.ids(), timeout=10)
    assert origin.served == []
    record = await _checked(lazy, activity["id"])
    assert record["state"] == "delivered"
    assert record["checked_after"]["action"] == "deliver"
    assert record["evidence_id"] is None
    assert origin.served == ["pen.png"]
    await asyncio.sleep(0.3)
    assert hook.requests == []


# -- uploads ([upload] lazy) ---------------------------------------------------------


async def test_a_known_upload_reaches_the_instance_then_the_admins_are_told(
    start: Start, instance: Instance, hook: Webhook
) -> None:
    sluice = await start(upload={"lazy": True}, notify={"webhooks": [hook.url]}, outbox=FAST_OUTBOX)
    body, content_type = multipart(("file", "b.jpg", BRIDGE))
    status, answer = await send(sluice, "POST", "/api/v2/media", body, content_type)
    assert status == 200 and answer == {"id": "1", "type": "image"}  # the instance's answer
    assert [r.body for r in instance.at("/api/v2/media")] == [body]

    await wait_for(lambda: len(hook.requests) >= 1, timeout=10)
    await asyncio.sleep(0.3)  # once
    [request] = hook.requests
    told = json.loads(request.body)
    assert told["event"] == "upload" and told["disposition"] == "quarantine"
    assert told["upload"]["checked_after"] is True
    evidence = sluice.parts.flow.evidence
    assert evidence is not None
    record, media = await evidence.read(told["evidence_id"], who="test", why="lazy upload")
    assert media == [BRIDGE]
    assert record.facts["verdict"]["rule"] == "rule[0] category:test -> quarantine"

    # pict-rs's hook: accepted at once, then judged and told the same way.
    status, answer = await send(sluice, "POST", "/_sluice/validate", BRIDGE, "image/jpeg")
    assert status == 200
    await wait_for(lambda: len(hook.requests) >= 2, timeout=10)
    assert json.loads(hook.requests[1].body)["disposition"] == "quarantine"


async def test_a_check_a_stopped_process_never_recorded_is_made_by_the_sweep(
    lazy: Running, fediverse: Fediverse, origin: SlowOrigin, upstream: Upstream
) -> None:
    """Handed on, then the process stopped before the check was recorded: the periodic
    sweep (scheduled on the outbox in lazy mode) checks the row all the same."""
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("bridge.jpg"))
    assert (await lazy.post(alice, activity))[0] == 202
    record = await _checked(lazy, activity["id"])
    pool = lazy.parts.pool
    # As a process stopped between the two would have left it: handed on, never checked.
    await pool.execute(
        "UPDATE activity SET checked_after = NULL, evidence_id = NULL, "
        "decided_at = now() - interval '1 hour' WHERE id = $1",
        record["id"],
    )
    assert await pool.fetchval("SELECT count(*) FROM effect WHERE kind = 'lazy-checks'"), (
        "the sweep is a periodic job of the outbox"
    )
    assert await lazy.parts.flow.check_overdue() == 1
    again = await lazy.parts.store.get(activity["id"])
    assert again is not None
    assert again["checked_after"]["action"] == "quarantine"
    assert again["evidence_id"] is not None
    assert await lazy.parts.flow.check_overdue() == 0  # recorded: nothing left
    assert upstream.ids() == [activity["id"]]  # checked, not delivered again
