"""The PDQ index answers exactly what brute force answers, whatever the data and radius.

Every test compares with a plain numpy scan over all stored hashes: on uniform random
hashes, on real hashes with clusters of edits (fixtures/pdq/index), at the radius
boundary, after adds and removes, and after a save and load.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
import pytest

import relay.hashing.pdq_index as pdq_index
from relay.hashing import Pdq
from relay.hashing.pdq_index import PdqIndex, as_words

INDEX_FIXTURES = Path(__file__).parent.parent / "fixtures" / "pdq" / "index"
RADII = (0, 10, 31, 40)


def read_hashes(name: str) -> np.ndarray:
    return as_words(line.split()[0] for line in (INDEX_FIXTURES / name).read_text().splitlines())


def flip(words: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of one (4,) hash with ``bits`` distinct bits flipped."""
    out = words.copy()
    for bit in rng.choice(256, bits, replace=False):
        out[bit // 64] ^= np.uint64(1) << np.uint64(63 - bit % 64)
    return out


def brute(hashes: np.ndarray, ids: np.ndarray, query: np.ndarray, radius: int):
    distances = np.bitwise_count(hashes ^ query).sum(axis=1)
    near = distances <= radius
    order = np.lexsort((ids[near], distances[near]))
    return ids[near][order], distances[near][order]


@pytest.fixture
def tables(monkeypatch):
    """Tables wherever they can be built: with the real cost model, a segment of a few
    thousand rows (all a fast test needs) is cheaper to scan, and would be."""
    monkeypatch.setattr(pdq_index, "_SCAN_COST", 100.0)


def assert_exact(index: PdqIndex, hashes, ids, queries, radius: int) -> int:
    """Every query's answer, single and batched, equals brute force's; how many found."""
    found = 0
    batch = index.query_batch(queries, radius)
    assert len(batch) == len(queries)
    for query, (batch_ids, batch_dist) in zip(queries, batch, strict=True):
        want_ids, want_dist = brute(hashes, ids, query, radius)
        got_ids, got_dist = index.query(query, radius)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_dist, want_dist)
        np.testing.assert_array_equal(batch_ids, want_ids)
        np.testing.assert_array_equal(batch_dist, want_dist)
        assert got_ids.dtype == np.int64
        found += len(want_ids)
    return found


