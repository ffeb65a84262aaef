"""Sluice speaks, end to end (issue 13): a quarantine issues a signed receipt, kept in
the actor's collection, carried by a Flag to the origin author's inbox and by a Delete
to a follower; a trusted peer's receipt fills that peer's bank, so the same picture
arriving later from another server is quarantined; a forged one changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.actor import Actor as SluiceActor
from relay.actor.routes import actor_routes
from relay.media.hashes import hash_media
from relay.network import NetworkPolicy, client_session, fetch_json_document
from relay.receipt import (
    ContentHash,
    parse_receipt,
)
from relay.signature import KeyCache, verify_request
from relay.signature.proof import verify_proof
from tests.conftest import (
    Actor,
    Fediverse,
    Running,
    Upstream,
    free_port,
    rsa_key,
    start_server,
    wait_for,
)
from tests.receipt_support import (
    BRIDGE_BANK,
    bank_the_picture,
    peer_receipt,
    speaking_sluice,
)

PDQ = Path(__file__).resolve().parent / "fixtures" / "pdq"
BRIDGE = (PDQ / "bridge-mods" / "aaa-orig.jpg").read_bytes()
PEN = (PDQ / "misc" / "pen-and-coaster.png").read_bytes()
LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)


@dataclass
class Origin:
    """A remote server: actors, their media, and inboxes that keep what they get."""

    fediverse: Fediverse = field(default_factory=Fediverse)
    server: Any = None
    received: dict[str, list[tuple[dict[str, str], dict[str, Any]]]] = field(default_factory=dict)
    slow: bool = False  # /media/slow-pen.png takes longer than Sluice's hold waits

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def actor(self, name: str, key_index: int) -> Actor:
        actor = Actor(f"{self.base}/users/{name}", rsa_key(key_index), self.fediverse)
        self.fediverse.actors[actor.id] = actor
        return actor

    def inbox(self, actor: Actor) -> list[dict[str, Any]]:
        return [body for _, body in self.received.get(actor.id + "/inbox", [])]

    async def handle(self, request: web.Request) -> web.Response:
        url = f"{self.base}{request.path}"
        if request.method == "POST":
            self.received.setdefault(url, []).append(
                (dict(request.headers), json.loads(await request.read()))
            )
            return web.Response(status=202)
        if request.path == "/media/bridge.jpg":
            return web.Response(body=BRIDGE, content_type="image/jpeg")
        if request.path == "/media/pen.png":
            return web.Response(body=PEN, content_type="image/png")
        if request.path == "/media/slow-pen.png":
            if self.slow:
                await asyncio.sleep(3)
            return web.Response(body=PEN, content_type="image/png")
        actor = self.fediverse.actors.get(url)
        if actor is None:
            return web.Response(status=404)
        return web.json_response(actor.document(), content_type="application/activity+json")


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    found = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    found.server = await start_server(app)
    yield found
    await found.server.close()


def _post(actor: Actor, media: str) -> dict[str, Any]:
    activity = actor.activity()
    activity["object"]["attachment"] = [
        {"type": "Document", "mediaType": "image/jpeg", "url": media}
    ]
    return activity


async def _to_sluice(sluice: Running, actor: Any, activity: dict[str, Any], sign: Any) -> int:
    """POST an activity to Sluice's own inbox, signed by ``sign`` (method, url, headers, body)."""
    body = json.dumps(activity).encode()
    url = f"{sluice.url}/inbox"
    headers = sign("POST", url, {"Content-Type": "application/activity+json"}, body)
    async with sluice.session.post(url, data=body, headers=headers) as response:
        return response.status


