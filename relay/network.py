"""How Sluice talks to the untrusted fediverse: signers' keys now, media files later.

Every URL Sluice fetches was named by someone we do not trust, so a fetch must not
become a way to reach the relay's own network (cloud metadata at 169.254.169.254,
an admin port on loopback, a database on 10/8). Two checks cover that:

- ``NetworkPolicy.check_url`` on the first URL and on every redirect's Location:
  scheme, host present, and literal IP hosts (aiohttp never resolves those).
- ``GuardedResolver`` inside the connector: names are judged on the very addresses
  aiohttp then connects to, so a DNS answer that changes between a check and the
  connection (rebinding) cannot slip through, as a separate lookup would let it.

``fetch`` adds what any client of hostile servers needs: bounded redirects, a
streamed size limit, connect, read and total timeouts, and errors naming the URL.
Given a ``FetchSigner`` it signs each GET as Sluice's actor (servers in authorized-fetch
mode answer 401 to unsigned ones), and asks again unsigned where a server refuses a
signed one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from relay import __version__
from relay.errors import BlockedAddress, DecodeError, FetchError

__all__ = [
    "ACTIVITY_JSON_ACCEPT",
    "DEFAULT_USER_AGENT",
    "FetchSigner",
    "Fetched",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "JsonDocument",
    "NetworkPolicy",
    "Signer",
    "absolute_url",
    "client_session",
    "fetch",
    "fetch_json",
    "fetch_json_document",
    "same_origin",
    "same_url",
]

DEFAULT_USER_AGENT = f"Sluice/{__version__} (ActivityPub filtering relay)"

ACTIVITY_JSON_ACCEPT = (
    "application/activity+json, "
    'application/ld+json; profile="https://www.w3.org/ns/activitystreams"'
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HINT = "(refused by [network]; add it to [network] allow to permit)"

_v4 = ipaddress.IPv4Network
_v6 = ipaddress.IPv6Network

# IANA special-purpose registries (RFC 6890 and updates). Order matters only for
# naming: the first match gives the reason (broadcast before reserved 240/4).
_REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    # Linux connects 0.0.0.0 to the local host, so "this network" is as bad as loopback.
    (_v4("0.0.0.0/8"), "unspecified ('this network')"),
    (_v4("10.0.0.0/8"), "private"),
    (_v4("100.64.0.0/10"), "shared address space (CGNAT)"),
    (_v4("127.0.0.0/8"), "loopback"),
    (_v4("169.254.0.0/16"), "link-local"),
    (_v4("172.16.0.0/12"), "private"),
    (_v4("192.0.0.0/24"), "reserved for IETF protocol assignments"),
    (_v4("192.0.2.0/24"), "documentation"),
    (_v4("192.88.99.0/24"), "6to4 relay anycast (deprecated)"),
    (_v4("192.168.0.0/16"), "private"),
    (_v4("198.18.0.0/15"), "benchmarking"),
    (_v4("198.51.100.0/24"), "documentation"),
    (_v4("203.0.113.0/24"), "documentation"),
    (_v4("224.0.0.0/4"), "multicast"),
    (_v4("255.255.255.255/32"), "broadcast"),
    (_v4("240.0.0.0/4"), "reserved"),
)

_REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_v6("::/128"), "unspecified"),
    (_v6("::1/128"), "loopback"),
    (_v6("64:ff9b:1::/48"), "local-use NAT64"),
    (_v6("100::/64"), "discard-only"),
    # Teredo (2001::/32), ORCHID and the rest of the IETF block; no web servers live here.
    (_v6("2001::/23"), "reserved for IETF protocol assignments"),
    (_v6("2001:db8::/32"), "documentation"),
    (_v6("3fff::/20"), "documentation"),  # RFC 9637
    (_v6("5f00::/16"), "segment routing (SRv6)"),  # RFC 9602
    (_v6("fc00::/7"), "unique local (ULA)"),
    (_v6("fe80::/10"), "link-local"),
    (_v6("fec0::/10"), "site-local (deprecated)"),
    (_v6("ff00::/8"), "multicast"),
)

# All assigned global unicast IPv6 lies in 2000::/3 (RFC 4291 section 2.4); what
# lies outside and is not named above is unassigned.
_GLOBAL_UNICAST_V6 = _v6("2000::/3")
_NAT64 = _v6("64:ff9b::/96")  # RFC 6052 well-known prefix, IPv4 in the last 32 bits
_V4_COMPATIBLE = _v6("::/96")  # RFC 4291 section 2.5.5.1, deprecated


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for, where the network may route it there."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    # :: and ::1 are the unspecified and loopback addresses, not IPv4-compatible ones.
    if address in _V4_COMPATIBLE and int(address) > 1:
        return "IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public internet address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            kind, inner = embedded
            reason = _refusal(inner)
            return None if reason is None else f"{kind} {inner}, which is {reason}"
        for network6, name in _REFUSED_V6:
            if address in network6:
                return name
        if address not in _GLOBAL_UNICAST_V6:
            return "reserved (outside global unicast 2000::/3)"
    else:
        for network, name in _REFUSED_V4:
            if address in network:
                return name
    # A backstop for ranges IANA adds later and newer Pythons know about.
    if not address.is_global:
        return "not globally routable"
    return None


def _parse_address(address: str | IPAddress) -> IPAddress:
    if isinstance(address, str):
        # Zone ids (fe80::1%eth0) say which interface, not which address.
        address = ipaddress.ip_address(address.split("%", 1)[0])
    return address


def _literal_host(host: str) -> IPAddress | None:
    """The address a URL host names literally, or None for a name that needs DNS.

    Raises ValueError for numeric forms other than dotted quads (2130706433, 127.1,
    0x7f.0.0.1): inet_aton, and so getaddrinfo, read them as addresses.
    """
    bare = host.rstrip(".")
    try:
        return _parse_address(bare)
    except ValueError:
        pass
    try:
        socket.inet_aton(bare)
    except OSError:
        return None
    raise ValueError(f"host {host} is a non-canonical numeric IPv4 address")


@dataclass(frozen=True)
class NetworkPolicy:
    """Which URLs and addresses Sluice may contact: the ``[network]`` section.

    By default only public internet addresses over https; ``allow`` admits ranges
    that would otherwise be refused (a relay on the same LAN, tests on loopback).
    """

    allow: tuple[IPNetwork, ...] = ()
    allow_http: bool = False

    @classmethod
    def from_strings(cls, allow: Iterable[str], allow_http: bool) -> NetworkPolicy:
        """Build from configuration values; raises ValueError naming a bad entry.

        Host bits must be clear ("10.0.0.5/8" is an error, not 10.0.0.0/8), so a typo
        does not silently open a wider range than the admin meant.
        """
        networks = []
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or network: {exc}") from None
        return cls(allow=tuple(networks), allow_http=allow_http)

    def check_url(self, url: str | yarl.URL) -> yarl.URL:
        """Parse ``url`` and refuse it unless its scheme and any literal IP host pass."""
        return self._check_url(url, str(url))

    def _check_url(self, url: str | yarl.URL, where: str) -> yarl.URL:
        """``check_url``, naming the URL in errors as ``where`` (which may add a redirect)."""
        try:
            parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
        except (ValueError, TypeError) as exc:
            raise BlockedAddress(f"{where}: not a valid URL ({exc})") from None
        allowed_schemes = ("https", "http") if self.allow_http else ("https",)
        if parsed.scheme not in allowed_schemes:
            if parsed.scheme == "http":
                why = "scheme http is refused, only https (set [network] allow_http to permit)"
            else:
                only = " or ".join(allowed_schemes)
                why = f"scheme {parsed.scheme or '(none)'} is refused, only {only}"
            raise BlockedAddress(f"{where}: {why}")
        host = parsed.host
        if not host:
            raise BlockedAddress(f"{where}: has no host")
        try:
            address = _literal_host(host)
        except ValueError as exc:
            raise BlockedAddress(f"{where}: {exc}") from None
        if address is not None:
            reason = self._refusal(address)
            if reason is not None:
                raise BlockedAddress(f"{where}: {reason}")
        return parsed

    def check_address(self, address: str | IPAddress) -> None:
        """Refuse ``address`` unless it is public or inside ``allow``; ValueError if not an IP."""
        reason = self._refusal(_parse_address(address))
        if reason is not None:
            raise BlockedAddress(reason)

    def _allows(self, address: IPAddress) -> bool:
        # `in` across IP versions is False in current Pythons; the version test says so.
        return any(address.version == net.version and address in net for net in self.allow)

    def _refusal(self, address: IPAddress) -> str | None:
        """The complete refusal message for ``address``, or None when it may be contacted."""
        if self._allows(address):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            # The embedded address is what gets reached, so allowing it allows this form.
            if embedded is not None and self._allows(embedded[1]):
                return None
        reason = _refusal(address)
        if reason is None:
            return None
        return f"address {address} is {reason} {_HINT}"


class GuardedResolver(AbstractResolver):
    """Resolve names, then drop every address the policy refuses.

    aiohttp connects only to what ``resolve`` returns, so this is the check that
    holds against DNS rebinding. When nothing is left it raises BlockedAddress;
    aiohttp wraps only OSError from resolvers (as ClientConnectorDNSError), so any
    other exception, this one included, reaches the caller of ``session.get`` as is.
    """

    def __init__(self, policy: NetworkPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        # ThreadedResolver (getaddrinfo, so /etc/hosts and nsswitch apply) is what
        # aiohttp's DefaultResolver is without aiodns; naming it keeps installing
        # aiodns from changing resolution, and it holds nothing that needs closing
        # (TCPConnector does not close a resolver it was handed).
        self._inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refused: list[str] = []
        for result in results:
            try:
                reason = self._policy._refusal(_parse_address(result["host"]))
            except ValueError:
                reason = f"address {result['host']} is not an IP address"
            if reason is None:
                kept.append(result)
            else:
                refused.append(reason.removesuffix(f" {_HINT}"))
        if not kept:
            raise BlockedAddress(
                f"host {host} resolves only to refused addresses: {'; '.join(refused)} {_HINT}"
            )
        return kept

    async def close(self) -> None:
        await self._inner.close()


def client_session(
    policy: NetworkPolicy,
    *,
    connect_timeout: float = 5,
    read_timeout: float = 10,
    limit_per_host: int = 4,
    limit: int = 100,
    user_agent: str = DEFAULT_USER_AGENT,
) -> aiohttp.ClientSession:
    """A session for the fediverse whose connections only reach addresses ``policy`` allows.

    Literal IP hosts bypass the resolver, so URLs must still go through
    ``policy.check_url``; ``fetch`` does that on every hop. Call inside a running loop.
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(policy),
        limit=limit,
        limit_per_host=limit_per_host,
    )
    # sock_connect bounds each TCP connect plus TLS handshake; connect=None because
    # aiohttp's `connect` also counts time queued for a per-host slot, which is
    # fetch's total_timeout's business. sock_read bounds every wait for bytes,
    # headers included.
    timeout = aiohttp.ClientTimeout(
        total=None, connect=None, sock_connect=connect_timeout, sock_read=read_timeout
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": user_agent},
        # Origins must not set cookies that a fetch from another origin then sends.
        cookie_jar=aiohttp.DummyCookieJar(),
        # A proxy from the environment would be the only host the resolver judges.
        trust_env=False,
    )


