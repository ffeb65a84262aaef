"""MD5 of the fetched bytes: NCMEC's hash lists are MD5, so we still need it."""

from __future__ import annotations

from relay.hashing.base import HexDigestKind

__all__ = ["Md5"]


class Md5(HexDigestKind):
    name = "md5"
    label = "MD5"
    hex_length = 32
