"""relay.network against real aiohttp servers on loopback; nothing leaves the host.

Servers listen on 127.0.0.1 and 127.0.0.2 (all of 127/8 is loopback on Linux), so a
policy allowing only one of them lets a test prove the other is refused rather
than merely unreachable: the refused server counts its hits and must see none.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from relay.errors import BlockedAddress, DecodeError, FetchError
from relay.network import (
    DEFAULT_USER_AGENT,
    Fetched,
    GuardedResolver,
    NetworkPolicy,
    client_session,
    fetch,
    fetch_json,
)

LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)
HITS = web.AppKey("hits", list[str])


class Origin:
    """A running test server: its base URL and the paths it was asked for."""

    def __init__(self, base: str, hits: list[str]) -> None:
        self.base = base
        self.hits = hits

    def url(self, path: str) -> str:
        return self.base + path


async def _doc(request: web.Request) -> web.Response:
    return web.json_response(
        {"id": str(request.url), "type": "Person"}, content_type="application/activity+json"
    )


async def _echo_headers(request: web.Request) -> web.Response:
    return web.json_response(
        {
            name: request.headers.get(name)
            for name in ("User-Agent", "Accept", "Authorization", "Signature", "X-Keep")
        }
    )


async def _redirect(request: web.Request) -> web.Response:
    status = int(request.query.get("status", "302"))
    return web.Response(status=status, headers={"Location": request.query["to"]})


async def _chain(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    if n == 0:
        return web.Response(text="end of chain")
    return web.Response(status=301, headers={"Location": f"/chain/{n - 1}"})


async def _endless(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()  # chunked, no Content-Length
    await resp.prepare(request)
    block = b"x" * 65536
    try:
        while True:
            await resp.write(block)
    except ConnectionResetError:  # the client hung up, as it should
        pass
    return resp


async def _claims_big(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.content_length = 50_000_000
    await resp.prepare(request)
    await asyncio.sleep(30)  # never sends the body; the client must not wait for it
    return resp


async def _hang(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response(text="too late")


async def _drip(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    try:
        while True:
            await resp.write(b"x")
            await asyncio.sleep(0.05)
    except ConnectionResetError:
        pass
    return resp


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="nope")


async def _raw(request: web.Request) -> web.Response:
    bodies = {"broken": b'{"type": "Person",', "list": b"[1, 2]", "nan": b'{"x": NaN}'}
    return web.Response(body=bodies[request.match_info["name"]], content_type="application/json")


@web.middleware
async def _count_hits(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request.app[HITS].append(request.path_qs)
    return await handler(request)


def _app() -> web.Application:
    app = web.Application(middlewares=[_count_hits])
    app[HITS] = []
    app.router.add_get("/doc", _doc)
    app.router.add_get("/headers", _echo_headers)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/chain/{n}", _chain)
    app.router.add_get("/endless", _endless)
    app.router.add_get("/claims-big", _claims_big)
    app.router.add_get("/hang", _hang)
    app.router.add_get("/drip", _drip)
    app.router.add_get("/status/{code}", _status)
    app.router.add_get("/raw/{name}", _raw)
    return app


async def _serve(host: str) -> tuple[web.AppRunner, Origin]:
    app = _app()
    # handler_cancellation: handlers that sleep (hang, claims-big) end when the
    # client hangs up, so cleanup does not wait for them.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    port = runner.addresses[0][1]
    return runner, Origin(f"http://{host}:{port}", app[HITS])


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    runner, served = await _serve("127.0.0.1")
    yield served
    await runner.cleanup()


@pytest.fixture
async def second_origin() -> AsyncIterator[Origin]:
    """A server on 127.0.0.2, which policies in these tests may leave out."""
    runner, served = await _serve("127.0.0.2")
    yield served
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with client_session(LOOPBACK, connect_timeout=1, read_timeout=2) as s:
        yield s


# -- address classification -------------------------------------------------------

ADDRESSES: list[tuple[str, str | None]] = [
    # public
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("172.32.0.1", None),
    ("100.128.0.1", None),
    ("2606:4700:4700::1111", None),
    ("2001:4860:4860::8888", None),
    ("::ffff:8.8.8.8", None),
    ("64:ff9b::808:808", None),
    ("2002:808:808::1", None),
    # IPv4
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.255", "CGNAT"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.0.9", "IETF"),
    ("192.88.99.1", "6to4 relay"),
    # IPv6
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001::1", "IETF"),  # Teredo
    ("100::1", "discard-only"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("4000::1", "outside global unicast"),
    # IPv6 forms of IPv4 addresses, judged by the IPv4 address
    ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1, which is loopback"),
    ("::ffff:10.0.0.5", "IPv4-mapped 10.0.0.5, which is private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::127.0.0.1", "IPv4-compatible 127.0.0.1, which is loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 169.254.169.254, which is link-local"),
    ("64:ff9b::7f00:1", "NAT64 127.0.0.1, which is loopback"),
    ("2002:7f00:1::1", "6to4 127.0.0.1, which is loopback"),
    ("2002:c0a8:101::1", "6to4 192.168.1.1, which is private"),
]


@pytest.mark.parametrize(("address", "reason"), ADDRESSES)
def test_default_policy_classifies_addresses(address: str, reason: str | None) -> None:
    policy = NetworkPolicy()
    if reason is None:
        policy.check_address(address)
        policy.check_address(ipaddress.ip_address(address))
        return
    with pytest.raises(BlockedAddress) as caught:
        policy.check_address(address)
    message = str(caught.value)
    assert reason in message
    bare = ipaddress.ip_address(address.split("%")[0])  # zone ids are not part of the address
    assert message.startswith(f"address {bare} is ")
    assert message.endswith("(refused by [network]; add it to [network] allow to permit)")


def test_allow_admits_private_ranges_and_their_ipv6_forms() -> None:
    policy = NetworkPolicy.from_strings(["10.0.0.0/8", "::1", "fd00::/8"], allow_http=False)
    for address in ("10.1.2.3", "::ffff:10.1.2.3", "64:ff9b::a01:203", "::1", "fd00::5"):
        policy.check_address(address)
    for address in ("11.0.0.1", "8.8.8.8"):  # outside allow, but public anyway
        policy.check_address(address)
    for address in ("192.168.0.1", "127.0.0.1", "::ffff:127.0.0.1", "fc00::1"):
        with pytest.raises(BlockedAddress):
            policy.check_address(address)


def test_allow_is_exact() -> None:
    policy = NetworkPolicy.from_strings(["127.0.0.1/32"], allow_http=True)
    policy.check_address("127.0.0.1")
    with pytest.raises(BlockedAddress, match=re.escape("address 127.0.0.2 is loopback")):
        policy.check_address("127.0.0.2")


def test_from_strings() -> None:
    policy = NetworkPolicy.from_strings([" 127.0.0.1", "fc00::/7"], allow_http=True)
    assert policy.allow == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("fc00::/7"),
    )
    assert policy.allow_http
    with pytest.raises(ValueError, match=r"'10\.0\.0\.5/8'.*host bits set"):
        NetworkPolicy.from_strings(["10.0.0.5/8"], allow_http=False)
    with pytest.raises(ValueError, match="'intranet' is not an IP address or network"):
        NetworkPolicy.from_strings(["intranet"], allow_http=False)


# -- URLs ------------------------------------------------------------------------


def test_check_url_accepts_https_names_and_public_literals() -> None:
    policy = NetworkPolicy()
    assert str(policy.check_url("https://example.com/users/a")) == "https://example.com/users/a"
    policy.check_url("https://8.8.8.8/")
    policy.check_url("https://[2606:4700:4700::1111]:8443/")
    assert NetworkPolicy(allow_http=True).check_url("http://example.com/").scheme == "http"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/", "scheme http is refused, only https"),
        ("ftp://example.com/", "scheme ftp is refused"),
        ("file:///etc/passwd", "scheme file is refused"),
        ("example.com/actor", "scheme (none) is refused"),
        ("https:///actor", "has no host"),
        ("https://10.0.0.5/x", "address 10.0.0.5 is private (refused by [network]"),
        ("https://127.0.0.1:8080/", "address 127.0.0.1 is loopback"),
        ("https://[::1]/", "address ::1 is loopback"),
        ("https://[::ffff:127.0.0.1]/", "IPv4-mapped 127.0.0.1, which is loopback"),
        ("https://[fe80::1%25eth0]/", "link-local"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://2130706433/", "non-canonical numeric IPv4"),
        ("https://127.1/", "non-canonical numeric IPv4"),
        ("https://0x7f.0.0.1/", "non-canonical numeric IPv4"),
        ("https://127.0.0.1./", "address 127.0.0.1 is loopback"),
    ],
)
def test_check_url_refuses(url: str, reason: str) -> None:
    with pytest.raises(BlockedAddress) as caught:
        NetworkPolicy().check_url(url)
    assert str(caught.value).startswith(f"{url}: ")
    assert reason in str(caught.value)


# -- resolver ----------------------------------------------------------------------


class StaticResolver(AbstractResolver):
    """Answers every name with fixed addresses: a DNS server the test controls."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_resolver_drops_refused_addresses() -> None:
    inner = StaticResolver("10.0.0.1", "93.184.215.14", "::ffff:127.0.0.1", "2606:2800::1")
    resolved = await GuardedResolver(NetworkPolicy(), inner).resolve("example.com", 443)
    assert [r["host"] for r in resolved] == ["93.184.215.14", "2606:2800::1"]


