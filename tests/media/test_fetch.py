"""MediaFetcher and HashCache against real origins on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.errors import BlockedAddress, FetchError
from relay.media.fetch import HashCache, MediaFetcher
from relay.media.hashes import hash_media
from relay.network import NetworkPolicy, client_session
from tests.conftest import start_server


@pytest.fixture
async def origin() -> AsyncIterator[dict[str, Any]]:
    state: dict[str, Any] = {"hits": {}, "fail_first": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        state["hits"][name] = state["hits"].get(name, 0) + 1
        state["ua"] = request.headers.get("User-Agent")
        if name == "flaky" and state["hits"][name] <= state["fail_first"]:
            return web.Response(status=503)
        if name == "gone":
            return web.Response(status=404)
        if name == "private":
            raise web.HTTPFound("http://10.0.0.1/secret.jpg")
        if name == "endless":
            response = web.StreamResponse()
            await response.prepare(request)
            while True:
                await response.write(b"\xff" * 65536)
        if name == "slow":
            await asyncio.sleep(5)
        return web.Response(body=b"image bytes " + name.encode(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", handle)
    server = await start_server(app)
    state["base"] = str(server.make_url("")).rstrip("/")
    yield state
    await server.close()


@pytest.fixture
async def fetcher() -> AsyncIterator[MediaFetcher]:
    policy = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)
    session = client_session(policy, limit_per_host=2)
    yield MediaFetcher(session, policy, max_bytes=1_000_000, timeout=1.0, retry_delay=0.05)
    await session.close()


async def test_transient_failure_is_retried(fetcher: MediaFetcher, origin: dict) -> None:
    origin["fail_first"] = 1
    assert await fetcher.get(origin["base"] + "/flaky") == b"image bytes flaky"
    assert origin["hits"]["flaky"] == 2
    assert "Sluice" in origin["ua"]


async def test_persistent_failure_names_url_and_status(fetcher: MediaFetcher, origin: dict) -> None:
    origin["fail_first"] = 10
    with pytest.raises(FetchError) as caught:
        await fetcher.get(origin["base"] + "/flaky")
    assert caught.value.status == 503
    assert "/flaky" in str(caught.value)
    assert origin["hits"]["flaky"] == 2  # bounded retries


async def test_final_answers_are_not_retried(fetcher: MediaFetcher, origin: dict) -> None:
    with pytest.raises(FetchError):
        await fetcher.get(origin["base"] + "/gone")
    assert origin["hits"]["gone"] == 1


async def test_redirect_to_a_private_address_is_refused(
    fetcher: MediaFetcher, origin: dict
) -> None:
    with pytest.raises(BlockedAddress) as caught:
        await fetcher.get(origin["base"] + "/private")
    assert "10.0.0.1" in str(caught.value)


async def test_endless_body_stops_at_the_limit(fetcher: MediaFetcher, origin: dict) -> None:
    with pytest.raises(FetchError) as caught:
        await fetcher.get(origin["base"] + "/endless")
    assert "exceeds the limit" in str(caught.value)
    assert origin["hits"]["endless"] == 1  # too big is final


async def test_slow_origin_times_out(fetcher: MediaFetcher, origin: dict) -> None:
    with pytest.raises(FetchError) as caught:
        await fetcher.get(origin["base"] + "/slow")
    assert "timeout" in str(caught.value)


def test_hash_cache_by_url_and_sha256_with_ttl() -> None:
    pen = Path(__file__).parent.parent / "fixtures" / "pdq" / "misc" / "pen-and-coaster.png"
    hashes = hash_media(pen.read_bytes())
    cache = HashCache(ttl=60)
    cache.put("https://a.example/pen.png", hashes)
    assert cache.by_url("https://a.example/pen.png") is hashes
    assert cache.by_sha256(hashes.sha256) is hashes
    assert cache.by_url("https://b.example/pen.png") is None
    expired = HashCache(ttl=0.0001)
    expired.put("u", hashes)
    time.sleep(0.01)
    assert expired.by_url("u") is None
    assert HashCache(ttl=0).by_url("u") is None
