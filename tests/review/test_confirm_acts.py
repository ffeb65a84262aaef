"""A perceptual-only match holds its irreversible effects back; a moderator's
confirmation runs them: the instance (a Mastodon stand-in) suspends the account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relay.banks import BankStore
from relay.media.hashes import hash_media
from relay.people import ApiTokens
from tests.conftest import FAST_OUTBOX, Fediverse, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import Origin, with_media
from tests.review.support import PICTURES, reviewing
from tests.test_instance_actions import TOKEN, _serve

origin, evidence_key, settled = media_hold.origin, media_hold.evidence_key, media_hold._settled


async def test_a_ban_withheld_from_a_perceptual_match_runs_once_a_moderator_confirms(
    sluice_factory: Any,
    evidence_key: Path,
    fediverse: Fediverse,
    origin: Origin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = await _serve("mastodon")
    try:
        monkeypatch.setenv("SLUICE_UPSTREAM_TOKEN", TOKEN)
        sluice = await reviewing(
            sluice_factory,
            evidence_key,
            upstream={"url": instance.url.rstrip("/"), "software": "mastodon"},
            bank=[{"name": "test-similar", "category": "test"}],
            rule=[{"match": "test-similar", "action": "review", "effects": ["ban"]}],
            outbox=FAST_OUTBOX,
        )
        picture = PICTURES["red.jpg"]
        store = BankStore(sluice.parts.pool)
        await store.ensure("test-similar", category="test")
        await store.add("test-similar", [("pdq", hash_media(picture).pdq[0].hash, "red")])
        await wait_for(lambda: "test-similar" in sluice.parts.banks.index.counts(), timeout=5)

        alice = fediverse.actor("alice")
        instance.known[alice.id] = ("account", 7)
        origin.files["red.jpg"] = (picture, "image/jpeg")
        activity = with_media(alice, origin.url("red.jpg"))
        assert (await sluice.post(alice, json.dumps(activity).encode()))[0] == 202
        record = await settled(sluice, activity["id"])
        assert record["state"] == "review"
        assert record["verdict"]["withheld"] == ["ban"]  # a PDQ match alone
        assert instance.calls == []

        token = (await ApiTokens(sluice.parts.pool).issue("mo")).secret
        async with sluice.session.post(
            f"{sluice.admin_url}/_sluice/api/review/{record['id']}/confirm",
            json={"reason": "seen: it is what the bank says"},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 200

        await wait_for(lambda: any("/action" in c.path for c in instance.calls), timeout=10)
        [action] = [c for c in instance.calls if c.path.endswith("/action")]
        assert action.path == "/api/v1/admin/accounts/7/action"
        assert action.fields["type"] == "suspend"
    finally:
        assert instance.server is not None
        await instance.server.close()
