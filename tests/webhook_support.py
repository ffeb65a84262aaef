"""A webhook receiver on loopback for the outbox and notify tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import Received, start_server


class Webhook:
    """Records what arrives; answers the statuses in ``script`` in turn, then
    ``status`` (a 3xx redirects elsewhere); with ``hang``, never answers."""

    def __init__(self) -> None:
        self.server: TestServer | None = None
        self.requests: list[Received] = []
        self.script: list[int] = []
        self.status = 200
        self.hang = False

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Received(request.method, request.raw_path, dict(request.headers), body)
        )
        if self.hang:
            await asyncio.Event().wait()
        status = self.script.pop(0) if self.script else self.status
        if 300 <= status < 400:
            raise web.HTTPFound(self.url + "/elsewhere")
        return web.Response(status=status, text=f"hook says {status}")


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook.handle)
    hook.server = await start_server(app)
    try:
        yield hook
    finally:
        await hook.server.close()