def random_set(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
    ids = rng.permutation(n).astype(np.int64) * 7 + 3  # not in row order
    return rng, hashes, ids


def near_queries(hashes: np.ndarray, rng: np.random.Generator, count: int, radius: int):
    """Stored hashes moved within ``radius`` (half) or up to 10 bits past it (half), and
    a few random hashes."""
    picks = rng.integers(0, len(hashes), count)
    bits = [
        rng.integers(0, radius + 1) if i % 2 else rng.integers(radius + 1, radius + 11)
        for i in range(count)
    ]
    near = [flip(hashes[i], int(b), rng) for i, b in zip(picks, bits, strict=True)]
    far = rng.integers(0, 2**64, size=(5, 4), dtype=np.uint64)
    return np.vstack([np.array(near), far])


@functools.cache
def clustered_set(seed: int = 0):
    """Real hashes (with their own edit families) and 0-20 bit edits of each."""
    rng = np.random.default_rng(seed)
    real = read_hashes("haystack.txt")
    edits = [flip(h, int(rng.integers(0, 21)), rng) for h in real for _ in range(12)]
    hashes = np.vstack([real, np.array(edits)])
    ids = np.arange(len(hashes), dtype=np.int64) + 1
    return rng, hashes, ids


# -- exactness ------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [None, (16,) * 16, (13,) * 16 + (12,) * 4])
@pytest.mark.parametrize("radius", RADII)
def test_random_hashes_match_brute_force(chunks, radius, tables):
    rng, hashes, ids = random_set(10_000)
    index = PdqIndex.build(hashes, ids, chunks=chunks)
    assert index._state.main.layout is not None  # the tables are what is tested
    queries = near_queries(hashes, rng, 40, radius)
    found = assert_exact(index, hashes, ids, queries, radius)
    assert found >= 10  # some queries are within the radius


@pytest.mark.parametrize("radius", (10, 31, 40))
def test_clustered_real_hashes_match_brute_force(radius, tables):
    rng, hashes, ids = clustered_set()
    index = PdqIndex.build(hashes, ids)
    assert index._state.main.layout is not None
    needles = read_hashes("needles.txt")
    queries = np.vstack([needles, near_queries(hashes, rng, 30, radius)])
    found = assert_exact(index, hashes, ids, queries, radius)
    # Clusters: a needle finds its whole family of edits, not just itself.
    assert found > 3 * len(needles)


def test_huge_buckets_fall_back_to_a_scan_and_stay_exact(monkeypatch):
    """Thousands of edits of one photo share chunk values: a query there costs more
    through the tables than a scan, and the index scans instead."""
    monkeypatch.setattr(pdq_index, "_SCAN_COST", 1.0)  # tables for 6000 rows
    rng = np.random.default_rng(3)
    seed = read_hashes("haystack.txt")[0]
    hashes = np.array([flip(seed, int(rng.integers(0, 6)), rng) for _ in range(6000)])
    ids = np.arange(len(hashes), dtype=np.int64)
    index = PdqIndex.build(hashes, ids, chunks=(16,) * 16)
    segment = index._state.main
    assert segment.plan(31) is not None
    scanned = []
    real_scan = segment.scan
    segment.scan = lambda words, *rest: scanned.append(len(words)) or real_scan(words, *rest)
    queries = np.array([flip(seed, b, rng) for b in (0, 3, 20, 33)])
    assert_exact(index, hashes, ids, queries, 31)
    assert scanned  # the fallback ran


def test_radius_beyond_what_tables_help_scans_exactly():
    _, hashes, ids = random_set(20_000, seed=4)
    index = PdqIndex.build(hashes, ids)
    assert index._state.main.layout is not None
    assert index._state.main.plan(100) is None
    query = hashes[17]
    assert_exact(index, hashes, ids, query[None], 100)
    assert_exact(index, hashes, ids, query[None], 256)  # everything


def test_a_complement_is_256_bits_away():
    """Byte counts are summed modulo 256 on the fast path: a full 256 must not read as 0."""
    _, hashes, ids = random_set(3000)
    index = PdqIndex.build(hashes, ids)
    complement = ~hashes[9]
    assert ids[9] not in index.query(complement, 255)[0]
    got_ids, got_dist = index.query(complement, 256)
    assert got_dist[list(got_ids).index(ids[9])] == 256
    assert ids[9] not in index.query(complement, 0)[0]


@pytest.mark.parametrize("radius", (0, 10, 31, 40))
def test_radius_boundary(radius, tables):
    """A hash exactly ``radius`` bits away is found; one bit more is not."""
    rng, hashes, ids = random_set(10_000, seed=radius)
    index = PdqIndex.build(hashes, ids)
    assert index._state.main.plan(radius) is not None
    for row in rng.integers(0, len(hashes), 20):
        at = flip(hashes[row], radius, rng)
        got_ids, got_dist = index.query(at, radius)
        assert ids[row] in got_ids
        assert got_dist[list(got_ids).index(ids[row])] == radius
        beyond = at.copy()
        # One more bit, one not flipped yet: distance radius + 1 from the stored hash.
        differs = np.unpackbits((beyond ^ hashes[row]).astype(">u8").view(np.uint8))
        bit = int(np.flatnonzero(differs == 0)[0])
        beyond[bit // 64] ^= np.uint64(1) << np.uint64(63 - bit % 64)
        assert ids[row] not in index.query(beyond, radius)[0]
        assert ids[row] in index.query(beyond, radius + 1)[0]


@pytest.mark.parametrize("chunks", [None, (16,) * 16])
@pytest.mark.parametrize("radius", (10, 31, 40))
def test_bits_spread_evenly_over_the_chunks(chunks, radius, tables):
    """The pigeonhole's worst case: flips spread so every chunk holds as many as it can
    (floor or ceil of radius / m). One probe too few in the plan misses these."""
    rng, hashes, ids = random_set(10_000, seed=11)
    index = PdqIndex.build(hashes, ids, chunks=chunks)
    bits = index._state.main.layout.bits
    starts = np.cumsum((0, *bits[:-1]))
    m = len(bits)
    for rotation in range(m):
        per_chunk = [radius // m + (1 if (c - rotation) % m < radius % m else 0) for c in range(m)]
        row = int(rng.integers(len(hashes)))
        query = hashes[row].copy()
        for start, width, count in zip(starts, bits, per_chunk, strict=True):
            for bit in start + rng.choice(width, count, replace=False):
                query[bit // 64] ^= np.uint64(1) << np.uint64(63 - bit % 64)
        got_ids, got_dist = index.query(query, radius)
        assert ids[row] in got_ids, (rotation, per_chunk)
        assert got_dist[list(got_ids).index(ids[row])] == radius


def test_default_radius_is_pdq_threshold():
    _, hashes, ids = random_set(3000)
    index = PdqIndex.build(hashes, ids)
    assert index.radius == Pdq.threshold == 31
    rng = np.random.default_rng(9)
    assert ids[5] in index.query(flip(hashes[5], 31, rng))[0]
    assert ids[5] not in index.query(flip(hashes[5], 32, rng))[0]
    per_bank = PdqIndex.build(hashes, ids, radius=10)
    assert ids[5] not in per_bank.query(flip(hashes[5], 11, rng))[0]


def test_duplicate_hashes_with_different_ids():
    _, hashes, ids = random_set(3000)
    twice = np.vstack([hashes, hashes[:10]])
    more_ids = np.concatenate([ids, np.arange(10, dtype=np.int64) + 10**12])
    index = PdqIndex.build(twice, more_ids)
    got_ids, got_dist = index.query(hashes[4], 0)
    assert list(got_ids) == sorted([ids[4], 10**12 + 4])
    assert list(got_dist) == [0, 0]
    assert index.remove([ids[4]]) == 1
    assert list(index.query(hashes[4], 0)[0]) == [10**12 + 4]


def test_hash_of_an_id(tables):
    _, hashes, ids = random_set(5000)
    index = PdqIndex.build(hashes[:4000], ids[:4000], tail_limit=100)
    hex_of = [h.astype(">u8").tobytes().hex() for h in hashes[:3]]
    assert index.hash_of(int(ids[0])) == hex_of[0]
    assert index.hash_of(10**15) is None
    index.add(hashes[4000:4050], ids[4000:4050])  # tail
    index.add(hashes[4050:], ids[4050:])  # delta
    assert index.hash_of(int(ids[4001])) == hashes[4001].astype(">u8").tobytes().hex()
    assert index.hash_of(int(ids[4900])) == hashes[4900].astype(">u8").tobytes().hex()
    index.remove([ids[1], ids[4001], ids[4900]])
    assert index.hash_of(int(ids[1])) is index.hash_of(int(ids[4001])) is None
    assert index.hash_of(int(ids[4900])) is None
    index.add(hashes[2:3], ids[1:2])  # id 1 again, with another hash
    assert index.hash_of(int(ids[1])) == hex_of[2]
    index.compact()
    assert index.hash_of(int(ids[2])) == index.hash_of(int(ids[1])) == hex_of[2]
    assert index.hash_of(int(ids[4001])) is None


def test_hex_strings_and_words_give_the_same_answer():
    _, hashes, ids = random_set(3000)
    index = PdqIndex.build(hashes, ids)
    text = hashes[8].astype(">u8").tobytes().hex()
    assert as_words(text).tolist() == [hashes[8].tolist()]
    as_bytes = np.frombuffer(bytes.fromhex(text), np.uint8)
    assert as_words(as_bytes).tolist() == [hashes[8].tolist()]
    np.testing.assert_array_equal(index.query(text)[0], index.query(hashes[8])[0])
    by_text = PdqIndex.build([text, text.upper()], [1, 2])
    assert list(by_text.query(text, 0)[0]) == [1, 2]


# -- changes without a rebuild -----------------------------------------------------------


def test_adds_and_removes_are_visible_at_once_and_after_compact(tables):
    rng, hashes, ids = random_set(16_105, seed=5)
    base = 10_000
    index = PdqIndex.build(hashes[:base], ids[:base], tail_limit=300)
    assert index._state.main.layout is not None
    live = np.zeros(len(hashes), bool)
    live[:base] = True
    queries = near_queries(hashes, rng, 25, 31)

    def check():
        assert len(index) == live.sum()
        for radius in (10, 31):
            assert_exact(index, hashes[live], ids[live], queries, radius)

    # One at a time into the tail, then enough to spill the tail into the delta's tables.
    for row in range(base, base + 5):
        index.add(hashes[row : row + 1], ids[row : row + 1])
        live[row] = True
        assert ids[row] in index.query(hashes[row], 0)[0]
    check()
    index.add(hashes[base + 5 : base + 6005], ids[base + 5 : base + 6005])
    live[base + 5 : base + 6005] = True
    assert index._state.delta.layout is not None
    index.add(hashes[base + 6005 :], ids[base + 6005 :])
    live[base + 6005 :] = True
    assert len(index._state.tail) > 0
    check()
    # Removes from the main tables, the delta and the tail.
    gone = np.concatenate([np.arange(0, 50), np.arange(base + 100, base + 150), [len(hashes) - 1]])
    assert index.remove(ids[gone]) == len(gone)
    assert index.remove(ids[gone]) == 0  # already gone
    live[gone] = False
    for row in gone[::10]:
        assert ids[row] not in index.query(hashes[row], 0)[0]
    check()
    assert index.pending > 0
    index.compact()
    assert index.pending == 0
    assert index._state.delta.live == index._state.tail.live == 0
    check()


def test_changes_during_compaction_are_kept(monkeypatch, tables):
    """compact() runs in a thread; adds and removes made meanwhile survive the swap."""
    rng, hashes, ids = random_set(12_000, seed=6)
    index = PdqIndex.build(hashes[:10_000], ids[:10_000])
    index.add(hashes[10_000:10_500], ids[10_000:10_500])
    started, go = threading.Event(), threading.Event()
    real_build = pdq_index._Segment.build

    def slow_build(*args, **kwargs):
        if len(args[1]) >= 10_000:  # the compaction's main build
            started.set()
            assert go.wait(10)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(pdq_index._Segment, "build", slow_build)
    worker = threading.Thread(target=index.compact)
    worker.start()
    assert started.wait(10)
    index.add(hashes[10_500:], ids[10_500:])  # during the build: seen at once
    assert ids[11_000] in index.query(hashes[11_000], 0)[0]
    index.remove(ids[:100])
    assert ids[5] not in index.query(hashes[5], 0)[0]
    go.set()
    worker.join(10)
    assert not worker.is_alive()
    live = np.ones(len(hashes), bool)
    live[:100] = False
    assert len(index) == live.sum()
    assert_exact(index, hashes[live], ids[live], near_queries(hashes, rng, 20, 31), 31)


def test_empty_index():
    index = PdqIndex()
    assert len(index) == 0
    ids, dist = index.query("0" * 64)
    assert ids.dtype == np.int64 and len(ids) == len(dist) == 0
    assert index.query_batch([]) == []
    assert [len(i) for i, _ in index.query_batch(["0" * 64, "f" * 64])] == [0, 0]
    built = PdqIndex.build(np.zeros((0, 4), np.uint64), [])
    assert len(built) == 0 and len(built.query("f" * 64)[0]) == 0
    index.add(["0" * 64], [1])
    assert index.remove([1]) == 1
    assert len(index.query("0" * 64)[0]) == 0
    index.compact()
    assert len(index) == 0


def test_bad_input_is_refused():
    index = PdqIndex()
    with pytest.raises(ValueError, match="2 hashes but 1 ids"):
        index.add(["0" * 64, "1" * 64], [1])
    with pytest.raises(ValueError, match="PDQ"):
        index.add(["0" * 63], [1])
    with pytest.raises(ValueError, match="radius"):
        index.query("0" * 64, -1)
    with pytest.raises(ValueError, match="one hash"):
        index.query(["0" * 64, "1" * 64])
    with pytest.raises(ValueError, match="widest first"):
        PdqIndex.build(["0" * 64], [1], chunks=(12,) * 4 + (13,) * 16)


# -- across a restart ----------------------------------------------------------------------


def test_save_and_load_give_the_same_answers_as_a_rebuild(tmp_path, tables):
    rng, hashes, ids = random_set(10_000, seed=8)
    index = PdqIndex.build(hashes[:8000], ids[:8000], radius=20, tail_limit=1000)
    index.add(hashes[8000:9950], ids[8000:9950])  # into the delta
    index.add(hashes[9950:], ids[9950:])  # into the tail
    assert index._state.delta.live and index._state.tail.live
    index.remove(ids[:30])
    path = tmp_path / "pdq-index.npz"
    index.save(path)
    loaded = PdqIndex.load(path)
    rebuilt = PdqIndex.build(hashes[30:], ids[30:], radius=20)
    assert len(loaded) == len(rebuilt) == len(index)
    assert loaded.radius == 20
    queries = np.vstack([near_queries(hashes, rng, 30, 31), hashes[:5]])
    for radius in (None, 31):
        want = rebuilt.query_batch(queries, radius)
        for answers in (index.query_batch(queries, radius), loaded.query_batch(queries, radius)):
            for (got_ids, got_dist), (want_ids, want_dist) in zip(answers, want, strict=True):
                np.testing.assert_array_equal(got_ids, want_ids)
                np.testing.assert_array_equal(got_dist, want_dist)
    # The loaded index keeps working: changes, compaction, and another save.
    loaded.remove(ids[30:40])
    loaded.compact()
    loaded.save(path)
    assert len(PdqIndex.load(path)) == len(rebuilt) - 10


def test_load_refuses_what_is_not_a_saved_index(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a saved PDQ index"):
        PdqIndex.load(path)
    np.savez(path, hashes=np.zeros((2, 4), np.uint64))
    with pytest.raises(ValueError, match="not a saved PDQ index"):
        PdqIndex.load(path)


def test_empty_index_round_trips(tmp_path):
    path = tmp_path / "empty.npz"
    PdqIndex(radius=12).save(path)
    loaded = PdqIndex.load(path)
    assert len(loaded) == 0 and loaded.radius == 12
