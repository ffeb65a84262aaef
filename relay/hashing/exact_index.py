"""Exact digests (MD5, SHA-256) with their bank entry ids, at 10 million per kind.

A dict from hex digest to id costs about 200 bytes of Python objects an entry (2 GB at
10M MD5s) and must be filled one row at a time. Here the digests are raw bytes in one
sorted numpy array of fixed-width strings, with the ids beside it and the rows in id
order (for removes): 16 + 8 + 8 + 1 bytes an entry for MD5, and a lookup is a binary
search (``np.searchsorted``, a few microseconds).

Shaped like ``PdqIndex``: ``build``, ``add``, ``remove``, ``compact``, with the same
main, delta and tail segments (``relay.hashing.segments``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from relay.hashing.base import Found, HexDigestKind, as_ids, ranges
from relay.hashing.segments import Part, SegmentedIndex

__all__ = ["ExactIndex"]

# Tail entries (re-sorted on every add) before they are merged into the delta.
_TAIL_LIMIT = 4096


@dataclass(eq=False)
class _Segment:
    """Digests sorted (equal ones by id), their ids, tombstones, and the rows in id order.

    numpy compares fixed-width ``S`` strings over every byte, NULs included, so sorting
    and searching are plain lexicographic order on the raw digests.
    """

    digests: np.ndarray  # (n,) S<size>, sorted
    ids: np.ndarray  # (n,) int64
    by_id: np.ndarray  # (n,) intp: ids[by_id] ascends
    alive: np.ndarray  # (n,) bool
    live: int = 0

    @classmethod
    def empty(cls, dtype: np.dtype) -> _Segment:
        return cls(
            np.zeros(0, dtype), np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0, bool)
        )

    @classmethod
    def build(cls, digests: np.ndarray, ids: np.ndarray) -> _Segment:
        """A segment over copies of ``digests`` and ``ids``."""
        n = len(ids)
        if n and np.any(ids[1:] < ids[:-1]):
            first = np.argsort(ids, kind="stable")
            digests, ids = digests[first], ids[first]
        # Stable: equal digests stay in id order, so the first live one is the oldest.
        rows = np.argsort(digests, kind="stable")
        # ids ascended before the sort, so row r's place in id order is where it came from.
        by_id = np.empty(n, np.intp)
        by_id[rows] = np.arange(n)
        return cls(digests[rows], ids[rows], by_id, np.ones(n, bool), n)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.digests, self.ids, self.by_id, self.alive))

    def __len__(self) -> int:
        return len(self.ids)

    def first(self, key: np.ndarray) -> int | None:
        """The smallest live id stored under ``key`` (a one-digest array), or None."""
        lo = int(self.digests.searchsorted(key)[0])
        # np.bytes_ scalars drop trailing NULs, both sides alike: equal iff the digests are.
        if lo == len(self.digests) or self.digests[lo] != key[0]:
            return None
        if self.alive[lo]:
            return int(self.ids[lo])
        hi = int(self.digests.searchsorted(key, "right")[0])
        live = np.flatnonzero(self.alive[lo:hi])
        return int(self.ids[lo + live[0]]) if len(live) else None

    def kill(self, ids: np.ndarray) -> int:
        """Tombstone every live row with one of ``ids``; how many there were."""
        if not len(self.ids) or not len(ids):
            return 0
        lo = np.searchsorted(self.ids, ids, "left", sorter=self.by_id)
        hi = np.searchsorted(self.ids, ids, "right", sorter=self.by_id)
        rows = self.by_id[ranges(lo, hi)]
        rows = rows[self.alive[rows]]
        self.alive[rows] = False
        self.live -= len(rows)
        return len(rows)

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(digests, ids) of the live rows."""
        alive = self.alive.copy()  # one copy: a remove may flip it meanwhile
        return self.digests[alive], self.ids[alive]


class ExactIndex(SegmentedIndex[_Segment]):
    """Digests of one exact kind with int64 ids (bank entry ids); ``get`` returns the
    smallest live id holding a digest: the oldest entry, as a dict filled in id order
    with ``setdefault`` would.

    Lookups take no lock and see one state of the segments (a remove racing a lookup may
    or may not be seen by it). ``add`` and ``remove`` are visible to the next lookup;
    ``compact`` (O(N), seconds at 10M) may run in a thread while they go on.
    """

    def __init__(self, kind: type[HexDigestKind], *, tail_limit: int = _TAIL_LIMIT) -> None:
        self.kind = kind
        self.dtype = np.dtype(f"S{kind.size()}")
        super().__init__(tail_limit=tail_limit)

    def _empty(self) -> _Segment:
        return _Segment.empty(self.dtype)

    def _segment(self, hashes: np.ndarray, ids: np.ndarray, part: Part) -> _Segment:
        return _Segment.build(hashes, ids)

    @classmethod
    def build(
        cls,
        digests: str | Iterable[str] | np.ndarray,
        ids: Iterable[int] | np.ndarray,
        *,
        kind: type[HexDigestKind],
        tail_limit: int = _TAIL_LIMIT,
    ) -> ExactIndex:
        """An index over ``digests`` (see ``as_digests``) with their ``ids``, all in the
        main segment (one sort: about 4 s for 10M MD5s)."""
        index = cls(kind, tail_limit=tail_limit)
        digests, ids = index._entries(digests, ids)
        index._state = replace(index._state, main=_Segment.build(digests, ids))
        return index

    def as_digests(self, digests: str | Iterable[str] | np.ndarray) -> np.ndarray:
        """Digests as an (N,) array of raw bytes (``S16`` for MD5). Takes hex strings (one
        or many, checked by the kind), (N, size) uint8 as the hex spells them, or (N,)
        arrays of that ``S`` type."""
        if isinstance(digests, str):
            digests = [digests]
        if isinstance(digests, np.ndarray):
            if digests.dtype == self.dtype and digests.ndim <= 1:
                return np.ascontiguousarray(digests.reshape(-1))
            size = self.dtype.itemsize
            if digests.dtype == np.uint8 and digests.ndim == 2 and digests.shape[1] == size:
                return np.ascontiguousarray(digests).view(self.dtype).reshape(-1)
            raise ValueError(
                f"{self.kind.label} digests must be (N, {size}) uint8 or (N,) {self.dtype}, "
                f"not {digests.shape} {digests.dtype}"
            )
        hexes = "".join(self.kind.validate(d) for d in digests)
        return np.frombuffer(bytes.fromhex(hexes), self.dtype)

    def get(self, digest: str) -> int | None:
        """The smallest live id holding ``digest`` (hex), or None; ValueError if it is not
        a digest of this kind."""
        key = np.frombuffer(bytes.fromhex(self.kind.validate(digest)), self.dtype)
        best = None
        for segment in self._state.segments():
            found = segment.first(key) if segment.live else None
            if found is not None and (best is None or found < best):
                best = found
        return best

    def best(self, queries: Sequence[str], radius: int = 0) -> Found | None:
        """The oldest live entry equal to any query (``KindIndex``: exact kinds match at
        distance 0, whatever the radius)."""
        found: Found | None = None
        for number, query in enumerate(queries):
            entry = self.get(query)
            if entry is not None and (found is None or entry < found.entry_id):
                found = Found(0, entry, number, self.kind.validate(query))
        return found

    def _entries(
        self, digests: str | Iterable[str] | np.ndarray, ids: Iterable[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        digests, ids = self.as_digests(digests), as_ids(ids)
        if len(digests) != len(ids):
            raise ValueError(f"{len(digests)} digests but {len(ids)} ids")
        return digests, ids