async def test_resolver_refuses_a_name_with_only_refused_addresses() -> None:
    resolver = GuardedResolver(NetworkPolicy(), StaticResolver("10.0.0.1", "fd00::1"))
    with pytest.raises(BlockedAddress) as caught:
        await resolver.resolve("rebind.example", 443)
    assert str(caught.value) == (
        "host rebind.example resolves only to refused addresses: address 10.0.0.1 is private; "
        "address fd00::1 is unique local (ULA) "
        "(refused by [network]; add it to [network] allow to permit)"
    )


async def test_resolver_uses_the_system_resolver() -> None:
    resolver = GuardedResolver(NetworkPolicy())
    with pytest.raises(BlockedAddress, match="host localhost resolves only to refused"):
        await resolver.resolve("localhost", 80)
    allowed = GuardedResolver(NetworkPolicy.from_strings(["127.0.0.0/8", "::1"], True))
    assert {r["host"] for r in await allowed.resolve("localhost", 80)} <= {"127.0.0.1", "::1"}


async def test_aiohttp_passes_resolver_refusal_through(origin: Origin) -> None:
    """aiohttp wraps only OSError from a resolver; BlockedAddress reaches session.get."""
    port = origin.base.rsplit(":", 1)[1]
    async with client_session(NetworkPolicy(allow_http=True)) as s:
        with pytest.raises(BlockedAddress, match="host localhost resolves only to refused"):
            await s.get(f"http://localhost:{port}/doc")
    assert origin.hits == []