def _sign_as(actor: Actor) -> Any:
    from relay.signature import sign_cavage

    def sign(method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        return {
            **headers,
            **sign_cavage(method, url, body, actor.key, actor.key_id, headers=headers),
        }

    return sign


async def test_a_quarantine_tells_the_origin_its_followers_and_the_collection(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    upstream: Upstream,
) -> None:
    sluice, base = await speaking_sluice(tmp_path, sluice_factory, **BRIDGE_BANK)
    await bank_the_picture(sluice, BRIDGE)
    hashes = hash_media(BRIDGE)

    # A peer follows Sluice's actor: accepted, answered with an Accept.
    carol = origin.actor("carol", 1)
    follow = {
        "@context": "https://www.w3.org/ns/activitystreams",
        "id": f"{carol.id}/follows/1",
        "type": "Follow",
        "actor": carol.id,
        "object": f"{base}/actor",
    }
    assert await _to_sluice(sluice, carol, follow, _sign_as(carol)) == 202
    accepted = await wait_for(lambda: origin.inbox(carol), timeout=10)
    assert accepted[0]["type"] == "Accept" and accepted[0]["object"]["id"] == follow["id"]

    # Known material arrives for the instance: quarantined, and Sluice speaks.
    alice = origin.actor("alice", 0)
    create = _post(alice, f"{origin.base}/media/bridge.jpg")
    create["object"]["audience"] = f"{origin.base}/c/pictures"  # a Lemmy community's post
    status, _ = await sluice.post(alice, create)
    assert status == 202
    [(headers, flag)] = await wait_for(lambda: origin.received.get(alice.id + "/inbox"), timeout=20)
    assert flag["type"] == "Flag" and flag["actor"] == f"{base}/actor"
    assert flag["object"] == [alice.id, create["object"]["id"]]
    assert flag["to"] == [f"{origin.base}/c/pictures"]  # Lemmy: exactly one community
    assert "Moderation receipt" in flag["content"]
    receipt = flag["moderationReceipt"]
    parsed = parse_receipt(receipt)
    assert parsed.category == "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"
    assert parsed.jurisdiction == ("EU",)
    assert parsed.automated_decision == "AUTOMATED_DECISION_FULLY"
    assert {h.algorithm for h in parsed.content_hash} == {"sha256", "md5", "pdq"}
    assert ContentHash("md5", hashes.md5) in parsed.content_hash

    # The Flag's HTTP signature and the receipt's proof verify with Sluice's published keys.
    async with client_session(LOOPBACK) as session:

        async def fetch(url: str):  # type: ignore[no-untyped-def]
            return await fetch_json_document(session, LOOPBACK, url)

        keys = KeyCache(fetch)
        path = alice.id.removeprefix(origin.base) + "/inbox"
        verified = await verify_request("POST", path, headers, json.dumps(flag).encode(), keys)
        assert verified.signer == f"{base}/actor"
        await verify_proof(receipt, f"{base}/actor", keys)
        tampered = {**receipt, "jurisdiction": ["DE"]}
        with pytest.raises(Exception, match="does not verify"):
            await verify_proof(tampered, f"{base}/actor", keys)

        # In the collection, newest first, and at its own id.
        async with session.get(f"{base}/receipts?page=true") as response:
            page = await response.json(content_type=None)
        assert [r["id"] for r in page["orderedItems"]] == [receipt["id"]]
        async with session.get(receipt["id"]) as response:
            assert (await response.json(content_type=None))["proof"] == receipt["proof"]

    # The follower got a Delete carrying the same receipt; the instance got nothing.
    pushed = await wait_for(lambda: origin.inbox(carol)[1:], timeout=10)
    assert pushed[0]["type"] == "Delete"
    assert pushed[0]["moderationReceipt"]["id"] == receipt["id"]
    assert create["id"] not in upstream.ids()


PEER_INBOX = web.AppKey("peer_inbox", list)


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[tuple[SluiceActor, list[dict[str, Any]]]]:
    """Another Sluice's actor, on a host of its own (localhost, not 127.0.0.1), and what
    its inbox got."""
    port = free_port()
    actor = SluiceActor.load(f"http://localhost:{port}", key_dir=tmp_path / "peer-keys")
    assert actor is not None
    got: list[dict[str, Any]] = []

    async def inbox(request: web.Request) -> web.Response:
        got.append(json.loads(await request.read()))
        return web.Response(status=202)

    app = web.Application()
    app.add_routes(actor_routes(actor))
    app.router.add_post("/inbox", inbox)
    server = await start_server(app, port)
    yield actor, got
    await server.close()


def _peer_receipt(peer: SluiceActor, number: int, about: str, picture: bytes) -> dict[str, Any]:
    return peer.sign_object(peer_receipt(peer, number, about, picture))


def _delete(peer: SluiceActor, receipt: dict[str, Any]) -> dict[str, Any]:
    return {
        "@context": "https://www.w3.org/ns/activitystreams",
        "id": f"{receipt['id']}/delete",
        "type": "Delete",
        "actor": peer.id,
        "object": receipt["object"][0],
        "moderationReceipt": receipt,
    }


async def test_a_trusted_peers_receipt_quarantines_the_same_picture_from_elsewhere(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    peer: tuple[SluiceActor, list[dict[str, Any]]],
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
    webhook: Any,
) -> None:
    peer, peer_inbox = peer  # type: ignore[assignment]
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "s3cret")
    sluice, base = await speaking_sluice(
        tmp_path,
        sluice_factory,
        receipts={"jurisdictions": ["EU"], "follow": [peer.id]},
        notify={"webhooks": [webhook.url], "on": []},
        network={"allow": ["127.0.0.0/8"], "allow_http": True},
        trust=[{"peer": "localhost", "automated": True}],
        rule=[{"match": "category:unwanted", "action": "quarantine"}],
    )
    pool = sluice.parts.pool

    # Sluice follows the peer ([receipts] follow), signed as its own actor.
    [follow] = await wait_for(lambda: peer_inbox, timeout=10)
    assert (follow["type"], follow["actor"], follow["object"]) == (
        "Follow",
        f"{base}/actor",
        peer.id,
    )

    # A forged receipt, through the instance's inbox (the inbound door): recorded only.
    forged = _peer_receipt(peer, 1, "https://elsewhere.example/notes/1", PEN)
    forged["contentHash"] = forged["contentHash"][:1]
    body = json.dumps(_delete(peer, forged)).encode()
    url = "https://social.example/inbox"
    headers = peer.sign_request("POST", url, {"Content-Type": "application/activity+json"}, body)
    async with sluice.session.post(f"{sluice.url}/inbox", data=body, headers=headers) as r:
        assert r.status == 202

    async def decision(ident: str) -> Any:
        return await pool.fetchrow(
            "SELECT honoured, reason FROM received_receipt WHERE id = $1", ident
        )

    refused = await wait_for(lambda: decision(forged["id"]), timeout=15)
    assert refused["honoured"] is False and "not verified" in refused["reason"]

    # A post the instance already has (no media: delivered at once)...
    bob = origin.actor("bob", 2)
    earlier = bob.activity()
    assert (await sluice.post(bob, earlier))[0] == 202
    await wait_for(lambda: earlier["id"] in upstream.ids(), timeout=10)

    # ...then the genuine receipt about it, pushed to Sluice's own inbox: honoured, its
    # hashes banked, and the admins told the instance still has the post.
    receipt = _peer_receipt(peer, 2, earlier["object"]["id"], PEN)
    status = await _to_sluice(
        sluice, None, _delete(peer, receipt), lambda m, u, h, b: peer.sign_request(m, u, h, b)
    )
    assert status == 202
    honoured = await wait_for(lambda: decision(receipt["id"]), timeout=15)
    assert honoured["honoured"] is True, honoured["reason"]
    assert "receipts:localhost:unwanted" in honoured["reason"]
    await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=10)

    [told] = await wait_for(
        lambda: [r.json() for r in webhook.requests if r.json()["event"] == "receipt"],
        timeout=10,
    )
    assert told["activity"]["id"] == earlier["id"]
    assert told["signals"][0]["url"] == receipt["id"]
    assert told["signals"][0]["source"] == "localhost"

    # The same picture from another server is quarantined by category:unwanted.
    create = _post(bob, f"{origin.base}/media/pen.png")
    assert (await sluice.post(bob, create))[0] == 202

    async def state() -> Any:
        return await pool.fetchval("SELECT state FROM activity WHERE ap_id = $1", create["id"])

    assert await wait_for(lambda: _is(state, "quarantined"), timeout=20)
    assert create["id"] not in upstream.ids()

    # The admin sees both receipts and what was decided about each.
    api = f"{sluice.admin_url}/_sluice/api/receipts"
    bearer = {"Authorization": "Bearer s3cret"}
    async with sluice.session.get(api + "?honoured=false", headers=bearer) as response:
        listed = await response.json()
    assert [r["id"] for r in listed["received"]] == [forged["id"]]
    assert listed["received"][0]["peer"] == "localhost"

    async def issued() -> list[Any]:
        async with sluice.session.get(api, headers=bearer) as response:
            return list((await response.json())["issued"])

    # The quarantine of bob's post issued one of Sluice's own, about that row.
    [own] = await wait_for(issued, timeout=10)
    assert own["activity_row"] == await pool.fetchval(
        "SELECT id FROM activity WHERE ap_id = $1", create["id"]
    )
    async with sluice.session.get(api, headers=bearer) as response:
        assert {r["id"] for r in (await response.json())["received"]} == {
            forged["id"],
            receipt["id"],
        }


