"""The receipt door (issue 13, points 5 and 6): Sluice's inbox takes Follows (answered by
a signed Accept or Reject through the outbox) and their Undo, hands other activities on,
refuses what is unsigned, forged or malformed; followers are counted, never listed; the
receipts collection is paged newest first. Against a real loopback server, real
PostgreSQL, real peers' actor documents and a real inbox the Accept reaches."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.activity import Activity
from relay.doors.receipt import ReceiptDoor
from relay.effects.send import KIND, Send
from relay.errors import SignatureError
from relay.network import NetworkPolicy, client_session, fetch_json_document
from relay.outbox import Outbox
from relay.signature import KeyCache, PublicKey, Verified, sign_cavage, verify_request
from relay.store.receipts import ReceiptStore
from tests.conftest import Fediverse, Upstream, rsa_key, start_server, wait_for

LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)


@dataclass
class Speaker:
    """Sluice's actor as the door sees it (relay.actor.Actor's URLs), with a throwaway key."""

    base_url: str

    @property
    def id(self) -> str:
        return f"{self.base_url}/actor"

    @property
    def inbox(self) -> str:
        return f"{self.base_url}/inbox"

    @property
    def followers(self) -> str:
        return f"{self.base_url}/followers"

    @property
    def receipts(self) -> str:
        return f"{self.base_url}/receipts"

    def sign_request(
        self, method: str, url: str, headers: Mapping[str, str] | None, body: bytes | None
    ) -> dict[str, str]:
        return sign_cavage(
            method, url, body or b"", rsa_key(2), f"{self.id}#main-key", headers=headers
        )


@dataclass
class Door:
    url: str
    speaker: Speaker
    store: ReceiptStore
    outbox: Outbox
    handed: list[tuple[Activity, Verified]]
    session: aiohttp.ClientSession
    allowed: set[str]

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with self.session.post(self.speaker.inbox, data=body, headers=headers) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    async def signed(self, actor: Any, activity: dict[str, Any]) -> tuple[int, Any]:
        body = json.dumps(activity).encode()
        return await self.post(body, actor.sign(self.speaker.inbox, body))

    async def get(self, url: str) -> tuple[int, Any]:
        async with self.session.get(url) as r:
            return r.status, await r.json(content_type=None)


@pytest.fixture
async def door(
    migrated_pool: asyncpg.Pool, unused_tcp_port: int, fediverse: Fediverse
) -> AsyncIterator[Door]:
    speaker = Speaker(f"http://127.0.0.1:{unused_tcp_port}/sluice")
    fetching = client_session(LOOPBACK)

    async def fetch(url: str) -> Any:
        return await fetch_json_document(fetching, LOOPBACK, url)

    store = ReceiptStore(migrated_pool)
    outbox = Outbox(migrated_pool, backoff_initial=0.05, backoff_max=0.1, poll_interval=0.05)
    outbox.register(KIND, Send(fetching, LOOPBACK, speaker.sign_request))
    handed: list[tuple[Activity, Verified]] = []
    allowed = {"127.0.0.1"}

    async def on_activity(activity: Activity, verified: Verified) -> None:
        handed.append((activity, verified))

    receipts = ReceiptDoor(
        speaker,
        store,
        outbox,
        KeyCache(fetch),
        fetch,
        accepts=lambda actor_id: actor_id.split("/")[2].split(":")[0] in allowed,
        on_activity=on_activity,
        page_size=4,
        max_body_bytes=4096,
    )
    app = web.Application()
    app.add_routes(receipts.routes())
    server: TestServer = await start_server(app, port=unused_tcp_port)
    async with aiohttp.ClientSession() as session:
        yield Door(speaker.base_url, speaker, store, outbox, handed, session, allowed)
    await outbox.stop(grace=1.0)
    await server.close()
    await fetching.close()


class SluiceKey:
    async def resolve(self, key_id: str, *, refresh: bool = False) -> PublicKey:
        if not key_id.endswith("/sluice/actor#main-key"):
            raise SignatureError(f"unknown key {key_id}")
        return PublicKey(key_id, key_id.removesuffix("#main-key"), rsa_key(2).public_key())


def follower(fediverse: Fediverse, upstream: Upstream, name: str = "alice") -> Any:
    """A peer whose inbox (and shared inbox) is the recording ``upstream``."""
    actor = fediverse.actor(name)
    actor.profile = {
        "inbox": f"{upstream.url}/users/{name}/inbox",
        "endpoints": {"sharedInbox": f"{upstream.url}/inbox"},
    }
    return actor


def follow(actor: Any, door: Door) -> dict[str, Any]:
    return actor.activity("Follow", door.speaker.id)


async def test_a_follow_is_recorded_and_answered_by_a_signed_accept(
    door: Door, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = follower(fediverse, upstream)
    sent = follow(alice, door)
    assert await door.signed(alice, sent) == (202, None)
    assert await door.signed(alice, sent) == (202, None)  # repeated: one Accept
    [kept] = await door.store.followers()
    assert (kept.actor, kept.inbox, kept.shared_inbox, kept.follow_id) == (
        alice.id,
        f"{upstream.url}/users/alice/inbox",
        f"{upstream.url}/inbox",
        sent["id"],
    )
    assert await door.store.inboxes() == [f"{upstream.url}/inbox"]  # receipts: shared inbox
    await door.outbox.start()
    await wait_for(lambda: upstream.inbox_posts())
    await wait_for(_settled(door.outbox))
    [accept] = upstream.inbox_posts()
    assert accept.path == "/users/alice/inbox"  # the Accept: the follower's own inbox
    answer = accept.json()
    assert answer["type"] == "Accept"
    assert answer["actor"] == door.speaker.id
    assert answer["object"] == {k: sent[k] for k in ("id", "type", "actor", "object")}
    verified = await verify_request("POST", accept.path, accept.headers, accept.body, SluiceKey())
    assert verified.signer == door.speaker.id
    assert await door.get(door.speaker.followers) == (
        200,
        {
            "@context": "https://www.w3.org/ns/activitystreams",
            "id": door.speaker.followers,
            "type": "OrderedCollection",
            "totalItems": 1,
        },
    )
    assert door.handed == []


async def test_a_follow_the_policy_refuses_is_rejected(
    door: Door, fediverse: Fediverse, upstream: Upstream
) -> None:
    door.allowed.clear()
    bob = follower(fediverse, upstream, "bob")
    assert await door.signed(bob, follow(bob, door)) == (202, None)
    assert await door.store.followers() == []
    [pending] = await door.outbox.list()
    assert pending["payload"]["activity"]["type"] == "Reject"
    assert pending["payload"]["inbox"] == f"{upstream.url}/users/bob/inbox"


async def test_undo_ends_a_follow_embedded_or_by_id_and_other_undos_are_handed_on(
    door: Door, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = follower(fediverse, upstream)
    first = follow(alice, door)
    await door.signed(alice, first)
    assert await door.store.follower_count() == 1
    assert await door.signed(alice, alice.activity("Undo", first)) == (202, None)
    assert await door.store.follower_count() == 0

    second = follow(alice, door)
    await door.signed(alice, second)
    like = alice.activity("Undo", f"{alice.id}/likes/9")
    assert await door.signed(alice, like) == (202, None)
    assert await door.store.follower_count() == 1  # an Undo of something else
    assert [(a.type, a.document["object"]) for a, _ in door.handed] == [("Undo", like["object"])]
    assert await door.signed(alice, alice.activity("Undo", second["id"])) == (202, None)
    assert await door.store.follower_count() == 0


async def test_other_activities_are_handed_on_with_their_signer(
    door: Door, fediverse: Fediverse
) -> None:
    peer = fediverse.actor("peer")
    flag = peer.activity("Flag", "https://elsewhere.example/notes/1")
    assert await door.signed(peer, flag) == (202, None)
    [(activity, verified)] = door.handed
    assert (activity.id, activity.type, verified.signer) == (flag["id"], "Flag", peer.id)
    # A Follow of anyone but Sluice's actor is not a follower of it.
    other = peer.activity("Follow", "https://elsewhere.example/users/x")
    assert await door.signed(peer, other) == (202, None)
    assert await door.store.follower_count() == 0
    assert [a.type for a, _ in door.handed] == ["Flag", "Follow"]


async def test_refusals_say_what_was_wrong(door: Door, fediverse: Fediverse) -> None:
    alice = fediverse.actor("alice")
    mallory = fediverse.actor("mallory", key_index=1)
    sent = alice.activity("Flag", "https://elsewhere.example/notes/1")
    body = json.dumps(sent).encode()
    good = alice.sign(door.speaker.inbox, body)

    status, said = await door.post(body, {"Content-Type": "application/activity+json"})
    assert status == 401 and said["error"].startswith("signature not accepted")

    status, said = await door.post(body.replace(b"notes/1", b"notes/2"), good)
    assert status == 401 and "igest" in said["error"]  # the body is not what was signed

    status, said = await door.post(body, mallory.sign(door.speaker.inbox, body))
    assert (status, said["error"]) == (
        401,
        f"request signed by {mallory.id}, not by the actor {alice.id}",
    )

    status, said = await door.post(b"{not json", alice.sign(door.speaker.inbox, b"{not json"))
    assert status == 400 and said["error"].startswith("body is not valid JSON")

    big = json.dumps({**sent, "content": "x" * 5000}).encode()
    status, said = await door.post(big, alice.sign(door.speaker.inbox, big))
    assert status == 413 and "4096" in said["error"]

    elsewhere = alice.sign(door.speaker.inbox.replace("127.0.0.1", "localhost"), body)
    status, said = await door.post(body, elsewhere)
    assert status == 401 and "signed for host" in said["error"]
    assert door.handed == []


def receipt(door: Door, n: int, at: datetime) -> dict[str, Any]:
    return {
        "@context": "https://www.w3.org/ns/activitystreams",
        "id": f"{door.speaker.receipts}/{n:04d}",
        "type": "ModerationReceipt",
        "actor": door.speaker.id,
        "published": at.isoformat(),
    }


async def test_the_collection_pages_receipts_newest_first(door: Door) -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    made = []
    for n in range(10):  # pairs share a second: the id breaks the tie
        at = start + timedelta(seconds=n // 2)
        made.append(receipt(door, n, at))
        assert await door.store.add_receipt(made[-1], published=at, category="csam")
    assert not await door.store.add_receipt(made[0], published=start)  # issued once
    base = door.speaker.receipts
    assert await door.get(base) == (
        200,
        {
            "@context": "https://www.w3.org/ns/activitystreams",
            "id": base,
            "type": "OrderedCollection",
            "totalItems": 10,
            "first": f"{base}?page=true",
        },
    )
    seen: list[str] = []
    url: str | None = f"{base}?page=true"
    pages = 0
    while url is not None:
        status, page = await door.get(url)
        assert status == 200
        assert (page["type"], page["partOf"], page["id"]) == ("OrderedCollectionPage", base, url)
        seen += [item["id"] for item in page["orderedItems"]]
        url = page.get("next")
        pages += 1
    assert pages == 3
    assert seen == [r["id"] for r in reversed(made)]

    assert await door.get(made[3]["id"]) == (200, made[3])
    status, said = await door.get(f"{base}/nothing-here")
    assert (status, said) == (404, {"error": "no such receipt"})


async def test_received_receipts_are_judged_once(door: Door) -> None:
    document = {"id": "https://peer.example/receipts/1", "type": "ModerationReceipt"}
    assert not await door.store.seen_received(document["id"])
    assert await door.store.record_received(
        document["id"], peer="peer.example", document=document, honoured=False, reason="no trust"
    )
    assert await door.store.seen_received(document["id"])
    assert not await door.store.record_received(
        document["id"], peer="peer.example", document=document, honoured=True
    )
    row = await door.store.pool.fetchrow("SELECT honoured, reason FROM received_receipt")
    assert (row["honoured"], row["reason"]) == (False, "no trust")


def _settled(outbox: Outbox) -> Any:
    async def check() -> bool:
        counts = await outbox.counts()
        return counts["pending"] == 0 and counts["done"] >= 1

    return check


async def test_a_receipt_outlives_the_activity_it_was_about(door: Door) -> None:
    pool = door.store.pool
    row = await pool.fetchval(
        "INSERT INTO activity (type, actor, target, headers, body, deadline) "
        "VALUES ('Create', 'https://a.example/u', '/inbox', '[]', 'x', now()) RETURNING id"
    )
    at = datetime(2026, 12, 1, tzinfo=UTC)
    document = receipt(door, 1, at)
    await door.store.add_receipt(document, published=at, activity_id=row, category="csam")
    assert (await door.store.receipt(document["id"])).activity_id == row  # type: ignore[union-attr]
    await pool.execute("DELETE FROM activity WHERE id = $1", row)  # retention's prune
    kept = await door.store.receipt(document["id"])
    assert kept is not None
    assert (kept.document, kept.activity_id, kept.category) == (document, None, "csam")


async def test_a_follow_from_an_actor_without_an_inbox_is_refused(
    door: Door, fediverse: Fediverse
) -> None:
    nobody = fediverse.actor("nobody")
    nobody.profile = {"inbox": "ftp://nowhere.example/inbox"}
    status, said = await door.signed(nobody, follow(nobody, door))
    assert (status, said) == (400, {"error": f"{nobody.id} is not an actor document with an inbox"})
    assert await door.store.follower_count() == 0
    assert await door.outbox.list() == []
