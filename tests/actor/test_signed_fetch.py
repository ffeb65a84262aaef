"""Sluice's GETs are signed as its actor, against real loopback servers: one in
authorized-fetch mode (401 unless the signature verifies with the key it fetches from
Sluice's own routes), one that refuses signed GETs, and Sluice's own host."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.errors import FetchError, SignatureError
from relay.media.fetch import MediaFetcher
from relay.network import fetch_json_document
from relay.signature import KeyCache, verify_request
from tests.actor.support import LOOPBACK, Served, serve_actor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Peer:
    """A fediverse server on loopback; ``mode`` says how it treats signatures."""

    mode: str  # "authorized" (401 unless signed), "refuses" (401 when signed), "denies" (403)
    keys: KeyCache | None = None
    server: TestServer | None = None
    seen: list[str | None] = field(default_factory=list)  # each GET's signer, or None
    redirect_to: str | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        signer = None
        if "Signature" in request.headers:
            assert self.keys is not None
            try:
                verified = await verify_request(
                    request.method, request.raw_path, request.headers, b"", self.keys
                )
                signer = verified.signer
            except SignatureError:
                signer = "invalid"
        self.seen.append(signer)
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        if self.mode == "denies":
            raise web.HTTPForbidden(text="no")
        if self.mode == "refuses" and signer is not None:
            raise web.HTTPUnauthorized(text="signatures from strangers are not welcome")
        if self.mode == "authorized" and (signer is None or signer == "invalid"):
            raise web.HTTPUnauthorized(text="sign your requests")
        if request.path.endswith(".png"):
            return web.Response(body=b"\x89PNG not really", content_type="image/png")
        body = {"id": f"{self.url}{request.path}", "type": "Note", "fetchedBy": signer}
        return web.Response(text=json.dumps(body), content_type="application/activity+json")


@asynccontextmanager
async def peer(served: Served, mode: str) -> AsyncIterator[Peer]:
    remote = Peer(mode, keys=served.key_cache())
    app = web.Application()
    app.router.add_get("/{tail:.*}", remote.handle)
    remote.server = TestServer(app, host="127.0.0.1", port=None)
    await remote.server.start_server()
    try:
        yield remote
    finally:
        await remote.server.close()


async def test_an_authorized_fetch_server_answers_a_signed_get(tmp_path: Path) -> None:
    async with serve_actor(tmp_path) as served, peer(served, "authorized") as remote:
        url = f"{remote.url}/notes/1"
        with pytest.raises(FetchError) as unsigned:
            await fetch_json_document(served.session, LOOPBACK, url)
        assert unsigned.value.status == 401
        signer = served.actor.fetch_signer()
        fetched = await fetch_json_document(served.session, LOOPBACK, url, signer=signer)
        assert fetched.document["fetchedBy"] == served.actor.id
        assert remote.seen == [None, served.actor.id]


async def test_media_is_fetched_signed_too(tmp_path: Path) -> None:
    async with serve_actor(tmp_path) as served, peer(served, "authorized") as remote:
        media = MediaFetcher(
            served.session, LOOPBACK, max_bytes=1024, signer=served.actor.fetch_signer()
        )
        assert await media.get(f"{remote.url}/media/a.png") == b"\x89PNG not really"
        assert remote.seen == [served.actor.id]


async def test_each_redirect_hop_is_signed_for_its_own_host(tmp_path: Path) -> None:
    async with (
        serve_actor(tmp_path) as served,
        peer(served, "authorized") as first,
        peer(served, "authorized") as second,
    ):
        first.redirect_to = f"{second.url}/moved/here"
        signer = served.actor.fetch_signer()
        fetched = await fetch_json_document(
            served.session, LOOPBACK, f"{first.url}/old", signer=signer
        )
        assert fetched.url == f"{second.url}/moved/here"
        assert first.seen == [served.actor.id] and second.seen == [served.actor.id]


async def test_a_server_refusing_signed_gets_is_asked_unsigned_and_remembered(
    tmp_path: Path,
) -> None:
    clock = Clock()
    async with serve_actor(tmp_path) as served, peer(served, "refuses") as remote:
        signer = served.actor.fetch_signer(remember_seconds=600, clock=clock)
        url = f"{remote.url}/notes/1"
        fetched = await fetch_json_document(served.session, LOOPBACK, url, signer=signer)
        assert fetched.document["fetchedBy"] is None
        assert remote.seen == [served.actor.id, None]
        # Remembered: the next GET goes unsigned at once.
        await fetch_json_document(served.session, LOOPBACK, url, signer=signer)
        assert remote.seen == [served.actor.id, None, None]
        # Forgotten after a while: signed again first.
        clock.now += 601
        await fetch_json_document(served.session, LOOPBACK, url, signer=signer)
        assert remote.seen == [served.actor.id, None, None, served.actor.id, None]


async def test_a_refusal_of_both_is_the_signed_error_and_not_remembered(tmp_path: Path) -> None:
    async with serve_actor(tmp_path) as served, peer(served, "denies") as remote:
        signer = served.actor.fetch_signer()
        url = f"{remote.url}/notes/1"
        for _ in range(2):
            with pytest.raises(FetchError) as refused:
                await fetch_json_document(served.session, LOOPBACK, url, signer=signer)
            assert refused.value.status == 403
        assert remote.seen == [served.actor.id, None, served.actor.id, None]


async def test_the_memory_of_refusing_hosts_is_bounded(tmp_path: Path) -> None:
    async with (
        serve_actor(tmp_path) as served,
        peer(served, "refuses") as one,
        peer(served, "refuses") as two,
    ):
        signer = served.actor.fetch_signer(max_hosts=1)
        await fetch_json_document(served.session, LOOPBACK, f"{one.url}/a", signer=signer)
        await fetch_json_document(served.session, LOOPBACK, f"{two.url}/a", signer=signer)
        # Only the latest host is remembered; the first is signed to again.
        await fetch_json_document(served.session, LOOPBACK, f"{one.url}/b", signer=signer)
        assert one.seen == [served.actor.id, None, served.actor.id, None]
        assert two.seen == [served.actor.id, None]


async def test_requests_to_our_own_host_are_never_signed(tmp_path: Path) -> None:
    async with serve_actor(tmp_path, prefix="/relay") as served:
        signer = served.actor.fetch_signer()
        fetched = await fetch_json_document(
            served.session, LOOPBACK, served.actor.id, signer=signer
        )
        assert fetched.document["id"] == served.actor.id
        assert [r.headers.get("Signature") for r in served.requests] == [None]
