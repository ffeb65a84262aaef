"""Every stored PDQ hash within a Hamming radius of a query, at 10 million hashes.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with
Multi-Index Hashing", CVPR 2012): the 256 bits are cut into m chunks, and each chunk
has a table from its value to the rows holding that value. With the generalised
pigeonhole principle (Qin et al., "GPH", ICDE 2018): if chunk i is probed at every
value within s_i bits of the query's chunk, and sum(s_i) >= r - m + 1, then every
hash within r differs from the query by at most s_i bits in some chunk i, so it is
among the candidates. A chunk with s_i = -1 is not probed. Candidates are then
checked against the full 256 bits, so the answer is exactly brute force's.

Chunk widths follow the size of the data: Norouzi et al. find the best width near
log2(N) bits; here a cost model measured on this code picks m, with the direct tables
(2^b offsets per chunk) kept under half the size of the row lists. At 10M that is
m = 12 chunks of 21 and 22 bits and 977 MiB in all (m = 11 would be ~25 % faster and
take 1.26 GiB). Where clustered data makes a query's buckets huge, the query scans
every row instead, so the worst case is brute force.

Shape after python-threatexchange's ``signal_type/index.py``: ``build`` from
entries, ``add``, ``query``; plus ``remove`` and ``compact``, over main, delta and tail
segments (``relay.hashing.segments``): recent adds go to a small tail scanned in full,
then to a delta segment with its own tables. numpy only, no compiled extension.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from relay.hashing.base import Found, as_ids, ranges
from relay.hashing.pdq import Pdq
from relay.hashing.segments import Part, SegmentedIndex

__all__ = ["BITS", "WORDS", "PdqIndex", "as_words"]

#: PDQ bits, and 64-bit words per hash.
BITS = 256
WORDS = BITS // 64

# Tail entries scanned in full before they are moved into the delta's tables.
_TAIL_LIMIT = 4096
# Offsets tables (2^b entries per chunk) may take at most this share of the row lists.
_TABLE_RATIO = 0.5
# The cost model, in units of one candidate checked (row lookup, hash gather, XOR,
# popcount: about 38 ns at 10M on the 2-core development machine). Measured there: a
# probe (offset lookups, the start of a run of rows) costs about 2, a row scanned by
# brute force 0.14, and a query through the tables a fixed ~80 us of numpy calls.
_PROBE_COST = 2.0
_SCAN_COST = 0.14
_QUERY_COST = 2000.0
# Queries searched in one vectorised pass by query_batch: more spills the temporaries
# out of the caches (measured at 10M: 4-16 are within a few percent of each other).
_BATCH = 16
# Candidates checked at once: their temporaries (about 40 bytes each) stay in L2.
_VERIFY_BLOCK = 1 << 14
# Rows XORed at once when scanning: bounds the temporaries (8 MiB).
_SCAN_BLOCK = 1 << 16
_SAVE_VERSION = 1


def as_words(hashes: str | Iterable[str] | np.ndarray) -> np.ndarray:
    """PDQ hashes as an (N, 4) array of native uint64 words, most significant first.

    Takes 64-digit hex strings (one or many), (N, 4) or (4,) uint64 words, or (N, 32)
    bytes as the hex spells them.
    """
    if isinstance(hashes, str):
        hashes = [hashes]
    if isinstance(hashes, np.ndarray):
        if hashes.dtype == np.uint64 and hashes.shape[-1] == WORDS and hashes.ndim <= 2:
            return np.ascontiguousarray(hashes.reshape(-1, WORDS))
        if hashes.dtype == np.uint8 and hashes.shape[-1] == BITS // 8 and hashes.ndim <= 2:
            packed = np.ascontiguousarray(hashes.reshape(-1, BITS // 8)).view(">u8")
            return packed.astype(np.uint64)
        raise ValueError(f"PDQ hashes must be (N, 4) uint64 or (N, 32) uint8, not {hashes.shape}")
    values = [Pdq.validate(v) for v in hashes]
    if not values:
        return np.zeros((0, WORDS), dtype=np.uint64)
    packed = np.frombuffer(bytes.fromhex("".join(values)), dtype=">u8")
    return packed.astype(np.uint64).reshape(-1, WORDS)


def _radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 0:
        raise ValueError(f"radius must be an integer >= 0, not {radius!r}")
    return int(radius)


# -- chunk layout -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Layout:
    """m chunks of consecutive bits (MSB first, as the hex reads) and where their
    tables start in the one flat offsets array.

    Tables lie end to end, widest first, so each starts at a multiple of its own size:
    a probe's slot is then ``(base | key) ^ flip``, one XOR per probe, and the end of a
    table's last bucket is the start of the next table (or the final sentinel).
    """

    bits: tuple[int, ...]
    base: np.ndarray  # (m,) uint64 first slot of each chunk's table
    size: int  # slots in all: sum(2^b) + 1
    # Key of chunk c from words W: ((W[j1] << left) >> right) | ((W[j2] >> low) & lowmask);
    # the second term brings the bits of a chunk that runs into the next word.
    j1: np.ndarray
    left: np.ndarray
    right: np.ndarray
    j2: np.ndarray
    low: np.ndarray
    lowmask: np.ndarray

    @classmethod
    def of(cls, bits: Sequence[int]) -> _Layout:
        bits = tuple(int(b) for b in bits)
        if sum(bits) != BITS or not all(1 <= b <= 32 for b in bits):
            raise ValueError(f"chunks must be 1..32 bits and cover {BITS} bits: {bits}")
        if any(a < b for a, b in itertools.pairwise(bits)):
            raise ValueError(f"chunks must be given widest first: {bits}")
        starts = np.cumsum((0, *bits[:-1]))
        j1, j2, left, right, low, lowmask = [], [], [], [], [], []
        for start, b in zip(starts, bits, strict=True):
            word, at = divmod(int(start), 64)
            j1.append(word)
            left.append(at)
            right.append(64 - b)
            spill = at + b - 64  # bits that come from the next word
            j2.append(word + 1 if spill > 0 else word)
            low.append(64 - spill if spill > 0 else 0)
            lowmask.append((1 << spill) - 1 if spill > 0 else 0)
        sizes = [1 << b for b in bits]
        u64 = np.uint64
        return cls(
            bits,
            np.cumsum((0, *sizes[:-1])).astype(u64),
            sum(sizes) + 1,
            np.array(j1, dtype=np.intp),
            np.array(left, dtype=u64),
            np.array(right, dtype=u64),
            np.array(j2, dtype=np.intp),
            np.array(low, dtype=u64),
            np.array(lowmask, dtype=u64),
        )

    @classmethod
    def even(cls, m: int) -> _Layout:
        """m chunks as equal as can be, the wider ones first."""
        wide = BITS % m
        return cls.of([BITS // m + 1] * wide + [BITS // m] * (m - wide))

    def slots(self, words: np.ndarray) -> np.ndarray:
        """(Q, m) uint64: the slot of each chunk's own value, ``base | key``."""
        key: np.ndarray = words[:, self.j1] << self.left
        key >>= self.right
        key |= (words[:, self.j2] >> self.low) & self.lowmask
        key |= self.base
        return key

    def key(self, words: np.ndarray, c: int) -> np.ndarray:
        """(N,) uint32 values of chunk c, for building its table."""
        key: np.ndarray = words[:, self.j1[c]] << self.left[c]
        key >>= self.right[c]
        if self.lowmask[c]:
            key |= (words[:, self.j2[c]] >> self.low[c]) & self.lowmask[c]
        return key.astype(np.uint32)


