"""The one shape every hash kind has, after python-threatexchange's SignalType.

A kind is the whole seam between a hash and the rest of Sluice: it names itself
(and the names hash lists give it), validates and measures its hashes, computes
them from a fetched file, and builds the index a bank keeps them in. The bank
loader, the matcher, the CLI, the media cache and the database never name a kind,
so a new one is one module and one ``relay.hashing.register`` call.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:
    from relay.media.hashes import Hashes

__all__ = [
    "Found",
    "HashKind",
    "HexDigestKind",
    "KindIndex",
    "as_ids",
    "hex_string",
    "ranges",
]


class Found(NamedTuple):
    """The nearest entry an index holds for some queries."""

    distance: int
    entry_id: int
    query: int  # which of the queries found it (the first of equals)
    value: str  # the entry's own hash, canonical


class KindIndex(Protocol):
    """What a bank keeps a kind's entries in; the matcher asks only this."""

    def __len__(self) -> int: ...

    @property
    def pending(self) -> int:
        """Entries outside the main part, waiting for ``compact``."""
        ...

    def add(self, hashes: np.ndarray, ids: np.ndarray) -> None: ...

    def remove(self, ids: Iterable[int] | np.ndarray) -> int: ...

    def compact(self) -> None: ...

    def best(self, queries: Sequence[str], radius: int) -> Found | None:
        """The nearest live entry within ``radius`` of any query, then the oldest, then
        the first query that found it; None if none is that near."""
        ...


class HashKind(ABC):
    """A kind of hash: how its strings are written and how far apart two are."""

    name: ClassVar[str]
    """Registry key and the name used in configuration and bank files."""
    exact: ClassVar[bool]
    """True: two hashes match only when equal. False: when their distance is small."""
    threshold: ClassVar[int] = 0
    """Default largest distance that still matches; a bank may set its own."""
    hex_length: ClassVar[int]
    """Hex digits of one hash: the database checks every stored value against it, and
    the bank loader reads values as raw bytes of half that size."""
    aliases: ClassVar[tuple[str, ...]] = ()
    """Other names hash lists write the kind under (lowercase): ThreatExchange's
    indicator types (``hash_pdq``), python-threatexchange's signal types."""
    examples: ClassVar[tuple[str, ...]] = ()
    """Valid hashes of the kind, canonical: for docs and the contract tests."""

    @classmethod
    def size(cls) -> int:
        """Bytes of one hash, as ``bytes.fromhex`` (or PostgreSQL's ``decode``) gives it."""
        return cls.hex_length // 2

    @classmethod
    @abstractmethod
    def hash(cls, data: bytes, decoded: Hashes | None) -> tuple[str, ...]:
        """Every value of the kind a file has (canonical), from its bytes and, when it
        was decoded, the hasher's result; () when it has none worth matching."""

    @classmethod
    def variants(cls, decoded: Hashes | None) -> tuple[str, ...]:
        """What a dihedral bank also tries: [0] the value as is, then its rotations and
        flips; () when the kind has none."""
        return ()

    @classmethod
    def missing(cls, quality: int | None) -> str | None:
        """Why a decoded picture of PDQ ``quality`` has no value of the kind, for whoever
        adds it to a bank; None when it always has one."""
        return None

    @classmethod
    @abstractmethod
    def index(cls, hashes: np.ndarray, ids: np.ndarray, radius: int) -> KindIndex:
        """An index over ``hashes`` ((N, size) uint8) with their entry ``ids``, for
        queries within ``radius``."""

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
    label: ClassVar[str]
    """How error messages name the kind ("SHA-256")."""
    algorithm: ClassVar[str]
    """hashlib's name for it."""

    @classmethod
    def hash(cls, data: bytes, decoded: Hashes | None) -> tuple[str, ...]:
        # The hasher's worker computed the common digests already: not twice.
        known = decoded.digests.get(cls.name) if decoded is not None else None
        if known is None:
            known = hashlib.new(cls.algorithm, data, usedforsecurity=False).hexdigest()
        return (known,)

    @classmethod
    def index(cls, hashes: np.ndarray, ids: np.ndarray, radius: int) -> KindIndex:
        from relay.hashing.exact_index import ExactIndex

        return ExactIndex.build(hashes, ids, kind=cls)

    @classmethod
    def validate(cls, value: str) -> str:
        return hex_string(value, cls.hex_length, cls.label)

    @classmethod
    def distance(cls, a: str, b: str) -> int:
        return 0 if cls.validate(a) == cls.validate(b) else 1


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
