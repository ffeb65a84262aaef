"""How an index of millions of hashes takes changes: three segments, one rebuilt at a time.

Both indexes (``PdqIndex``, ``ExactIndex``) keep a big *main* segment built once, a
*delta* segment for what was added since, and a small *tail* rebuilt on every add
(microseconds); every ``tail_limit`` adds the tail is folded into the delta (O(delta)).
Removals are tombstones in whichever segment holds the row. ``compact`` folds
everything into a new main segment, in any thread, while lookups, adds and removes go
on: it records the changes made meanwhile and replays them on the new state before
swapping it in. Lookups take no lock: they read one ``Segments`` state, never changed
in place except for tombstones.

What a segment is (sorted digests, tables of PDQ chunks) is each index's own; the
subclass says how to build one for each part.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np

from relay.hashing.base import as_ids

__all__ = ["Part", "Segment", "SegmentedIndex", "Segments"]

#: Which segment is being built: each index may build them differently.
Part = Literal["main", "delta", "tail"]


class Segment(Protocol):
    live: int

    @property
    def nbytes(self) -> int: ...

    def __len__(self) -> int: ...

    def kill(self, ids: np.ndarray) -> int:
        """Tombstone every live row with one of ``ids``; how many there were."""
        ...

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, ids) of the live rows."""
        ...


_S = TypeVar("_S", bound=Segment)


@dataclass(frozen=True, eq=False)
class Segments(Generic[_S]):
    main: _S
    delta: _S
    tail: _S

    def segments(self) -> tuple[_S, _S, _S]:
        return self.main, self.delta, self.tail


class SegmentedIndex(ABC, Generic[_S]):
    """Entries (hashes with int64 ids) in three segments; see the module's docstring."""

    def __init__(self, *, tail_limit: int) -> None:
        self.tail_limit = tail_limit
        empty = self._empty()
        self._state: Segments[_S] = Segments(empty, empty, empty)
        self._lock = threading.Lock()  # add, remove and the swap of compact
        self._compacting = threading.Lock()
        self._journal: list[tuple[np.ndarray | None, np.ndarray]] | None = None

    @abstractmethod
    def _empty(self) -> _S:
        """A segment with no rows."""

    @abstractmethod
    def _segment(self, hashes: np.ndarray, ids: np.ndarray, part: Part) -> _S:
        """A segment over copies of ``hashes`` (as ``_entries`` returns them) and ``ids``."""

    @abstractmethod
    def _entries(self, hashes: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """``add``'s arguments as arrays of one length; ValueError if they are not."""

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

    def add(self, hashes: Any, ids: Iterable[int] | np.ndarray) -> None:
        """Add entries; the next lookup sees them. An id may be added more than once.

        Usually O(tail) (microseconds); every ``tail_limit`` entries the delta is
        rebuilt, O(delta). Call ``compact`` when ``pending`` grows large.
        """
        hashes, ids = self._entries(hashes, ids)
        if not len(ids):
            return
        with self._lock:
            self._state = self._added(self._state, hashes, ids)
            if self._journal is not None:
                self._journal.append((hashes.copy(), ids.copy()))

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove every entry with one of ``ids``; how many there were."""
        ids = np.unique(as_ids(ids))
        with self._lock:
            removed = self._removed(self._state, ids)
            if self._journal is not None:
                self._journal.append((None, ids))
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
                hashes, ids = _concat(s.entries() for s in state.segments())
                main = self._segment(hashes, ids, "main")
                del hashes, ids
            except BaseException:
                with self._lock:
                    self._journal = None
                raise
            with self._lock:
                journal, self._journal = self._journal, None
                empty = self._empty()
                new = Segments(main, empty, empty)
                for added, op_ids in journal:
                    if added is not None:
                        new = self._added(new, added, op_ids)
                    else:
                        self._removed(new, op_ids)
                self._state = new

    def _added(self, state: Segments[_S], hashes: np.ndarray, ids: np.ndarray) -> Segments[_S]:
        hashes, ids = _concat([state.tail.entries(), (hashes, ids)])
        if len(ids) <= self.tail_limit:
            return Segments(state.main, state.delta, self._segment(hashes, ids, "tail"))
        # The tail is full: the delta is rebuilt with its live rows and the tail's.
        delta = self._segment(*_concat([state.delta.entries(), (hashes, ids)]), "delta")
        return Segments(state.main, delta, self._empty())

    @staticmethod
    def _removed(state: Segments[_S], ids: np.ndarray) -> int:
        return sum(segment.kill(ids) for segment in state.segments())


def _concat(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    hashes, ids = zip(*parts, strict=True)
    return np.concatenate(hashes), np.concatenate(ids)
