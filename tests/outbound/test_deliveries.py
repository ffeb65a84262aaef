"""The instance's deliveries through the outbound door: answered 202, held and checked
like inbound activities, sent on unchanged with retries inside the signature's
lifetime, dead-lettered past it; known material never reaches the remote inbox."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.banks import BankStore
from relay.evidence import EvidenceKey
from relay.media.hashes import hash_media
from relay.outbound.ca import CertificateAuthority, create_ca
from relay.signature import PublicKey, verify_request
from tests.conftest import Actor, Fediverse, Running, start_server, wait_for
from tests.outbound.support import connect, read_response, trusting
from tests.signature_support import Keys

PDQ = Path(__file__).resolve().parent.parent / "fixtures" / "pdq"
BRIDGE = (PDQ / "bridge-mods" / "aaa-orig.jpg").read_bytes()
INBOX = "/users/bob/inbox"
OTHER_INBOX = "/users/carol/inbox"


@dataclass
class Remote:
    """A remote server's inbox over TLS: what arrived, and the answers to give in turn."""

    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    always: int = 202

    @property
    def inbox(self) -> str:
        return f"https://localhost:{self.port}{INBOX}"

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            {
                "method": request.method,
                "target": request.raw_path,
                "headers": request.headers.copy(),
                "body": await request.read(),
            }
        )
        status = self.answers.pop(0) if self.answers else self.always
        return web.Response(status=status, text="remote says hello")


@pytest.fixture
async def remote(public_ca: CertificateAuthority) -> AsyncIterator[Remote]:
    """Set up before Sluice (a test's earlier argument), so Sluice stops first."""
    inbox = Remote()
    app = web.Application()
    app.router.add_post(INBOX, inbox.handle)
    app.router.add_post(OTHER_INBOX, inbox.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=public_ca.context("localhost"))
    await site.start()
    inbox.port = runner.addresses[0][1]
    yield inbox
    await runner.cleanup()


@pytest.fixture
async def files() -> AsyncIterator[TestServer]:
    """The instance's own media files (plain HTTP on loopback)."""

    async def bridge(request: web.Request) -> web.Response:
        return web.Response(body=BRIDGE, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/media/bridge.jpg", bridge)
    server = await start_server(app)
    yield server
    await server.close()


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
def start(
    tmp_path: Path,
    public_ca: CertificateAuthority,
    sluice_factory: Callable[..., Awaitable[Running]],
) -> Start:
    """A Sluice with the outbound door, whose bank lists the bridge photo (category test,
    quarantined)."""

    async def run(**sections: Any) -> Running:
        create_ca(tmp_path / "data")  # `sluice ca init`
        EvidenceKey.generate(tmp_path / "evidence.key")
        outbound = {"listen": "127.0.0.1:0", "trust_file": str(public_ca.cert_path)}
        sluice = await sluice_factory(
            outbound={**outbound, **sections.pop("outbound", {})},
            evidence={"key_file": str(tmp_path / "evidence.key")},
            bank=[{"name": "test-known", "category": "test"}],
            rule=[{"match": "category:test", "action": "quarantine"}],
            **sections,
        )
        store = BankStore(sluice.parts.pool)
        await store.ensure("test-known", category="test")
        hashes = hash_media(BRIDGE)
        await store.add(
            "test-known",
            [("pdq", hashes.pdq[0].hash, "bridge photo"), ("md5", hashes.md5, "bridge photo")],
        )
        await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)
        return sluice

    return run


async def deliver(
    sluice: Running, tmp_path: Path, url: str, headers: dict[str, str], body: bytes
) -> tuple[bytes, bytes]:
    """POST through the proxy as the instance does (CONNECT, then TLS trusting Sluice's
    CA); the status line and body of the answer."""
    assert sluice.parts.outbound_url is not None
    proxy_port = int(sluice.parts.outbound_url.rsplit(":", 1)[1])
    authority = url.split("/")[2]
    reader, writer, head = await connect(proxy_port, authority)
    assert head.startswith(b"HTTP/1.1 200")
    ca = CertificateAuthority.load(tmp_path / "data")
    await writer.start_tls(trusting(ca), server_hostname="localhost")
    path = "/" + url.split("/", 3)[3]
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    status, _, answer = await read_response(reader)
    writer.close()
    await writer.wait_closed()
    return status, answer


