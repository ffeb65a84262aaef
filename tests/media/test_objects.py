"""object_refs and ObjectFetcher: which objects an activity names by id, and fetching them.

ObjectFetcher runs against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.errors import BlockedAddress, DecodeError, FetchError
from relay.media.objects import ObjectFetcher, ObjectRef, extract, object_refs
from relay.network import NetworkPolicy, client_session
from tests.conftest import start_server

ACTIVITIES = Path(__file__).parent / "activities"
ALICE = "https://a.example/users/alice"
BOB = "https://b.example/users/bob"
NOTE = "https://b.example/notes/1"


def found(document: Any) -> list[tuple[str, str, str]]:
    return [(r.url, r.where, r.role) for r in object_refs(document)]


def note(**fields: Any) -> dict[str, Any]:
    return {"type": "Note", "id": f"{ALICE}/notes/9", "attributedTo": ALICE, **fields}


@pytest.mark.parametrize("verb", ["Announce", "Create", "Update", "Add"])
def test_an_object_given_by_id_is_fetched(verb: str) -> None:
    assert found({"type": verb, "actor": ALICE, "object": NOTE}) == [(NOTE, "object", "object")]
    listed = {"type": verb, "actor": ALICE, "object": [f" {NOTE} ", "https://b.example/n/2"]}
    assert found(listed) == [
        (NOTE, "object[0]", "object"),
        ("https://b.example/n/2", "object[1]", "object"),
    ]


@pytest.mark.parametrize("verb", ["Like", "EmojiReact", "Undo", "Delete", "Follow", "Flag"])
def test_other_activities_name_objects_the_instance_does_not_fetch(verb: str) -> None:
    assert object_refs({"type": verb, "actor": ALICE, "object": NOTE}) == []
    undo = {"type": verb, "actor": ALICE, "object": {"type": "Announce", "object": NOTE}}
    assert object_refs(undo) == []


@pytest.mark.parametrize("key", ["quote", "quoteUrl", "quoteUri", "quoteURL", "_misskey_quote"])
def test_quotes(key: str) -> None:
    activity = {"type": "Create", "actor": ALICE, "object": note(**{key: NOTE})}
    assert found(activity) == [
        (NOTE, f"object.{key}", "quote"),
        (ALICE, "object.attributedTo", "author"),
    ]


def test_a_fep_e232_object_link_is_a_quote_and_other_tags_are_not() -> None:
    tags = [
        {"type": "Hashtag", "href": "https://a.example/tags/cats"},
        {"type": "Mention", "href": BOB},
        {
            "type": "Link",
            "mediaType": 'application/ld+json; profile="https://www.w3.org/ns/activitystreams"',
            "href": NOTE,
        },
        {"type": "Link", "mediaType": "application/activity+json", "href": "https://c.example/2"},
        {"type": "Link", "mediaType": "text/html", "href": "https://c.example/page"},
    ]
    refs = object_refs(note(tag=tags))
    assert [(r.url, r.role) for r in refs if r.role == "quote"] == [
        (NOTE, "quote"),
        ("https://c.example/2", "quote"),
    ]


def test_authors_as_strings_objects_and_lists() -> None:
    peertube = note(attributedTo=[{"type": "Person", "id": BOB}, {"type": "Group", "id": ALICE}])
    assert found(peertube) == [
        (BOB, "attributedTo[0]", "author"),
        (ALICE, "attributedTo[1]", "author"),
    ]


def test_an_announce_embedding_someone_elses_post_is_fetched_by_its_id() -> None:
    # Mastodon takes an embedded post from an Announce only when the announcer wrote it.
    post = {"type": "Note", "id": NOTE, "attributedTo": BOB}
    assert found({"type": "Announce", "actor": ALICE, "object": post}) == [
        (NOTE, "object.id", "object"),
        (BOB, "object.attributedTo", "author"),
    ]
    own = {"type": "Note", "id": f"{ALICE}/n/1", "attributedTo": ALICE}
    assert found({"type": "Announce", "actor": ALICE, "object": own}) == [
        (ALICE, "object.attributedTo", "author"),
    ]
    # A Create embeds its own post: taken as sent, not fetched again.
    assert (NOTE, "object.id", "object") not in found(
        {"type": "Create", "actor": BOB, "object": post}
    )


def test_a_community_announce_names_the_inner_activitys_actor() -> None:
    activity = json.loads((ACTIVITIES / "lemmy-announce-create-page.json").read_text())
    assert found(activity) == [
        ("https://enterprise.lemmy.ml/u/picard", "object.actor", "author"),
    ]


def test_misskey_quotes_once_under_both_names() -> None:
    activity = json.loads((ACTIVITIES / "misskey-create-note.json").read_text())
    assert found(activity) == [
        ("https://misskey.io/notes/8vs6wxufd0", "object.quoteUrl", "quote"),
        ("https://misskey.io/users/7rkrarq81i", "object.attributedTo", "author"),
    ]


def test_an_actor_document_names_nothing_to_fetch() -> None:
    actor = {
        "type": "Person",
        "id": BOB,
        "attributedTo": ALICE,  # a PeerTube channel names its owner
        "featured": f"{BOB}/featured",
        "outbox": f"{BOB}/outbox",
    }
    assert object_refs(actor) == []
    assert object_refs({"type": "Update", "actor": BOB, "object": actor}) == []


def test_replies_and_mentions_are_not_followed() -> None:
    # Known limits, named in the README.
    activity = note(inReplyTo=NOTE, tag=[{"type": "Mention", "href": BOB}])
    assert found(activity) == [(ALICE, "attributedTo", "author")]


@pytest.mark.parametrize(
    "value",
    [None, 5, "", "  ", "/notes/1", "magnet:?xt=1", "data:,x", ["x", None, 3], {"id": 5}, [[NOTE]]],
)
def test_odd_values_are_skipped(value: Any) -> None:
    activity = {"type": "Announce", "actor": ALICE, "object": value, "quote": value}
    assert object_refs(activity) == []


@pytest.mark.parametrize("document", [None, 5, "x", [], [NOTE]])
def test_a_document_that_is_not_an_object_names_nothing(document: Any) -> None:
    assert object_refs(document) == []


def test_very_deep_documents_do_not_exhaust_the_stack() -> None:
    deep: dict[str, Any] = {"type": "Announce", "object": NOTE}
    for _ in range(50_000):
        deep = {"type": "Announce", "object": deep}
    assert object_refs(deep) == []


def test_extract_follows_an_id_that_is_not_the_url() -> None:
    served = {"id": NOTE, "type": "Note", "attachment": [{"url": "https://b.example/1.png"}]}
    at_other_url = extract("https://c.example/mirror/1", served)
    assert at_other_url.objects[0] == ObjectRef(NOTE, "id", "id")
    assert [m.url for m in at_other_url.media] == ["https://b.example/1.png"]
    assert (at_other_url.id, at_other_url.type) == (NOTE, "Note")
    # The same id, give or take a fragment: nothing more to fetch.
    assert extract(NOTE, served).objects == ()
    assert extract(NOTE + "#x", served).objects == ()
    assert extract(NOTE, {"type": "Note"}).id is None


# --- fetching, from a real server -----------------------------------------------------------


@dataclass
class Documents:
    served: dict[str, Any] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    base: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetched.append(request.path)
        assert "activity+json" in request.headers["Accept"]
        if request.path == "/slow":
            await self.release.wait()
        if request.path == "/hang":
            await asyncio.sleep(3600)
        if request.path == "/page":
            return web.Response(text="<html></html>", content_type="text/html")
        document = self.served.get(request.path)
        if document is None:
            return web.Response(status=404)
        return web.json_response(document, content_type="application/activity+json")


@pytest.fixture
async def documents() -> AsyncIterator[Documents]:
    docs = Documents()
    app = web.Application()
    app.router.add_get("/{tail:.*}", docs.handle)
    server = await start_server(app)
    docs.base = str(server.make_url("")).rstrip("/")
    yield docs
    await server.close()


@pytest.fixture
async def fetcher() -> AsyncIterator[ObjectFetcher]:
    policy = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)
    session = client_session(policy)
    yield ObjectFetcher(session, policy, cache_seconds=60)
    await session.close()


async def test_a_fetched_note_gives_its_media_and_references(
    documents: Documents, fetcher: ObjectFetcher
) -> None:
    url = f"{documents.base}/notes/1"
    documents.served["/notes/1"] = {
        "id": url,
        "type": "Note",
        "attributedTo": BOB,
        "quoteUrl": NOTE,
        "attachment": [{"type": "Document", "url": "https://b.example/1.png"}],
    }
    got = await fetcher.get(url, timeout=5)
    assert [(m.url, m.where, m.role) for m in got.media] == [
        ("https://b.example/1.png", "attachment[0].url", "attachment")
    ]
    assert [(o.url, o.role) for o in got.objects] == [(NOTE, "quote"), (BOB, "author")]


async def test_cached_coalesced_and_fresh_on_request(
    documents: Documents, fetcher: ObjectFetcher
) -> None:
    url = f"{documents.base}/slow"
    documents.served["/slow"] = {"id": url, "type": "Note"}
    first = [asyncio.ensure_future(fetcher.get(url, timeout=5)) for _ in range(5)]
    await asyncio.sleep(0.2)
    documents.release.set()
    await asyncio.gather(*first)
    assert documents.fetched == ["/slow"]  # five at once: one fetch
    await fetcher.get(url, timeout=5)
    assert documents.fetched == ["/slow"]  # from the cache
    documents.served["/slow"] = {"id": url, "type": "Note", "icon": "https://b.example/new.png"}
    fresh = await fetcher.get(url, timeout=5, fresh=True)
    assert documents.fetched == ["/slow", "/slow"]
    assert [m.url for m in fresh.media] == ["https://b.example/new.png"]
    assert (await fetcher.get(url, timeout=5)) == fresh  # the cache holds the fresh one


async def test_failures_say_which_url_and_why(documents: Documents, fetcher: ObjectFetcher) -> None:
    with pytest.raises(FetchError, match="/missing: HTTP 404"):
        await fetcher.get(f"{documents.base}/missing", timeout=5)
    with pytest.raises(FetchError, match=r"/hang: no complete answer within 0\.3 s"):
        await fetcher.get(f"{documents.base}/hang", timeout=0.3)
    with pytest.raises(DecodeError, match="/page: not valid JSON"):
        await fetcher.get(f"{documents.base}/page", timeout=5)
    assert documents.fetched.count("/missing") == 1
    with pytest.raises(FetchError, match="/missing: HTTP 404"):
        await fetcher.get(f"{documents.base}/missing", timeout=5)
    assert documents.fetched.count("/missing") == 2  # failures are not cached


async def test_fetches_are_ssrf_guarded(documents: Documents) -> None:
    policy = NetworkPolicy(allow_http=True)  # loopback not allowed
    async with client_session(policy) as session:
        fetcher = ObjectFetcher(session, policy)
        with pytest.raises(BlockedAddress, match="loopback"):
            await fetcher.get(f"{documents.base}/notes/1", timeout=5)
    assert documents.fetched == []
