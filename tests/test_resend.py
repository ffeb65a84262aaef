"""What is held past its sender's signature still goes: as sent while fresh, re-signed
when it carries its author's signature, fetched by the instance, or expired."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime

import pytest
from aiohttp import web

from relay.instance import InstanceApi
from relay.resend import Resend, delivery_url
from relay.signature import sign_cavage, sign_ld
from tests.conftest import rsa_key, start_server

AUTHOR = "https://origin.example/users/alice"
NOTE = "https://origin.example/users/alice/statuses/1"
INBOX = "https://social.example/inbox"


def _create(**extra: object) -> dict[str, object]:
    return {
        "@context": "https://www.w3.org/ns/activitystreams",
        "id": f"{NOTE}/activity",
        "type": "Create",
        "actor": AUTHOR,
        "object": {"id": NOTE, "type": "Note", "attributedTo": AUTHOR, "content": "hi"},
        **extra,
    }


def _signed(document: dict[str, object], *, age: float) -> tuple[list[tuple[str, str]], bytes]:
    body = json.dumps(document).encode()
    headers = sign_cavage(
        "POST",
        INBOX,
        body,
        rsa_key(0),
        AUTHOR + "#main-key",
        headers={"Content-Type": "application/activity+json"},
        now=time.time() - age,
    )
    return list(headers.items()), body


def _sluice_signer(method, url, headers, body):  # stands in for Actor.sign_request
    return sign_cavage(
        method,
        url,
        body or b"",
        rsa_key(1),
        "https://sluice.example/actor#main-key",
        headers=headers,
    )


def test_a_fresh_signature_goes_as_sent():
    headers, body = _signed(_create(), age=60)
    assert Resend(signer=_sluice_signer).way(headers, body, INBOX).kind == "as_sent"


def test_a_stale_body_signed_by_its_author_goes_resigned_by_sluice():
    document = sign_ld(_create(), rsa_key(0), AUTHOR + "#main-key")
    headers, body = _signed(document, age=2 * 3600)
    way = Resend(signer=_sluice_signer).way(headers, body, INBOX)
    assert way.kind == "resigned"
    names = [name.lower() for name, _ in way.headers]
    assert len(names) == len(set(names)), names  # each field once (aiohttp refuses twice)
    sent = dict(way.headers)
    assert sent["Content-Type"] == "application/activity+json"
    assert sent["Host"] == "social.example"
    assert 'keyId="https://sluice.example/actor#main-key"' in sent["Signature"]
    assert abs(time.time() - parsedate_to_datetime(sent["Date"]).timestamp()) < 60


def test_a_stale_create_without_its_authors_signature_is_fetched_by_the_instance():
    headers, body = _signed(_create(), age=2 * 3600)
    instance = InstanceApi("http://127.0.0.1:9", "mastodon", "token")
    way = Resend(signer=_sluice_signer, instance=instance).way(headers, body, INBOX)
    assert (way.kind, way.url) == ("fetch", NOTE)


def test_what_cannot_go_another_way_expires_and_says_why():
    headers, body = _signed(
        {"id": "x", "type": "Like", "actor": AUTHOR, "object": NOTE}, age=2 * 3600
    )
    instance = InstanceApi("http://127.0.0.1:9", "mastodon", "token")
    way = Resend(instance=instance).way(headers, body, INBOX)
    assert way.kind == "expired"
    assert "signed 120 min ago" in way.reason and "a Like cannot be fetched" in way.reason
    headers, body = _signed(_create(), age=2 * 3600)
    nothing = Resend().way(headers, body, INBOX)
    assert nothing.kind == "expired"
    assert "[actor] base_url" in nothing.reason and "[upstream] software" in nothing.reason


def test_the_url_a_delivery_was_signed_for():
    assert delivery_url([("Host", "social.example")], "/users/a/inbox", None) == (
        "https://social.example/users/a/inbox"
    )
    assert delivery_url([], "/x", "https://remote.example/inbox") == "https://remote.example/inbox"


@pytest.fixture
async def mastodon_search() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """The instance's search API: finds NOTE (as if fetched from its origin), nothing else."""
    asked: list[dict[str, str]] = []

    async def search(request: web.Request) -> web.Response:
        asked.append({**request.query, "auth": request.headers.get("Authorization", "")})
        if request.headers.get("Authorization") != "Bearer sesame":
            return web.json_response({"error": "The access token is invalid"}, status=401)
        found = [{"id": "1", "uri": NOTE}] if request.query.get("q") == NOTE else []
        return web.json_response({"accounts": [], "statuses": found, "hashtags": []})

    app = web.Application()
    app.router.add_get("/api/v2/search", search)
    server = await start_server(app)
    yield str(server.make_url("")).rstrip("/"), asked
    await server.close()


async def test_the_instance_resolves_an_object_through_its_search_api(mastodon_search):
    base, asked = mastodon_search
    api = InstanceApi(base, "mastodon", "sesame")
    try:
        found = await api.resolve(NOTE)
        assert found.ok and found.error is None
        assert asked[-1] == {"q": NOTE, "resolve": "true", "limit": "1", "auth": "Bearer sesame"}
        missing = await api.resolve(NOTE + "-gone")
        assert (missing.ok, missing.status) == (False, 404)
        assert missing.error == f"the instance could not fetch {NOTE}-gone"
        wrong = InstanceApi(base, "mastodon", "wrong")
        refused = await wrong.resolve(NOTE)
        await wrong.close()
        assert refused.status == 401 and "access token is invalid" in (refused.error or "")
    finally:
        await api.close()