def signed(actor: Actor, remote: Remote, document: dict[str, Any], **kw: Any) -> tuple[Any, ...]:
    body = json.dumps(document).encode()
    return actor.sign(remote.inbox, body, **kw), body


async def test_a_clean_delivery_arrives_unchanged_and_still_verifies(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    sluice = await start()
    alice = fediverse.actor("alice")
    headers, body = signed(alice, remote, alice.activity())
    status, _ = await deliver(sluice, tmp_path, remote.inbox, headers, body)
    assert status.startswith(b"HTTP/1.1 202")
    await wait_for(lambda: remote.seen, timeout=10)
    arrived = remote.seen[0]
    assert arrived["method"] == "POST"
    assert arrived["target"] == INBOX
    assert arrived["body"] == body
    for name, value in headers.items():
        assert arrived["headers"][name] == value
    keys = Keys(PublicKey(id=alice.key_id, owner=alice.id, key=alice.key.public_key()))
    verified = await verify_request("POST", INBOX, arrived["headers"], arrived["body"], keys)
    assert verified.signer == alice.id
    record = await wait_for(lambda: _state(sluice, alice, body, "delivered"))
    assert record["destination"] == remote.inbox


async def test_rfc9421_signed_delivery_arrives_unchanged(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    sluice = await start()
    alice = fediverse.actor("alice")
    headers, body = signed(alice, remote, alice.activity(), scheme="rfc9421")
    status, _ = await deliver(sluice, tmp_path, remote.inbox, headers, body)
    assert status.startswith(b"HTTP/1.1 202")
    await wait_for(lambda: remote.seen, timeout=10)
    keys = Keys(PublicKey(id=alice.key_id, owner=alice.id, key=alice.key.public_key()))
    arrived = remote.seen[0]
    verified = await verify_request("POST", INBOX, arrived["headers"], arrived["body"], keys)
    assert verified.signer == alice.id
    await wait_for(lambda: _state(sluice, alice, body, "delivered"))  # held on the way


async def test_one_activity_to_two_inboxes_reaches_both(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    """Duplicates are told apart per destination: the same activity goes to many."""
    sluice = await start()
    alice = fediverse.actor("alice")
    document = alice.activity()
    other = remote.inbox.replace(INBOX, OTHER_INBOX)
    for url in (remote.inbox, other):
        body = json.dumps(document).encode()
        status, _ = await deliver(sluice, tmp_path, url, alice.sign(url, body), body)
        assert status.startswith(b"HTTP/1.1 202")
    await wait_for(lambda: len(remote.seen) == 2, timeout=10)
    assert sorted(s["target"] for s in remote.seen) == sorted([INBOX, OTHER_INBOX])


async def test_a_delivery_with_known_media_never_reaches_the_remote(
    tmp_path: Path, remote: Remote, files: TestServer, fediverse: Fediverse, start: Start
) -> None:
    sluice = await start()
    alice = fediverse.actor("alice")
    image = str(files.make_url("/media/bridge.jpg"))
    note = {
        "id": f"{alice.id}/statuses/known",
        "type": "Note",
        "attributedTo": alice.id,
        "content": "<p>a bridge</p>",
        "attachment": [{"type": "Document", "mediaType": "image/jpeg", "url": image}],
    }
    headers, body = signed(alice, remote, alice.activity(obj=note))
    status, _ = await deliver(sluice, tmp_path, remote.inbox, headers, body)
    assert status.startswith(b"HTTP/1.1 202")  # the instance is not told
    record = await wait_for(lambda: _state(sluice, alice, body, "quarantined"), timeout=15)
    assert record["evidence_id"] is not None
    await asyncio.sleep(0.5)  # a delivery, were one coming, would be on its way by now
    assert remote.seen == []


async def test_a_remote_answering_503_gets_it_on_retry(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    remote.answers = [503]
    sluice = await start()
    alice = fediverse.actor("alice")
    headers, body = signed(alice, remote, alice.activity())
    status, _ = await deliver(sluice, tmp_path, remote.inbox, headers, body)
    assert status.startswith(b"HTTP/1.1 202")
    record = await wait_for(lambda: _state(sluice, alice, body, "delivered"), timeout=15)
    assert record["attempts"] == 2
    assert [s["body"] for s in remote.seen] == [body, body]
    assert remote.seen[1]["headers"]["Signature"] == headers["Signature"]


async def test_past_the_signatures_lifetime_it_is_dead_lettered(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    """Signed 58 minutes ago with an hour's lifetime: retries stop within two minutes,
    not after [delivery] max_age (two days)."""
    remote.always = 503
    sluice = await start()
    alice = fediverse.actor("alice")
    headers, body = signed(alice, remote, alice.activity(), now=time.time() - 3598)
    status, _ = await deliver(sluice, tmp_path, remote.inbox, headers, body)
    assert status.startswith(b"HTTP/1.1 202")
    await wait_for(lambda: _state(sluice, alice, body, "dead"), timeout=15)
    dead = await sluice.parts.store.dead_letters()
    assert [d["destination"] for d in dead] == [remote.inbox]
    assert dead[0]["last_status"] == 503
    assert remote.seen  # it was tried


async def test_a_malformed_delivery_is_refused_as_a_remote_would(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    sluice = await start()
    alice = fediverse.actor("alice")
    body = b'{"type": "Create"'
    headers = alice.sign(remote.inbox, body)
    status, answer = await deliver(sluice, tmp_path, remote.inbox, headers, body)
    assert status.startswith(b"HTTP/1.1 400")
    assert answer
    await asyncio.sleep(0.3)
    assert remote.seen == []


async def test_a_delivery_expecting_100_continue_gets_it_and_expect_stays_here(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    sluice = await start()
    alice = fediverse.actor("alice")
    headers, body = signed(alice, remote, alice.activity())
    assert sluice.parts.outbound_url is not None
    proxy_port = int(sluice.parts.outbound_url.rsplit(":", 1)[1])
    reader, writer, _ = await connect(proxy_port, f"localhost:{remote.port}")
    await writer.start_tls(
        trusting(CertificateAuthority.load(tmp_path / "data")), server_hostname="localhost"
    )
    lines = [f"POST {INBOX} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    lines += [f"Content-Length: {len(body)}", "Expect: 100-continue"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(body)
    status, _, _ = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 202")
    writer.close()
    await writer.wait_closed()
    await wait_for(lambda: remote.seen, timeout=10)
    assert remote.seen[0]["body"] == body
    assert "Expect" not in remote.seen[0]["headers"]


async def _state(sluice: Running, actor: Actor, body: bytes, state: str) -> Any:
    record = await sluice.parts.store.get(json.loads(body)["id"])
    return record if record is not None and record["state"] == state else None


async def test_the_instances_delete_cancels_its_own_create_still_held(
    tmp_path: Path, remote: Remote, fediverse: Fediverse, start: Start
) -> None:
    """The instance vouches for its own deliveries (only it reaches the proxy), so a
    Delete it sends cancels the Create of the same object still held for the same inbox:
    the remote never gets a post its author already took back."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()  # the Create's media is still being fetched
        return web.Response(body=BRIDGE, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/media/slow.jpg", slow)
    media = await start_server(app)
    try:
        sluice = await start(hold={"max_seconds": 30})
        alice = fediverse.actor("alice")
        create = alice.activity()
        create["object"]["attachment"] = [
            {
                "type": "Document",
                "mediaType": "image/jpeg",
                "url": str(media.make_url("/media/slow.jpg")),
            }
        ]
        headers, body = signed(alice, remote, create)
        assert (await deliver(sluice, tmp_path, remote.inbox, headers, body))[0].startswith(
            b"HTTP/1.1 202"
        )
        await wait_for(lambda: _state(sluice, alice, body, "received"), timeout=10)
        delete = alice.activity("Delete", obj=create["object"]["id"])
        headers, deleted = signed(alice, remote, delete)
        assert (await deliver(sluice, tmp_path, remote.inbox, headers, deleted))[0].startswith(
            b"HTTP/1.1 202"
        )
        cancelled = await wait_for(lambda: _state(sluice, alice, body, "cancelled"), timeout=10)
        assert cancelled["signer"] == alice.id
        release.set()
        await wait_for(lambda: _state(sluice, alice, deleted, "delivered"), timeout=10)
        assert [json.loads(s["body"])["type"] for s in remote.seen] == ["Delete"]
    finally:
        release.set()
        await media.close()
