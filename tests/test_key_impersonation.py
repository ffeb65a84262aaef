"""Keys over real HTTP: who may speak for an actor, and how little a sender can make us fetch.

Review findings 1 and 7, reproduced on loopback: bob's host (127.0.0.2) serves bob, files
its users uploaded and an open redirect; the attacker's host (127.0.0.3) serves what the
attacker likes; "slow" hosts (127.0.0.10 and up) answer one byte at a time. KeyCache is
driven through the verifiers (``verify_request``, ``verify_object``), and Sluice itself
through its inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.activity import Activity
from relay.errors import KeyFetchError, RateLimited, SignatureError
from relay.network import NetworkPolicy, client_session, fetch_json_document
from relay.signature import KeyCache, sign_ld, verify_object, verify_request
from tests.conftest import Actor, Fediverse, Running, Upstream, public_pem, rsa_key, wait_for

LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)
INBOX = "https://social.example/inbox"


@dataclass
class Site(Fediverse):
    """A remote host: conftest's actors, plus what else such a host serves.

    ``files``: JSON that users uploaded, by path. ``/redirect?to=URL``: an open redirect.
    ``signed_only``: actors answering 401 to unsigned fetches (GoToSocial). ``stubs``:
    GoToSocial's ``…/main-key`` stubs of those actors. ``/slow/…``: one byte at a time.
    """

    files: dict[str, Any] = field(default_factory=dict)
    signed_only: set[str] = field(default_factory=set)
    forbidden: set[str] = field(default_factory=set)  # a firewall's 403 to bots
    stubs: dict[str, Actor] = field(default_factory=dict)
    dripping: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/slow/"):
            return await self._drip(request)
        if path == "/redirect":
            self.fetches.append(f"{self.base}{request.path_qs}")
            raise web.HTTPFound(request.query["to"])
        url = f"{self.base}{path}"
        if path in self.files:
            self.fetches.append(url)
            return web.json_response(self.files[path])
        if url in self.stubs:
            self.fetches.append(url)
            return web.json_response(gotosocial_stub(self.stubs[url]))
        if url in self.signed_only:
            self.fetches.append(url)
            return web.Response(status=401, text="signature required")
        if url in self.forbidden:
            self.fetches.append(url)
            return web.Response(status=403, text="are you a robot?")
        return await super().handle(request)

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        self.fetches.append(f"{self.base}{request.path}")
        response = web.StreamResponse(headers={"Content-Type": "application/activity+json"})
        await response.prepare(request)
        self.dripping += 1
        try:
            while not self.closing.is_set():
                await response.write(b" ")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), 0.5)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the fetcher gave up
        finally:
            self.dripping -= 1
        return response


@dataclass
class GoToSocialActor(Actor):
    """GoToSocial's key id is a path below the actor, not a fragment."""

    @property
    def key_id(self) -> str:
        return f"{self.id}/main-key"


@dataclass
class Forger(Actor):
    """Signs in someone's name with its own key, naming whatever key id it likes."""

    forged_key_id: str = ""

    @property
    def key_id(self) -> str:
        return self.forged_key_id


def gotosocial_stub(actor: Actor) -> dict[str, Any]:
    """What GoToSocial serves, unsigned, at an actor's …/main-key."""
    full = actor.document()
    return {
        "@context": full["@context"],
        "id": actor.id,
        "type": "Person",
        "preferredUsername": full["preferredUsername"],
        "publicKey": full["publicKey"],
    }


async def start_site(host: str) -> Site:
    site = Site()
    app = web.Application()
    app.router.add_get("/{tail:.*}", site.handle)
    site.server = TestServer(app, host=host)
    await site.server.start_server()
    return site


async def stop_site(site: Site) -> None:
    site.closing.set()
    assert site.server is not None
    await site.server.close()


