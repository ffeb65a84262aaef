"""A real loopback server publishing Sluice's actor, and a fetcher that reaches it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.actor import Actor, add_actor_routes
from relay.network import NetworkPolicy, client_session, fetch_json_document
from relay.signature import KeyCache
from tests.conftest import free_port

LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)


@dataclass
class Served:
    actor: Actor
    session: aiohttp.ClientSession
    requests: list[web.Request]

    def key_cache(self) -> KeyCache:
        """Fetches keys over real HTTP, as the inbound door does."""

        async def fetch(url: str):  # type: ignore[no-untyped-def]
            return await fetch_json_document(self.session, LOOPBACK, url)

        return KeyCache(fetch)


@asynccontextmanager
async def serve_actor(key_dir: Path, prefix: str = "", **kwargs: object) -> AsyncIterator[Served]:
    """Sluice's actor under ``prefix`` on a loopback server, keys under ``key_dir``."""
    port = free_port()
    actor = Actor.load(f"http://127.0.0.1:{port}{prefix}", key_dir=key_dir, **kwargs)  # type: ignore[arg-type]
    assert actor is not None
    requests: list[web.Request] = []

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        requests.append(request)
        return await handler(request)

    app = web.Application(middlewares=[record])
    add_actor_routes(app, actor)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        async with client_session(LOOPBACK) as session:
            yield Served(actor, session, requests)
    finally:
        await server.close()
