"""New reviews, escalations and confirmed quarantines reach the admins' webhooks
(issue 14, point 5): each once, and never with media or hash values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from relay.media.hashes import hash_media
from relay.people import ApiTokens
from tests.conftest import FAST_OUTBOX, Fediverse, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import Origin
from tests.review.support import PICTURES, hold, reviewing
from tests.webhook_support import serving

origin, evidence_key = media_hold.origin, media_hold.evidence_key


async def test_a_review_an_escalation_and_a_confirmation_each_notify_once(
    sluice_factory: Any, evidence_key: Path, fediverse: Fediverse, origin: Origin
) -> None:
    async with serving() as hook:
        sluice = await reviewing(
            sluice_factory, evidence_key, notify={"webhooks": [hook.url]}, outbox=FAST_OUTBOX
        )
        _, record = await hold(sluice, fediverse, origin, "red.jpg")
        assert record["state"] == "review"
        await wait_for(lambda: len(hook.requests) == 1, timeout=10)
        token = (await ApiTokens(sluice.parts.pool).issue("mo")).secret
        headers = {"Authorization": f"Bearer {token}"}
        api = f"{sluice.admin_url}/_sluice/api/review/{record['id']}"
        async with sluice.session.post(
            api + "/escalate", json={"reason": "unsure"}, headers=headers
        ) as response:
            assert response.status == 200
        await wait_for(lambda: len(hook.requests) == 2, timeout=10)
        admin = (await ApiTokens(sluice.parts.pool).issue("ada")).secret
        async with sluice.session.post(
            api + "/confirm", json={"reason": "known"}, headers={"Authorization": f"Bearer {admin}"}
        ) as response:
            assert response.status == 200
        await wait_for(lambda: len(hook.requests) == 3, timeout=10)

        messages = [json.loads(r.body) for r in hook.requests]
        assert [(m["event"], m["disposition"]) for m in messages] == [
            ("verdict", "review"),
            ("escalated", "review"),
            ("verdict", "quarantine"),
        ]
        assert all(m["activity"]["row"] == record["id"] for m in messages)
        assert len({r.headers["Idempotency-Key"] for r in hook.requests}) == 3
        picture = PICTURES["red.jpg"]
        known = hash_media(picture)
        for request in hook.requests:
            assert picture[:64] not in request.body
            for value in (known.sha256, known.md5, known.pdq[0].hash):
                assert value.encode() not in request.body