@pytest.fixture
async def sites() -> AsyncIterator[Callable[[str], Awaitable[Site]]]:
    started: list[Site] = []

    async def start(host: str) -> Site:
        started.append(await start_site(host))
        return started[-1]

    yield start
    await asyncio.gather(*(stop_site(site) for site in started))


@pytest.fixture
async def victim(sites: Callable[[str], Awaitable[Site]]) -> Site:
    """Bob's host."""
    return await sites("127.0.0.2")


@pytest.fixture
async def attacker(sites: Callable[[str], Awaitable[Site]]) -> Site:
    return await sites("127.0.0.3")


@pytest.fixture
async def keys() -> AsyncIterator[KeyCache]:
    """A KeyCache fetching the way Sluice's does, over a real session."""
    session = client_session(LOOPBACK)

    async def fetch(url: str) -> Any:
        return await fetch_json_document(session, LOOPBACK, url)

    yield KeyCache(fetch)
    await session.close()


def forger(name_of: Actor, key_id: str) -> Forger:
    """Someone signing as `name_of` with another key (rsa_key(1)) under `key_id`."""
    return Forger(name_of.id, rsa_key(1), name_of.fediverse, forged_key_id=key_id)


def uploaded_key(site: Site, owner: Actor) -> str:
    """A user's upload on `site`: a key document naming `owner`, with the forger's key."""
    path = "/files/upload-123.json"
    key_id = f"{site.base}{path}"
    site.files[path] = {"id": key_id, "owner": owner.id, "publicKeyPem": public_pem(rsa_key(1))}
    return key_id


def redirected_key(victim: Site, attacker: Site, owner: Actor) -> str:
    """An open redirect on bob's host to a key document on the attacker's host."""
    key_id = f"{victim.base}/redirect?to={attacker.base}/k.json"
    attacker.files["/k.json"] = {
        "id": key_id,
        "owner": owner.id,
        "publicKeyPem": public_pem(rsa_key(1)),
    }
    return key_id


async def verify(actor: Actor, keys: Any, activity: dict[str, Any] | None = None) -> str:
    """Verify `actor`'s signed delivery the way the door does; the signer."""
    body = json.dumps(activity or actor.activity()).encode()
    headers = actor.sign(INBOX, body)
    return (await verify_request("POST", "/inbox", headers, body, keys)).signer


# --- who may speak for bob ----------------------------------------------------------------------


async def test_a_genuine_actor_verifies(victim: Site, keys: KeyCache) -> None:
    bob = victim.actor("bob")
    assert await verify(bob, keys) == bob.id
    assert victim.fetches == [bob.id]


async def test_an_uploaded_key_document_does_not_verify_as_its_hosts_actor(
    victim: Site, keys: KeyCache
) -> None:
    bob = victim.actor("bob")
    key_id = uploaded_key(victim, bob)
    with pytest.raises(KeyFetchError, match=r"is not confirmed by its owner .*bob"):
        await verify(forger(bob, key_id), keys)
    # bob himself is unaffected.
    assert await verify(bob, keys) == bob.id


async def test_an_uploaded_actor_lookalike_does_not_verify(victim: Site, keys: KeyCache) -> None:
    bob = victim.actor("bob")
    lookalike = bob.document()
    key_id = f"{victim.base}/files/me.json"
    lookalike["publicKey"] = {"id": key_id, "owner": bob.id, "publicKeyPem": public_pem(rsa_key(1))}
    victim.files["/files/me.json"] = lookalike
    with pytest.raises(KeyFetchError, match=r"the owner does not list it"):
        await verify(forger(bob, key_id), keys)


async def test_an_open_redirect_to_another_host_does_not_verify(
    victim: Site, attacker: Site, keys: KeyCache
) -> None:
    bob = victim.actor("bob")
    key_id = redirected_key(victim, attacker, bob)
    with pytest.raises(KeyFetchError, match=r"was served from another origin"):
        await verify(forger(bob, key_id), keys)
    assert attacker.fetches == [f"{attacker.base}/k.json"]  # followed, then refused


