"""MD5 of the fetched bytes: NCMEC's hash lists are MD5, so we still need it."""

from __future__ import annotations

from relay.hashing.base import HexDigestKind

__all__ = ["Md5"]


class Md5(HexDigestKind):
    name = "md5"
    label = "MD5"
    algorithm = "md5"
    hex_length = 32
    # video_md5 and photo_md5 (python-threatexchange) are the MD5 of the file's bytes too.
    aliases = ("hash_md5", "video_md5", "photo_md5")
    examples = ("d41d8cd98f00b204e9800998ecf8427e", "5d41402abc4b2a76b9719d911017c592")