#: What signs a request: ``(method, url, headers, body) -> the headers to send``, as
#: ``relay.actor.Actor.sign_request`` does.
Signer = Callable[[str, str, Mapping[str, str] | None, bytes | None], dict[str, str]]

# A signed GET answered so is asked again unsigned: some servers refuse signatures from
# actors they cannot or will not fetch.
_REFUSES_SIGNED = frozenset({400, 401, 403})


class FetchSigner:
    """Signs GETs as Sluice's actor, except where that cannot help.

    Never to ``own`` URLs (Sluice's own host: a signature there proves nothing and its
    key fetch would loop back), and not to a host that refused a signed GET its unsigned
    twin got through, for ``remember_seconds``; at most ``max_hosts`` such hosts are
    kept, the oldest forgotten first, so a flood of hosts cannot grow the memory.
    """

    def __init__(
        self,
        sign: Signer,
        *,
        own: Callable[[str], bool] | None = None,
        remember_seconds: float = 3600,
        max_hosts: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sign = sign
        self._own = own
        self._remember = remember_seconds
        self._max_hosts = max_hosts
        self._clock = clock
        self._refusing: OrderedDict[str, float] = OrderedDict()

    def signs(self, url: yarl.URL) -> bool:
        """Would a GET of ``url`` be signed?"""
        if self._own is not None and self._own(str(url)):
            return False
        key = _host_key(url)
        until = self._refusing.get(key)
        if until is None:
            return True
        if until > self._clock():
            return False
        del self._refusing[key]
        return True

    def headers(self, url: yarl.URL, headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` plus Date, Host and a Signature over a GET of ``url``."""
        return self._sign("GET", str(url), headers, None)

    def refused(self, url: yarl.URL) -> None:
        """``url``'s host refuses signed GETs: ask it unsigned for a while."""
        key = _host_key(url)
        self._refusing.pop(key, None)
        self._refusing[key] = self._clock() + self._remember
        while len(self._refusing) > self._max_hosts:
            self._refusing.popitem(last=False)


def _host_key(url: yarl.URL) -> str:
    return f"{url.host}:{url.port}"


@dataclass(frozen=True)
class Fetched:
    """A successful (2xx) answer, read in full."""

    url: str  # final URL, after redirects
    status: int
    headers: Mapping[str, str]
    body: bytes


_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Dropped when a redirect leaves the origin, as browsers and aiohttp do; an HTTP
# signature covers the original host and target anyway, so it would not verify there.
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "signature", "signature-input"}
)
_CHUNK = 64 * 1024


async def fetch(
    session: aiohttp.ClientSession,
    policy: NetworkPolicy,
    url: str,
    *,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    max_redirects: int = 5,
    total_timeout: float | None = 30,
    signer: FetchSigner | None = None,
) -> Fetched:
    """GET ``url``, following at most ``max_redirects`` redirects, each one re-checked.

    Raises BlockedAddress for a refused URL or address, FetchError otherwise; its
    ``status`` is set only for a non-2xx final answer. ``total_timeout`` covers all
    hops and the body, so an origin that drips a byte at a time still ends. With a
    ``signer`` each hop is signed for its own host and path; a signed GET answered 400,
    401 or 403 is asked again, once, unsigned (within the same total timeout).
    """
    deadline = asyncio.timeout(total_timeout)
    try:
        async with deadline:
            if signer is None or not signer.signs(policy.check_url(url)):
                return await _follow(session, policy, url, max_bytes, headers or {}, max_redirects)
            try:
                return await _follow(
                    session, policy, url, max_bytes, headers or {}, max_redirects, signer
                )
            except FetchError as signed_error:
                if signed_error.status not in _REFUSES_SIGNED:
                    raise
                try:
                    fetched = await _follow(
                        session, policy, url, max_bytes, headers or {}, max_redirects
                    )
                except FetchError:
                    # Unsigned fares no better: the signed answer says more (and the
                    # host is not taken to refuse signatures).
                    raise signed_error from None
                signer.refused(policy.check_url(url))
                return fetched
    except TimeoutError as exc:
        if deadline.expired():
            raise FetchError(
                f"{url}: no complete answer within {total_timeout:g} s (total timeout)"
            ) from exc
        raise FetchError(f"{url}: timed out") from exc


async def _follow(
    session: aiohttp.ClientSession,
    policy: NetworkPolicy,
    url: str,
    max_bytes: int,
    headers: Mapping[str, str],
    max_redirects: int,
    signer: FetchSigner | None = None,
) -> Fetched:
    current = policy.check_url(url)
    request_headers = dict(headers)
    redirects = 0
    while True:
        where = str(current) if redirects == 0 else f"{current} (redirected from {url})"
        hop_headers = request_headers
        if signer is not None and signer.signs(current):
            # Each hop is signed anew: the signature covers its host and path.
            hop_headers = signer.headers(current, request_headers)
        outcome = await _get_once(session, current, hop_headers, max_bytes, where)
        if isinstance(outcome, Fetched):
            return outcome
        if redirects >= max_redirects:
            raise FetchError(f"{url}: more than {max_redirects} redirects (last to {outcome})")
        redirects += 1
        target = policy._check_url(outcome, f"{outcome} (redirected from {url})")
        if target.origin() != current.origin():
            request_headers = {
                k: v for k, v in request_headers.items() if k.lower() not in _CREDENTIAL_HEADERS
            }
        current = target


async def _get_once(
    session: aiohttp.ClientSession,
    url: yarl.URL,
    headers: Mapping[str, str],
    max_bytes: int,
    where: str,
) -> Fetched | yarl.URL:
    """One GET: the answer, or the URL a redirect points to."""
    try:
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            if resp.status in _REDIRECT_STATUSES:
                return _redirect_target(url, resp, where)
            if not 200 <= resp.status < 300:
                raise FetchError(f"{where}: HTTP {resp.status} {resp.reason}", status=resp.status)
            body = await _read_body(resp, max_bytes, where)
            return Fetched(url=str(url), status=resp.status, headers=resp.headers, body=body)
    except BlockedAddress as exc:  # from GuardedResolver, passed through by aiohttp
        raise BlockedAddress(f"{where}: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise FetchError(f"{where}: {_describe(exc, session)}") from exc


def _redirect_target(url: yarl.URL, resp: aiohttp.ClientResponse, where: str) -> yarl.URL:
    location = resp.headers.get("Location")
    if not location:
        raise FetchError(f"{where}: HTTP {resp.status} redirect without a Location")
    try:
        # Location may be relative (RFC 9110 section 10.2.2); fragments are not sent.
        return url.join(yarl.URL(location)).with_fragment(None)
    except (ValueError, TypeError) as exc:
        raise FetchError(f"{where}: redirect to an invalid Location {location!r}") from exc


async def _read_body(resp: aiohttp.ClientResponse, max_bytes: int, where: str) -> bytes:
    # Content-Length counts encoded bytes and the limit decoded ones; a body that
    # compresses at all only makes this early refusal conservative.
    length = resp.content_length
    if length is not None and length > max_bytes:
        resp.close()
        raise FetchError(f"{where}: Content-Length {length} exceeds the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            resp.close()  # drop the connection rather than drain the rest
            raise FetchError(f"{where}: body exceeds the limit of {max_bytes} bytes")
    return bytes(body)


def _describe(exc: aiohttp.ClientError, session: aiohttp.ClientSession) -> str:
    """Say what went wrong in words an admin can act on."""
    timeout = session.timeout
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"connecting timed out after {timeout.sock_connect or timeout.connect} s"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return f"no data for {timeout.sock_read} s (read timeout)"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {exc.host}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate refused: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection before answering in full"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP response: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def absolute_url(value: object, *, fragment: bool = False) -> yarl.URL | None:
    """``value`` as an absolute URL with a host (its fragment kept only if asked), else None."""
    if not isinstance(value, str):
        return None
    try:
        url = yarl.URL(value)
    except (ValueError, TypeError):
        return None
    if not url.is_absolute() or not url.host:
        return None
    return url if fragment else url.with_fragment(None)


def same_url(a: object, b: object, *, fragment: bool = False) -> bool:
    """Do ``a`` and ``b`` name one resource (fragments aside unless ``fragment``)?

    Compared as parsed, so spellings of one URL agree (``:443``, ``%7E``, host case).
    """
    ua, ub = (absolute_url(u, fragment=fragment) for u in (a, b))
    if ua is None or ub is None:
        return False
    return (ua.scheme, ua.host, ua.port, ua.path or "/", ua.query_string, ua.fragment) == (
        ub.scheme,
        ub.host,
        ub.port,
        ub.path or "/",
        ub.query_string,
        ub.fragment,
    )


def same_origin(a: object, b: object) -> bool:
    ua, ub = absolute_url(a), absolute_url(b)
    if ua is None or ub is None:
        return False
    return (ua.scheme, ua.host, ua.port) == (ub.scheme, ub.host, ub.port)


@dataclass(frozen=True)
class JsonDocument:
    """A JSON object and the URL that served it, after redirects.

    Where a document came from is what lets a reader trust what it claims to be: a key
    document is believed only when it was served at its own id, on the key's origin.
    """

    url: str
    document: dict[str, Any]

    @property
    def at_its_id(self) -> bool:
        """Was it served at its own id? Only then may it speak for that id."""
        return same_url(self.document.get("id"), self.url)


async def fetch_json_document(
    session: aiohttp.ClientSession,
    policy: NetworkPolicy,
    url: str,
    *,
    max_bytes: int = 1_048_576,
    max_redirects: int = 5,
    total_timeout: float | None = 30,
    signer: FetchSigner | None = None,
) -> JsonDocument:
    """Fetch an ActivityStreams document; anything but a JSON object is a DecodeError.

    With a ``signer`` the GET is signed as Sluice's actor (see ``fetch``)."""
    fetched = await fetch(
        session,
        policy,
        url,
        max_bytes=max_bytes,
        headers={"Accept": ACTIVITY_JSON_ACCEPT},
        max_redirects=max_redirects,
        total_timeout=total_timeout,
        signer=signer,
    )
    try:
        # json.loads detects UTF-8/16/32 itself. RecursionError: deep nesting
        # ([[[[...) exhausts the C decoder's recursion limit well inside 1 MiB.
        document = json.loads(fetched.body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"{fetched.url}: not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DecodeError(f"{fetched.url}: JSON is {type(document).__name__}, not an object")
    return JsonDocument(fetched.url, document)


async def fetch_json(
    session: aiohttp.ClientSession,
    policy: NetworkPolicy,
    url: str,
    *,
    max_bytes: int = 1_048_576,
) -> dict[str, Any]:
    """The document alone, for callers that need not know where it was served from."""
    fetched = await fetch_json_document(session, policy, url, max_bytes=max_bytes)
    return fetched.document
