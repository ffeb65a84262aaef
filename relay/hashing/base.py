"""The one shape every hash kind has, after python-threatexchange's SignalType.

The matcher never branches on a hash kind's name: it asks the kind to validate a
hash string and to measure the distance between two, and compares that distance
with the bank's threshold (0 for exact kinds).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

__all__ = ["HashKind", "HexDigestKind", "as_ids", "hex_string", "ranges"]


class HashKind(ABC):
    """A kind of hash: how its strings are written and how far apart two are."""

    name: ClassVar[str]
    """Registry key and the name used in configuration and bank files."""
    exact: ClassVar[bool]
    """True: two hashes match only when equal. False: when their distance is small."""
    threshold: ClassVar[int] = 0
    """Default largest distance that still matches; a bank may set its own."""

    @classmethod
    @abstractmethod
    def validate(cls, value: str) -> str:
        """The canonical form of ``value``; ValueError naming the kind if it is not one."""

    @classmethod
    @abstractmethod
    def distance(cls, a: str, b: str) -> int:
        """How far apart two canonical hashes are (0 = the same)."""


class HexDigestKind(HashKind):
    """A cryptographic digest written as lowercase hex; equal or not, nothing between."""

    exact = True
    hex_length: ClassVar[int]
    label: ClassVar[str]
    """How error messages name the kind ("SHA-256")."""

    @classmethod
    def validate(cls, value: str) -> str:
        return hex_string(value, cls.hex_length, cls.label)

    @classmethod
    def distance(cls, a: str, b: str) -> int:
        return 0 if cls.validate(a) == cls.validate(b) else 1

    @classmethod
    def size(cls) -> int:
        """Bytes of one digest, as ``bytes.fromhex`` (or PostgreSQL's ``decode``) gives it."""
        return cls.hex_length // 2


def hex_string(value: str, digits: int, label: str) -> str:
    """``value`` stripped and lower-cased if it is exactly ``digits`` hex digits."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None or len(text) != digits or not _HEX.fullmatch(text):
        raise ValueError(f"not a {label} hash: {value!r} (want {digits} hex digits)")
    return text


# An explicit class: int(x, 16) and str.isdigit would accept "0x", "_" or non-ASCII digits.
_HEX = re.compile(r"[0-9a-f]+")


# -- shared by the indexes (relay.hashing.pdq_index, relay.hashing.exact_index) -----------


def as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """Entry ids as a flat int64 array; ValueError if they are not integers."""
    out = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    if out.size and not np.issubdtype(out.dtype, np.integer):
        raise ValueError(f"ids must be integers, not {out.dtype}")
    return out.astype(np.int64).reshape(-1)


def ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Every integer in each [lo, hi), concatenated."""
    lengths = hi - lo
    ends = np.cumsum(lengths)
    if not len(ends):
        return np.zeros(0, np.intp)
    out = np.repeat(lo - (ends - lengths), lengths)
    out += np.arange(int(ends[-1]))
    return out
