"""Exact digests (MD5, SHA-256) with their bank entry ids, at 10 million per kind.

A dict from hex digest to id costs about 200 bytes of Python objects an entry (2 GB at
10M MD5s) and must be filled one row at a time. Here the digests are raw bytes in one
sorted numpy array of fixed-width strings, with the ids beside it and the rows in id
order (for removes): 16 + 8 + 8 + 1 bytes an entry for MD5, and a lookup is a binary
search (``np.searchsorted``, a few microseconds).

Shaped like ``PdqIndex``: ``build``, ``add``, ``remove``, ``compact``. Recent adds go to
a small tail, rebuilt on every add, then to a delta segment; removals are tombstones;
``compact`` folds everything into the main segment and may run in another thread while
lookups, adds and removes go on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from relay.hashing.base import HexDigestKind, as_ids, ranges

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


@dataclass(frozen=True, eq=False)
class _State:
    main: _Segment
    delta: _Segment
    tail: _Segment

    def segments(self) -> tuple[_Segment, ...]:
        return self.main, self.delta, self.tail


class ExactIndex:
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
        self.tail_limit = tail_limit
        empty = _Segment.empty(self.dtype)
        self._state = _State(empty, empty, empty)
        self._lock = threading.Lock()  # add, remove and the swap of compact
        self._compacting = threading.Lock()
        self._journal: list[tuple[str, np.ndarray, np.ndarray]] | None = None

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

    def __len__(self) -> int:
        return sum(s.live for s in self._state.segments())

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays of the index."""
        return sum(s.nbytes for s in self._state.segments())

    @property
    def pending(self) -> int:
        """Entries outside the main segment (added since the last compact), and dead rows
        still in it: what ``compact`` would fold in."""
        state = self._state
        return len(state.delta) + len(state.tail) + len(state.main) - state.main.live

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

    # -- changes ------------------------------------------------------------------

    def add(
        self, digests: str | Iterable[str] | np.ndarray, ids: Iterable[int] | np.ndarray
    ) -> None:
        """Add entries; the next lookup sees them. A digest may be held by several ids.

        Usually O(tail); every ``tail_limit`` entries the delta is rebuilt, O(delta).
        Call ``compact`` when ``pending`` grows large.
        """
        digests, ids = self._entries(digests, ids)
        if not len(ids):
            return
        with self._lock:
            self._state = self._added(self._state, digests, ids)
            if self._journal is not None:
                self._journal.append(("add", digests.copy(), ids.copy()))

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove every entry with one of ``ids``; how many there were."""
        ids = np.unique(as_ids(ids))
        with self._lock:
            removed = self._removed(self._state, ids)
            if self._journal is not None:
                self._journal.append(("remove", np.zeros(0, self.dtype), ids))
        return removed

    def compact(self) -> None:
        """Rebuild the main segment with every live entry, emptying delta and tail.

        Changes made while it runs are recorded and replayed on the new state before
        it replaces the old, so none is lost; lookups see the old state until then.
        """
        with self._compacting:
            with self._lock:
                state = self._state
                self._journal = []
            try:
                digests, ids = _concat(s.entries() for s in state.segments())
                main = _Segment.build(digests, ids)
                del digests, ids
            except BaseException:
                with self._lock:
                    self._journal = None
                raise
            with self._lock:
                journal, self._journal = self._journal, None
                empty = _Segment.empty(self.dtype)
                new = _State(main, empty, empty)
                for op, op_digests, op_ids in journal:
                    if op == "add":
                        new = self._added(new, op_digests, op_ids)
                    else:
                        self._removed(new, op_ids)
                self._state = new

    def _entries(
        self, digests: str | Iterable[str] | np.ndarray, ids: Iterable[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        digests, ids = self.as_digests(digests), as_ids(ids)
        if len(digests) != len(ids):
            raise ValueError(f"{len(digests)} digests but {len(ids)} ids")
        return digests, ids

    def _added(self, state: _State, digests: np.ndarray, ids: np.ndarray) -> _State:
        digests, ids = _concat([state.tail.entries(), (digests, ids)])
        if len(ids) <= self.tail_limit:
            return replace(state, tail=_Segment.build(digests, ids))
        # The tail is full: the delta is rebuilt with its live rows and the tail's.
        delta = _Segment.build(*_concat([state.delta.entries(), (digests, ids)]))
        return _State(state.main, delta, _Segment.empty(self.dtype))

    @staticmethod
    def _removed(state: _State, ids: np.ndarray) -> int:
        return sum(segment.kill(ids) for segment in state.segments())


def _concat(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    digests, ids = zip(*parts, strict=True)
    return np.concatenate(digests), np.concatenate(ids)
