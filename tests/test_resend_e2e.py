"""What was held past its sender's signature still goes (issue 13, point 7), end to end,
to a stand-in instance that keeps Mastodon's rules (facts/receipts.md §3 (d), (e)): it
refuses a signature older than 5 minutes plus an hour of skew, accepts a signer other
than the activity's actor only when the body's own signature verifies for the actor,
and its search API fetches an object from its origin by id. So a held Create carrying
its author's signature arrives re-signed by Sluice's actor, byte for byte; one without
is fetched by the instance; a Like expires, with why; a fresh one goes as it came."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.actor.keys import multibase_ed25519
from relay.banks import BankStore
from relay.errors import SignatureError
from relay.evidence import EvidenceKey
from relay.media.hashes import hash_media
from relay.network import NetworkPolicy, client_session, fetch_json_document
from relay.signature import (
    KeyCache,
    sign_cavage,
    sign_ld,
    sign_proof,
    verify_object,
    verify_request,
)
from tests.conftest import Actor, Fediverse, Running, free_port, start_server, wait_for

BRIDGE = (Path(__file__).resolve().parent / "fixtures/pdq/bridge-mods/aaa-orig.jpg").read_bytes()
LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)
# Mastodon's window (SignedRequest#matches_time_window?): created + 5 min, 1 h of skew.
MASTODON_MAX_AGE = 5 * 60 + 3600
TOKEN = "instance-api-token"
ADMIN = "admin-api-token"
TWO_HOURS_AGO = 2 * 3600


@dataclass
class Origin:
    """The author's server: actor documents and the notes it serves at their ids."""

    fediverse: Fediverse = field(default_factory=Fediverse)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        url = f"{self.fediverse.base}{request.path}"
        if request.method == "POST":  # an inbox (a receipt's Flag): taken, not kept
            return web.Response(status=202)
        self.fetched.append(url)
        if request.path == "/media/bridge.jpg":
            return web.Response(body=BRIDGE, content_type="image/jpeg")
        note = self.notes.get(url)
        if note is not None:
            return web.json_response(note, content_type="application/activity+json")
        return await self.fediverse.handle(request)  # an actor, or 404 (missing media too)


@dataclass
class Accepted:
    headers: dict[str, str]
    body: bytes
    signer: str


@dataclass
class Mastodon:
    """The instance behind Sluice, as strict as Mastodon about who signed what."""

    keys: KeyCache
    session: aiohttp.ClientSession
    server: TestServer | None = None
    accepted: list[Accepted] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    down_until: float = 0.0  # answers 503 until then (epoch seconds)
    unavailable: list[str] = field(default_factory=list)  # the Signature of each 503'd

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def inbox(self, request: web.Request) -> web.Response:
        body = await request.read()
        if time.time() < self.down_until:
            self.unavailable.append(request.headers.get("Signature", ""))
            return web.Response(status=503, text="down for maintenance")
        try:
            verified = await verify_request(
                "POST",
                request.raw_path,
                request.headers,
                body,
                self.keys,
                max_age=MASTODON_MAX_AGE,
                clock_skew=3600,
            )
            actor = json.loads(body)["actor"]
            if verified.signer != actor:
                # Mastodon answers 202 and drops it; refusing makes the drop visible.
                await verify_object(json.loads(body), actor, self.keys, signer=verified.signer)
        except SignatureError as exc:
            self.refused.append(str(exc))
            return web.json_response({"error": str(exc)}, status=401)
        self.accepted.append(Accepted(dict(request.headers), body, verified.signer))
        return web.Response(status=202)

    async def search(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "The access token is invalid"}, status=401)
        query = request.query.get("q", "")
        self.searched.append(query)
        if request.query.get("resolve") != "true":
            return web.json_response({"accounts": [], "statuses": [], "hashtags": []})
        statuses = []
        try:
            found = await fetch_json_document(self.session, LOOPBACK, query)
        except Exception:  # the origin refused it, or it is gone: nothing found
            found = None
        document = found.document if found is not None else {}
        # Mastodon keeps an object only at its own id, attributed to an actor of its host.
        attributed = str(document.get("attributedTo", ""))
        if document.get("id") == query and attributed.split("/")[2] == query.split("/")[2]:
            statuses.append({"uri": query, "content": document.get("content")})
        return web.json_response({"accounts": [], "statuses": statuses, "hashtags": []})


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    found = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    found.fediverse.server = await start_server(app)
    yield found
    await found.fediverse.server.close()


