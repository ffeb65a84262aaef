"""Objects named only by id, end to end: a boost, a Create or Update by URI, a quote, an
unknown author. Sluice fetches them from a real origin on loopback, as the instance
would, and their media meet the banks like embedded ones; a fetch that fails is an
error for ``[hold] on_error``, never the fast path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from relay.activity import parse_activity
from relay.banks import BankIndex, BankStore
from relay.evidence import EvidenceKey
from relay.hosts import LocalHosts
from relay.media.check import MediaCheck
from relay.media.fetch import HashCache, MediaFetcher
from relay.media.hashes import hash_media
from relay.network import NetworkPolicy, client_session
from tests.conftest import Fediverse, Running, Upstream, start_server, wait_for
from tests.doors.test_media_hold import BRIDGE, PEN, hash_and_flip


@dataclass
class Remote:
    """Another server: posts, actors and media, and a log of what was fetched."""

    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    base: str = ""

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def note(self, path: str, *media: str, **fields: Any) -> str:
        """Publish a Note at ``path`` with ``media`` (file names) attached; its URL."""
        self.documents[path] = {
            "@context": "https://www.w3.org/ns/activitystreams",
            "id": self.url(path),
            "type": "Note",
            "content": "<p>look</p>",
            "attachment": [
                {"type": "Document", "mediaType": "image/jpeg", "url": self.url(f"/media/{m}")}
                for m in media
            ],
            **fields,
        }
        return self.url(path)

    def actor(self, path: str, avatar: str) -> str:
        self.documents[path] = {
            "id": self.url(path),
            "type": "Person",
            "icon": {"type": "Image", "url": self.url(f"/media/{avatar}")},
        }
        return self.url(path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.fetched.append(path)
        if path.startswith("/media/"):
            data = self.files.get(path.removeprefix("/media/"))
            if data is None:
                return web.Response(status=404)
            return web.Response(body=data, content_type="image/jpeg")
        if path == "/hang":
            await asyncio.sleep(3600)
        if path == "/authorized":  # a server in authorized-fetch mode, asked unsigned
            return web.Response(status=401, text="Request not signed")
        document = self.documents.get(path)
        if document is None:
            return web.Response(status=404)
        return web.json_response(document, content_type="application/activity+json")


async def _remote() -> tuple[Remote, Any]:
    remote = Remote(files={"bridge.jpg": BRIDGE, "pen.png": PEN})
    app = web.Application()
    app.router.add_get("/{tail:.*}", remote.handle)
    server = await start_server(app)
    remote.base = str(server.make_url("")).rstrip("/")
    return remote, server


@pytest.fixture
async def remote() -> AsyncIterator[Remote]:
    served, server = await _remote()
    yield served
    await server.close()


@pytest.fixture
async def other_remote() -> AsyncIterator[Remote]:
    served, server = await _remote()
    yield served
    await server.close()


@pytest.fixture
async def guarded(sluice_factory: Any, tmp_path: Path) -> Running:
    """The bridge photo is known (quarantine), the pen unwanted (review); on_error rejects."""
    EvidenceKey.generate(tmp_path / "evidence.key")
    sluice = await sluice_factory(
        evidence={"key_file": str(tmp_path / "evidence.key")},
        media={"fetch_timeout_seconds": 2.0},
        hold={"max_seconds": 10.0, "on_error": "reject"},
        bank=[
            {"name": "test-known", "category": "test"},
            {"name": "test-unwanted", "category": "unwanted"},
        ],
        rule=[
            {"match": "category:test", "action": "quarantine"},
            {"match": "test-unwanted", "action": "review"},
        ],
    )
    store = BankStore(sluice.parts.pool)
    await store.ensure("test-known", category="test")
    await store.add("test-known", [("pdq", hash_media(BRIDGE).pdq[0].hash, "bridge photo")])
    await store.ensure("test-unwanted", category="unwanted")
    await store.add("test-unwanted", [("sha256", hash_media(PEN).sha256, "pen")])
    await wait_for(lambda: len(sluice.parts.banks.index) >= 2, timeout=5)
    return sluice


def media_check(sluice: Running) -> MediaCheck:
    [check] = [c for c in sluice.parts.flow.hold.checks if isinstance(c, MediaCheck)]
    return check


async def settled(sluice: Running, ap_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        record = await sluice.parts.store.get(ap_id)
        return record if record and record["state"] not in ("received", "queued") else None

    return await wait_for(done, timeout=20)


def signals(record: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s["detail"] for s in record["verdict"]["signals"] if s["kind"] == kind]


async def test_a_boost_by_uri_of_a_post_with_known_media_is_quarantined(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote
) -> None:
    alice = fediverse.actor("alice")
    post = remote.note("/notes/1", "bridge.jpg", attributedTo=alice.id)
    announce = alice.activity("Announce", obj=post)
    assert (await guarded.post(alice, announce))[0] == 202
    record = await settled(guarded, announce["id"])
    assert record["state"] == "quarantined"
    assert record["verdict"]["rule"] == "rule[0] category:test -> quarantine"
    await asyncio.sleep(0.2)
    assert upstream.requests == []
    assert remote.fetched == ["/notes/1", "/media/bridge.jpg"]


async def test_what_was_fetched_in_a_boosts_stead_is_on_record(
    guarded: Running, fediverse: Fediverse, remote: Remote
) -> None:
    # Review keeps the verdict's details on the row (a quarantine keeps them as evidence).
    alice = fediverse.actor("alice")
    post = remote.note("/notes/1", "pen.png", attributedTo=alice.id)
    announce = alice.activity("Announce", obj=post)
    assert (await guarded.post(alice, announce))[0] == 202
    record = await settled(guarded, announce["id"])
    assert record["state"] == "review"
    [match] = signals(record, "match")
    assert match["url"] == remote.url("/media/pen.png")
    assert match["where"] == f"object <{post}>: attachment[0].url"
    [dereferenced] = signals(record, "dereferenced")
    assert dereferenced == {
        "url": post,
        "where": "object",
        "role": "object",
        "id": post,
        "type": "Note",
        "media": 1,
    }


async def test_a_boost_of_a_clean_post_is_checked_then_delivered(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote
) -> None:
    alice = fediverse.actor("alice")
    remote.files["flipped.jpg"] = hash_and_flip(BRIDGE)
    post = remote.note("/notes/clean", "flipped.jpg", attributedTo=alice.id)
    announce = alice.activity("Announce", obj=post)
    assert (await guarded.post(alice, announce))[0] == 202
    record = await settled(guarded, announce["id"])
    assert record["state"] == "delivered"
    assert record["verdict"]["rule"] == "default"  # checked: not the fast path
    assert [h["url"] for h in signals(record, "hashed")] == [remote.url("/media/flipped.jpg")]
    assert upstream.ids() == [announce["id"]]


@pytest.mark.parametrize("verb", ["Create", "Update"])
async def test_create_and_update_by_uri_are_checked(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote, verb: str
) -> None:
    alice = fediverse.actor("alice")
    post = remote.note("/notes/2", "pen.png", attributedTo=alice.id)
    activity = alice.activity(verb, obj=post)
    assert (await guarded.post(alice, activity))[0] == 202
    record = await settled(guarded, activity["id"])
    assert record["state"] == "review"
    assert record["verdict"]["rule"] == "rule[1] test-unwanted -> review"
    assert upstream.requests == []


async def test_an_update_by_uri_cannot_swap_media_in_after_delivery(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote
) -> None:
    alice = fediverse.actor("alice")
    remote.files["flipped.jpg"] = hash_and_flip(BRIDGE)
    post = remote.note("/notes/3", "flipped.jpg", attributedTo=alice.id)
    announce = alice.activity("Announce", obj=post)
    assert (await guarded.post(alice, announce))[0] == 202
    assert (await settled(guarded, announce["id"]))["state"] == "delivered"
    # The post now carries the bridge photo; its author says so with an Update by URI.
    remote.note("/notes/3", "bridge.jpg", attributedTo=alice.id)
    update = alice.activity("Update", obj=post)
    assert (await guarded.post(alice, update))[0] == 202
    record = await settled(guarded, update["id"])
    assert record["state"] == "quarantined"
    assert remote.fetched.count("/notes/3") == 2  # an Update is never answered from the cache
    assert upstream.ids() == [announce["id"]]


async def test_boosts_of_one_post_share_a_fetch_but_each_is_matched_again(
    guarded: Running, fediverse: Fediverse, remote: Remote
) -> None:
    alice, bob = fediverse.actor("alice"), fediverse.actor("bob", key_index=1)
    flipped = hash_and_flip(BRIDGE)
    remote.files["flipped.jpg"] = flipped
    post = remote.note("/notes/4", "flipped.jpg", attributedTo=alice.id)
    first = alice.activity("Announce", obj=post)
    assert (await guarded.post(alice, first))[0] == 202
    assert (await settled(guarded, first["id"]))["state"] == "delivered"
    await BankStore(guarded.parts.pool).add(
        "test-known", [("sha256", hash_media(flipped).sha256, "added later")]
    )
    await asyncio.sleep(1.0)
    second = bob.activity("Announce", obj=post)
    assert (await guarded.post(bob, second))[0] == 202
    assert (await settled(guarded, second["id"]))["state"] == "quarantined"
    assert remote.fetched.count("/notes/4") == 1


@pytest.mark.parametrize("key", ["quote", "quoteUrl", "quoteUri", "_misskey_quote"])
async def test_a_quote_of_a_post_with_unwanted_media_is_held(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote, key: str
) -> None:
    alice = fediverse.actor("alice")
    quoted = remote.note("/notes/quoted", "pen.png", attributedTo=alice.id)
    create = alice.activity()
    create["object"][key] = quoted
    assert (await guarded.post(alice, create))[0] == 202
    record = await settled(guarded, create["id"])
    assert record["state"] == "review"
    [match] = signals(record, "match")
    assert match["where"] == f"object.{key} <{quoted}>: attachment[0].url"
    assert upstream.requests == []


async def test_the_avatar_of_an_unknown_author_is_checked(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote
) -> None:
    alice = fediverse.actor("alice")
    author = remote.actor("/users/bob", "pen.png")
    post = remote.note("/notes/5", attributedTo=author)
    announce = alice.activity("Announce", obj=post)
    assert (await guarded.post(alice, announce))[0] == 202
    record = await settled(guarded, announce["id"])
    assert record["state"] == "review"
    [match] = signals(record, "match")
    assert match["role"] == "avatar"
    assert match["where"] == f"object <{post}>: attributedTo <{author}>: icon.url"
    assert upstream.requests == []


async def test_a_document_served_under_another_id_is_followed_to_that_id(
    guarded: Running, fediverse: Fediverse, remote: Remote, other_remote: Remote
) -> None:
    alice = fediverse.actor("alice")
    real = other_remote.note("/notes/real", attributedTo=alice.id)
    other_remote.documents["/notes/real"]["attachment"] = [
        {"type": "Image", "url": remote.url("/media/pen.png")}
    ]
    remote.documents["/mirror"] = {"id": real, "type": "Note", "attributedTo": alice.id}
    announce = alice.activity("Announce", obj=remote.url("/mirror"))
    assert (await guarded.post(alice, announce))[0] == 202
    record = await settled(guarded, announce["id"])
    assert record["state"] == "review"
    [match] = signals(record, "match")
    assert match["where"] == f"object <{remote.url('/mirror')}>: id <{real}>: attachment[0].url"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/gone", "HTTP 404"),
        ("/hang", "no complete answer within"),
        ("/authorized", "HTTP 401"),
    ],
)
async def test_a_post_that_cannot_be_fetched_follows_on_error(
    guarded: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    remote: Remote,
    path: str,
    why: str,
) -> None:
    media_check(guarded).dereference_seconds = 1.0
    alice = fediverse.actor("alice")
    announce = alice.activity("Announce", obj=remote.url(path))
    assert (await guarded.post(alice, announce))[0] == 202
    record = await settled(guarded, announce["id"])
    assert record["state"] == "rejected"
    assert record["verdict"]["rule"] == "hold.on_error"
    [error] = signals(record, "error")
    assert error["stage"] == "dereference"
    assert error["url"] == remote.url(path)
    assert why in error["error"]
    assert error.get("status") == {"/gone": 404, "/hang": None, "/authorized": 401}[path]
    assert upstream.requests == []


async def test_a_boost_of_the_instances_own_post_takes_the_fast_path(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote
) -> None:
    media_check(guarded).local_hosts = LocalHosts([urlsplit(remote.base).netloc])
    alice = fediverse.actor("alice")
    post = remote.note("/notes/ours", "bridge.jpg", attributedTo=alice.id)
    announce = alice.activity("Announce", obj=post)
    assert (await guarded.post(alice, announce))[0] == 202
    record = await settled(guarded, announce["id"])
    assert record["state"] == "delivered"
    assert record["verdict"]["rule"] == "fast path: nothing to check"
    assert remote.fetched == []


async def test_a_post_by_its_own_sender_without_media_still_takes_the_fast_path(
    guarded: Running, fediverse: Fediverse, remote: Remote
) -> None:
    # Its author is the sender, whose document (when new) the key fetch provides.
    alice = fediverse.actor("alice")
    create = alice.activity()
    create["object"]["inReplyTo"] = remote.url("/notes/parent")  # not followed (README)
    assert (await guarded.post(alice, create))[0] == 202
    record = await settled(guarded, create["id"])
    assert record["verdict"]["rule"] == "fast path: nothing to check"
    assert remote.fetched == []


async def test_more_objects_than_max_dereferences_is_an_error(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote
) -> None:
    alice = fediverse.actor("alice")
    # Nine quoted posts (default bound: eight fetches), each carried by a clean link.
    tags = [
        {
            "type": "Link",
            "mediaType": "application/activity+json",
            "href": remote.note(f"/notes/q{i}", attributedTo=alice.id),
        }
        for i in range(9)
    ]
    create = alice.activity()
    create["object"]["tag"] = tags
    assert (await guarded.post(alice, create))[0] == 202
    record = await settled(guarded, create["id"])
    assert record["state"] == "rejected"
    assert record["verdict"]["rule"] == "hold.on_error"
    [error] = signals(record, "error")
    assert "more than 8 objects to fetch ([media] max_dereferences)" in error["error"]
    assert error["url"] == remote.url("/notes/q8")
    assert len(signals(record, "dereferenced")) == 8
    assert "/notes/q8" not in remote.fetched


async def test_a_chain_deeper_than_max_dereference_depth_is_an_error(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote
) -> None:
    alice = fediverse.actor("alice")
    # A boost of a quote of a quote of a quote: the fourth post is four fetches deep.
    remote.note("/notes/d4", "bridge.jpg", attributedTo=alice.id)
    for n in (3, 2, 1):
        remote.note(f"/notes/d{n}", attributedTo=alice.id, quote=remote.url(f"/notes/d{n + 1}"))
    announce = alice.activity("Announce", obj=remote.url("/notes/d1"))
    assert (await guarded.post(alice, announce))[0] == 202
    record = await settled(guarded, announce["id"])
    assert record["state"] == "rejected"
    [error] = signals(record, "error")
    assert "more than 3 references deep ([media] max_dereference_depth)" in error["error"]
    assert error["url"] == remote.url("/notes/d4")
    assert "/notes/d4" not in remote.fetched
    assert upstream.requests == []


async def test_an_attachment_declaring_a_web_page_is_still_fetched(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, remote: Remote
) -> None:
    # Misskey and GoToSocial sniff what they download: a declared type hides nothing.
    alice = fediverse.actor("alice")
    create = alice.activity()
    create["object"]["attachment"] = [
        {"type": "Document", "mediaType": "text/html", "url": remote.url("/media/bridge.jpg")}
    ]
    assert (await guarded.post(alice, create))[0] == 202
    record = await settled(guarded, create["id"])
    assert record["state"] == "quarantined"
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("hosts", "applies"),
    [
        ((), True),
        (("social.example",), False),
        (("Social.Example:443",), False),
        (("social.example:8443",), True),
        (("other.example",), True),
    ],
)
async def test_the_instances_own_hosts_are_not_fetched(
    hosts: tuple[str, ...], applies: bool
) -> None:
    policy = NetworkPolicy()
    async with client_session(policy) as session:
        check = MediaCheck(
            MediaFetcher(session, policy, max_bytes=1024),
            lambda: BankIndex(),
            HashCache(0),
            local_hosts=frozenset(hosts),
        )
        document = {
            "type": "Announce",
            "actor": "https://remote.example/users/alice",
            "object": "https://social.example/users/bob/statuses/1",
        }
        assert check.applies(parse_activity(json.dumps(document).encode())) is applies