# -- fetch -------------------------------------------------------------------------


async def test_fetch(origin: Origin, session: aiohttp.ClientSession) -> None:
    fetched = await fetch(session, LOOPBACK, origin.url("/doc"), max_bytes=10_000)
    assert isinstance(fetched, Fetched)
    assert fetched.status == 200
    assert fetched.url == origin.url("/doc")
    assert fetched.headers["Content-Type"].startswith("application/activity+json")
    assert b'"Person"' in fetched.body


async def test_user_agent_and_accept_arrive(origin: Origin, session: aiohttp.ClientSession) -> None:
    seen = await fetch_json(session, LOOPBACK, origin.url("/headers"))
    assert seen["User-Agent"] == DEFAULT_USER_AGENT
    assert seen["User-Agent"].startswith("Sluice/")
    assert seen["Accept"] == (
        "application/activity+json, "
        'application/ld+json; profile="https://www.w3.org/ns/activitystreams"'
    )


async def test_loopback_refused_without_allow(origin: Origin) -> None:
    policy = NetworkPolicy(allow_http=True)
    async with client_session(policy) as s:
        with pytest.raises(BlockedAddress) as caught:
            await fetch(s, policy, origin.url("/doc"), max_bytes=10_000)
    assert str(caught.value) == (
        f"{origin.url('/doc')}: address 127.0.0.1 is loopback "
        "(refused by [network]; add it to [network] allow to permit)"
    )
    assert origin.hits == []


