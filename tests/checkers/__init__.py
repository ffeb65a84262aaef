"""What the checkers' tests share: benign pictures drawn with Pillow, the Media Sluice
makes of them, and ``StandIn``, a service on loopback that records every request and,
when told, misbehaves the ways a real one does (slow, 503, 429, an answer too large)."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image, ImageDraw

from relay.media.hashes import hash_media
from relay.media.media import Media
from tests.conftest import start_server

#: What a stand-in is told to do instead of answering.
MISBEHAVIOURS = ("slow", "503", "429", "huge", "huge-chunked")


def picture(seed: int, size: tuple[int, int] = (320, 240), fmt: str = "PNG") -> bytes:
    """Coloured shapes on a coloured ground: textured enough for a good PDQ hash."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    width, height = size
    for _ in range(24):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randrange(4, width // 2), y0 + rng.randrange(4, height // 2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def noise(side: int, seed: int = 0) -> bytes:
    """A PNG of random pixels: as large as a picture of its size gets."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


def media_of(data: bytes) -> Media:
    """The Media the hold makes of fetched bytes: hashed, PDQ included."""
    return Media.of(data, hash_media(data))


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Answerer = Callable[[Seen], Awaitable[web.StreamResponse]]


@dataclass
class StandIn:
    """A service on loopback: ``answer`` answers each request, unless ``misbehave``."""

    answer: Answerer
    misbehave: str | None = None
    requests: list[Seen] = field(default_factory=list)
    server: TestServer | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/") -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            await request.read(),
        )
        self.requests.append(seen)
        if self.misbehave == "slow":
            # Until the test ends: longer than any checker waits.
            await asyncio.wait_for(self.released.wait(), 30)
        if self.misbehave == "503":
            return web.json_response({"detail": "down for maintenance"}, status=503)
        if self.misbehave == "429":
            return web.json_response(
                {"detail": "slow down"}, status=429, headers={"Retry-After": "2"}
            )
        if self.misbehave == "huge":
            return web.json_response({"pad": "x" * 1_000_000})
        if self.misbehave == "huge-chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            response.content_type = "application/json"
            await response.prepare(request)
            await response.write(b'{"pad": "')
            for _ in range(16):
                await response.write(b"x" * 65_536)
            await response.write(b'"}')
            return response
        return await self.answer(seen)


@asynccontextmanager
async def serve(answer: Answerer) -> AsyncIterator[StandIn]:
    stand_in = StandIn(answer)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    stand_in.server = await start_server(app)
    try:
        yield stand_in
    finally:
        stand_in.released.set()
        await stand_in.server.close()