async def _is(state: Callable[[], Awaitable[Any]], wanted: str) -> bool:
    return await state() == wanted


async def test_what_waits_for_a_moderator_is_decided_by_a_trusted_receipt(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    peer: tuple[SluiceActor, list[dict[str, Any]]],
    upstream: Upstream,
) -> None:
    """Held for review (its picture took too long to check), then a trusted peer's
    receipt about the post: the post goes through the checks again and the policy
    quarantines it, without a moderator."""
    actor, _ = peer
    sluice, _ = await speaking_sluice(
        tmp_path,
        sluice_factory,
        hold={"max_seconds": 1, "on_timeout": "review"},
        trust=[{"peer": "localhost", "automated": True}],
        rule=[{"match": "category:unwanted", "action": "quarantine"}],
    )
    pool = sluice.parts.pool
    bob = origin.actor("bob", 2)
    origin.slow = True
    create = _post(bob, f"{origin.base}/media/slow-pen.png")
    assert (await sluice.post(bob, create))[0] == 202

    async def state() -> Any:
        return await pool.fetchval("SELECT state FROM activity WHERE ap_id = $1", create["id"])

    assert await wait_for(lambda: _is(state, "review"), timeout=15)
    origin.slow = False
    receipt = _peer_receipt(actor, 3, create["object"]["id"], PEN)

    def sign(method: str, url: str, headers: Any, body: bytes) -> dict[str, str]:
        return actor.sign_request(method, url, headers, body)

    assert await _to_sluice(sluice, None, _delete(actor, receipt), sign) == 202
    assert await wait_for(lambda: _is(state, "quarantined"), timeout=20)
    reason = await pool.fetchval("SELECT reason FROM received_receipt WHERE id = $1", receipt["id"])
    assert "checked again" in reason
    assert create["id"] not in upstream.ids()


async def test_an_author_with_no_inbox_still_gets_the_receipt_published(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
) -> None:
    """No inbox to send the Flag to: the receipt is kept in the collection all the same."""
    sluice, base = await speaking_sluice(tmp_path, sluice_factory, **BRIDGE_BANK)
    await bank_the_picture(sluice, BRIDGE, pdq=False)
    mallory = origin.actor("mallory", 0)
    mallory.profile = {"inbox": None}
    assert (await sluice.post(mallory, _post(mallory, f"{origin.base}/media/bridge.jpg")))[0] == 202

    async def published() -> list[Any]:
        async with sluice.session.get(f"{base}/receipts?page=true") as response:
            return list((await response.json(content_type=None))["orderedItems"])

    [receipt] = await wait_for(published, timeout=15)
    assert mallory.id in receipt["object"]
    assert origin.received == {}  # no Flag went anywhere