def _cost(b: int, s: int, n: int) -> float:
    """Expected work of probing a b-bit chunk at every value within s bits, on uniform data."""
    return _probes(b, s) * (_PROBE_COST + n / (1 << b))


@lru_cache(maxsize=256)
def _probes(b: int, s: int) -> int:
    return sum(math.comb(b, k) for k in range(s + 1))


def _thresholds(bits: Sequence[int], radius: int, n: int) -> list[int]:
    """Per-chunk probe radii s_i with sum(s_i) = radius - m + 1 (s_i = -1: not probed),
    chosen greedily: the costs are convex in s_i, so greedy is optimal."""
    s = [-1] * len(bits)
    for _ in range(radius + 1):
        best = min(
            (i for i in range(len(bits)) if s[i] < bits[i]),
            key=lambda i: _cost(bits[i], s[i] + 1, n) - _cost(bits[i], s[i], n),
            default=None,
        )
        if best is None:  # radius >= 256: every chunk is probed at every value
            break
        s[best] += 1
    return s


def _plan_cost(bits: Sequence[int], s: Sequence[int], n: int) -> float:
    return sum(_cost(b, k, n) for b, k in zip(bits, s, strict=True) if k >= 0)


def _choose_layout(n: int, radius: int) -> _Layout | None:
    """The chunking with the least expected work at ``radius`` whose tables fit; None
    when scanning all n rows costs less."""
    best: tuple[float, int] | None = None
    for m in range(8, 33):
        bits = _Layout.even(m).bits
        if sum(1 << b for b in bits) > _TABLE_RATIO * m * n:
            continue
        cost = _plan_cost(bits, _thresholds(bits, radius, n), n)
        if best is None or cost < best[0]:
            best = (cost, m)
    if best is None or best[0] + _QUERY_COST >= _SCAN_COST * n:
        return None
    return _Layout.even(best[1])