async def test_an_open_redirect_to_an_upload_on_the_same_host_does_not_verify(
    victim: Site, keys: KeyCache
) -> None:
    bob = victim.actor("bob")
    key_id = f"{victim.base}/redirect?to=/files/me.json"
    victim.files["/files/me.json"] = {
        "id": bob.id,
        "type": "Person",
        "publicKey": {"id": key_id, "owner": bob.id, "publicKeyPem": public_pem(rsa_key(1))},
    }
    with pytest.raises(KeyFetchError, match=r"the owner does not list it"):
        await verify(forger(bob, key_id), keys)


@pytest.mark.parametrize("actor_answers", ["401", "full actor"])
async def test_gotosocial_keys_verify(victim: Site, keys: KeyCache, actor_answers: str) -> None:
    """GoToSocial serves a stub at …/main-key and the actor only to signed fetches."""
    carol = GoToSocialActor(f"{victim.base}/users/carol", rsa_key(0), victim)
    victim.stubs[carol.key_id] = carol
    if actor_answers == "401":
        victim.signed_only.add(carol.id)
    else:
        victim.actors[carol.id] = carol
    assert await verify(carol, keys) == carol.id
    assert victim.fetches == [carol.key_id, carol.id]


async def test_a_stub_elsewhere_does_not_pass_for_gotosocials(victim: Site, keys: KeyCache) -> None:
    carol = GoToSocialActor(f"{victim.base}/users/carol", rsa_key(0), victim)
    victim.signed_only.add(carol.id)
    key_id = f"{victim.base}/files/stub.json"
    fake = forger(carol, key_id)
    victim.files["/files/stub.json"] = gotosocial_stub(fake)
    with pytest.raises(KeyFetchError, match=r"could not be fetched \(HTTP 401\)"):
        await verify(fake, keys)


async def test_a_firewalls_403_does_not_pass_for_gotosocials_401(
    victim: Site, keys: KeyCache
) -> None:
    """A stub-shaped document below an actor that a firewall hides is not believed."""
    carol = GoToSocialActor(f"{victim.base}/users/carol", rsa_key(0), victim)
    victim.stubs[carol.key_id] = carol
    victim.forbidden.add(carol.id)
    with pytest.raises(KeyFetchError, match=r"HTTP 403"):
        await verify(carol, keys)


async def test_rsasignature2017_by_an_uploaded_key_is_refused(victim: Site, keys: KeyCache) -> None:
    """Relayed activities: the LD signature resolves its creator through the same cache."""
    bob = victim.actor("bob")
    activity = {
        **bob.activity(),
        "@context": ["https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"],
    }
    assert await verify_object(sign_ld(activity, bob.key, bob.key_id), bob.id, keys)
    forged = sign_ld(activity, rsa_key(1), uploaded_key(victim, bob))
    with pytest.raises(SignatureError, match=r"is not confirmed by its owner"):
        await verify_object(forged, bob.id, keys)


# --- fetching sparingly -------------------------------------------------------------------------


