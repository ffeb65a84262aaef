"""The upload door on its own, in front of a real instance on loopback: what it does when
its check cannot finish (a matcher that never answers), and bodies it cannot read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.doors.multipart import MultipartError, boundary, parts
from relay.doors.passthrough import Passthrough
from relay.doors.upload import UploadDoor
from relay.errors import ConfigError
from relay.media.hasher import MediaHasher
from relay.media.inspect import Inspector
from relay.media.media import Media
from relay.policy import Policy
from relay.signal import Signal
from tests.conftest import start_server
from tests.doors.test_upload import PEN, Instance, instance, multipart, send

__all__ = ["instance"]  # the fixture, shared


class Silent:
    """A matcher that never answers: an external checker that hangs."""

    name = "silent"

    async def match(self, media: Media) -> Sequence[Signal]:
        await asyncio.Event().wait()
        return []


@dataclass
class Served:
    """An UploadDoor served on loopback, as the public listener mounts it."""

    url: str
    session: aiohttp.ClientSession


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(instance: Instance) -> AsyncIterator[Serve]:
    closing: list[Callable[[], Awaitable[None]]] = []

    async def start(**options: Any) -> Served:
        passthrough = Passthrough(instance.base)
        hasher = MediaHasher(workers=1)
        door = UploadDoor(
            upstream_url=instance.base,
            inspector=Inspector([Silent()]),
            policy=Policy,
            hasher=hasher,
            passthrough=passthrough,
            **options,
        )
        app = web.Application(middlewares=[door.middleware])
        app.router.add_routes(door.routes())
        server = await start_server(app)
        session = aiohttp.ClientSession()
        closing.extend((session.close, server.close, passthrough.close))

        async def stop_hashing() -> None:
            hasher.close()

        closing.append(stop_hashing)
        return Served(str(server.make_url("")).rstrip("/"), session)

    yield start
    for close in closing:
        await close()


async def test_a_check_that_does_not_finish_is_on_errors_to_decide(
    serve: Serve, instance: Instance
) -> None:
    closed = await serve(timeout=0.2)
    status, answer = await send(closed, "POST", "/_sluice/validate", PEN, "image/png")
    assert not 200 <= status < 300 and "could not be checked" in answer["error"]
    body, content_type = multipart(("file", "pen.png", PEN))
    status, answer = await send(closed, "POST", "/api/v2/media", body, content_type)
    assert status == 422 and "could not be checked" in answer["error"]
    assert instance.at("/api/v2/media") == []

    opened = await serve(timeout=0.2, on_error="accept")
    status, _ = await send(opened, "POST", "/_sluice/validate", PEN, "image/png")
    assert 200 <= status < 300
    status, _ = await send(opened, "POST", "/api/v2/media", body, content_type)
    assert status == 200
    assert instance.at("/api/v2/media")[0].body == body


async def test_a_malformed_multipart_body_is_refused_not_forwarded(
    serve: Serve, instance: Instance
) -> None:
    door = await serve()
    body, content_type = multipart(("file", "pen.png", PEN))
    cut = body[: len(body) // 2]  # the closing boundary never comes
    status, answer = await send(door, "POST", "/api/v2/media", cut, content_type)
    assert status == 400 and "malformed" in answer["error"]
    assert instance.requests == []


def test_parts_are_split_exactly() -> None:
    body, content_type = multipart(
        ("i", None, b"token"), ("file", "a.bin", b"\r\n--not-the-boundary\r\n" + PEN)
    )
    separator = boundary(content_type)
    assert separator is not None
    found = parts(body, separator)
    assert [(p.name, p.filename) for p in found] == [("i", None), ("file", "a.bin")]
    assert found[1].data == b"\r\n--not-the-boundary\r\n" + PEN
    assert boundary("application/json") is None
    assert boundary('multipart/form-data; boundary="quoted b"') == "quoted b"
    with pytest.raises(MultipartError):
        parts(b"no delimiter at all", separator)


def test_check_config_knows_the_upload_section(make_config: Callable[..., object]) -> None:
    with pytest.raises(ConfigError, match="on_error"):
        make_config(upload={"on_error": "maybe"})
    with pytest.raises(ConfigError, match="max_bytes"):
        make_config(upload={"max_bytes": 0})
