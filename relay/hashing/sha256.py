"""SHA-256 of the fetched bytes: what most hash lists and our verdict cache key on."""

from __future__ import annotations

from relay.hashing.base import HexDigestKind

__all__ = ["Sha256"]


class Sha256(HexDigestKind):
    name = "sha256"
    label = "SHA-256"
    algorithm = "sha256"
    hex_length = 64
    aliases = ("sha-256", "hash_sha256")
    examples = (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    )
