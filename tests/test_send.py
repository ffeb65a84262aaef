"""The send effect (issue 13, point 5): an activity POSTed to a peer's inbox, signed by
Sluice's actor, through the outbox (retried, dead-lettered), refused by the [network]
rules, and held back by a host's circuit; fan_out enqueues one send per inbox, once.
Against real loopback inboxes that verify each signature, and real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.effects import EffectFailed
from relay.effects.send import KIND, Breaker, Deferred, Send, fan_out, sends
from relay.errors import SignatureError
from relay.network import NetworkPolicy, client_session
from relay.outbox import Outbox
from relay.signature import PublicKey, sign_cavage, verify_request
from tests.conftest import Received, rsa_key, start_server, wait_for

LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)
ACTOR = "https://sluice.test/actor"
KEY_ID = f"{ACTOR}#main-key"
RECEIPT = {
    "@context": "https://www.w3.org/ns/activitystreams",
    "id": "https://sluice.test/receipts/1",
    "type": "ModerationReceipt",
    "actor": ACTOR,
}


def signer(
    method: str, url: str, headers: Mapping[str, str] | None, body: bytes | None
) -> dict[str, str]:
    """Signs as Sluice's actor would (relay.actor.Actor.sign_request)."""
    return sign_cavage(method, url, body or b"", rsa_key(0), KEY_ID, headers=headers)


class OurKey:
    """The only key the inboxes believe: Sluice's."""

    async def resolve(self, key_id: str, *, refresh: bool = False) -> PublicKey:
        if key_id != KEY_ID:
            raise SignatureError(f"unknown key {key_id}")
        return PublicKey(KEY_ID, ACTOR, rsa_key(0).public_key())


class Inboxes:
    """Inboxes at /inbox/NAME: each request's signature is verified on arrival; answers
    ``status[NAME]`` (default 202), or hangs for names in ``hang``."""

    def __init__(self) -> None:
        self.server: TestServer | None = None
        self.received: list[Received] = []
        self.signers: list[str] = []
        self.status: dict[str, int] = {}
        self.hang: set[str] = set()

    def url(self, name: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(f"/inbox/{name}"))

    def to(self, name: str) -> list[Received]:
        return [r for r in self.received if r.path == f"/inbox/{name}"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        verified = await verify_request(
            request.method, request.raw_path, request.headers, body, OurKey()
        )
        self.signers.append(verified.signer)
        self.received.append(
            Received(request.method, request.raw_path, dict(request.headers), body)
        )
        name = request.match_info["name"]
        if name in self.hang:
            await asyncio.Event().wait()
        status = self.status.get(name, 202)
        if 300 <= status < 400:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=status)


@pytest.fixture
async def inboxes() -> AsyncIterator[Inboxes]:
    found = Inboxes()
    app = web.Application()
    app.router.add_post("/inbox/{name}", found.handle)
    found.server = await start_server(app)
    yield found
    await found.server.close()


@pytest.fixture
async def fedi_session() -> AsyncIterator[aiohttp.ClientSession]:
    session = client_session(LOOPBACK)
    yield session
    await session.close()


def send(session: aiohttp.ClientSession, **options: Any) -> Send:
    return Send(session, LOOPBACK, signer, **options)


async def test_a_send_is_signed_by_our_actor_and_carries_the_activity(
    inboxes: Inboxes, fedi_session: aiohttp.ClientSession
) -> None:
    await send(fedi_session).run({"inbox": inboxes.url("a"), "activity": RECEIPT, "key": "k"})
    [got] = inboxes.to("a")
    assert got.json() == RECEIPT
    assert got.headers["Content-Type"] == "application/activity+json"
    assert got.headers["User-Agent"].startswith("Sluice/")
    assert 'keyId="https://sluice.test/actor#main-key"' in got.headers["Signature"]
    assert inboxes.signers == [ACTOR]  # the inbox verified it


@pytest.mark.parametrize(
    ("status", "permanent"), [(500, False), (503, False), (408, False), (429, False),
                              (400, True), (404, True), (410, True), (302, True)]
)  # fmt: skip
async def test_which_answers_are_retried(
    inboxes: Inboxes, fedi_session: aiohttp.ClientSession, status: int, permanent: bool
) -> None:
    inboxes.status["a"] = status
    with pytest.raises(EffectFailed) as failed:
        await send(fedi_session).run({"inbox": inboxes.url("a"), "activity": RECEIPT})
    assert failed.value.permanent is permanent
    assert f"answered {status}" in failed.value.reason
    assert len(inboxes.to("a")) == 1  # a redirect is not followed


