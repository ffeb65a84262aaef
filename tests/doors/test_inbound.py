"""The inbound door against real PostgreSQL, real HTTP servers and real signatures."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import WSMsgType, WSServerHandshakeError, web
from aiohttp.test_utils import TestServer

from relay.activity import Activity, parse_activity
from relay.signal import Signal
from relay.store.activities import lock_order
from tests.conftest import Fediverse, Running, Upstream, settled_row, start_server, wait_for

SIGNED = ("host", "date", "digest", "signature", "content-type")


async def test_signed_activity_is_forwarded_byte_exact(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = fediverse.actor("alice")
    activity = alice.activity()
    body = json.dumps(activity, indent=1).encode()  # odd spacing: must survive unchanged
    headers = alice.sign("https://social.example/users/bob/inbox?x=1", body)
    async with sluice.session.post(
        sluice.url + "/users/bob/inbox?x=1", data=body, headers=headers
    ) as response:
        assert response.status == 202, await response.text()

    [got] = await wait_for(upstream.inbox_posts)
    assert got.path == "/users/bob/inbox?x=1"
    assert got.body == body
    for name in SIGNED:
        assert got.headers[name.title()] == headers[name.title()], name
    record = await sluice.parts.store.get(activity["id"])
    assert record["state"] == "delivered"
    assert record["signer"] == alice.id
    assert record["verdict"]["action"] == "deliver"


async def test_rfc9421_signature_is_verified_and_forwarded(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = fediverse.actor("alice")
    activity = alice.activity("Like", obj="https://social.example/notes/1")
    status, text = await sluice.post(alice, activity, scheme="rfc9421")
    assert status == 202, text
    [got] = await wait_for(upstream.inbox_posts)
    for name in ("Signature-Input", "Signature", "Content-Digest", "Host"):
        assert name in got.headers
    assert got.json()["id"] == activity["id"]


async def test_202_only_after_commit(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    upstream.status = 503  # nothing gets delivered: the row must be there on its own
    alice = fediverse.actor("alice")
    activity = alice.activity()
    status, _ = await sluice.post(alice, activity)
    assert status == 202
    count = await sluice.parts.pool.fetchval(
        "SELECT count(*) FROM activity WHERE ap_id = $1", activity["id"]
    )
    assert count == 1


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("body", "digest"),
        ("signature", "verif"),
        ("stale", "date"),
        ("unsigned", "no signature header"),
    ],
)
async def test_bad_signatures_get_401_with_the_reason(
    sluice: Running, fediverse: Fediverse, upstream: Upstream, tamper: str, reason: str
) -> None:
    alice = fediverse.actor("alice")
    body = json.dumps(alice.activity()).encode()
    url = "https://social.example/inbox"
    if tamper == "stale":
        headers = alice.sign(url, body, now=time.time() - 13 * 3600)
    else:
        headers = alice.sign(url, body)
    if tamper == "body":
        body = body.replace(b"note", b"nope")
    elif tamper == "signature":
        sig = headers["Signature"]
        cut = sig.index('signature="') + len('signature="')
        flipped = "A" if sig[cut] != "A" else "B"
        headers["Signature"] = sig[:cut] + flipped + sig[cut + 1 :]
    elif tamper == "unsigned":
        headers = {"Content-Type": "application/activity+json"}
    async with sluice.session.post(sluice.url + "/inbox", data=body, headers=headers) as response:
        assert response.status == 401
        error = (await response.json())["error"]
    assert reason in error.lower(), error
    assert await sluice.parts.pool.fetchval("SELECT count(*) FROM activity") == 0
    await asyncio.sleep(0.1)
    assert upstream.inbox_posts() == []


async def test_unknown_key_is_refused(sluice: Running, fediverse: Fediverse) -> None:
    alice = fediverse.actor("alice")
    fediverse.actors.clear()  # the key URL now answers 404
    status, text = await sluice.post(alice, alice.activity())
    assert status == 401
    assert "404" in text or "fetch" in text.lower(), text


async def test_delete_from_gone_actor_is_accepted_and_dropped(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = fediverse.actor("alice")
    fediverse.gone.add(alice.id)
    status, _ = await sluice.post(alice, alice.activity("Delete", obj=alice.id))
    assert status == 202
    # A Create from a gone actor is not a Delete: refused.
    status, _ = await sluice.post(alice, alice.activity())
    assert status == 401
    await asyncio.sleep(0.1)
    assert upstream.inbox_posts() == []
    assert await sluice.parts.pool.fetchval("SELECT count(*) FROM activity") == 0


async def test_rotated_key_is_refetched_once(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = fediverse.actor("alice", key_index=0)
    assert (await sluice.post(alice, alice.activity()))[0] == 202
    fetches = len(fediverse.fetches)
    rotated = fediverse.actor("alice", key_index=1)  # same id, new key
    assert (await sluice.post(rotated, rotated.activity()))[0] == 202
    assert len(fediverse.fetches) == fetches + 1
    await wait_for(lambda: len(upstream.inbox_posts()) == 2)


async def test_relayed_activity_needs_the_actors_own_signature(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    from relay.signature import sign_ld

    alice = fediverse.actor("alice", key_index=0)
    relay = fediverse.actor("relay", key_index=1)
    activity = alice.activity()
    status, text = await sluice.post(relay, activity)  # relay signs, alice is the actor
    assert status == 401
    assert "not by the actor" in text
    signed = sign_ld(activity, alice.key, alice.key_id)
    status, text = await sluice.post(relay, signed)
    assert status == 202, text
    [got] = await wait_for(upstream.inbox_posts)
    assert got.json()["id"] == activity["id"]
    record = await sluice.parts.store.get(activity["id"])
    assert record["signer"] == relay.id


async def test_unsigned_accepted_when_signatures_not_required(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    sluice = await sluice_factory(signatures={"require": False})
    alice = fediverse.actor("alice")
    activity = alice.activity()
    async with sluice.session.post(
        sluice.url + "/inbox", json=activity, headers={"Host": "social.example"}
    ) as response:
        assert response.status == 202
    await wait_for(upstream.inbox_posts)
    record = await sluice.parts.store.get(activity["id"])
    assert record["signer"] is None


async def test_malformed_and_oversized_bodies(sluice_factory: Any, fediverse: Fediverse) -> None:
    sluice = await sluice_factory(server={"max_body_bytes": 2048})
    alice = fediverse.actor("alice")
    status, text = await sluice.post(alice, b"{not json")
    assert status == 400
    assert "not valid JSON" in text
    status, text = await sluice.post(alice, b'["an", "array"]')
    assert status == 400
    assert "JSON object" in text
    status, text = await sluice.post(alice, json.dumps({"type": "Create"}).encode())
    assert status == 400
    assert "actor" in text
    big = alice.activity()
    big["object"]["content"] = "x" * 4096
    status, text = await sluice.post(alice, big)
    assert status == 413
    assert "too large" in text


async def test_duplicate_activity_is_delivered_once(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = fediverse.actor("alice")
    activity = alice.activity()
    for _ in range(3):
        assert (await sluice.post(alice, activity))[0] == 202
    await wait_for(upstream.inbox_posts)
    await asyncio.sleep(0.2)
    assert upstream.ids() == [activity["id"]]


async def test_5xx_is_retried_until_accepted(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    upstream.status = 503
    alice = fediverse.actor("alice")
    activity = alice.activity()
    assert (await sluice.post(alice, activity))[0] == 202
    await wait_for(lambda: upstream.refused >= 2)
    upstream.status = 202
    await wait_for(upstream.inbox_posts, timeout=5)
    record = await settled_row(sluice, activity["id"])
    assert record["state"] == "delivered"
    assert record["attempts"] >= 3
    assert upstream.ids() == [activity["id"]]


async def test_4xx_is_recorded_and_not_retried(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    upstream.status = 400
    alice = fediverse.actor("alice")
    activity = alice.activity()
    assert (await sluice.post(alice, activity))[0] == 202
    record = await wait_for(lambda: _state_is(sluice, activity["id"], "refused"), timeout=5)
    assert record["last_status"] == 400
    assert "upstream says 400" in record["last_error"]
    await asyncio.sleep(0.3)
    assert upstream.refused == 1


async def _state_is(sluice: Running, ap_id: str, state: str) -> dict[str, Any] | None:
    record = await sluice.parts.store.get(ap_id)
    return record if record and record["state"] == state else None


async def test_dead_letters_are_listed_and_replayed(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    sluice = await sluice_factory(delivery={"max_age_seconds": 1}, admin={"token_file": ""})
    upstream.status = 500
    alice = fediverse.actor("alice")
    activity = alice.activity()
    assert (await sluice.post(alice, activity))[0] == 202
    record = await wait_for(lambda: _state_is(sluice, activity["id"], "dead"), timeout=10)
    assert "upstream says 500" in record["last_error"]
    [dead] = await sluice.parts.store.dead_letters()
    assert dead["ap_id"] == activity["id"]
    upstream.status = 202
    assert await sluice.parts.store.replay([dead["id"]]) == 1
    sluice.parts.flow.wake()
    await wait_for(upstream.inbox_posts)
    assert upstream.ids() == [activity["id"]]


# -- the hold and per-object order ----------------------------------------------


class Gate:
    """A check that holds chosen activities until the test opens it."""

    name = "gate"

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.opened = asyncio.Event()
        self.signals: list[Signal] = []

    def applies(self, activity: Activity) -> bool:
        return activity.id in self.held

    async def run(self, activity: Activity) -> list[Signal]:
        await self.opened.wait()
        return self.signals


async def create_and_delete(
    sluice_factory: Any, fediverse: Fediverse
) -> tuple[Running, Gate, Any, dict[str, Any], dict[str, Any]]:
    """A Sluice whose gate holds alice's Create; alice; the Create; her Delete of its note."""
    gate = Gate()
    sluice = await sluice_factory(checks=(gate,))
    alice = fediverse.actor("alice")
    create = alice.activity()
    gate.held.add(create["id"])
    delete = alice.activity("Delete", obj={"id": create["object"]["id"], "type": "Tombstone"})
    return sluice, gate, alice, create, delete


