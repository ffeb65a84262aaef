"""The exact index answers what a dict filled in id order with ``setdefault`` answers.

Every test compares with that dict, rebuilt from a plain list of the live entries: on
random digests full of NUL bytes (numpy strings drop trailing NULs when they become
scalars), with many ids per digest, after adds, removes and re-adds, and while a
compaction runs in another thread.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import relay.hashing.exact_index as exact_index
from relay.hashing import Md5, Sha256
from relay.hashing.base import HexDigestKind
from relay.hashing.exact_index import ExactIndex


@pytest.fixture(params=[Md5, Sha256], ids=lambda k: k.name)
def kind(request: pytest.FixtureRequest) -> type[HexDigestKind]:
    return request.param


def pool(kind: type[HexDigestKind], count: int, rng: np.random.Generator) -> list[str]:
    """Distinct digests whose bytes are mostly 0x00, 0x01 and 0xff: trailing and leading
    NULs are common, and many digests share long prefixes."""
    found: set[str] = set()
    while len(found) < count:
        found.add(bytes(rng.choice([0, 0, 1, 255], size=kind.size()).astype(np.uint8)).hex())
    return sorted(found)


class Model:
    """The live entries as a plain list, and the dict the index must agree with."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, int]] = []

    def add(self, digests: list[str], ids: list[int]) -> None:
        self.entries += zip(digests, ids, strict=True)

    def remove(self, ids: list[int]) -> int:
        gone = set(ids)
        before = len(self.entries)
        self.entries = [(d, i) for d, i in self.entries if i not in gone]
        return before - len(self.entries)

    def table(self) -> dict[str, int]:
        table: dict[str, int] = {}
        for digest, entry_id in sorted(self.entries, key=lambda e: e[1]):
            table.setdefault(digest, entry_id)
        return table


def assert_agrees(index: ExactIndex, model: Model, queries: list[str]) -> None:
    table = model.table()
    assert [index.get(q) for q in queries] == [table.get(q) for q in queries]
    assert len(index) == len(model.entries)


def test_lookups_equal_a_dict_on_random_data(kind: type[HexDigestKind]) -> None:
    rng = np.random.default_rng(1)
    digests = pool(kind, 800, rng)
    stored = [digests[i] for i in rng.integers(0, 600, 3000)]  # 200 never stored
    ids = [int(i) for i in rng.permutation(3000) * 5 + 7]  # not in row order
    model = Model()
    model.add(stored, ids)
    index = ExactIndex.build(stored, ids, kind=kind)
    assert_agrees(index, model, digests)
    assert index.get(digests[0].upper()) == model.table().get(digests[0])
    assert index.pending == 0
    assert index.nbytes == 3000 * (kind.size() + 8 + 8 + 1)


def test_every_input_form_gives_the_same_index(kind: type[HexDigestKind]) -> None:
    rng = np.random.default_rng(2)
    digests = pool(kind, 50, rng)
    raw = np.frombuffer(bytes.fromhex("".join(digests)), np.uint8).reshape(50, kind.size())
    ids = np.arange(50, dtype=np.int64) + 10**12
    from_hex = ExactIndex.build(digests, ids, kind=kind)
    from_bytes = ExactIndex.build(raw, ids, kind=kind)
    from_strings = ExactIndex.build(raw.view(f"S{kind.size()}").reshape(-1), ids, kind=kind)
    for digest, entry_id in zip(digests, ids, strict=True):
        assert from_hex.get(digest) == from_bytes.get(digest) == from_strings.get(digest)
        assert from_hex.get(digest) == entry_id


def test_adds_removes_and_re_adds(kind: type[HexDigestKind]) -> None:
    """Small tails and many batches: entries move through tail, delta and main."""
    rng = np.random.default_rng(3)
    digests = pool(kind, 300, rng)
    index = ExactIndex(kind, tail_limit=16)
    model = Model()
    next_id = 1
    for step in range(120):
        if step % 5 == 4 and model.entries:
            picks = rng.choice(len(model.entries), size=min(7, len(model.entries)))
            gone = [model.entries[int(p)][1] for p in picks] + [10**15]  # one never there
            assert index.remove(gone) == model.remove(gone)
        else:
            count = int(rng.integers(1, 40))
            batch = [digests[i] for i in rng.integers(0, 250, count)]
            # Mostly new ids, now and then an old one: ids need not be added in order.
            ids = [
                next_id + i if rng.random() < 0.9 else int(rng.integers(1, next_id + 1))
                for i in range(count)
            ]
            next_id += count
            index.add(batch, ids)
            model.add(batch, ids)
        if step % 30 == 29:
            index.compact()
            assert index.pending == 0
        assert_agrees(index, model, digests)


