"""PDQ, Meta's perceptual photo hash: 256 bits, compared by Hamming distance.

Written as 64 lowercase hex digits, most significant bit first, as ThreatExchange,
the C++ ``pdq-photo-hasher`` and the hash lists exchanged between platforms do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from relay.hashing.base import HashKind, KindIndex, hex_string

if TYPE_CHECKING:
    from relay.media.hashes import Hashes

__all__ = ["Pdq"]


class Pdq(HashKind):
    name = "pdq"
    exact = False
    bits: ClassVar[int] = 256
    hex_length = 64
    aliases = ("hash_pdq",)
    examples = (
        "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22",
        "b0a10efd71cc3f429413d48d0ffffe12e34e0e17ada952a9d29684210aa9e5af",
    )
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

    @classmethod
    def hash(cls, data: bytes, decoded: Hashes | None) -> tuple[str, ...]:
        """Every hashed frame of quality >= ``min_quality`` (flatter images collide);
        the pixel work was done in the hasher's workers."""
        if decoded is None:
            return ()
        return tuple(f.hash for f in decoded.pdq if f.quality >= cls.min_quality)

    @classmethod
    def variants(cls, decoded: Hashes | None) -> tuple[str, ...]:
        """The first frame rotated and flipped (pdqhash's order), if it is good enough."""
        if decoded is None or not decoded.pdq or decoded.pdq[0].quality < cls.min_quality:
            return ()
        return decoded.pdq_dihedral

    @classmethod
    def missing(cls, quality: int | None) -> str | None:
        return f"PDQ quality {quality} is too low for a perceptual match (needs {cls.min_quality})"

    @classmethod
    def index(cls, hashes: np.ndarray, ids: np.ndarray, radius: int) -> KindIndex:
        from relay.hashing.pdq_index import PdqIndex

        return PdqIndex.build(hashes, ids, radius=radius)
