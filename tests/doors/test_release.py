"""A moderator releases a quarantined activity found to be a false positive: through a
real Sluice, its body and signed headers come back from the evidence (read on the
record) and reach the instance exactly as sent; the evidence stays."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from relay.evidence import EvidenceKey, EvidenceStore
from tests.conftest import Actor, Fediverse, Running, Upstream, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import BRIDGE_EDIT, Origin, with_media

# The media hold's setup: a Sluice with an evidence key and a bank that knows the bridge
# photo, an origin serving it.
guarded, origin, evidence_key = media_hold.guarded, media_hold.origin, media_hold.evidence_key

TOKEN = "release-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SLUICE = str(Path(sys.executable).parent / "sluice")


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", TOKEN)


async def send(sluice: Running, actor: Actor, activity: dict[str, Any]) -> dict[str, str]:
    """POST ``activity`` signed by ``actor``; the headers as sent."""
    body = json.dumps(activity).encode()
    headers = actor.sign("https://social.example/inbox", body)
    async with sluice.session.post(
        URL(sluice.url + "/inbox", encoded=True), data=body, headers=headers
    ) as response:
        assert response.status == 202, await response.text()
    return headers


async def quarantined(
    sluice: Running, fediverse: Fediverse, origin: Origin
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """An activity with a picture the bank knows, quarantined: (activity, headers, row)."""
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("bridge-edit.jpg"))
    headers = await send(sluice, alice, activity)
    record = await media_hold._settled(sluice, activity["id"])
    assert record["state"] == "quarantined"
    return activity, headers, record


async def release(sluice: Running, row: Any, payload: Any) -> tuple[int, Any]:
    url = f"{sluice.admin_url}/_sluice/api/quarantine/{row}/release"
    kwargs: dict[str, Any] = {"data": payload} if isinstance(payload, bytes) else {"json": payload}
    async with sluice.session.post(url, headers=AUTH, **kwargs) as response:
        return response.status, await response.json()


async def finished(sluice: Running, row: int) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        record = await sluice.parts.store.get(row)
        return record if record and record["state"] in ("delivered", "refused") else None

    return await wait_for(done, timeout=15)


def evidence_store(sluice: Running, key: Path) -> EvidenceStore:
    directory = sluice.parts.config.storage.data_dir / "evidence"
    return EvidenceStore(sluice.parts.pool, directory, EvidenceKey.load(key))


async def test_a_released_false_positive_reaches_the_instance_as_sent(
    guarded: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,
    evidence_key: Path,
) -> None:
    activity, sent, record = await quarantined(guarded, fediverse, origin)
    row, evidence_id = record["id"], record["evidence_id"]
    await asyncio.sleep(0.2)
    assert upstream.requests == []

    status, answer = await release(
        guarded, row, {"moderator": "mod-carol", "reason": "a bridge, not abuse"}
    )
    assert (status, answer) == (200, {"row": row, "state": "queued"})
    record = await finished(guarded, row)
    assert record["state"] == "delivered", record

    # The instance gets the exact bytes and the sender's signature over them.
    [received] = upstream.inbox_posts()
    assert received.body == json.dumps(activity).encode()
    for name in ("Signature", "Date", "Digest", "Content-Type"):
        assert received.headers[name] == sent[name], name

    # Who and why are on the row's record, which still points at its evidence.
    verdict = record["verdict"]
    assert verdict["moderator"] == "mod-carol"
    assert verdict["moderator_action"] == "release"
    assert verdict["moderator_reason"] == "a bridge, not abuse"
    assert verdict["rule"] == "rule[0] category:test -> quarantine"  # why it was held
    assert record["evidence_id"] == evidence_id

    # The evidence stays, whole, and its audit log names the moderator and the reason.
    store = evidence_store(guarded, evidence_key)
    assert [e["id"] for e in await store.list()] == [evidence_id]
    kept, media = await store.read(evidence_id, who="test", why="checking it stayed")
    assert media == [BRIDGE_EDIT]
    assert kept.facts["activity"]["id"] == activity["id"]
    first, *_ = await store.audit(evidence_id)
    assert (first["who"], first["why"], first["outcome"]) == (
        "mod-carol",
        "a bridge, not abuse",
        "ok",
    )
    assert first["what"] == f"release activity row {row}"

    # Once out of quarantine, it cannot be released again.
    status, answer = await release(guarded, row, {"moderator": "mod-carol", "reason": "again"})
    assert status == 409
    assert "not quarantined" in answer["error"]


async def test_an_expired_signature_ends_refused_and_recorded(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, origin: Origin
) -> None:
    _, _, record = await quarantined(guarded, fediverse, origin)
    upstream.status = 401  # the signature's date is too old by now
    status, _ = await release(guarded, record["id"], {"moderator": "mod", "reason": "benign"})
    assert status == 200
    record = await finished(guarded, record["id"])
    assert (record["state"], record["last_status"]) == ("refused", 401)
    assert record["verdict"]["moderator_reason"] == "benign"
    assert upstream.refused == 1  # tried once, not retried


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        {},
        {"moderator": "mod"},
        {"reason": "benign"},
        {"moderator": " ", "reason": "benign"},
        {"moderator": "mod", "reason": ""},
        {"moderator": "mod", "reason": 7},
        ["mod", "benign"],
    ],
)
async def test_a_release_needs_a_moderator_and_a_reason(
    guarded: Running, fediverse: Fediverse, upstream: Upstream, origin: Origin, payload: Any
) -> None:
    _, _, record = await quarantined(guarded, fediverse, origin)
    status, answer = await release(guarded, record["id"], payload)
    assert status == 400
    assert "moderator" in answer["error"] and "reason" in answer["error"]
    assert (await guarded.parts.store.get(record["id"]))["state"] == "quarantined"


async def test_only_a_quarantined_row_is_released(
    guarded: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    payload = {"moderator": "mod", "reason": "benign"}
    assert (await release(guarded, 999999, payload))[0] == 404
    alice = fediverse.actor("alice")
    activity = alice.activity()
    await send(guarded, alice, activity)
    record = await media_hold._settled(guarded, activity["id"])
    assert record["state"] == "delivered"
    status, answer = await release(guarded, record["id"], payload)
    assert status == 409
    assert "delivered" in answer["error"]
    url = f"{guarded.admin_url}/_sluice/api/quarantine/{record['id']}/release"
    async with guarded.session.post(url, json=payload) as response:
        assert response.status == 401  # the admin API's token, as everywhere


async def test_the_cli_releases_on_the_record(
    guarded: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,
    evidence_key: Path,
) -> None:
    activity, _, record = await quarantined(guarded, fediverse, origin)
    command = [SLUICE, "quarantine", "release", str(record["id"])]
    command += ["--who", "mod-dan", "--why", "checked by hand"]
    command += ["--config", str(guarded.parts.config.source)]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"row": record["id"], "state": "queued"}
    record = await finished(guarded, record["id"])  # the running Sluice's poller delivers
    assert record["state"] == "delivered"
    assert upstream.ids() == [activity["id"]]
    [entry] = await evidence_store(guarded, evidence_key).audit(record["evidence_id"])
    assert (entry["who"], entry["why"]) == ("mod-dan", "checked by hand")

    again = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1
    assert "not quarantined" in again.stderr