@pytest.fixture
async def mastodon() -> AsyncIterator[Mastodon]:
    async with client_session(LOOPBACK) as session:

        async def fetch(url: str) -> Any:
            return await fetch_json_document(session, LOOPBACK, url)

        instance = Mastodon(KeyCache(fetch), session)
        app = web.Application()
        app.router.add_post("/inbox", instance.inbox)
        app.router.add_post("/users/{name}/inbox", instance.inbox)
        app.router.add_get("/api/v2/search", instance.search)
        instance.server = await start_server(app)
        yield instance
        await instance.server.close()


async def _sluice(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    mastodon: Mastodon,
    *,
    actor: bool = True,
    api: bool = True,
    **sections: Any,
) -> tuple[Running, str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    (tmp_path / "instance.token").write_text(TOKEN)
    (tmp_path / "admin.token").write_text(ADMIN)
    upstream: dict[str, Any] = {"url": mastodon.url}
    if api:
        upstream |= {"software": "mastodon", "token_file": str(tmp_path / "instance.token")}
    if actor:
        sections |= {"actor": {"base_url": base}, "receipts": {"jurisdictions": ["EU"]}}
    sluice = await sluice_factory(
        port=port,
        upstream=upstream,
        admin={"listen": "127.0.0.1:0", "token_file": str(tmp_path / "admin.token")},
        **sections,
    )
    return sluice, base


async def _admin(sluice: Running, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    url = f"{sluice.admin_url}/_sluice/api{path}"
    async with sluice.session.request(method, url, headers=headers, **kwargs) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def _row(sluice: Running, activity_id: str) -> dict[str, Any]:
    return await _admin(sluice, "GET", "/activities", params={"id": activity_id})  # type: ignore[no-any-return]


async def _finished(sluice: Running, activity_id: str) -> dict[str, Any]:
    """The row, once it left the queue (delivered, refused or dead)."""

    async def done() -> dict[str, Any] | None:
        row = await _row(sluice, activity_id)
        return row if row["state"] not in ("received", "held", "queued") else None

    return await wait_for(done, timeout=15)


def _note(author: Actor, origin: Origin) -> dict[str, Any]:
    """A Create whose note the origin serves at its id, as a real server does."""
    activity = author.activity()
    origin.notes[activity["object"]["id"]] = activity["object"]
    return activity


async def _post(sluice: Running, author: Actor, activity: dict[str, Any], age: float) -> bytes:
    body = json.dumps(activity).encode()
    status, text = await sluice.post(author, body, now=time.time() - age)
    assert status == 202, text
    return body


async def test_a_held_create_with_its_authors_signature_arrives_resigned_by_sluice(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    sluice, base = await _sluice(tmp_path, sluice_factory, mastodon)
    alice = origin.fediverse.actor("alice")
    activity = _note(alice, origin)
    # Media the origin cannot serve: [hold] on_error (review) holds it for a moderator.
    activity["object"]["attachment"] = [
        {"type": "Image", "mediaType": "image/png", "url": origin.fediverse.base + "/gone.png"}
    ]
    signed = sign_ld(activity, alice.key, alice.key_id)
    # The moderator comes back two hours later: the sender's signature is that old.
    body = await _post(sluice, alice, signed, age=TWO_HOURS_AGO)

    async def in_review() -> list[Any]:
        review = (await _admin(sluice, "GET", "/review"))["review"]
        return [r for r in review if r["ap_id"] == activity["id"]]

    [held] = await wait_for(in_review, timeout=15)
    assert mastodon.accepted == [] and mastodon.refused == []
    approved = await _admin(sluice, "POST", f"/review/{held['id']}/approve")
    assert approved["state"] == "queued"

    row = await _finished(sluice, activity["id"])
    assert row["state"] == "delivered", row
    [arrived] = mastodon.accepted
    assert arrived.body == body  # byte for byte: the author's signature still verifies
    assert arrived.signer == f"{base}/actor"
    assert f'keyId="{base}/actor#main-key"' in arrived.headers["Signature"]
    assert arrived.headers["Host"] == "social.example"
    assert arrived.headers["Content-Type"] == "application/activity+json"
    assert mastodon.refused == [] and mastodon.searched == []


async def test_a_held_create_without_its_authors_signature_is_fetched_by_the_instance(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    sluice, _ = await _sluice(tmp_path, sluice_factory, mastodon)
    alice = origin.fediverse.actor("alice")
    activity = _note(alice, origin)
    await _post(sluice, alice, activity, age=TWO_HOURS_AGO)

    row = await _finished(sluice, activity["id"])
    assert row["state"] == "delivered", row
    assert mastodon.searched == [activity["object"]["id"]]
    assert activity["object"]["id"] in origin.fetched  # the instance fetched it itself
    # Nothing went to the inbox: as sent it would be refused, re-signed it would be dropped.
    assert mastodon.accepted == [] and mastodon.refused == []


async def test_an_object_the_origin_no_longer_serves_is_not_delivered(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    sluice, _ = await _sluice(tmp_path, sluice_factory, mastodon)
    alice = origin.fediverse.actor("alice")
    activity = alice.activity()  # the origin does not serve its note (deleted meanwhile)
    await _post(sluice, alice, activity, age=TWO_HOURS_AGO)

    row = await _finished(sluice, activity["id"])
    assert row["state"] == "refused", row
    assert row["last_status"] == 404
    assert activity["object"]["id"] in row["last_error"]
    assert mastodon.searched == [activity["object"]["id"]]
    assert mastodon.accepted == []


async def test_a_stale_like_expires_with_why_in_the_dead_letters(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    sluice, _ = await _sluice(tmp_path, sluice_factory, mastodon)
    alice = origin.fediverse.actor("alice")
    like = alice.activity("Like", obj="https://social.example/users/bob/statuses/1")
    await _post(sluice, alice, like, age=TWO_HOURS_AGO)

    row = await _finished(sluice, like["id"])
    assert row["state"] == "dead", row
    assert "signature stale (signed 120 min ago)" in row["last_error"]
    assert "a Like cannot be fetched" in row["last_error"]
    letters = (await _admin(sluice, "GET", "/dead-letters"))["dead_letters"]
    [letter] = [d for d in letters if d["ap_id"] == like["id"]]
    assert letter["last_error"] == row["last_error"]
    assert letter["last_status"] is None
    assert mastodon.accepted == [] and mastodon.refused == [] and mastodon.searched == []


async def test_a_fresh_activity_goes_as_sent_though_sluice_has_an_actor(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    sluice, _ = await _sluice(tmp_path, sluice_factory, mastodon)
    alice = origin.fediverse.actor("alice")
    activity = sign_ld(_note(alice, origin), alice.key, alice.key_id)
    body = json.dumps(activity).encode()
    sent = alice.sign("https://social.example/inbox", body)
    async with sluice.session.post(f"{sluice.url}/inbox", data=body, headers=sent) as response:
        assert response.status == 202, await response.text()

    row = await _finished(sluice, activity["id"])
    assert row["state"] == "delivered", row
    [arrived] = mastodon.accepted
    assert arrived.body == body
    assert arrived.signer == alice.id
    for name in ("Signature", "Date", "Digest", "Host", "Content-Type"):
        assert arrived.headers[name] == sent[name], name
    assert mastodon.searched == []


async def test_without_an_actor_or_an_api_a_stale_create_expires_saying_what_to_set(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    sluice, _ = await _sluice(tmp_path, sluice_factory, mastodon, actor=False, api=False)
    alice = origin.fediverse.actor("alice")
    activity = sign_ld(_note(alice, origin), alice.key, alice.key_id)
    await _post(sluice, alice, activity, age=TWO_HOURS_AGO)

    row = await _finished(sluice, activity["id"])
    assert row["state"] == "dead", row
    assert "[actor] base_url" in row["last_error"]
    assert "[upstream] software and token_file" in row["last_error"]
    assert mastodon.accepted == [] and mastodon.refused == []


async def test_the_stand_in_refuses_what_sluice_must_not_send_as_it_came(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    """Replaying a stale signature is refused, and so is a relaying signer without the
    author's own signature: what makes re-signing and fetching necessary."""
    # Sluice told to trust signatures for 12 hours sends the two-hour-old one as it came.
    sluice, _ = await _sluice(
        tmp_path, sluice_factory, mastodon, delivery={"fresh_signature_seconds": 43200.0}
    )
    alice = origin.fediverse.actor("alice")
    activity = sign_ld(_note(alice, origin), alice.key, alice.key_id)
    await _post(sluice, alice, activity, age=TWO_HOURS_AGO)
    row = await _finished(sluice, activity["id"])
    assert (row["state"], row["last_status"]) == ("refused", 401)
    assert "Date is 2 hours old" in mastodon.refused[0]

    # A relaying signer is taken only with the author's signature on the body.
    relay = origin.fediverse.actor("relay", key_index=1)
    url = f"{mastodon.url}/inbox"
    for document, accepted in ((alice.activity(), False), (activity, True)):
        body = json.dumps(document).encode()
        headers = sign_cavage("POST", url, body, relay.key, relay.key_id)
        async with mastodon.session.post(url, data=body, headers=headers) as response:
            assert (response.status == 202) is accepted, await response.text()
    assert [a.signer for a in mastodon.accepted] == [relay.id]


async def test_a_like_past_fresh_but_inside_the_receivers_window_still_goes_as_sent(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    """Signed 55 minutes ago: no longer fresh (50), nothing to re-sign or fetch, but
    Mastodon takes it for ten more minutes, so it is tried rather than expired."""
    sluice, _ = await _sluice(tmp_path, sluice_factory, mastodon)
    alice = origin.fediverse.actor("alice")
    like = alice.activity("Like", obj="https://social.example/users/bob/statuses/1")
    body = await _post(sluice, alice, like, age=55 * 60)

    row = await _finished(sluice, like["id"])
    assert row["state"] == "delivered", row
    [arrived] = mastodon.accepted
    assert (arrived.body, arrived.signer) == (body, alice.id)


async def test_a_delivery_retried_past_its_signature_goes_resigned(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    """The instance is down while the signature is fresh (three seconds here: the first
    try must come within them even on a loaded machine); the retry after that goes
    signed by Sluice's actor, the same bytes."""
    sluice, base = await _sluice(
        tmp_path, sluice_factory, mastodon, delivery={"fresh_signature_seconds": 3.0}
    )
    alice = origin.fediverse.actor("alice")
    activity = sign_ld(_note(alice, origin), alice.key, alice.key_id)
    mastodon.down_until = time.time() + 4.5
    body = await _post(sluice, alice, activity, age=0)

    row = await _finished(sluice, activity["id"])
    assert row["state"] == "delivered", row
    assert row["attempts"] >= 1
    # The first try went as sent; the instance was still down then.
    assert f'keyId="{alice.key_id}"' in mastodon.unavailable[0]
    [arrived] = mastodon.accepted
    assert (arrived.body, arrived.signer) == (body, f"{base}/actor")


async def test_a_held_create_with_its_authors_fep_8b32_proof_arrives_resigned(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    sluice, base = await _sluice(tmp_path, sluice_factory, mastodon)
    alice = origin.fediverse.actor("alice")
    key = ed25519.Ed25519PrivateKey.generate()
    method = alice.id + "#ed25519-key"
    alice.profile["assertionMethod"] = [
        {
            "id": method,
            "type": "Multikey",
            "controller": alice.id,
            "publicKeyMultibase": multibase_ed25519(key.public_key()),
        }
    ]
    activity = sign_proof(_note(alice, origin), key, method)
    body = await _post(sluice, alice, activity, age=TWO_HOURS_AGO)

    row = await _finished(sluice, activity["id"])
    assert row["state"] == "delivered", row
    [arrived] = mastodon.accepted
    assert (arrived.body, arrived.signer) == (body, f"{base}/actor")
    assert mastodon.searched == []


async def test_a_quarantine_released_as_a_false_positive_arrives_resigned(
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    origin: Origin,
    mastodon: Mastodon,
) -> None:
    """The moderator releases it two hours after it came: the release queues it as it
    was sent, and what goes is the same body, re-signed by Sluice's actor."""
    EvidenceKey.generate(tmp_path / "evidence.key")
    sluice, base = await _sluice(
        tmp_path,
        sluice_factory,
        mastodon,
        evidence={"key_file": str(tmp_path / "evidence.key")},
        bank=[{"name": "test-known", "category": "test"}],
        rule=[{"match": "category:test", "action": "quarantine"}],
    )
    banks = BankStore(sluice.parts.pool)
    await banks.ensure("test-known", category="test")
    hashes = hash_media(BRIDGE)
    await banks.add("test-known", [("md5", hashes.md5, "bridge photo")])
    await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)
    alice = origin.fediverse.actor("alice")
    activity = _note(alice, origin)
    activity["object"]["attachment"] = [
        {
            "type": "Image",
            "mediaType": "image/jpeg",
            "url": origin.fediverse.base + "/media/bridge.jpg",
        }
    ]
    body = await _post(sluice, alice, sign_ld(activity, alice.key, alice.key_id), TWO_HOURS_AGO)
    held = await _finished(sluice, activity["id"])
    assert held["state"] == "quarantined", held

    released = await _admin(
        sluice,
        "POST",
        f"/quarantine/{held['id']}/release",
        json={"moderator": "mod", "reason": "a false positive: a bridge, not the banked one"},
    )
    assert released["state"] == "queued"
    row = await _finished(sluice, activity["id"])
    assert row["state"] == "delivered", row
    [arrived] = mastodon.accepted
    assert (arrived.body, arrived.signer) == (body, f"{base}/actor")
