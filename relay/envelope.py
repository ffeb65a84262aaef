"""The raw inbound request, kept byte for byte so it can be forwarded unchanged."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["HOP_BY_HOP", "Envelope", "forwardable_headers"]

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


def forwardable_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The end-to-end headers of a request, in order, repeated headers kept."""
    items = headers.items()
    return [(k, v) for k, v in items if k.lower() not in HOP_BY_HOP]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One inbox POST as it arrived: what the sender signed and where it came from."""

    method: str
    target: str  # path and query string, as received
    headers: tuple[tuple[str, str], ...]
    body: bytes
    remote: str | None
    received_at: float