@lru_cache(maxsize=256)
def _flips(b: int, s: int) -> np.ndarray:
    """Every b-bit value with at most s bits set: the XOR masks of one chunk's probes."""
    masks = [0]
    for k in range(1, s + 1):
        masks += [sum(1 << i for i in c) for c in itertools.combinations(range(b), k)]
    out = np.array(masks, dtype=np.uint64)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class _Plan:
    """The probes of one radius: slot = (base | key)[chunk] ^ flip."""

    chunk: np.ndarray  # (P,) intp
    flip: np.ndarray  # (P,) uint64


# -- one segment: hashes with their tables --------------------------------------------


def _group(keys: np.ndarray, bits: int) -> np.ndarray:
    """Row order grouping equal keys. Two stable radix passes over uint16 digits
    (numpy sorts 16-bit keys by radix): 0.85 s for 10M rows, against 1.1-1.4 s for one
    argsort of the uint32 keys. argsort holds the GIL, so threads would not help."""
    if bits <= 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    low_bits = bits // 2
    order = np.argsort((keys & ((1 << low_bits) - 1)).astype(np.uint16), kind="stable")
    high = (keys >> low_bits).astype(np.uint16)[order]
    return order[np.argsort(high, kind="stable")]


@dataclass(eq=False)
class _Segment:
    """Hashes sorted by id, a tombstone mask, and (if big enough) one table per chunk.

    The tables are CSR: ``rows[offsets[slot] : offsets[slot + 1]]`` are the rows whose
    chunk has the slot's value; the m row lists lie end to end in ``rows``.
    """

    hashes: np.ndarray  # (n, 4) uint64
    ids: np.ndarray  # (n,) int64, sorted
    alive: np.ndarray  # (n,) bool
    layout: _Layout | None = None
    offsets: np.ndarray | None = None  # (layout.size,) uint32, or int64 past 2^32 rows
    rows: np.ndarray | None = None  # (m * n,) uint32
    live: int = 0
    _plans: dict[int, _Plan | None] = field(default_factory=dict, repr=False)

    @classmethod
    def empty(cls) -> _Segment:
        return cls(np.zeros((0, WORDS), np.uint64), np.zeros(0, np.int64), np.zeros(0, bool))

    @classmethod
    def build(
        cls,
        hashes: np.ndarray,
        ids: np.ndarray,
        *,
        radius: int = Pdq.threshold,
        chunks: Sequence[int] | None = None,
        tables: bool = True,
    ) -> _Segment:
        """A segment over copies of ``hashes`` and ``ids``, with tables if ``tables`` and
        it is big enough; ``chunks`` (bit widths) overrides the layout chosen for
        ``radius``."""
        n = len(ids)
        if n and np.any(ids[1:] < ids[:-1]):
            order = np.argsort(ids, kind="stable")
            hashes, ids = hashes[order], ids[order]
        else:
            hashes, ids = hashes.copy(), ids.copy()
        segment = cls(hashes, ids, np.ones(n, dtype=bool), live=n)
        if not tables:
            return segment
        layout = _Layout.of(chunks) if chunks is not None else _choose_layout(n, radius)
        if layout is None:
            return segment
        if n >= 1 << 32:
            raise ValueError(f"a segment holds fewer than 2^32 hashes, not {n}")
        m = len(layout.bits)
        offsets: npt.NDArray[np.integer[Any]] = np.empty(
            layout.size, dtype=np.uint32 if m * n < 1 << 32 else np.int64
        )
        rows = np.empty(m * n, dtype=np.uint32)
        for c, b in enumerate(layout.bits):
            key = layout.key(hashes, c)
            rows[c * n : (c + 1) * n] = _group(key, b)
            table = offsets[int(layout.base[c]) : int(layout.base[c]) + (1 << b)]
            table[0] = c * n
            np.cumsum(np.bincount(key, minlength=1 << b)[:-1], out=table[1:])
            table[1:] += c * n
        offsets[-1] = m * n
        segment.layout, segment.offsets, segment.rows = layout, offsets, rows
        return segment

    @property
    def nbytes(self) -> int:
        arrays = (self.hashes, self.ids, self.alive, self.offsets, self.rows)
        return sum(a.nbytes for a in arrays if a is not None)

    def __len__(self) -> int:
        return len(self.ids)

    def kill(self, ids: np.ndarray) -> int:
        """Tombstone every live row with one of ``ids``; how many there were."""
        if not len(self.ids) or not len(ids):
            return 0
        lo = np.searchsorted(self.ids, ids, "left")
        hi = np.searchsorted(self.ids, ids, "right")
        found = hi > lo
        if not found.any():
            return 0
        rows = ranges(lo[found], hi[found])
        rows = rows[self.alive[rows]]
        self.alive[rows] = False
        self.live -= len(rows)
        return len(rows)

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, ids) of the live rows."""
        alive = self.alive.copy()  # one copy: a remove may flip it meanwhile
        return self.hashes[alive], self.ids[alive]

    def row_of(self, entry_id: int) -> int | None:
        """A live row holding ``entry_id``, or None (the id may have dead rows too)."""
        lo = int(np.searchsorted(self.ids, entry_id, "left"))
        hi = int(np.searchsorted(self.ids, entry_id, "right"))
        live = np.flatnonzero(self.alive[lo:hi])
        return int(lo + live[0]) if len(live) else None

    def plan(self, radius: int) -> _Plan | None:
        """The probes for ``radius``, or None where a scan costs less."""
        if radius in self._plans:
            return self._plans[radius]
        plan = None
        n = len(self.ids)
        if self.layout is not None:
            bits = self.layout.bits
            s = _thresholds(bits, radius, n)
            if _plan_cost(bits, s, n) + _QUERY_COST < _SCAN_COST * n:
                probes = [(c, _flips(bits[c], k)) for c, k in enumerate(s) if k >= 0]
                chunk = np.concatenate([np.full(len(f), c, np.intp) for c, f in probes])
                plan = _Plan(chunk, np.concatenate([f for _, f in probes]))
        self._plans[radius] = plan
        return plan

    def search(self, words: np.ndarray, radius: int) -> np.ndarray:
        """Every live row within ``radius`` of each of the (Q, 4) ``words``, as sorted
        unique keys (see ``_key``): by query, then distance, then row (= id order)."""
        n = len(self.ids)
        plan = self.plan(radius) if n else None
        if plan is None:
            return self.scan(words, radius)
        assert self.offsets is not None and self.rows is not None and self.layout is not None
        nq = len(words)
        slot = self.layout.slots(words)[:, plan.chunk]
        slot ^= plan.flip
        slot = slot.view(np.intp)
        starts = self.offsets.take(slot)
        slot += 1
        lengths = self.offsets.take(slot).astype(np.intp)
        lengths -= starts
        totals = lengths.sum(axis=1)
        keys = []
        # Clustered data can make a query's buckets huge: past this, scanning is cheaper.
        heavy = totals > _SCAN_COST * n
        if heavy.any():
            scanned = np.flatnonzero(heavy)
            keys.append(self.scan(words[scanned], radius, scanned))
            lengths[scanned] = 0
            totals[scanned] = 0
        lengths = lengths.reshape(-1)
        ends = np.cumsum(lengths)
        count = int(ends[-1])
        if count:
            # Candidate positions in ``rows`` without a Python loop: each bucket's
            # start, repeated over its length, plus a running count.
            shift = starts.reshape(-1) - ends
            shift += lengths
            position = np.repeat(shift, lengths)
            position += np.arange(count)
            query = np.repeat(np.arange(nq), totals) if nq > 1 else None
            # Blocks keep the temporaries in the caches when a query has many candidates.
            for start in range(0, count, _VERIFY_BLOCK):
                rows = self.rows.take(position[start : start + _VERIFY_BLOCK])
                diff = self.hashes.take(rows, axis=0)
                if query is None:
                    _xor(diff, words[0])
                    which = None
                else:
                    which = query[start : start + _VERIFY_BLOCK]
                    np.bitwise_xor(diff, words.take(which, axis=0), out=diff)
                hit, dist = _within(diff, radius)
                rows = rows[hit]
                keep = self.alive[rows]
                keys.append(
                    _key(which[hit][keep] if which is not None else 0, dist[keep], rows[keep])
                )
        # A row found through several chunks appears once per chunk: keep one.
        return _sorted_unique(keys)

    def scan(self, words: np.ndarray, radius: int, numbers: np.ndarray | None = None) -> np.ndarray:
        """Brute force over every row: the fallback, and the path of small segments.
        Same keys as ``search``; ``numbers`` renumbers the queries."""
        n = len(self.ids)
        keys = []
        diff = np.empty((min(n, _SCAN_BLOCK), WORDS), np.uint64)
        for q, one in enumerate(words):
            number = q if numbers is None else int(numbers[q])
            for start in range(0, n, _SCAN_BLOCK):
                block = self.hashes[start : start + _SCAN_BLOCK]
                hit, dist = _within(_xor(block, one, diff[: len(block)]), radius)
                keep = self.alive[hit + start]
                keys.append(_key(number, dist[keep], hit[keep] + start))
        return _sorted_unique(keys)


def _key(query: np.ndarray | int, dist: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(query, distance, row) packed in one int64, in that order of significance, so one
    np.sort orders matches and brings duplicates together (np.unique's argsort costs
    ten times more). Rows < 2^32, distances <= 256 (9 bits), queries < 2^22."""
    key = dist.astype(np.int64) << 32
    key |= rows
    if isinstance(query, np.ndarray):
        key |= query.astype(np.int64) << 41
    elif query:
        key |= query << 41
    return key