async def test_delete_cancels_a_held_create(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    sluice, gate, alice, create, delete = await create_and_delete(sluice_factory, fediverse)
    assert (await sluice.post(alice, create))[0] == 202
    assert (await sluice.post(alice, delete))[0] == 202
    await wait_for(upstream.inbox_posts)
    gate.opened.set()
    await asyncio.sleep(0.3)
    assert upstream.ids() == [delete["id"]]
    record = await sluice.parts.store.get(create["id"])
    assert record["state"] == "cancelled"
    assert delete["id"] in record["last_error"]


async def test_a_delete_arriving_while_its_create_is_being_stored_still_cancels_it(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    sluice, gate, alice, create, delete = await create_and_delete(sluice_factory, fediverse)
    note = create["object"]["id"]
    pool = sluice.parts.pool
    # The Create's insert, caught between its lock and its commit: its row is not
    # visible to the Delete's statement until it commits.
    async with pool.acquire() as conn:
        storing = conn.transaction()
        await storing.start()
        assert await lock_order(conn, parse_activity(json.dumps(create).encode()))
        await conn.execute(
            "INSERT INTO activity (ap_id, type, actor, signer, object_id, target, headers, "
            "body, deadline) VALUES ($1, 'Create', $2, $2, $3, '/inbox', '[]', $4, "
            "now() + interval '1 day')",
            create["id"],
            alice.id,
            note,
            json.dumps(create).encode(),
        )
        posting = asyncio.create_task(sluice.post(alice, delete))
        await asyncio.sleep(0.3)
        assert not posting.done()  # the Delete waits for the Create's commit...
        await storing.commit()
    assert (await posting)[0] == 202
    record = await wait_for(lambda: sluice.parts.store.get(create["id"]))
    assert record["state"] == "cancelled"  # ...and then sees it, and cancels it
    gate.opened.set()
    await wait_for(upstream.inbox_posts)
    await asyncio.sleep(0.2)
    assert upstream.ids() == [delete["id"]]


async def test_delete_by_another_actor_does_not_cancel(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    gate = Gate()
    sluice = await sluice_factory(checks=(gate,))
    alice = fediverse.actor("alice", key_index=0)
    mallory = fediverse.actor("mallory", key_index=1)
    create = alice.activity()
    note = create["object"]["id"]
    gate.held.add(create["id"])
    assert (await sluice.post(alice, create))[0] == 202
    assert (await sluice.post(mallory, mallory.activity("Delete", obj=note)))[0] == 202
    await asyncio.sleep(0.2)
    assert (await sluice.parts.store.get(create["id"]))["state"] == "received"
    gate.opened.set()
    await wait_for(lambda: len(upstream.inbox_posts()) == 2)
    # Nor does it wait behind alice's Create: ordering is per actor, so mallory cannot
    # stall alice's activities by sending his own about her objects.
    assert upstream.ids()[1] == create["id"]


async def test_undo_cancels_a_held_announce(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    gate = Gate()
    sluice = await sluice_factory(checks=(gate,))
    alice = fediverse.actor("alice")
    boosted = "https://elsewhere.example/notes/7"
    announce = alice.activity("Announce", obj=boosted)
    gate.held.add(announce["id"])
    assert (await sluice.post(alice, announce))[0] == 202
    undo = alice.activity("Undo", obj=announce["id"])
    assert (await sluice.post(alice, undo))[0] == 202
    await wait_for(upstream.inbox_posts)
    assert upstream.ids() == [undo["id"]]
    assert (await sluice.parts.store.get(announce["id"]))["state"] == "cancelled"


async def test_update_waits_behind_its_held_create(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    gate = Gate()
    sluice = await sluice_factory(checks=(gate,))
    alice = fediverse.actor("alice")
    create = alice.activity()
    gate.held.add(create["id"])
    assert (await sluice.post(alice, create))[0] == 202
    update = alice.activity("Update", obj={**create["object"], "content": "edited"})
    assert (await sluice.post(alice, update))[0] == 202
    other = alice.activity()  # about another object: not held up
    assert (await sluice.post(alice, other))[0] == 202
    await wait_for(upstream.inbox_posts)
    await asyncio.sleep(0.3)
    assert upstream.ids() == [other["id"]]
    gate.opened.set()
    await wait_for(lambda: len(upstream.inbox_posts()) == 3)
    assert upstream.ids() == [other["id"], create["id"], update["id"]]


@pytest.mark.parametrize(
    ("on_timeout", "state"),
    [("reject", "rejected"), ("review", "review"), ("deliver", "delivered")],
)
async def test_hold_timeout_follows_on_timeout(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream, on_timeout: str, state: str
) -> None:
    gate = Gate()
    sluice = await sluice_factory(
        checks=(gate,), hold={"max_seconds": 0.2, "on_timeout": on_timeout}
    )
    alice = fediverse.actor("alice")
    activity = alice.activity()
    gate.held.add(activity["id"])
    assert (await sluice.post(alice, activity))[0] == 202
    record = await wait_for(lambda: _state_is(sluice, activity["id"], state), timeout=5)
    assert record["verdict"]["rule"] == "hold.on_timeout"
    assert record["verdict"]["signals"][0]["kind"] == "timeout"
    assert (upstream.ids() == [activity["id"]]) == (state == "delivered")


async def test_a_failing_check_is_a_signal_not_a_loss(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    class Broken(Gate):
        name = "broken"

        async def run(self, activity: Activity) -> list[Signal]:
            raise RuntimeError("checker exploded")

    broken = Broken()
    sluice = await sluice_factory(checks=(broken,))  # [hold] on_error: review (default)
    alice = fediverse.actor("alice")
    activity = alice.activity()
    broken.held.add(activity["id"])
    assert (await sluice.post(alice, activity))[0] == 202
    record = await wait_for(lambda: _state_is(sluice, activity["id"], "review"))
    assert record["verdict"]["rule"] == "hold.on_error"
    [signal] = record["verdict"]["signals"]
    assert signal == {"kind": "error", "source": "broken", "detail": {"error": "checker exploded"}}
    assert upstream.inbox_posts() == []


# -- everything else ----------------------------------------------------------------


async def test_other_requests_pass_through_unchanged(sluice: Running, upstream: Upstream) -> None:
    async with sluice.session.get(
        sluice.url + "/users/alice?page=2", headers={"Accept": "application/activity+json"}
    ) as response:
        assert response.status == 202
        assert await response.text() == "upstream says 202"
    async with sluice.session.post(
        sluice.url + "/api/v1/statuses", data=b"status=hello", headers={"Host": "social.example"}
    ) as response:
        assert response.status == 202
    get, post = upstream.requests
    assert (get.method, get.path) == ("GET", "/users/alice?page=2")
    assert get.headers["Accept"] == "application/activity+json"
    assert (post.method, post.path, post.body) == ("POST", "/api/v1/statuses", b"status=hello")
    assert post.headers["Host"] == "social.example"


async def test_passthrough_streams_large_bodies(sluice: Running, upstream: Upstream) -> None:
    blob = bytes(range(256)) * 40_000  # 10 MB, beyond max_body_bytes of the inbox
    async with sluice.session.put(sluice.url + "/api/v2/media", data=io.BytesIO(blob)) as response:
        assert response.status == 202
    assert upstream.requests[-1].body == blob


async def test_passthrough_with_upstream_down_is_502(
    sluice_factory: Any, make_config: Any, upstream: Upstream
) -> None:
    config = make_config(upstream={"url": "http://127.0.0.1:9"})
    sluice = await sluice_factory(config)
    async with sluice.session.get(sluice.url + "/about") as response:
        assert response.status == 502
        assert "upstream unreachable" in (await response.json())["error"]


async def test_health_readiness_and_metrics(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    for url in (sluice.url + "/healthz", sluice.admin_url + "/readyz"):
        async with sluice.session.get(url) as response:
            assert response.status == 200
    alice = fediverse.actor("alice")
    await sluice.post(alice, alice.activity())
    await sluice.post(alice, b"{")
    await wait_for(upstream.inbox_posts)
    await asyncio.sleep(0.05)
    async with sluice.session.get(sluice.admin_url + "/metrics") as response:
        text = await response.text()
    assert 'sluice_activities_received_total{result="accepted"} 1.0' in text
    assert 'sluice_activities_received_total{result="malformed"} 1.0' in text
    assert "sluice_activities_delivered_total 1.0" in text
    assert "sluice_delivery_latency_seconds_bucket" in text
    assert upstream.requests == upstream.inbox_posts()  # /metrics is Sluice's own


async def test_admin_api_requires_the_token(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream, monkeypatch: Any
) -> None:
    sluice = await sluice_factory()
    async with sluice.session.get(sluice.admin_url + "/_sluice/api/dead-letters") as response:
        assert response.status == 403
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "s3cret")
    sluice = await sluice_factory()
    alice = fediverse.actor("alice")
    activity = alice.activity()
    await sluice.post(alice, activity)
    await wait_for(upstream.inbox_posts)
    api = sluice.admin_url + "/_sluice/api"
    async with sluice.session.get(api + "/dead-letters") as response:
        assert response.status == 401
    auth = {"Authorization": "Bearer s3cret"}
    async with sluice.session.get(
        api + "/activities", params={"id": activity["id"]}, headers=auth
    ) as response:
        record = await response.json()
    assert record["state"] == "delivered"
    assert record["verdict"]["rule"] == "fast path: nothing to check"
    async with sluice.session.get(api + f"/activities/{record['id']}", headers=auth) as response:
        assert (await response.json())["ap_id"] == activity["id"]
    async with sluice.session.post(
        api + "/dead-letters/replay", json={"all": True}, headers=auth
    ) as response:
        assert await response.json() == {"replayed": 0}


async def test_two_processes_share_one_queue(
    sluice_factory: Any, make_config: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    config = make_config()
    first = await sluice_factory(config)
    second = await sluice_factory(config)
    alice = fediverse.actor("alice")
    sent = [alice.activity() for _ in range(40)]
    upstream.status = 503  # every first attempt fails: retries go through both pollers
    await asyncio.gather(
        *(s.post(alice, a) for s, a in zip([first, second] * 20, sent, strict=True))
    )
    await wait_for(lambda: upstream.refused >= 40)
    upstream.status = 202
    await wait_for(lambda: len(upstream.inbox_posts()) == 40)
    await asyncio.sleep(0.5)
    assert sorted(upstream.ids()) == sorted(a["id"] for a in sent)
    owners = await first.parts.pool.fetchval(
        "SELECT count(DISTINCT owner) FROM activity"  # released after delivery: all NULL
    )
    assert owners == 0


async def test_an_expired_lease_is_taken_over(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    sluice = await sluice_factory(delivery={"lease_seconds": 0.5})
    pool = sluice.parts.pool
    alice = fediverse.actor("alice")
    activity = alice.activity()
    body = json.dumps(activity).encode()
    # A row claimed by a worker that died: its lease runs out, then it is delivered.
    await pool.execute(
        "INSERT INTO activity (ap_id, type, actor, object_id, target, headers, body, deadline, "
        "owner, locked_until) VALUES ($1, 'Create', $2, NULL, '/inbox', $3::jsonb, $4, "
        "now() + interval '1 hour', 'dead-worker', now() + interval '0.5 seconds')",
        activity["id"],
        alice.id,
        json.dumps([["Host", "social.example"], ["Date", formatdate(usegmt=True)]]),
        body,
    )
    await asyncio.sleep(0.2)
    assert upstream.inbox_posts() == []
    [got] = await wait_for(upstream.inbox_posts, timeout=5)
    assert got.body == body


async def test_delete_leaves_held_likes_alone(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    gate = Gate()
    sluice = await sluice_factory(checks=(gate,))
    alice = fediverse.actor("alice")
    note = f"{alice.id}/statuses/liked"
    like = alice.activity("Like", obj=note)
    gate.held.add(like["id"])
    assert (await sluice.post(alice, like))[0] == 202
    assert (await sluice.post(alice, alice.activity("Delete", obj=note)))[0] == 202
    await asyncio.sleep(0.2)
    assert (await sluice.parts.store.get(like["id"]))["state"] == "received"
    gate.opened.set()
    await wait_for(lambda: len(upstream.inbox_posts()) == 2)


@pytest.mark.parametrize(
    ("path", "inbox"),
    [
        ("/inbox", True),
        ("/users/alice/inbox", True),
        ("/users/alice/inbox/", True),
        ("/users/Alice/INBOX", True),
        ("/users/alice/inbox.json", True),  # Rails format suffix: Mastodon routes it
        ("/c/cats/inbox", True),
        ("/site_inbox", True),
        ("/users/alice/outbox", False),
        ("/users/alice/inbox/extra", False),
        ("/users/a/b/inbox", False),
        ("/api/v1/statuses", False),
    ],
)
def test_inbox_paths_match_every_spelling_the_instance_accepts(path: str, inbox: bool) -> None:
    from relay.config import load_config
    from relay.doors.inbound import inbox_matcher

    matcher = inbox_matcher(load_config(None).server.inbox_paths)
    assert bool(matcher.match(path)) is inbox


async def test_doubled_slashes_do_not_bypass_the_hold(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = fediverse.actor("alice")
    activity = alice.activity()
    status, _ = await sluice.post(alice, activity, path="//users//bob/%69nbox")
    assert status == 202
    [got] = await wait_for(upstream.inbox_posts)
    assert got.path == "//users//bob/%69nbox"  # forwarded as signed, byte for byte
    assert (await settled_row(sluice, activity["id"]))["state"] == "delivered"


async def test_an_actor_cannot_preempt_another_actors_activity_id(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = fediverse.actor("alice", key_index=0)
    mallory = fediverse.actor("mallory", key_index=1)
    real = alice.activity("Delete", obj=f"{alice.id}/statuses/9")
    decoy = {**mallory.activity("Like", obj=f"{alice.id}/statuses/9"), "id": real["id"]}
    assert (await sluice.post(mallory, decoy))[0] == 202
    assert (await sluice.post(alice, real))[0] == 202
    await wait_for(lambda: len(upstream.inbox_posts()) == 2)
    assert [r.json()["actor"] for r in upstream.inbox_posts()] == [mallory.id, alice.id]


async def test_activity_id_on_another_host_is_refused(
    sluice: Running, fediverse: Fediverse
) -> None:
    alice = fediverse.actor("alice")
    forged = {**alice.activity(), "id": "https://victim.example/statuses/1/activity"}
    status, text = await sluice.post(alice, forged)
    assert status == 400
    assert "not on the actor's host" in text


async def test_passthrough_forwarding_headers(sluice: Running, upstream: Upstream) -> None:
    async with sluice.session.post(
        sluice.url + "/api/v1/media",
        data=b"x" * 1000,
        headers={
            "X-Forwarded-For": "203.0.113.9",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop",
        },
    ) as response:
        assert response.status == 202
    got = upstream.requests[-1]
    assert got.headers["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert "X-Secret" not in got.headers
    assert got.headers["Content-Length"] == "1000"
    assert "Transfer-Encoding" not in got.headers


# -- WebSockets (Mastodon's and Misskey's streaming) through the passthrough -------------


@dataclass
class StreamingServer:
    """An instance's streaming endpoint: echoes, says who asked, closes on request."""

    server: TestServer | None = None
    seen: list[dict[str, str]] = field(default_factory=list)
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer token":
            return web.Response(status=401, text="no token")
        self.seen.append({"path": request.raw_path, **request.headers})
        ws = web.WebSocketResponse(protocols=("mastodon-v1",))
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT and message.data == "bye":
                await ws.close(code=4001, message=b"asked to")
            elif message.type == WSMsgType.TEXT:
                await ws.send_str("echo " + message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        if ws.close_code != 4001:
            self.closed_by_client.set()
        return ws


@pytest.fixture
async def streaming() -> AsyncIterator[StreamingServer]:
    streaming = StreamingServer()
    app = web.Application()
    app.router.add_get("/api/v1/streaming", streaming.handle)
    streaming.server = await start_server(app)
    yield streaming
    await streaming.server.close()


async def streaming_sluice(sluice_factory: Any, streaming: StreamingServer) -> Running:
    assert streaming.server is not None
    url = str(streaming.server.make_url("")).rstrip("/")
    return await sluice_factory(upstream={"url": url})


async def test_websockets_pass_through_both_ways(
    sluice_factory: Any, streaming: StreamingServer
) -> None:
    sluice = await streaming_sluice(sluice_factory, streaming)
    async with sluice.session.ws_connect(
        sluice.url + "/api/v1/streaming?stream=user",
        headers={"Authorization": "Bearer token", "X-Forwarded-For": "203.0.113.9"},
        protocols=("mastodon-v1",),
    ) as ws:
        assert ws.protocol == "mastodon-v1"
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "echo hello"
        await ws.send_bytes(b"\x00\x01\x02")
        assert await ws.receive_bytes(timeout=5) == b"\x02\x01\x00"
    await asyncio.wait_for(streaming.closed_by_client.wait(), 5)
    [seen] = streaming.seen
    assert seen["path"] == "/api/v1/streaming?stream=user"
    assert seen["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"


async def test_the_instance_s_close_code_reaches_the_client(
    sluice_factory: Any, streaming: StreamingServer
) -> None:
    sluice = await streaming_sluice(sluice_factory, streaming)
    async with sluice.session.ws_connect(
        sluice.url + "/api/v1/streaming", headers={"Authorization": "Bearer token"}
    ) as ws:
        await ws.send_str("bye")
        message = await ws.receive(timeout=5)
        assert message.type == WSMsgType.CLOSE
        assert ws.close_code == 4001


async def test_a_refused_websocket_gets_the_instance_s_status(
    sluice_factory: Any, streaming: StreamingServer
) -> None:
    sluice = await streaming_sluice(sluice_factory, streaming)
    with pytest.raises(WSServerHandshakeError) as refused:
        await sluice.session.ws_connect(sluice.url + "/api/v1/streaming")
    assert refused.value.status == 401
    assert streaming.seen == []


async def test_stopping_sluice_closes_websockets_as_going_away(
    sluice_factory: Any, streaming: StreamingServer
) -> None:
    sluice = await streaming_sluice(sluice_factory, streaming)
    async with sluice.session.ws_connect(
        sluice.url + "/api/v1/streaming", headers={"Authorization": "Bearer token"}
    ) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "echo hello"
        started = time.monotonic()
        await sluice.server.close()
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1001)
    # Without the close, the stop waits for the handler: the runner's shutdown timeout.
    assert time.monotonic() - started < 5
    await asyncio.wait_for(streaming.closed_by_client.wait(), 5)
