"""PDQ, Meta's perceptual photo hash: 256 bits, compared by Hamming distance.

Written as 64 lowercase hex digits, most significant bit first, as ThreatExchange,
the C++ ``pdq-photo-hasher`` and the hash lists exchanged between platforms do.
"""

from __future__ import annotations

from typing import ClassVar

from relay.hashing.base import HashKind, hex_string

__all__ = ["Pdq"]


class Pdq(HashKind):
    name = "pdq"
    exact = False
    bits: ClassVar[int] = 256
    # ThreatExchange's PDQ match threshold: edits of one photo (blur, resize,
    # recompression) stay within it; unrelated photos are ~128 bits apart.
    threshold = 31
    # Hashes of images below this PDQ quality are too flat to match on.
    min_quality: ClassVar[int] = 50

    @classmethod
    def validate(cls, value: str) -> str:
        return hex_string(value, cls.bits // 4, "PDQ")

    @classmethod
    def distance(cls, a: str, b: str) -> int:
        return (int(cls.validate(a), 16) ^ int(cls.validate(b), 16)).bit_count()