def _sorted_unique(keys: list[np.ndarray]) -> np.ndarray:
    if not keys:
        return np.zeros(0, np.int64)
    key = np.concatenate(keys) if len(keys) > 1 else keys[0]
    if len(key) > 1:
        key.sort()
        new = np.empty(len(key), bool)
        new[0] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        if not new.all():
            key = key[new]
    return key


# Rows XORed with a query by broadcasting (rows, 256) against the query repeated 64
# times: a (K, 4) ^ (4,) broadcast runs numpy's inner loop 4 elements at a time,
# several times slower.
_XOR_ROWS = 64


def _xor(rows: np.ndarray, query: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(K, 4) ``rows`` XOR ``query`` (4,), into ``out`` (default: in place)."""
    out = rows if out is None else out
    whole = len(rows) - len(rows) % _XOR_ROWS
    if whole:
        wide = (-1, _XOR_ROWS * WORDS)
        np.bitwise_xor(
            rows[:whole].reshape(wide), np.tile(query, _XOR_ROWS), out=out[:whole].reshape(wide)
        )
    if whole < len(rows):
        np.bitwise_xor(rows[whole:], query, out=out[whole:])
    return out


def _within(diff: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the (K, 4) XORs ``diff`` with at most ``radius`` bits set, and their counts."""
    counts = np.bitwise_count(diff)
    # The four byte counts of a row summed by one multiply: byte 3 of the product is
    # their sum modulo 256, so only a full 256 (a hash's complement) wraps, to 0.
    total = counts.reshape(-1).view(np.uint32) * np.uint32(0x01010101)
    total >>= np.uint32(24)
    hit = np.flatnonzero(total <= radius)
    dist = total[hit].astype(np.int32)
    zero = np.flatnonzero(dist == 0)
    wrapped = zero[counts[hit[zero], 0] != 0]
    if len(wrapped):
        dist[wrapped] = 256
        if radius < 256:
            keep = dist <= radius
            hit, dist = hit[keep], dist[keep]
    return hit, dist


# -- the index ------------------------------------------------------------------------


class PdqIndex(SegmentedIndex[_Segment]):
    """PDQ hashes with int64 ids (bank entry ids); ``query`` returns every id within a
    radius, exactly as brute force would, nearest first (then by id).

    Queries take no lock and see one state of the segments (a remove racing a query may
    or may not be seen by it). ``add`` and ``remove`` are visible to the next query;
    ``compact`` (O(N), 13 s at 10M) may run in a thread while they go on.
    """

    def __init__(
        self,
        *,
        radius: int = Pdq.threshold,
        chunks: Sequence[int] | None = None,
        tail_limit: int = _TAIL_LIMIT,
    ) -> None:
        self.radius = _radius(radius)
        # Chunk widths for the main tables (widest first); None: chosen by size.
        self.chunks = _Layout.of(chunks).bits if chunks is not None else None
        super().__init__(tail_limit=tail_limit)

    def _empty(self) -> _Segment:
        return _Segment.empty()

    def _segment(self, hashes: np.ndarray, ids: np.ndarray, part: Part) -> _Segment:
        if part == "tail":  # scanned: tables would cost more than they save
            return _Segment.build(hashes, ids, tables=False)
        # The delta's layout follows its own size; the main one may be given.
        chunks = self.chunks if part == "main" else None
        return _Segment.build(hashes, ids, radius=self.radius, chunks=chunks)

    def _entries(
        self, hashes: str | Iterable[str] | np.ndarray, ids: Iterable[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return _entries(hashes, ids)

    @classmethod
    def build(
        cls,
        hashes: str | Iterable[str] | np.ndarray,
        ids: Iterable[int] | np.ndarray,
        *,
        radius: int = Pdq.threshold,
        chunks: Sequence[int] | None = None,
        tail_limit: int = _TAIL_LIMIT,
    ) -> PdqIndex:
        """An index over ``hashes`` (see ``as_words``) with their ``ids``, all in the
        main tables (12 s for 10M hashes). ``radius`` is the default of ``query``, and
        the one the chunks are chosen for."""
        index = cls(radius=radius, chunks=chunks, tail_limit=tail_limit)
        words, ids = _entries(hashes, ids)
        main = _Segment.build(words, ids, radius=index.radius, chunks=index.chunks)
        index._state = replace(index._state, main=main)
        return index

    def hash_of(self, entry_id: int) -> str | None:
        """The hash stored under ``entry_id`` (a live one), as 64 hex digits; None if none.
        Matches report the bank entry's own hash, not the query's."""
        for segment in self._state.segments():
            row = segment.row_of(entry_id)
            if row is not None:
                words: np.ndarray = segment.hashes[row]
                return words.astype(">u8").tobytes().hex()
        return None

    # -- queries ------------------------------------------------------------------

    def query(
        self, hash: str | np.ndarray, radius: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of every entry within ``radius`` (default: the index's) of
        one hash, nearest first, then by id."""
        words = as_words(hash)
        if len(words) != 1:
            raise ValueError(f"query takes one hash, not {len(words)}: see query_batch")
        _, ids, dist = self._search(words, self._radius_of(radius))
        return ids, dist

    def query_batch(
        self, hashes: str | Iterable[str] | np.ndarray, radius: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``query`` for each hash; vectorised over groups of queries, so cheaper per
        query than one at a time."""
        radius = self._radius_of(radius)
        words = as_words(hashes)
        answers: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(words), _BATCH):
            group = words[start : start + _BATCH]
            q, ids, dist = self._search(group, radius)
            cuts = np.searchsorted(q, np.arange(1, len(group)))
            answers += zip(np.split(ids, cuts), np.split(dist, cuts), strict=True)
        return answers

    def best(self, queries: Sequence[str], radius: int | None = None) -> Found | None:
        """The nearest live entry within ``radius`` of any query, then the oldest, then
        the first query that found it (``KindIndex``); one batched search."""
        if not queries or not len(self):
            return None
        found: tuple[int, int, int] | None = None  # distance, entry id, query
        for number, (ids, distances) in enumerate(self.query_batch(queries, radius)):
            # Nearest first, then the oldest entry: each query's first answer is its best.
            if len(ids) and (found is None or (distances[0], ids[0]) < found[:2]):
                found = (int(distances[0]), int(ids[0]), number)
        if found is None:
            return None
        return Found(*found, self.hash_of(found[1]) or "")

    def _radius_of(self, radius: int | None) -> int:
        return self.radius if radius is None else _radius(radius)

    def _search(self, words: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query number, id, distance) of every match, over one state of every segment,
        ordered by query, distance, id."""
        parts = []
        for segment in self._state.segments():
            if segment.live:
                key = segment.search(words, radius)
                if len(key):
                    rows = (key & 0xFFFFFFFF).astype(np.intp)
                    dist = ((key >> 32) & 0x1FF).astype(np.int32)
                    parts.append((key >> 41, segment.ids[rows], dist))
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
        if len(parts) == 1:  # ids ascend with rows: already in order
            return parts[0]
        q, ids, dist = (np.concatenate(x) for x in zip(*parts, strict=True))
        order = np.lexsort((ids, dist, q))
        return q[order], ids[order], dist[order]

    # -- persistence ---------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the index to one uncompressed .npz file (replaced atomically), tables
        included, so ``load`` needs no rebuild of the main tables."""
        path = Path(path)
        state = self._state
        main = state.main
        extra = [(s, s.alive.copy()) for s in (state.delta, state.tail)]
        arrays: dict[str, np.ndarray] = {
            "hashes": main.hashes,
            "ids": main.ids,
            "alive": main.alive.copy(),
            "extra_hashes": np.concatenate([s.hashes[alive] for s, alive in extra]),
            "extra_ids": np.concatenate([s.ids[alive] for s, alive in extra]),
        }
        meta: dict[str, object] = {
            "version": _SAVE_VERSION,
            "radius": self.radius,
            "chunks": self.chunks,
        }
        if main.layout is not None:
            assert main.offsets is not None and main.rows is not None
            arrays["offsets"], arrays["rows"] = main.offsets, main.rows
            meta["layout"] = list(main.layout.bits)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                np.savez(out, allow_pickle=False, **arrays)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path, *, tail_limit: int = _TAIL_LIMIT) -> PdqIndex:
        """An index as ``save`` wrote it; ValueError if the file is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            meta = json.loads(arrays["meta"].tobytes())
            hashes, ids, alive = arrays["hashes"], arrays["ids"], arrays["alive"]
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a saved PDQ index ({exc})") from exc
        if meta.get("version") != _SAVE_VERSION:
            raise ValueError(f"{path}: saved PDQ index version {meta.get('version')} unknown")
        n = len(ids)
        if hashes.shape != (n, WORDS) or alive.shape != (n,) or hashes.dtype != np.uint64:
            raise ValueError(f"{path}: saved PDQ index arrays disagree in shape")
        index = cls(radius=meta["radius"], chunks=meta["chunks"], tail_limit=tail_limit)
        if n and np.any(ids[1:] < ids[:-1]):
            raise ValueError(f"{path}: saved PDQ index ids are not sorted")
        main = _Segment(hashes, ids, alive, live=int(alive.sum()))
        if "layout" in meta:
            layout = _Layout.of(meta["layout"])
            offsets, rows = arrays["offsets"], arrays["rows"]
            if offsets.shape != (layout.size,) or rows.shape != (len(layout.bits) * n,):
                raise ValueError(f"{path}: saved PDQ index tables disagree with its layout")
            main.layout, main.offsets, main.rows = layout, offsets, rows
        index._state = replace(index._state, main=main)
        index.add(arrays["extra_hashes"], arrays["extra_ids"])
        return index


def _entries(
    hashes: str | Iterable[str] | np.ndarray, ids: Iterable[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    words, ids = as_words(hashes), as_ids(ids)
    if len(words) != len(ids):
        raise ValueError(f"{len(words)} hashes but {len(ids)} ids")
    return words, ids
