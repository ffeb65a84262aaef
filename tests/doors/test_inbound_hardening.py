"""The inbound door against hostile senders: replays from other hosts, inboxes it does not
know, the operations endpoints, and addresses a sender makes up (issue 11)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from yarl import URL

from tests.conftest import Fediverse, Running, Upstream, settled_row, wait_for

# --- Host: a delivery signed for another server is a replay --------------------


@pytest.mark.parametrize("scheme", ["cavage", "rfc9421"])
async def test_a_request_signed_for_another_host_is_refused(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream, scheme: str
) -> None:
    sluice = await sluice_factory(server={"hosts": ["social.example"]})
    carol = fediverse.actor("carol")
    replayed = carol.activity("Like", obj=f"{carol.id}/statuses/1")
    status, text = await sluice.post(carol, replayed, host="other.example", scheme=scheme)
    assert status == 401
    assert "signed for host 'other.example'" in json.loads(text)["error"]
    assert await sluice.parts.store.get(replayed["id"]) is None

    ours = carol.activity("Like", obj=f"{carol.id}/statuses/2")
    assert (await sluice.post(carol, ours, host="Social.Example", scheme=scheme))[0] == 202
    [got] = await wait_for(upstream.inbox_posts)
    assert got.json()["id"] == ours["id"]


async def test_a_host_with_a_port_must_match_it(sluice_factory: Any, fediverse: Fediverse) -> None:
    sluice = await sluice_factory(server={"hosts": ["social.example:8443"]})
    carol = fediverse.actor("carol")
    assert (await sluice.post(carol, carol.activity(), host="social.example:8443"))[0] == 202
    assert (await sluice.post(carol, carol.activity(), host="social.example"))[0] == 401


async def test_without_hosts_any_host_is_accepted(sluice: Running, fediverse: Fediverse) -> None:
    """The embedded quickstart keeps working; check-config warns about it."""
    carol = fediverse.actor("carol")
    assert (await sluice.post(carol, carol.activity(), host="anything.example"))[0] == 202


# --- inboxes Sluice does not know are checked all the same ---------------------


@pytest.mark.parametrize(
    "path",
    [
        "/f/inbox",  # Pixelfed's shared inbox
        "/i/actor/inbox",  # Pixelfed's instance actor
        "/relay/inbox",  # Pleroma/Akkoma
        "/internal/fetch/inbox",
        "/inbox;x=1",  # spellings a router may take for the inbox
        "/users/alice\\inbox",
    ],
)
async def test_a_signed_post_to_any_path_is_checked(
    sluice: Running, fediverse: Fediverse, upstream: Upstream, path: str
) -> None:
    mallory = fediverse.actor("mallory", key_index=0)
    forged = fediverse.actor("victim", key_index=1)
    body = json.dumps(forged.activity()).encode()
    # Signed by mallory's key under the victim's key id: it must not verify.
    headers = mallory.sign(f"https://social.example{path}", body)
    headers["Signature"] = headers["Signature"].replace(mallory.key_id, forged.key_id)
    url = URL(sluice.url + path.replace("\\", "%5C"), encoded=True)
    async with sluice.session.post(url, data=body, headers=headers) as response:
        assert response.status == 401, await response.text()
    assert upstream.requests == []

    good = mallory.activity()
    body = json.dumps(good).encode()
    headers = mallory.sign(f"https://social.example{path.replace(chr(92), '%5C')}", body)
    async with sluice.session.post(url, data=body, headers=headers) as response:
        assert response.status == 202
    [got] = await wait_for(upstream.inbox_posts)
    assert got.json()["id"] == good["id"]
    assert (await settled_row(sluice, good["id"]))["state"] == "delivered"


async def test_an_activity_content_type_alone_makes_a_post_inbound(
    sluice: Running, upstream: Upstream
) -> None:
    for content_type in ("application/activity+json", 'application/ld+json; profile="x"'):
        async with sluice.session.post(
            sluice.url + "/f/inbox",
            data=b'{"type": "Create"}',
            headers={"Content-Type": content_type},
        ) as response:
            assert response.status in (400, 401), await response.text()
    assert upstream.requests == []


async def test_a_client_posting_to_its_outbox_passes_through(
    sluice: Running, upstream: Upstream
) -> None:
    """Pleroma's C2S API: an ActivityPub body, an OAuth token, no signature."""
    async with sluice.session.post(
        sluice.url + "/users/alice/outbox",
        data=b'{"type": "Note", "content": "hi"}',
        headers={"Content-Type": "application/activity+json", "Authorization": "Bearer t"},
    ) as response:
        assert response.status == 202  # the upstream's answer
    [got] = upstream.requests
    assert got.path == "/users/alice/outbox"


