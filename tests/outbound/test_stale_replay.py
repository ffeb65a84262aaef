"""One of the instance's own deliveries, dead-lettered and replayed by the admin after
its signature went stale (issue 13, point 7): it carries its author's RsaSignature2017,
so it goes to the remote inbox re-signed by Sluice's actor, the same bytes; one
without it goes as it came (a remote cannot be asked to fetch), the remote judges."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from relay.network import NetworkPolicy, client_session, fetch_json_document
from relay.signature import KeyCache, sign_ld, verify_object, verify_request
from tests.conftest import Fediverse, Running, wait_for
from tests.outbound.test_deliveries import INBOX, Remote, Start, deliver, signed

# The outbound deliveries' fixtures, shared (a redundant alias re-exports them).
from tests.outbound.test_deliveries import remote as remote
from tests.outbound.test_deliveries import start as start

LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)
ADMIN = "admin-api-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _sluice(tmp_path: Path, start: Start) -> tuple[Running, str]:
    port = free_port()
    (tmp_path / "admin.token").write_text(ADMIN)
    sluice = await start(
        port=port,
        actor={"base_url": f"http://127.0.0.1:{port}"},
        receipts={"jurisdictions": ["EU"]},
        admin={"listen": "127.0.0.1:0", "token_file": str(tmp_path / "admin.token")},
    )
    return sluice, f"http://127.0.0.1:{port}"


async def _record(sluice: Running, body: bytes, state: str) -> Any:
    record = await sluice.parts.store.get(json.loads(body)["id"])
    return record if record is not None and record["state"] == state else None


async def _replay_all(sluice: Running) -> int:
    url = f"{sluice.admin_url}/_sluice/api/dead-letters/replay"
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with sluice.session.post(url, json={"all": True}, headers=headers) as response:
        assert response.status == 200, await response.text()
        return int((await response.json())["replayed"])


async def test_a_replayed_dead_letter_with_its_authors_signature_goes_resigned(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    sluice, base = await _sluice(tmp_path, start)
    alice = fediverse.actor("alice")
    document = sign_ld(alice.activity(), alice.key, alice.key_id)
    # Signed 58 minutes ago, an hour's lifetime: the remote is down until it runs out.
    remote.always = 503
    headers, body = signed(alice, remote, document, now=time.time() - 3598)
    status, _ = await deliver(sluice, tmp_path, remote.inbox, headers, body)
    assert status.startswith(b"HTTP/1.1 202")
    dead = await wait_for(lambda: _record(sluice, body, "dead"), timeout=15)
    assert dead["last_status"] == 503

    remote.always = 202
    tried = len(remote.seen)
    assert await _replay_all(sluice) == 1
    await wait_for(lambda: _record(sluice, body, "delivered"), timeout=15)
    [arrived] = remote.seen[tried:]
    assert arrived["target"] == INBOX
    assert arrived["body"] == body
    assert arrived["headers"]["Signature"] != headers["Signature"]
    async with client_session(LOOPBACK) as session:

        async def fetch(url: str) -> Any:
            return await fetch_json_document(session, LOOPBACK, url)

        keys = KeyCache(fetch)
        verified = await verify_request(
            "POST", INBOX, arrived["headers"], arrived["body"], keys, max_age=3900
        )
        assert verified.signer == f"{base}/actor"
        # What Mastodon then checks: the body's own signature, for its actor.
        assert (
            await verify_object(json.loads(arrived["body"]), alice.id, keys) == "RsaSignature2017"
        )


async def test_a_replayed_dead_letter_without_it_goes_as_sent_and_the_remote_judges(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    """Signed two hours ago, nothing to re-sign, and a remote cannot be asked to fetch:
    it goes with its own headers, though Sluice has an actor, and the remote's refusal
    of the stale signature is final."""
    sluice, _ = await _sluice(tmp_path, start)
    alice = fediverse.actor("alice")
    remote.always = 503
    headers, body = signed(alice, remote, alice.activity(), now=time.time() - 7200)
    status, _ = await deliver(sluice, tmp_path, remote.inbox, headers, body)
    assert status.startswith(b"HTTP/1.1 202")
    dead = await wait_for(lambda: _record(sluice, body, "dead"), timeout=15)
    assert dead["last_status"] == 503

    remote.always = 401  # what Mastodon answers a two-hour-old signature
    tried = len(remote.seen)
    assert await _replay_all(sluice) == 1
    refused = await wait_for(lambda: _record(sluice, body, "refused"), timeout=15)
    assert refused["last_status"] == 401
    for arrived in remote.seen:
        assert arrived["body"] == body
        assert arrived["headers"]["Signature"] == headers["Signature"]
    assert len(remote.seen) == tried + 1
