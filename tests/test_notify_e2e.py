"""The notify effect end to end: a verdict tells the admin's webhook, retried while it
answers 5xx, and delivered once across a kill -9 between the verdict and the effect
(issue 12, point 4)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from relay.banks import BankStore
from relay.media.hashes import hash_media
from tests.conftest import FAST_OUTBOX, Fediverse, Running, config_text, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import BRIDGE, Origin, with_media
from tests.test_crash import free_port, start_sluice
from tests.webhook_support import Webhook, serving

origin, evidence_key, settled = media_hold.origin, media_hold.evidence_key, media_hold._settled


async def test_a_quarantine_notifies_the_webhook_retrying_through_5xx(
    sluice_factory: Any,
    fediverse: Fediverse,
    origin: Origin,
    evidence_key: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "s3cret")
    secret = evidence_key.parent / "webhook.secret"
    secret.write_text("shared-with-the-receiver\n")
    async with serving() as hook:
        hook.script = [503, 502]
        sluice: Running = await sluice_factory(
            evidence={"key_file": str(evidence_key)},
            bank=[{"name": "test-known", "category": "test"}],
            rule=[{"match": "category:test", "action": "quarantine", "effects": ["notify"]}],
            notify={"webhooks": [hook.url], "on": [], "key_file": str(secret)},
            outbox=FAST_OUTBOX,
        )
        store = BankStore(sluice.parts.pool)
        await store.ensure("test-known", category="test")
        known = hash_media(BRIDGE)
        await store.add("test-known", [("md5", known.md5, "bridge photo")])
        await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)

        alice = fediverse.actor("alice")
        activity = with_media(alice, origin.url("bridge.jpg"))
        assert (await sluice.post(alice, activity))[0] == 202
        record = await settled(sluice, activity["id"])
        assert record["state"] == "quarantined"
        assert record["verdict"]["effects"] == ["notify"]

        await wait_for(lambda: len(hook.requests) >= 3, timeout=20)
        await asyncio.sleep(0.5)  # nothing more comes once it is delivered
        assert len(hook.requests) == 3
        keys = {r.headers["Idempotency-Key"] for r in hook.requests}
        assert len(keys) == 1
        bodies = {r.body for r in hook.requests}
        assert len(bodies) == 1
        # Signed: the receiver recomputes the HMAC of the body under the shared secret.
        [body] = bodies
        mac = hmac.new(b"shared-with-the-receiver", body, hashlib.sha256).hexdigest()
        assert {r.headers["X-Sluice-Signature-256"] for r in hook.requests} == {f"sha256={mac}"}
        message = json.loads(bodies.pop())
        assert message["disposition"] == "quarantine"
        assert message["rule"] == "rule[0] category:test -> quarantine"
        assert message["activity"]["id"] == activity["id"]
        row = message["activity"]["row"]
        assert message["links"]["activity"] == f"{sluice.admin_url}/_sluice/api/activities/{row}"
        assert message["evidence_id"] == record["evidence_id"]
        # The links lead to the admin API: the activity, and the evidence's metadata.
        auth = {"Authorization": "Bearer s3cret"}
        async with sluice.session.get(message["links"]["activity"], headers=auth) as response:
            assert (await response.json())["ap_id"] == activity["id"]
        async with sluice.session.get(message["links"]["evidence"], headers=auth) as response:
            assert response.status == 200
            sealed = await response.json()
        assert (sealed["id"], sealed["activity_row"]) == (record["evidence_id"], row)
        assert len(sealed["blobs"]) == 2  # the facts and the image, names only
        assert "summary" in sealed
        async with sluice.session.get(message["links"]["evidence"]) as response:
            assert response.status == 401  # behind the token, as the whole API
        text = json.dumps(message)
        for secret in (known.md5, known.sha256, known.pdq[0].hash):
            assert secret not in text  # never hash values, never media
        [effect] = await sluice.parts.pool.fetch(
            "SELECT state, attempts FROM effect WHERE kind = 'notify'"
        )
        assert (effect["state"], effect["attempts"]) == ("done", 3)

        # /metrics counts effects by state, for an admin to alert on dead letters.
        sluice.parts.flow.tidy_interval = 0.1

        async def counted() -> bool:
            async with sluice.session.get(sluice.admin_url + "/metrics") as response:
                text = await response.text()
            return 'sluice_effects{state="dead"} 0.0' in text and (
                'sluice_effects{state="done"} 0.0' not in text
            )

        await wait_for(counted, timeout=10)


@pytest.mark.timeout(180)
async def test_delivered_once_across_a_kill_9_between_verdict_and_effect(
    tmp_path: Path, fediverse: Fediverse
) -> None:
    """The webhook is down when the verdict is recorded; Sluice is killed before the
    effect happens; the next Sluice delivers it, once."""
    port, upstream_port, admin_port, hook_port = (free_port() for _ in range(4))
    config = tmp_path / "sluice.toml"
    config.write_text(
        config_text(
            listen=f"127.0.0.1:{port}",
            upstream_url=f"http://127.0.0.1:{upstream_port}",
            database_url="",  # the embedded PostgreSQL
            data_dir=tmp_path / "data",
            delivery={"lease_seconds": 1.0},
            admin={"listen": f"127.0.0.1:{admin_port}"},
            notify={"webhooks": [f"http://127.0.0.1:{hook_port}/hook"], "on": ["deliver"]},
            outbox={"backoff_initial_seconds": 0.5, "backoff_max_seconds": 1.0},
        )
    )
    log = tmp_path / "sluice.log"
    alice = fediverse.actor("alice")
    activity = alice.activity()
    body = json.dumps(activity).encode()
    process = await start_sluice(config, admin_port, log)
    socket_dir = tmp_path / "data" / "postgres"

    async def effect() -> asyncpg.Record | None:
        conn = await asyncpg.connect(host=str(socket_dir), user="postgres", database="postgres")
        try:
            return await conn.fetchrow(
                "SELECT state, attempts, key FROM effect WHERE kind = 'notify'"
            )
        finally:
            await conn.close()

    try:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            headers = alice.sign("https://social.example/inbox", body)
            url = f"http://127.0.0.1:{port}/inbox"
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 202
        # The verdict and its effect are committed; the webhook refused the first try.
        found = await wait_for(lambda: _attempted(effect), timeout=30, interval=0.05)
        assert found["state"] == "pending"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()

    async with serving_on(hook_port) as hook:
        process = await start_sluice(config, admin_port, log)
        try:
            await wait_for(lambda: len(hook.requests) >= 1, timeout=30)
            await asyncio.sleep(2.5)  # past a lease and a backoff: a repeat would show now
            assert len(hook.requests) == 1
            [request] = hook.requests
            assert request.headers["Idempotency-Key"] == found["key"]
            assert json.loads(request.body)["activity"]["id"] == activity["id"]
            done = await effect()
            assert done is not None and done["state"] == "done"
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)


async def _attempted(effect: Any) -> Any:
    row = await effect()
    return row if row is not None and row["attempts"] >= 1 else None


def serving_on(port: int) -> Any:
    """The loopback webhook on a port chosen before Sluice was configured."""
    import contextlib

    from aiohttp import web

    from tests.conftest import start_server

    @contextlib.asynccontextmanager
    async def run() -> Any:
        hook = Webhook()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", hook.handle)
        hook.server = await start_server(app, port=port)
        try:
            yield hook
        finally:
            await hook.server.close()

    return run()