def test_the_smallest_live_id_wins(kind: type[HexDigestKind]) -> None:
    digest, other = pool(kind, 2, np.random.default_rng(4))
    index = ExactIndex.build([digest, digest, other], [30, 10, 20], kind=kind)
    assert index.get(digest) == 10
    index.add([digest], [5])  # in the tail, older than the main segment's
    assert index.get(digest) == 5
    assert index.remove([5, 10]) == 2
    assert index.get(digest) == 30
    index.add([digest], [10])  # a removed id and digest, added again
    assert index.get(digest) == 10
    assert index.remove([30, 10]) == 2
    assert index.get(digest) is None
    assert index.get(other) == 20
    assert index.pending > 0
    index.compact()
    assert (index.get(digest), index.get(other), len(index), index.pending) == (None, 20, 1, 0)


def test_digests_made_of_nul_bytes(kind: type[HexDigestKind]) -> None:
    """As numpy scalars, b"\\x00\\x00" and b"" are alike: every NUL digest must still
    be told apart."""
    size = kind.size()
    digests = ["00" * size, "00" * (size - 1) + "01", "01" + "00" * (size - 1), "ff" * size]
    index = ExactIndex.build(digests[:3], [1, 2, 3], kind=kind)
    assert [index.get(d) for d in digests] == [1, 2, 3, None]
    index.add(digests[3:], [4])
    index.remove([1])
    assert [index.get(d) for d in digests] == [None, 2, 3, 4]


def test_empty_index(kind: type[HexDigestKind]) -> None:
    index = ExactIndex(kind)
    digest = "ab" * kind.size()
    assert (len(index), index.pending, index.nbytes, index.get(digest)) == (0, 0, 0, None)
    assert index.remove([1]) == 0
    index.add([], [])
    index.compact()
    built = ExactIndex.build(np.zeros((0, kind.size()), np.uint8), [], kind=kind)
    assert len(built) == 0 and built.get(digest) is None
    index.add(digest, [1])
    assert index.get(digest) == 1
    assert index.remove([1]) == 1
    index.compact()
    assert (len(index), index.get(digest)) == (0, None)


def test_bad_input_is_refused(kind: type[HexDigestKind]) -> None:
    index = ExactIndex(kind)
    good = "0" * kind.hex_length
    for bad in ("", good[:-1], good + "0", good[:-1] + "g", "0x" + good[2:]):
        with pytest.raises(ValueError, match=f"not a {kind.label} hash"):
            index.get(bad)
        with pytest.raises(ValueError, match=f"not a {kind.label} hash"):
            index.add([bad], [1])
    with pytest.raises(ValueError, match="2 digests but 1 ids"):
        index.add([good, good], [1])
    with pytest.raises(ValueError, match="uint8"):
        index.add(np.zeros((1, kind.size() + 1), np.uint8), [1])
    with pytest.raises(ValueError, match="ids must be integers"):
        index.add([good], [1.5])
    assert len(index) == 0


def test_lookups_during_compaction_see_every_unchanged_entry(
    kind: type[HexDigestKind], monkeypatch: pytest.MonkeyPatch
) -> None:
    """compact() in a thread: lookups racing it in another thread always find the entries
    nobody changed, and adds and removes made meanwhile survive the swap."""
    rng = np.random.default_rng(6)
    digests = pool(kind, 3000, rng)
    ids = list(range(1, 2501))
    index = ExactIndex.build(digests[:2000], ids[:2000], kind=kind, tail_limit=64)
    index.add(digests[2000:2200], ids[2000:2200])  # through the delta and the tail
    started, go = threading.Event(), threading.Event()
    real_build = exact_index._Segment.build

    def slow_build(digests: np.ndarray, ids: np.ndarray) -> exact_index._Segment:
        if len(ids) >= 2000:  # the compaction's main build
            started.set()
            assert go.wait(10)
        return real_build(digests, ids)

    monkeypatch.setattr(exact_index._Segment, "build", staticmethod(slow_build))
    wrong: list[tuple[str, int | None]] = []
    looked = [0]
    stop = threading.Event()

    def look_up() -> None:
        while not stop.is_set():
            for i in rng.integers(100, 2200, 50):  # never removed below
                found = index.get(digests[i])
                if found != ids[i]:
                    wrong.append((digests[i], found))
            looked[0] += 50

    def more_lookups() -> None:
        """Let the reader race whatever state the index is in now."""
        since = time.monotonic()
        target = looked[0] + 500
        while looked[0] < target and time.monotonic() < since + 10:
            time.sleep(0.001)
        assert looked[0] >= target

    worker = threading.Thread(target=index.compact)
    reader = threading.Thread(target=look_up)
    reader.start()
    worker.start()
    assert started.wait(10)
    index.add(digests[2200:2500], ids[2200:2500])  # during the build: seen at once
    assert index.get(digests[2300]) == ids[2300]
    index.remove(ids[:100])
    assert index.get(digests[5]) is None
    more_lookups()
    go.set()
    worker.join(10)
    assert not worker.is_alive()
    more_lookups()
    stop.set()
    reader.join(10)
    assert wrong == []
    model = Model()
    model.add(digests[100:2500], ids[100:2500])
    assert_agrees(index, model, digests)
    index.compact()
    assert index.pending == 0
    assert_agrees(index, model, digests)