async def test_http_refused_unless_allowed(origin: Origin) -> None:
    policy = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=False)
    async with client_session(policy) as s:
        with pytest.raises(BlockedAddress, match="scheme http is refused, only https"):
            await fetch(s, policy, origin.url("/doc"), max_bytes=10_000)
    assert origin.hits == []


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "address 169.254.169.254 is link-local"),
        ("http://10.0.0.1/", "address 10.0.0.1 is private"),
        ("http://[::ffff:a9fe:a9fe]/", "IPv4-mapped 169.254.169.254, which is link-local"),
        ("gopher://127.0.0.1:6379/", "scheme gopher is refused"),
    ],
)
async def test_redirect_to_refused_url(
    origin: Origin, session: aiohttp.ClientSession, target: str, reason: str
) -> None:
    start = origin.url(f"/redirect?to={target}")
    with pytest.raises(BlockedAddress) as caught:
        await fetch(session, LOOPBACK, start, max_bytes=10_000)
    message = str(caught.value)
    assert message.startswith(f"{target} (redirected from {start}): ")
    assert reason in message


async def test_redirect_to_loopback_outside_allow(origin: Origin, second_origin: Origin) -> None:
    policy = NetworkPolicy.from_strings(["127.0.0.1/32"], allow_http=True)
    target = second_origin.url("/doc")  # 127.0.0.2: loopback, listening, not allowed
    async with client_session(policy) as s:
        for status in (301, 302, 303, 307, 308):
            with pytest.raises(BlockedAddress, match=re.escape("address 127.0.0.2 is loopback")):
                await fetch(
                    s,
                    policy,
                    origin.url(f"/redirect?status={status}&to={target}"),
                    max_bytes=10_000,
                )
    assert len(origin.hits) == 5
    assert second_origin.hits == []


async def test_redirect_to_name_resolving_outside_allow(
    origin: Origin, second_origin: Origin
) -> None:
    """The resolver, not check_url, stops this one: localhost is a name."""
    policy = NetworkPolicy.from_strings(["127.0.0.2/32"], allow_http=True)
    target = origin.url("/doc").replace("127.0.0.1", "localhost")
    start = second_origin.url(f"/redirect?to={target}")
    async with client_session(policy) as s:
        with pytest.raises(BlockedAddress) as caught:
            await fetch(s, policy, start, max_bytes=10_000)
    assert str(caught.value).startswith(
        f"{target} (redirected from {start}): host localhost resolves only to refused addresses: "
        "address 127.0.0.1 is loopback"
    )
    assert second_origin.hits == [start.removeprefix(second_origin.base)]
    assert origin.hits == []


