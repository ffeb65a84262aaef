"""SHA-256 of the fetched bytes: what most hash lists and our verdict cache key on."""

from __future__ import annotations

from relay.hashing.base import HexDigestKind

__all__ = ["Sha256"]


class Sha256(HexDigestKind):
    name = "sha256"
    label = "SHA-256"
    hex_length = 64
