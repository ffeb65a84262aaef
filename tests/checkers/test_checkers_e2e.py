"""An external checker in a running Sluice: its match holds the activity as a rule says,
its failure goes to ``[hold] on_error``, and ``/readyz`` says which is which."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Fediverse, Running, start_server
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import Origin, with_media

origin, settled = media_hold.origin, media_hold._settled


class Scorer:
    """A classifier as fedi-safety-style workers answer: the bytes in, a score out."""

    def __init__(self) -> None:
        self.score: float = 0.95
        self.status = 200
        self.seen: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(len(await request.read()))
        if request.headers.get("Authorization") != "Bearer classifier-token":
            return web.json_response({"detail": "no"}, status=401)
        if self.status != 200:
            return web.json_response({"detail": "busy"}, status=self.status)
        return web.json_response({"predictions": {"csam": self.score}})


@pytest.fixture
async def scorer() -> AsyncIterator[tuple[Scorer, str]]:
    scorer = Scorer()
    app = web.Application()
    app.router.add_post("/score", scorer.handle)
    server = await start_server(app)
    yield scorer, str(server.make_url("/score"))
    await server.close()


async def test_a_classifier_holds_what_it_scores_high_and_its_failures_go_to_on_error(
    sluice_factory: Any,
    fediverse: Fediverse,
    origin: Origin,
    scorer: tuple[Scorer, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, url = scorer
    monkeypatch.setenv("SLUICE_CLASSIFIER_TOKEN", "classifier-token")
    sluice: Running = await sluice_factory(
        classifier={"endpoint": url, "score_key": "predictions.csam", "category": "test"},
        rule=[{"match": "classifier", "action": "review"}],
        hold={"max_seconds": 10.0, "on_error": "reject"},
    )
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("pen.png"))
    assert (await sluice.post(alice, json.dumps(activity).encode()))[0] == 202
    record = await settled(sluice, activity["id"])
    assert record["state"] == "review"
    [match] = [s for s in record["verdict"]["signals"] if s["kind"] == "match"]
    assert match["source"] == "classifier" and match["detail"]["exact"] is False
    assert service.seen and service.seen[0] > 0

    service.status = 503  # down: an error signal, which on_error (reject) decides
    other = with_media(alice, origin.url("bridge.jpg"))
    assert (await sluice.post(alice, json.dumps(other).encode()))[0] == 202
    record = await settled(sluice, other["id"])
    assert record["state"] == "rejected"
    assert any(
        s["kind"] == "error" and s["source"] == "classifier" for s in record["verdict"]["signals"]
    )

    async with sluice.session.get(sluice.admin_url + "/readyz") as response:
        ready = await response.json()
    assert ready["on_failure"]["classifier"].endswith("[hold] on_error = reject")
    assert ready["on_failure"]["photodna"] == "off"
