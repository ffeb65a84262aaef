"""Uploads held in memory are bounded: at most ``[upload] concurrency`` are read and
checked at once; the next waits its turn, and gets it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tests.conftest import wait_for
from tests.doors.test_upload import (
    PEN,
    TOKEN,
    Instance,
    Start,
    evidence_key,
    instance,
    multipart,
    start,
)

__all__ = ["evidence_key", "instance", "start"]  # the fixtures this module borrows


async def test_an_upload_waits_for_a_turn_while_another_is_read(
    start: Start, instance: Instance
) -> None:
    sluice = await start(upload={"concurrency": 1})
    body, content_type = multipart(("file", "pen.png", PEN))
    first_half = asyncio.Event()
    go_on = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield body[:100]
        first_half.set()
        await go_on.wait()
        yield body[100:]

    headers = {"Content-Type": content_type, "Authorization": TOKEN}
    url = sluice.url + "/api/v1/media"
    slow = asyncio.ensure_future(sluice.session.post(url, data=trickle(), headers=headers))
    await first_half.wait()
    fast = asyncio.ensure_future(sluice.session.post(url, data=body, headers=headers))
    await asyncio.sleep(1.0)
    assert instance.at("/api/v1/media") == []  # the second waits for the first's turn
    assert not fast.done()
    go_on.set()
    for answer in await asyncio.gather(slow, fast):
        assert answer.status == 200
        answer.release()
    await wait_for(lambda: len(instance.at("/api/v1/media")) == 2)
    assert {r.body for r in instance.at("/api/v1/media")} == {body}