async def test_credentials_dropped_when_redirect_leaves_origin(
    origin: Origin, second_origin: Origin, session: aiohttp.ClientSession
) -> None:
    sent = {"Authorization": "Bearer secret", "Signature": "keyId=...", "X-Keep": "kept"}
    same = await fetch(
        session, LOOPBACK, origin.url("/redirect?to=/headers"), max_bytes=10_000, headers=sent
    )
    assert b"Bearer secret" in same.body
    other = origin.url(f"/redirect?to={second_origin.url('/headers')}")
    fetched = await fetch(session, LOOPBACK, other, max_bytes=10_000, headers=sent)
    assert fetched.url == second_origin.url("/headers")
    assert b'"Authorization": null' in fetched.body
    assert b'"Signature": null' in fetched.body
    assert b'"X-Keep": "kept"' in fetched.body


async def test_redirects_followed_within_limit(
    origin: Origin, session: aiohttp.ClientSession
) -> None:
    fetched = await fetch(session, LOOPBACK, origin.url("/chain/3"), max_bytes=10_000)
    assert fetched.url == origin.url("/chain/0")
    assert fetched.body == b"end of chain"


async def test_too_many_redirects(origin: Origin, session: aiohttp.ClientSession) -> None:
    with pytest.raises(FetchError, match=r"/chain/9: more than 5 redirects \(last to .*/chain/3\)"):
        await fetch(session, LOOPBACK, origin.url("/chain/9"), max_bytes=10_000)
    assert len(origin.hits) == 6


async def test_endless_body_stops_at_limit(origin: Origin, session: aiohttp.ClientSession) -> None:
    with pytest.raises(FetchError, match="/endless: body exceeds the limit of 200000 bytes"):
        await fetch(session, LOOPBACK, origin.url("/endless"), max_bytes=200_000, total_timeout=5)


async def test_content_length_over_limit_refused_early(
    origin: Origin, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(
        FetchError, match="/claims-big: Content-Length 50000000 exceeds the limit of 1000 bytes"
    ):
        await fetch(session, LOOPBACK, origin.url("/claims-big"), max_bytes=1000, total_timeout=5)


async def test_read_timeout(origin: Origin) -> None:
    async with client_session(LOOPBACK, read_timeout=0.3) as s:
        with pytest.raises(FetchError, match=r"/hang: no data for 0.3 s \(read timeout\)"):
            await fetch(s, LOOPBACK, origin.url("/hang"), max_bytes=1000, total_timeout=5)


async def test_total_timeout_ends_a_slow_drip(origin: Origin) -> None:
    async with client_session(LOOPBACK, read_timeout=2) as s:
        with pytest.raises(FetchError, match=r"/drip: no complete answer within 0.5 s"):
            await fetch(s, LOOPBACK, origin.url("/drip"), max_bytes=10_000, total_timeout=0.5)


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port that is certainly closed: bound, not listening
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/doc"
        with pytest.raises(
            FetchError, match=re.escape(f"{url}: cannot connect to 127.0.0.1")
        ) as caught:
            await fetch(session, LOOPBACK, url, max_bytes=1000)
    assert caught.value.status is None


@pytest.mark.parametrize("code", [404, 410, 500])
async def test_error_status(origin: Origin, session: aiohttp.ClientSession, code: int) -> None:
    with pytest.raises(FetchError, match=f"/status/{code}: HTTP {code} ") as caught:
        await fetch(session, LOOPBACK, origin.url(f"/status/{code}"), max_bytes=1000)
    assert caught.value.status == code
    assert not isinstance(caught.value, BlockedAddress)


async def test_fetch_json(origin: Origin, session: aiohttp.ClientSession) -> None:
    document = await fetch_json(session, LOOPBACK, origin.url("/doc"))
    assert document == {"id": origin.url("/doc"), "type": "Person"}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("broken", "not valid JSON"),
        ("nan", "not valid JSON"),
        ("list", "JSON is list, not an object"),
    ],
)
async def test_fetch_json_refuses_non_objects(
    origin: Origin, session: aiohttp.ClientSession, name: str, reason: str
) -> None:
    with pytest.raises(DecodeError, match=f"/raw/{name}: {reason}"):
        await fetch_json(session, LOOPBACK, origin.url(f"/raw/{name}"))