async def test_a_sender_waits_on_few_unknown_keys_and_slow_hosts_time_out(
    sites: Callable[[str], Awaitable[Site]], fediverse: Fediverse
) -> None:
    slow = [await sites(f"127.0.0.{n}") for n in (10, 11, 12, 13)]
    session = client_session(LOOPBACK)

    async def fetch(url: str) -> Any:
        return await fetch_json_document(session, LOOPBACK, url)

    cache = KeyCache(fetch, timeout=1, per_client=8)
    try:
        pushy = cache.for_client("192.0.2.66")
        # Spread over the hosts so that no fetch waits for a per-host turn.
        key_ids = [f"{site.base}/slow/{n}#main-key" for n in range(5) for site in slow]
        pending = [asyncio.ensure_future(pushy.resolve(key_id)) for key_id in key_ids]
        outcomes = await asyncio.wait_for(
            asyncio.gather(*pending, return_exceptions=True), timeout=20
        )
        refused = [o for o in outcomes if "too many unknown keys" in str(o)]
        timed_out = [o for o in outcomes if "no answer within 1 s" in str(o)]
        assert (len(refused), len(timed_out)) == (12, 8)
        assert all(isinstance(o, RateLimited) for o in refused)
        assert all(isinstance(o, KeyFetchError) and not o.gone for o in timed_out)
        # A new sender elsewhere is answered meanwhile, and the slow keys are remembered.
        alice = fediverse.actor("alice")
        assert await verify(alice, cache.for_client("192.0.2.7")) == alice.id
        fetched = sum(len(site.fetches) for site in slow)
        for key_id in key_ids[:4]:
            with pytest.raises(KeyFetchError, match="no answer within"):
                await pushy.resolve(key_id)
        assert sum(len(site.fetches) for site in slow) == fetched
    finally:
        await session.close()


# --- through Sluice's inbox ---------------------------------------------------------------------


class Gate:
    """Holds chosen activities in the hold until the test opens it."""

    name = "gate"

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.opened = asyncio.Event()

    def applies(self, activity: Activity) -> bool:
        return activity.id in self.held

    async def run(self, activity: Activity) -> list[Any]:
        await self.opened.wait()
        return []


async def test_a_forged_delete_does_not_cancel_bobs_held_create(
    sluice_factory: Any, victim: Site, attacker: Site, upstream: Upstream
) -> None:
    """The review's reproduction of finding 1, end to end."""
    gate = Gate()
    sluice: Running = await sluice_factory(checks=(gate,))
    bob = victim.actor("bob")
    create = bob.activity()
    gate.held.add(create["id"])
    assert (await sluice.post(bob, create))[0] == 202
    note = create["object"]["id"]
    delete = bob.activity("Delete", obj={"id": note, "type": "Tombstone"})
    status, text = await sluice.post(forger(bob, uploaded_key(victim, bob)), delete)
    assert status == 401, text
    assert "not confirmed by its owner" in text
    impostor = bob.activity()
    status, text = await sluice.post(forger(bob, redirected_key(victim, attacker, bob)), impostor)
    assert status == 401, text
    assert await sluice.parts.store.get(delete["id"]) is None
    assert await sluice.parts.store.get(impostor["id"]) is None
    gate.opened.set()
    await wait_for(upstream.inbox_posts)
    assert upstream.ids() == [create["id"]]
    record = await sluice.parts.store.get(create["id"])
    assert record is not None and record["signer"] == bob.id


async def test_a_gotosocial_sender_is_delivered(
    sluice_factory: Any, victim: Site, upstream: Upstream
) -> None:
    sluice: Running = await sluice_factory()
    carol = GoToSocialActor(f"{victim.base}/users/carol", rsa_key(0), victim)
    victim.stubs[carol.key_id] = carol
    victim.signed_only.add(carol.id)
    activity = carol.activity()
    assert (await sluice.post(carol, activity))[0] == 202
    await wait_for(upstream.inbox_posts)
    assert upstream.ids() == [activity["id"]]


async def test_an_unknown_key_is_fetched_once_for_many_requests(
    sluice_factory: Any, victim: Site
) -> None:
    sluice: Running = await sluice_factory()
    ghost = victim.actor("ghost")
    del victim.actors[ghost.id]  # answers 404
    for _ in range(10):
        status, text = await sluice.post(ghost, ghost.activity())
        assert status == 401, text
    # A deleted actor's Delete is still recognised, from the cache.
    for _ in range(3):
        assert (await sluice.post(ghost, ghost.activity("Delete", obj=ghost.id)))[0] == 202
    assert victim.fetches == [ghost.id]