async def test_a_timeout_and_a_closed_port_are_retried(
    inboxes: Inboxes, fedi_session: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    inboxes.hang.add("slow")
    with pytest.raises(EffectFailed) as slow:
        await send(fedi_session, timeout=0.3).run(
            {"inbox": inboxes.url("slow"), "activity": RECEIPT}
        )
    assert not slow.value.permanent and "timed out" in slow.value.reason
    with pytest.raises(EffectFailed) as closed:
        await send(fedi_session).run(
            {"inbox": f"http://127.0.0.1:{unused_tcp_port}/inbox", "activity": RECEIPT}
        )
    assert not closed.value.permanent and "unreachable" in closed.value.reason


async def test_an_inbox_the_network_rules_refuse_is_a_dead_letter_unsent(
    inboxes: Inboxes,
) -> None:
    strict = NetworkPolicy()  # https only, no loopback: a peer naming our own network
    async with client_session(strict) as session:
        for inbox in (inboxes.url("a"), inboxes.url("a").replace("http://", "https://")):
            with pytest.raises(EffectFailed) as refused:
                await Send(session, strict, signer).run({"inbox": inbox, "activity": RECEIPT})
            assert refused.value.permanent
            assert refused.value.reason.startswith("inbox refused")
    assert inboxes.received == []


async def test_a_payload_without_an_inbox_is_refused_for_good(
    fedi_session: aiohttp.ClientSession,
) -> None:
    with pytest.raises(EffectFailed) as refused:
        await send(fedi_session).run({"activity": RECEIPT})
    assert refused.value.permanent


async def test_a_failing_host_is_not_tried_during_its_cool_down(
    inboxes: Inboxes, fedi_session: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    breaker = Breaker(failures=3, cooldown=10, max_cooldown=25, clock=lambda: now[0])
    sender = send(fedi_session, breaker=breaker)
    inboxes.status["a"] = 503
    payload = {"inbox": inboxes.url("a"), "activity": RECEIPT}
    for _ in range(3):
        with pytest.raises(EffectFailed):
            await sender.run(payload)
    assert len(inboxes.received) == 3
    # Open: other inboxes on the same host wait too, and nothing is sent.
    for name in ("a", "b"):
        with pytest.raises(Deferred) as deferred:
            await sender.run({"inbox": inboxes.url(name), "activity": RECEIPT})
        assert deferred.value.retry_after == 10
        assert not deferred.value.permanent
    assert len(inboxes.received) == 3
    # After the cool-down one try; it fails, and the next cool-down is twice as long.
    now[0] += 10
    with pytest.raises(EffectFailed) as again:
        await sender.run(payload)
    assert not isinstance(again.value, Deferred)
    assert len(inboxes.received) == 4
    assert breaker.open_for(_host(inboxes)) == 20
    now[0] += 20
    with pytest.raises(EffectFailed):
        await sender.run(payload)
    assert breaker.open_for(_host(inboxes)) == 25  # capped at max_cooldown
    # A success closes it for good.
    now[0] += 25
    inboxes.status["a"] = 202
    await sender.run(payload)
    assert breaker.open_for(_host(inboxes)) == 0
    inboxes.status["a"] = 503
    with pytest.raises(EffectFailed) as once:
        await sender.run(payload)
    assert not isinstance(once.value, Deferred)
    assert breaker.open_for(_host(inboxes)) == 0  # one failure is not three


async def test_a_refusing_host_is_up_and_keeps_its_circuit_closed(
    inboxes: Inboxes, fedi_session: aiohttp.ClientSession
) -> None:
    breaker = Breaker(failures=2)
    sender = send(fedi_session, breaker=breaker)
    inboxes.status["a"] = 404
    for _ in range(4):
        with pytest.raises(EffectFailed):
            await sender.run({"inbox": inboxes.url("a"), "activity": RECEIPT})
    assert len(inboxes.received) == 4
    assert breaker.open_for(_host(inboxes)) == 0


def test_the_breaker_remembers_a_bounded_number_of_hosts() -> None:
    breaker = Breaker(failures=1, cooldown=60, max_hosts=2, clock=lambda: 0.0)
    for host in ("a:443", "b:443", "c:443"):
        breaker.failed(host)
    assert [breaker.open_for(h) for h in ("a:443", "b:443", "c:443")] == [0, 60, 60]


def test_sends_are_keyed_per_receipt_and_inbox_once_each() -> None:
    made = sends(RECEIPT, ["https://a/inbox", "https://b/inbox", "https://a/inbox"], "r:1")
    assert [(p.kind, p.key, p.payload["inbox"]) for p in made] == [
        (KIND, "r:1:send:https://a/inbox", "https://a/inbox"),
        (KIND, "r:1:send:https://b/inbox", "https://b/inbox"),
    ]
    assert all(p.payload["activity"] == RECEIPT for p in made)


async def test_fan_out_through_the_outbox_reaches_every_inbox_once(
    migrated_pool: asyncpg.Pool, inboxes: Inboxes, fedi_session: aiohttp.ClientSession
) -> None:
    outbox = Outbox(migrated_pool, backoff_initial=0.05, backoff_max=0.1, poll_interval=0.05)
    outbox.register(KIND, send(fedi_session))
    inboxes.status["gone"] = 410
    inboxes.status["flaky"] = 503
    names = ["a", "b", "c", "gone", "flaky"]
    urls = [inboxes.url(n) for n in names]
    async with migrated_pool.acquire() as conn, conn.transaction():
        assert await fan_out(outbox, RECEIPT, urls, RECEIPT["id"], conn=conn) == 5
    assert await fan_out(outbox, RECEIPT, urls, RECEIPT["id"]) == 0  # enqueued again: nothing
    await outbox.start()
    try:

        async def settled() -> bool:
            counts = await outbox.counts()
            return counts["done"] == 3 and counts["dead"] == 1 and len(inboxes.to("flaky")) >= 2

        await wait_for(settled)
        inboxes.status["flaky"] = 202
        await wait_for(lambda: _counted(outbox, done=4))
    finally:
        await outbox.stop(grace=1.0)
    assert [len(inboxes.to(n)) for n in ("a", "b", "c", "gone")] == [1, 1, 1, 1]
    assert all(r.json() == RECEIPT for r in inboxes.received)
    [dead] = await outbox.list("dead")
    assert dead["payload"]["inbox"] == inboxes.url("gone")
    assert "answered 410" in dead["last_error"]


async def _counted(outbox: Outbox, *, done: int) -> bool:
    return (await outbox.counts())["done"] == done


def _host(inboxes: Inboxes) -> str:
    assert inboxes.server is not None
    return f"127.0.0.1:{inboxes.server.port}"
