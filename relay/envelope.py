"""The raw inbound request, kept byte for byte so it can be forwarded unchanged."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["HOP_BY_HOP", "METHOD_OVERRIDES", "Envelope", "Proxies", "forwardable_headers"]

#: RFC 9110 section 7.6.1 connection-specific headers, plus Content-Length,
#: which the client recomputes from the body it sends.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


#: Headers that make frameworks (Rack::MethodOverride, Express's method-override) treat
#: a POST as another method: the instance must see the request Sluice checked.
METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})


_NOT_FORWARDED = HOP_BY_HOP | METHOD_OVERRIDES


def forwardable_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The end-to-end headers of a request, in order, repeated headers kept."""
    return [(k, v) for k, v in headers.items() if k.lower() not in _NOT_FORWARDED]


_CLIENT_HEADERS = frozenset({"x-real-ip", "x-forwarded-for"})


class Proxies:
    """The proxies in front of Sluice (``[server] trusted_proxies``) and who is behind them.

    Behind the documented nginx every request comes from 127.0.0.1, and only nginx's
    X-Real-IP says who sent it. From anyone else those headers are whatever the sender
    wrote, so they are neither believed nor passed on to the instance, which trusts
    Sluice as its proxy and would otherwise rate-limit or log the address a sender chose.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)

    def trusts(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address((address or "").split("%", 1)[0])
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self.networks)

    def client(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        """The sender's address: X-Real-IP, or the last untrusted X-Forwarded-For hop,
        when the peer is a trusted proxy; the peer itself otherwise."""
        if not self.trusts(peer):
            return peer
        real = _address(headers.get("X-Real-IP", ""))
        if real is not None:
            return real
        hops = [h.strip() for h in headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed(hops):
            if _address(hop) is not None and not self.trusts(hop):
                return hop
        return peer

    def forwardable(
        self, peer: str | None, client: str | None, headers: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """End-to-end headers for the instance; a sender's own X-Real-IP and
        X-Forwarded-For replaced by the address it connected from."""
        kept = forwardable_headers(headers)
        if self.trusts(peer) or client is None:
            return kept
        kept = [(k, v) for k, v in kept if k.lower() not in _CLIENT_HEADERS]
        return [*kept, ("X-Real-IP", client), ("X-Forwarded-For", client)]


def _address(value: str) -> str | None:
    """``value`` if it is an IP address (nginx writes them bare), else None."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Envelope:
    """One inbox POST as it arrived: what the sender signed and where it came from."""

    method: str
    target: str  # path and query string, as received
    headers: tuple[tuple[str, str], ...]
    body: bytes
    remote: str | None
    received_at: float