async def test_bad_signatures_refetch_a_cached_key_at_most_once(
    sluice_factory: Any, victim: Site
) -> None:
    sluice: Running = await sluice_factory()
    dave = victim.actor("dave")
    assert (await sluice.post(dave, dave.activity()))[0] == 202
    impostor = forger(dave, dave.key_id)  # dave's key id, another key
    together = await asyncio.gather(*(sluice.post(impostor, dave.activity()) for _ in range(20)))
    one_by_one = [await sluice.post(impostor, dave.activity()) for _ in range(20)]
    assert {status for status, _ in together + one_by_one} == {401}
    assert victim.fetches == [dave.id, dave.id]


async def test_slow_key_hosts_do_not_stall_a_new_sender(
    sluice_factory: Any,
    sites: Callable[[str], Awaitable[Site]],
    fediverse: Fediverse,
    upstream: Upstream,
) -> None:
    """The review's 120 key ids on 30 slow hosts held the key fetch pool for 30 s."""
    sluice: Running = await sluice_factory()
    slow = await asyncio.gather(*(sites(f"127.0.0.{n}") for n in range(10, 40)))
    # The attackers' own connections, all at once: the test client's pool is not the point.
    attackers = Running(
        sluice.server, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    )
    posts = []
    for i, site in enumerate(slow):
        for n in range(4):
            sender = Forger(f"{site.base}/users/someone", rsa_key(1), site)
            sender.forged_key_id = f"{site.base}/slow/{n}"
            # From many addresses, as nginx reports them: one address alone would be held
            # to [signatures] key_fetch_per_client before reaching the hosts' limits.
            client = {"X-Real-IP": f"198.51.100.{i * 4 + n}"}
            post = attackers.post(sender, sender.activity(), headers=client)
            posts.append(asyncio.ensure_future(post))
    await wait_for(lambda: sum(site.dripping for site in slow) >= 60, timeout=30)
    alice = fediverse.actor("alice")
    activity = alice.activity()
    assert (await asyncio.wait_for(sluice.post(alice, activity), timeout=15))[0] == 202
    await wait_for(upstream.inbox_posts)
    for site in slow:
        site.closing.set()  # the slow answers end: not JSON
    outcomes = await asyncio.wait_for(asyncio.gather(*posts), timeout=60)
    await attackers.session.close()
    assert {status for status, _ in outcomes} == {401}


async def test_one_client_waits_on_few_unknown_keys_others_are_not_held_up(
    sluice_factory: Any,
    sites: Callable[[str], Awaitable[Site]],
    fediverse: Fediverse,
    upstream: Upstream,
) -> None:
    """[signatures] key_fetch_per_client: the address nginx reports, not nginx's own."""
    sluice: Running = await sluice_factory(signatures={"key_fetch_per_client": 3})
    slow = await sites("127.0.0.41")
    attackers = Running(
        sluice.server, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    )
    one_client = {"X-Real-IP": "198.51.100.7"}
    posts = []
    for n in range(6):
        sender = Forger(f"{slow.base}/users/someone", rsa_key(1), slow)
        sender.forged_key_id = f"{slow.base}/slow/{n}"
        posts.append(
            asyncio.ensure_future(attackers.post(sender, sender.activity(), headers=one_client))
        )
    # Three wait on the slow host; the other three are refused at once.
    await wait_for(lambda: sum(p.done() for p in posts) >= 3, timeout=10)
    refused = [p.result() for p in posts if p.done()]
    assert len(refused) == 3
    # 429, which senders retry: one of them may be genuine, behind the same address.
    assert all(status == 429 and "retry later" in text for status, text in refused), refused
    assert slow.dripping <= 3
    alice = fediverse.actor("alice")
    status, _ = await sluice.post(alice, alice.activity(), headers={"X-Real-IP": "203.0.113.5"})
    assert status == 202
    slow.closing.set()
    await asyncio.wait_for(asyncio.gather(*posts), timeout=30)
    await attackers.session.close()