async def test_other_posts_still_pass_through(sluice: Running, upstream: Upstream) -> None:
    async with sluice.session.post(
        sluice.url + "/api/v1/statuses",
        data=b"status=hello",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        assert response.status == 202  # the upstream's answer
    [got] = upstream.requests
    assert (got.path, got.body) == ("/api/v1/statuses", b"status=hello")


# --- operations endpoints live on the admin listener ---------------------------


async def test_the_public_listener_serves_only_healthz(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    carol = fediverse.actor("carol")
    await sluice.post(carol, carol.activity())
    await wait_for(upstream.inbox_posts)
    async with sluice.session.get(sluice.url + "/healthz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ok"})
    for path in ("/metrics", "/readyz", "/_sluice/api/review"):
        async with sluice.session.get(sluice.url + path) as response:
            text = await response.text()
        # The instance's own paths of those names: passed through, nothing of Sluice's.
        assert text == "upstream says 202", (path, text)
        assert "sluice_" not in text
    assert [r.path for r in upstream.requests if r.method == "GET"] == [
        "/metrics",
        "/readyz",
        "/_sluice/api/review",
    ]
    async with sluice.session.get(sluice.admin_url + "/metrics") as response:
        assert "sluice_media_matches_total" in await response.text() or response.status == 200
    async with sluice.session.get(sluice.admin_url + "/readyz") as response:
        assert response.status == 200


async def test_readyz_does_not_echo_the_database_error(sluice: Running) -> None:
    sluice.parts.pool.terminate()  # as good as PostgreSQL gone
    async with sluice.session.get(sluice.admin_url + "/readyz") as response:
        assert response.status == 503
        assert await response.json() == {"status": "database unavailable"}


async def test_a_non_ascii_authorization_header_is_refused_not_a_crash(
    sluice_factory: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "s3cret")
    sluice = await sluice_factory()
    url = URL(sluice.admin_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"GET /_sluice/api/review HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


async def test_the_admin_listener_can_be_turned_off(sluice_factory: Any) -> None:
    sluice = await sluice_factory(admin={"listen": ""})
    assert sluice.parts.admin_url is None


# --- the sender's address ------------------------------------------------------


async def test_x_real_ip_is_believed_only_from_a_trusted_proxy(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    carol = fediverse.actor("carol")
    spoofed = {"X-Real-IP": "203.0.113.66", "X-Forwarded-For": "203.0.113.66"}

    # Sluice exposed directly (no trusted proxy): the made-up address is replaced.
    direct = await sluice_factory(server={"trusted_proxies": []})
    first = carol.activity()
    assert (await direct.post(carol, first, headers=spoofed))[0] == 202
    [got] = await wait_for(upstream.inbox_posts)
    assert (await direct.parts.store.get(first["id"]))["remote"] == "127.0.0.1"
    assert got.headers["X-Real-IP"] == "127.0.0.1"
    assert got.headers["X-Forwarded-For"] == "127.0.0.1"

    # Behind nginx on the same machine (the default): nginx's X-Real-IP names the sender.
    behind = await sluice_factory()
    second = carol.activity()
    assert (await behind.post(carol, second, headers=spoofed))[0] == 202
    await wait_for(lambda: len(upstream.inbox_posts()) == 2)
    assert (await behind.parts.store.get(second["id"]))["remote"] == "203.0.113.66"
    assert upstream.inbox_posts()[1].headers["X-Real-IP"] == "203.0.113.66"


async def test_the_last_untrusted_forwarded_hop_is_the_sender(
    sluice_factory: Any, fediverse: Fediverse
) -> None:
    sluice = await sluice_factory(server={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]})
    carol = fediverse.actor("carol")
    activity = carol.activity()
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.1.2.3"}
    assert (await sluice.post(carol, activity, headers=chain))[0] == 202
    assert (await sluice.parts.store.get(activity["id"]))["remote"] == "203.0.113.7"


# --- relayed objects: their own signatures cost a bounded price ----------------


async def test_a_relaying_signer_past_its_rate_gets_429_with_retry_after(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    from relay.signature import sign_ld

    sluice = await sluice_factory(signatures={"object_rate_per_minute": 2})
    alice = fediverse.actor("alice", key_index=0)
    relay = fediverse.actor("relay", key_index=1)
    other = fediverse.actor("other-relay", key_index=2)
    answers = []
    for _ in range(3):
        signed = sign_ld(alice.activity(), alice.key, alice.key_id)
        async with sluice.session.post(
            sluice.url + "/inbox",
            data=json.dumps(signed).encode(),
            headers=relay.sign("https://social.example/inbox", json.dumps(signed).encode()),
        ) as response:
            answers.append((response.status, response.headers.get("Retry-After")))
    assert answers[:2] == [(202, None), (202, None)]
    status, retry_after = answers[2]
    assert status == 429
    assert retry_after is not None and int(retry_after) >= 1
    # Another relaying signer has a rate of its own.
    status, text = await sluice.post(other, sign_ld(alice.activity(), alice.key, alice.key_id))
    assert status == 202, text
    await wait_for(lambda: len(upstream.inbox_posts()) == 3)


async def test_an_oversized_ld_signed_object_is_refused_before_canonicalising(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    from relay.signature import sign_ld

    alice = fediverse.actor("alice", key_index=0)
    relay = fediverse.actor("relay", key_index=1)
    activity = alice.activity()
    activity["object"]["tag"] = [
        {"type": "Hashtag", "name": f"#t{i}", "href": f"{alice.id}/tags/t{i}"} for i in range(600)
    ]
    status, text = await sluice.post(relay, sign_ld(activity, alice.key, alice.key_id))
    assert status == 401
    assert "more than 2000 JSON values" in text
    assert upstream.inbox_posts() == []


async def test_method_overrides_do_not_reach_the_instance_with_an_inbox_post(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    """Rack reads X-HTTP-Method-Override on a POST: the instance must see what was checked."""
    carol = fediverse.actor("carol")
    override = {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "PUT"}
    assert (await sluice.post(carol, carol.activity(), headers=override))[0] == 202
    [got] = await wait_for(upstream.inbox_posts)
    assert "X-HTTP-Method-Override" not in got.headers
    assert "X-HTTP-Method" not in got.headers


async def test_a_compressed_body_passes_through_as_sent(
    sluice: Running, upstream: Upstream
) -> None:
    """Sluice leaves request bodies as sent: the instance decodes what the client coded."""
    import gzip

    plain = b"status=" + b"hello " * 1000
    async with sluice.session.post(
        sluice.url + "/api/v1/statuses",
        data=gzip.compress(plain),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Encoding": "gzip",
        },
    ) as response:
        assert response.status == 202, await response.text()
    [got] = upstream.requests
    assert got.body == plain  # the upstream (aiohttp) decoded the gzip it was sent


async def test_the_admin_api_says_503_while_the_database_is_gone(
    sluice_factory: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "s3cret")
    sluice = await sluice_factory()
    sluice.parts.pool.terminate()  # as good as PostgreSQL gone
    auth = {"Authorization": "Bearer s3cret"}
    async with sluice.session.get(
        sluice.admin_url + "/_sluice/api/review", headers=auth
    ) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert await response.json() == {"error": "database unavailable, retry later"}
