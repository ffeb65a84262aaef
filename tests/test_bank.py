"""Banks: parsing hash lists, storing them in PostgreSQL, matching, and propagation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from relay.banks import (
    CHANNEL,
    BankError,
    BankIndex,
    BankMatch,
    BankStore,
    BankWatcher,
    parse_hash_file,
    read_hash_file,
)
from relay.banks.index import _Bank
from relay.config import BankConfig
from relay.hashing import Pdq
from relay.hashing.pdq import PdqHash
from relay.media.hashes import Hashes, hash_media
from relay.store import migrate
from tests.conftest import wait_for

FIXTURES = Path(__file__).parent / "fixtures"
PDQ = FIXTURES / "pdq"
BANKS = FIXTURES / "banks"
BRIDGE = PDQ / "bridge-mods" / "aaa-orig.jpg"

H1 = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
MD5 = "d35c785545392755e7e4164457657269"
SHA = "b5b0799616df52d475a3968dc7e54f1d0724c912244ffa6175bc786375dd7298"


@pytest.fixture
def pool(migrated_pool: asyncpg.Pool) -> asyncpg.Pool:
    return migrated_pool


def hashes(
    *frames: tuple[str, int],
    sha256: str = "0" * 64,
    md5: str = "0" * 32,
    dihedral: tuple[str, ...] = (),
) -> Hashes:
    """A file's hashes as hash_media would give them, for hashes made up by the test."""
    pdq = tuple(PdqHash(h, q) for h, q in frames)
    return Hashes(sha256, md5, "image", "image/jpeg", pdq, dihedral, 64, 64, len(pdq))


def flip(value: str, bits: int, rng: np.random.Generator) -> str:
    """``value`` with ``bits`` distinct bits flipped: exactly that Hamming distance away."""
    mask = 0
    for bit in rng.choice(256, size=bits, replace=False):
        mask |= 1 << int(bit)
    return f"{int(value, 16) ^ mask:064x}"


def random_pdq(rng: np.random.Generator) -> str:
    return rng.bytes(32).hex()


def media(path: Path) -> Hashes:
    return hash_media(path.read_bytes())


# -- parsing ---------------------------------------------------------------------------


def test_threatexchange_local_file_lines() -> None:
    text = (
        "\ufeff# a comment\n"
        "\n"
        f"pdq {H1.upper()}\n"
        f"  md5 {MD5}   from a ThreatExchange dataset, tags: a,b  \n"
        f"sha256\t{SHA}\n"
        f"HASH_PDQ {'0' * 64} te indicator type\n"
        f"video_md5 {'1' * 32}\n"
    )
    assert parse_hash_file(text, source="te.txt") == [
        ("pdq", H1, None),
        ("md5", MD5, "from a ThreatExchange dataset, tags: a,b"),
        ("sha256", SHA, None),
        ("pdq", "0" * 64, "te indicator type"),
        ("md5", "1" * 32, None),
    ]


def test_fixture_files_parse() -> None:
    te = read_hash_file(BANKS / "threatexchange.txt")
    assert [(k, v) for k, v, _ in te] == [
        ("pdq", "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"),
        ("md5", MD5),
        ("sha256", SHA),
    ]
    assert te[0][2] == "bridge original, C++ reference hash"
    csv_entries = read_hash_file(BANKS / "bridge.csv")
    assert [k for k, _, _ in csv_entries] == ["pdq", "md5", "sha256", "md5"]
    assert csv_entries[0][2] == "blur-a-little.jpg, blurred; id=1001"
    bare = read_hash_file(BANKS / "bare-md5.txt", default_kind="md5")
    assert [(k, n) for k, _, n in bare] == [
        ("md5", "high-contrast.jpg"),
        ("md5", "high-saturation.jpg"),
        ("md5", None),
        ("md5", None),
    ]


def test_bare_hashes_need_a_type() -> None:
    text = f"{MD5}\n# no type\n{SHA} a note\n"
    with pytest.raises(BankError) as raised:
        parse_hash_file(text, source="bare.txt")
    assert raised.value.problems == [
        f"bare.txt:1: a bare hash needs its type: write `md5 {MD5}`, "
        "or give the type of every line (--type)",
        f"bare.txt:3: a bare hash needs its type: write `sha256 or pdq {SHA}`, "
        "or give the type of every line (--type)",
    ]
    # With a type, a line naming its own kind still says what it is.
    assert parse_hash_file(f"{SHA}\npdq {H1}\n", default_kind="sha256") == [
        ("sha256", SHA, None),
        ("pdq", H1, None),
    ]


def test_csv_with_a_header() -> None:
    text = (
        "# exported list\n"
        "Signal_Type, Signal_Value ,note,category,id\n"
        f'pdq,{H1},"a note, with a comma",unwanted,17\n'
        "\n"
        f"MD5,{MD5.upper()},,,\n"
        "# a comment row\n"
        f"hash_sha256,{SHA},x,,18\n"
    )
    assert parse_hash_file(text, source="list.csv") == [
        ("pdq", H1, "a note, with a comma; id=17; category=unwanted"),
        ("md5", MD5, None),
        ("sha256", SHA, "x; id=18"),
    ]


def test_csv_without_a_type_column_takes_the_given_type(tmp_path: Path) -> None:
    # The shape of the reference data's PDQMD5TestData.csv: a file path and a hash.
    path = tmp_path / "hashes.csv"
    path.write_text(f"FilePath,Hash\nbridge/a.jpg,{H1}\nbridge/b.jpg,{'0' * 64}\n")
    assert read_hash_file(path, default_kind="pdq") == [
        ("pdq", H1, None),
        ("pdq", "0" * 64, None),
    ]
    with pytest.raises(BankError, match=rf"{path}:1: no type column .*--type"):
        read_hash_file(path)
    # Wrong type for some rows: all refused, each row named.
    path.write_text(f"FilePath,Hash\na.jpg,{H1}\nb.jpg,{MD5}\nc.jpg,{MD5}\n")
    with pytest.raises(BankError) as raised:
        read_hash_file(path, default_kind="pdq")
    assert [p.split(": ")[0] for p in raised.value.problems] == [f"{path}:3", f"{path}:4"]


def test_every_bad_line_is_named_and_nothing_is_returned() -> None:
    text = f"pdq {H1}\npdq 1234\nmd6 {MD5}\nsha256\nmd5 {MD5}\nmd5 {SHA}\n"
    with pytest.raises(BankError) as raised:
        parse_hash_file(text, source="list.txt")
    assert raised.value.problems == [
        "list.txt:2: not a PDQ hash: '1234' (want 64 hex digits)",
        "list.txt:3: unknown hash type `md6` (known: md5, pdq, sha256)",
        "list.txt:4: `sha256` is not followed by a hash",
        f"list.txt:6: not a MD5 hash: '{SHA}' (want 32 hex digits)",
    ]
    assert str(raised.value).splitlines()[0].startswith("list.txt:2: ")


def test_csv_errors_name_file_and_line() -> None:
    with pytest.raises(BankError, match=r"a\.csv:1: a CSV file needs a header .*: pdq, "):
        parse_hash_file(f"pdq,{H1}\n", source="a.csv")
    text = f"type,hash\npdq,{H1}\nmd5\nblake3,{MD5}\n,{MD5}\nmd5,{MD5[:-1]}\n"
    with pytest.raises(BankError) as raised:
        parse_hash_file(text, source="b.csv")
    assert raised.value.problems == [
        "b.csv:3: expected 2 columns, got 1",
        "b.csv:4: unknown hash type `blake3` (known: md5, pdq, sha256)",
        "b.csv:5: the type column is empty",
        f"b.csv:6: not a MD5 hash: '{MD5[:-1]}' (want 32 hex digits)",
    ]
    # A quoted note spanning lines: the next row's line number is still right.
    text = f'type,hash,note\npdq,{H1},"two\nlines"\nmd5,bad,\n'
    with pytest.raises(BankError, match=r"c\.csv:4: not a MD5 hash"):
        parse_hash_file(text, source="c.csv")


def test_unreadable_files(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes(f"md5 {MD5}\nmd5 {MD5} caf\xe9\n".encode("latin-1"))
    with pytest.raises(BankError, match=rf"{latin}:2: not UTF-8 text"):
        read_hash_file(latin)
    with pytest.raises(BankError, match="cannot read"):
        read_hash_file(tmp_path / "missing.txt")
    assert parse_hash_file("# only a comment\n\n") == []


def test_many_problems_are_counted_not_all_printed() -> None:
    with pytest.raises(BankError) as raised:
        parse_hash_file("md5 x\n" * 25, source="big.txt")
    assert len(raised.value.problems) == 25
    message = str(raised.value)
    assert message.count("big.txt:") == 20
    assert message.endswith("… and 5 more")


# -- storage -----------------------------------------------------------------------------


async def test_store_add_list_remove(pool: asyncpg.Pool) -> None:
    store = BankStore(pool)
    assert await store.list() == []
    bank_id = await store.ensure("unwanted-local", "unwanted", source="admin")
    assert await store.ensure("unwanted-local") == bank_id
    assert await store.ensure("unwanted-local", "unwanted") == bank_id

    entries = [("pdq", H1.upper(), "bridge"), ("md5", MD5, None), ("sha256", SHA, None)]
    assert await store.add("unwanted-local", entries) == 3
    # Again, plus a duplicate within the batch: only the new one counts.
    more = [*entries, ("md5", "1" * 32, "a"), ("md5", "1" * 32, "b")]
    assert await store.add("unwanted-local", more) == 1
    [listed] = await store.list()
    assert listed["name"] == "unwanted-local"
    assert listed["category"] == "unwanted"
    assert listed["source"] == "admin"
    assert listed["confidential"] is True
    assert listed["counts"] == {"md5": 2, "pdq": 1, "sha256": 1}
    first_change = listed["changed_at"]
    assert first_change >= listed["created_at"]

    stored = await pool.fetchval("SELECT value FROM bank_entry WHERE kind = 'pdq'")
    assert stored == H1  # normalised to lowercase

    assert await store.remove("unwanted-local", [("md5", MD5.upper()), ("md5", "2" * 32)]) == 1
    [listed] = await store.list()
    assert listed["counts"] == {"md5": 1, "pdq": 1, "sha256": 1}
    assert listed["changed_at"] > first_change

    assert await store.delete("unwanted-local") is True
    assert await store.delete("unwanted-local") is False
    assert await store.list() == []
    assert await pool.fetchval("SELECT count(*) FROM bank_entry") == 0


async def test_category_is_never_changed_silently(pool: asyncpg.Pool) -> None:
    store = BankStore(pool)
    await store.ensure("mixed", "unwanted")
    with pytest.raises(BankError, match="bank `mixed` has category `unwanted`, not `csam`"):
        await store.ensure("mixed", "csam")
    with pytest.raises(BankError, match="no bank named `new`; give a category"):
        await store.ensure("new")
    with pytest.raises(BankError, match="bank name `bad name`: letters, digits"):
        await store.ensure("bad name", "unwanted")
    with pytest.raises(BankError, match="must not be empty"):
        await store.ensure("blank", " ")
    assert [b["name"] for b in await store.list()] == ["mixed"]


async def test_add_is_all_or_nothing(pool: asyncpg.Pool) -> None:
    store = BankStore(pool)
    await store.ensure("b", "test")
    with pytest.raises(BankError) as raised:
        await store.add("b", [("md5", MD5, None), ("pdq", "zz", None), ("crc32", "1", None)])
    assert raised.value.problems == [
        "entry 2: not a PDQ hash: 'zz' (want 64 hex digits)",
        "entry 3: unknown hash type `crc32`",
    ]
    assert await pool.fetchval("SELECT count(*) FROM bank_entry") == 0
    with pytest.raises(BankError, match="no bank named `nope`"):
        await store.add("nope", [("md5", MD5, None)])
    with pytest.raises(BankError, match="no bank named `nope`"):
        await store.add("nope", [])


@pytest.mark.parametrize(
    ("kind", "value"),
    [("md5", MD5.upper()), ("md5", MD5[:-1]), ("sha256", MD5), ("pdq", "z" * 64)],
)
async def test_the_database_refuses_entries_that_are_not_hex_of_their_length(
    pool: asyncpg.Pool, kind: str, value: str
) -> None:
    # Loading parses fixed-size rows: one bad row written past BankStore (psql) would
    # stop every bank update.
    bank = await BankStore(pool).ensure("b", "test")
    with pytest.raises(asyncpg.CheckViolationError, match="bank_entry_value_is_hex"):
        await pool.execute(
            "INSERT INTO bank_entry (bank_id, kind, value) VALUES ($1, $2, $3)", bank, kind, value
        )


async def test_every_kind_of_change_is_announced(pool: asyncpg.Pool, database_url: str) -> None:
    """The triggers announce changes made by any client, psql included."""
    store = BankStore(pool)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[-1]))

    async def next_names() -> list[str]:
        names = [await asyncio.wait_for(heard.get(), 2)]
        await asyncio.sleep(0.05)
        while not heard.empty():
            names.append(heard.get_nowait())
        return names

    try:
        await store.ensure("one", "test")
        assert await next_names() == ["one"]
        await store.ensure("two", "test")
        assert await next_names() == ["two"]
        # A bulk import is one notification, not one per row.
        await store.add("one", [("md5", f"{i:032x}", None) for i in range(1000)])
        assert await next_names() == ["one"]
        await pool.execute("UPDATE bank_entry SET note = 'x' WHERE value = $1", f"{7:032x}")
        assert await next_names() == ["one"]
        await pool.execute("DELETE FROM bank_entry WHERE value = $1", f"{8:032x}")
        assert await next_names() == ["one"]
        await pool.execute("UPDATE bank SET name = 'uno' WHERE name = 'one'")
        assert sorted(await next_names()) == ["one", "uno"]
        await pool.execute("DELETE FROM bank WHERE name = 'uno'")  # cascades to entries
        assert await next_names() == ["uno"]
        await store.add("two", [("md5", MD5, None)])
        assert await next_names() == ["two"]
        await pool.execute("TRUNCATE bank_entry")
        assert await next_names() == ["two"]
    finally:
        await listener.close()


# -- matching ----------------------------------------------------------------------------


async def test_exact_matches(pool: asyncpg.Pool) -> None:
    store = BankStore(pool)
    await store.ensure("exact", "test-bridge")
    await store.add("exact", [("sha256", SHA, "bridge"), ("md5", MD5, None)])
    await store.ensure("other", "test")
    await store.add("other", [("md5", MD5, None)])
    index = await BankIndex.load(pool)
    assert len(index) == 3

    found = index.match(media(BRIDGE))
    assert [(m.bank, m.kind, m.value, m.distance) for m in found] == [
        ("exact", "md5", MD5, 0),
        ("exact", "sha256", SHA, 0),
        ("other", "md5", MD5, 0),
    ]
    entry = await pool.fetchval("SELECT id FROM bank_entry WHERE value = $1", SHA)
    signal = found[1].as_signal()
    assert signal.kind == "match"
    assert signal.source == "exact"
    assert signal.detail == {
        "category": "test-bridge",
        "hash_kind": "sha256",
        "distance": 0,
        "entry": entry,
        "value": SHA,
        "variant": None,
        "category_rule": "category:test-bridge",
    }
    assert index.match(media(PDQ / "bridge-mods" / "blur-a-little.jpg")) == []


async def test_pdq_radius_boundary(pool: asyncpg.Pool) -> None:
    rng = np.random.default_rng(31)
    stored = random_pdq(rng)
    store = BankStore(pool)
    for name in ("default", "narrow", "unconfigured"):
        await store.ensure(name, "test")
        await store.add(name, [("pdq", stored, None)])
    configs = [
        BankConfig("default", "test", pdq_max_distance=31, dihedral=False),
        BankConfig("narrow", "test", pdq_max_distance=10, dihedral=False),
    ]
    index = await BankIndex.load(pool, configs)

    def banks_matching(distance: int) -> dict[str, int]:
        query = flip(stored, distance, rng)
        found = index.match(hashes((query, 100)))
        assert all(m.kind == "pdq" and m.value == stored for m in found)
        return {m.bank: m.distance for m in found}

    assert banks_matching(0) == {"default": 0, "narrow": 0, "unconfigured": 0}
    assert banks_matching(10) == {"default": 10, "narrow": 10, "unconfigured": 10}
    assert banks_matching(11) == {"default": 11, "unconfigured": 11}
    # Banks without a [[bank]] table use PDQ's default distance, 31.
    assert Pdq.threshold == 31
    assert banks_matching(31) == {"default": 31, "unconfigured": 31}
    assert banks_matching(32) == {}
    assert banks_matching(128) == {}


async def test_configured_category_wins(pool: asyncpg.Pool) -> None:
    store = BankStore(pool)
    await store.ensure("b", "unwanted")
    await store.add("b", [("md5", MD5, None)])
    index = await BankIndex.load(pool, [BankConfig("b", "spam", 31, False)])
    [found] = index.match(hashes(md5=MD5))
    assert found.category == "spam"
    assert found.as_signal().detail["category_rule"] == "category:spam"


async def test_low_quality_frames_never_match(pool: asyncpg.Pool) -> None:
    flat = media(PDQ / "labelme-subset" / "q0003.jpg")
    assert flat.pdq[0].quality < Pdq.min_quality == 50
    store = BankStore(pool)
    await store.ensure("flat", "test")
    await store.add("flat", [("pdq", flat.pdq[0].hash, None), ("pdq", H1, None)])
    index = await BankIndex.load(pool, [BankConfig("flat", "test", 31, dihedral=True)])
    assert index.match(flat) == []
    assert index.match(hashes((H1, 49))) == []
    assert index.match(hashes((H1, 49), dihedral=(H1,) * 8)) == []
    [found] = index.match(hashes((H1, 50)))
    assert (found.distance, found.variant) == (0, None)
    # Later frames count on their own quality.
    [found] = index.match(hashes((flat.pdq[0].hash, 3), (H1, 90)))
    assert found.value == H1


async def test_dihedral_banks_match_rotated_copies(pool: asyncpg.Pool) -> None:
    original = media(BRIDGE)
    rotated = media(PDQ / "dih" / "bridge-2-rotate-90.jpg")
    # Without turning, the rotated photo is nowhere near the original.
    assert Pdq.distance(rotated.pdq[0].hash, original.pdq[0].hash) > 64
    store = BankStore(pool)
    for name in ("upright", "turned"):
        await store.ensure(name, "test-bridge")
        await store.add(name, [("pdq", original.pdq[0].hash, "bridge")])
    configs = [
        BankConfig("upright", "test-bridge", 31, dihedral=False),
        BankConfig("turned", "test-bridge", 31, dihedral=True),
    ]
    index = await BankIndex.load(pool, configs)

    [found] = index.match(rotated)
    assert found.bank == "turned"
    assert found.distance <= 31
    assert found.variant is not None and 1 <= found.variant <= 7
    turned_back = rotated.pdq_dihedral[found.variant]
    assert Pdq.distance(turned_back, original.pdq[0].hash) == found.distance
    assert found.as_signal().detail["variant"] == found.variant
    # The original itself matches both, as is.
    assert {(m.bank, m.distance, m.variant) for m in index.match(original)} == {
        ("upright", 0, None),
        ("turned", 0, None),
    }


async def test_every_edit_of_the_bridge_matches_its_original(pool: asyncpg.Pool) -> None:
    original = media(BRIDGE)
    store = BankStore(pool)
    await store.ensure("bridge", "test-bridge")
    await store.add("bridge", [("pdq", original.pdq[0].hash, "aaa-orig.jpg")])
    index = await BankIndex.load(pool)
    edits = sorted(p for p in (PDQ / "bridge-mods").glob("*.jpg") if p != BRIDGE)
    assert len(edits) == 11
    distances = {}
    for path in edits:
        found = index.match(media(path))
        assert [(m.bank, m.kind) for m in found] == [("bridge", "pdq")], path.name
        distances[path.name] = found[0].distance
    assert all(0 <= d <= 31 for d in distances.values()), distances
    assert max(distances.values()) > 0  # the edits are edits, not copies


async def test_matches_agree_with_a_plain_brute_force(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The numpy matcher against the definition: nearest entry per bank within radius,
    ties to the oldest entry, variants tried after the frames as is."""
    rng = np.random.default_rng(2024)
    store = BankStore(pool)
    configs = {
        "wide": BankConfig("wide", "test", 31, dihedral=False),
        "narrow": BankConfig("narrow", "test", 16, dihedral=True),
    }
    stored: dict[str, list[str]] = {}
    for name in configs:
        values = [random_pdq(rng) for _ in range(1500)]
        stored[name] = values
        await store.ensure(name, "test")
        await store.add(name, [("pdq", v, None) for v in values])
    ids = {
        (r["name"], r["value"]): r["id"]
        for r in await pool.fetch(
            "SELECT b.name, e.value, e.id FROM bank_entry e JOIN bank b ON b.id = e.bank_id"
        )
    }
    index = await BankIndex.load(pool, list(configs.values()))

    def near(bank: str) -> str:
        return flip(stored[bank][int(rng.integers(1500))], int(rng.integers(0, 45)), rng)

    def query_hash() -> str:
        pick = rng.integers(3)
        return random_pdq(rng) if pick == 0 else near(["wide", "narrow"][pick - 1])

    oldest_first = {
        name: [(ids[name, v], int(v, 16)) for v in sorted(values, key=lambda v: ids[name, v])]
        for name, values in stored.items()
    }

    def expected(query: Hashes) -> set[tuple[str, int, int, int | None]]:
        found = set()
        for name, config in configs.items():
            candidates = [(f.hash, None) for f in query.pdq if f.quality >= 50]
            if config.dihedral and query.pdq[0].quality >= 50:
                candidates += [(h, i) for i, h in enumerate(query.pdq_dihedral) if i]
            best = None
            for value, variant in candidates:
                number = int(value, 16)
                for entry_id, entry in oldest_first[name]:
                    distance = (number ^ entry).bit_count()
                    if best is None or distance < best[0]:
                        best = (distance, entry_id, variant)
            if best is not None and best[0] <= config.pdq_max_distance:
                found.add((name, best[1], best[0], best[2]))
        return found

    matched = unmatched = turned = 0
    for _ in range(150):
        frames = [(query_hash(), int(rng.choice([30, 60, 100]))) for _ in range(rng.integers(1, 3))]
        dihedral = (frames[0][0], *(query_hash() for _ in range(7)))
        query = hashes(*frames, dihedral=dihedral)
        got = {(m.bank, m.entry_id, m.distance, m.variant) for m in index.match(query)}
        assert got == expected(query)
        for m in index.match(query):
            assert ids[m.bank, m.value] == m.entry_id  # the entry's own hash is reported
        matched += bool(got)
        unmatched += not got
        turned += any(variant is not None for *_, variant in got)
    # The comparison means something only if both outcomes (and variants) occurred.
    assert matched >= 30 and unmatched >= 30 and turned >= 3, (matched, unmatched, turned)


async def test_equally_near_entries_resolve_to_the_oldest(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    query = random_pdq(rng)
    newer, older = sorted([flip(query, 5, rng), flip(query, 5, rng)])
    bank_id = await BankStore(pool).ensure("ties", "test")
    # The newer entry is written first and sorts first by value, so it comes first
    # however PostgreSQL reads the rows (table order, the unique index, a bitmap).
    for entry_id, value in ((200, newer), (100, older)):
        await pool.execute(
            "INSERT INTO bank_entry (id, bank_id, kind, value) VALUES ($1, $2, 'pdq', $3)",
            entry_id,
            bank_id,
            value,
        )
    scanned = [r["value"] for r in await pool.fetch("SELECT value FROM bank_entry")]
    assert scanned == [newer, older]
    [found] = (await BankIndex.load(pool)).match(hashes((query, 100)))
    assert (found.value, found.distance, found.entry_id) == (older, 5, 100)


# -- propagation -------------------------------------------------------------------------


@pytest.fixture
async def processes(database_url: str) -> AsyncIterator[list[asyncpg.Pool]]:
    """Pools standing for separate Sluice processes on one database."""
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=3) for _ in range(3)]
    await migrate(pools[0])
    yield pools
    for p in pools:
        await p.close()


def bank_hashes(md5: str) -> Hashes:
    return hashes(md5=md5)


async def test_two_processes_see_a_change_within_a_second(
    processes: list[asyncpg.Pool],
) -> None:
    admin, one, two = processes
    store = BankStore(admin)
    await store.ensure("live", "test")
    await store.add("live", [("md5", "1" * 32, None)])
    watchers = [BankWatcher(one), BankWatcher(two)]
    for watcher in watchers:
        await watcher.start()
    try:
        assert all(w.index.match(bank_hashes("1" * 32)) for w in watchers)

        async def seen_by_both(md5: str, present: bool) -> float:
            start = time.monotonic()
            await wait_for(
                lambda: all(bool(w.index.match(bank_hashes(md5))) is present for w in watchers),
                timeout=1.0,
                interval=0.005,
            )
            return time.monotonic() - start

        await store.add("live", [("md5", MD5, "added while running")])
        added = await seen_by_both(MD5, True)
        await store.remove("live", [("md5", MD5)])
        removed = await seen_by_both(MD5, False)
        await store.ensure("fresh", "test")
        await store.add("fresh", [("md5", "2" * 32, None)])
        created = await seen_by_both("2" * 32, True)
        await store.delete("fresh")
        deleted = await seen_by_both("2" * 32, False)
        delays = [added, removed, created, deleted]
        print(f"propagation delays (s): {[round(d, 3) for d in delays]}")
        assert max(delays) < 1.0
        assert all(w.reloads >= 4 for w in watchers)
    finally:
        for watcher in watchers:
            await watcher.stop()


async def test_reloaded_banks_keep_their_configuration(processes: list[asyncpg.Pool]) -> None:
    admin, one, _ = processes
    rng = np.random.default_rng(5)
    stored = random_pdq(rng)
    store = BankStore(admin)
    await store.ensure("narrow", "test")
    config = BankConfig("narrow", "spam", pdq_max_distance=5, dihedral=False)
    async with BankWatcher(one, [config]) as watcher:
        await store.add("narrow", [("pdq", stored, None)])
        await wait_for(lambda: watcher.reloads, timeout=1.0)
        assert watcher.index.match(hashes((flip(stored, 6, rng), 100))) == []
        [found] = watcher.index.match(hashes((flip(stored, 5, rng), 100)))
        assert (found.category, found.distance) == ("spam", 5)


async def test_watcher_reconnects_after_losing_its_connection(
    processes: list[asyncpg.Pool],
) -> None:
    admin, one, _ = processes
    store = BankStore(admin)
    await store.ensure("live", "test")
    await store.add("live", [("md5", "2" * 32, None)])
    async with BankWatcher(one, max_backoff_seconds=0.2) as watcher:
        assert watcher._conn is not None
        pid = watcher._conn.get_server_pid()
        before = watcher.index.banks["live"]
        async with admin.acquire() as conn:  # an entry nobody announces (no trigger)
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                "INSERT INTO bank_entry (bank_id, kind, value) "
                "SELECT id, 'md5', $1 FROM bank WHERE name = 'live'",
                "3" * 32,
            )
            await conn.execute("SET session_replication_role = DEFAULT")
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        # Wait on the watcher's count, not its connection: asyncpg detaches the lost one
        # at once, and until the watcher lets it go, asking it anything raises.
        await wait_for(lambda: watcher.reconnects == 1)
        assert watcher._conn is not None and watcher._conn.get_server_pid() != pid
        # The reconnect caught up past the bank's marks, without reading it whole.
        assert watcher.index.banks["live"] is before
        assert watcher.index.match(bank_hashes("3" * 32))
        # The refresh after the reconnect is over: the change can only arrive as a
        # notification on the new connection. (Wait on the count: a bank changes in
        # place, so a match may see the change before the reload has returned.)
        await store.add("live", [("md5", MD5, None)])
        await wait_for(lambda: watcher.reloads >= 1)
        assert watcher.index.match(bank_hashes(MD5))
        assert watcher.failures == 0  # a lost connection is expected, not a failure
    assert watcher._conn is None


async def test_periodic_refresh_catches_lost_notifications_in_place(
    processes: list[asyncpg.Pool],
) -> None:
    admin, one, _ = processes
    rng = np.random.default_rng(11)
    stored = [random_pdq(rng) for _ in range(20)]
    later = random_pdq(rng)
    store = BankStore(admin)
    await store.ensure("quiet", "test")
    await store.add("quiet", [("pdq", h, None) for h in stored] + [("sha256", SHA, None)])
    async with BankWatcher(one, refresh_seconds=0.3) as watcher:
        bank = watcher.index.banks["quiet"]
        pdq, sha = bank.indexes["pdq"], bank.indexes["sha256"]
        # The watcher hears nothing from now on, as if every notification were lost.
        assert watcher._conn is not None
        await watcher._conn.remove_listener(CHANNEL, watcher._notified)
        await store.add("quiet", [("md5", MD5, None), ("pdq", later, None)])
        await store.remove("quiet", [("pdq", stored[0]), ("sha256", SHA)])
        async with admin.acquire() as conn:
            # Replica mode skips every trigger: changes nobody announces at all.
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                "INSERT INTO bank_entry (bank_id, kind, value) "
                "SELECT id, 'md5', $1 FROM bank WHERE name = 'quiet'",
                "1" * 32,
            )
            await conn.execute("UPDATE bank SET category = 'spam' WHERE name = 'quiet'")
            await conn.execute("SET session_replication_role = DEFAULT")

        # Two more passes: one in progress now may have read before the changes.
        passes = watcher.refreshes
        await wait_for(lambda: watcher.refreshes >= passes + 2)
        await watcher._conn.add_listener(CHANNEL, watcher._notified)
        index = watcher.index
        found = index.match(hashes((later, 100), md5=MD5))
        assert [(m.kind, m.category) for m in found] == [("md5", "spam"), ("pdq", "spam")]
        assert index.match(bank_hashes("1" * 32))
        assert index.match(hashes((stored[0], 100))) == []
        assert index.match(hashes(sha256=SHA)) == []
        assert watcher.index.counts() == {"quiet": 22}
        # Read past the marks, in place: nothing was read whole.
        assert watcher.index.banks["quiet"] is bank
        assert bank.indexes["pdq"] is pdq and bank.indexes["sha256"] is sha
        assert watcher.reloads == watcher.reconnects == watcher.failures == 0


async def test_changes_the_marks_cannot_see_are_read_whole(
    processes: list[asyncpg.Pool],
) -> None:
    """Neither a new entry id nor a logged removal: an UPDATE in place and a TRUNCATE move
    the bank's changed_at; a delete in replica mode fires no trigger at all, and the
    periodic pass finds it by the count."""
    admin, one, _ = processes
    store = BankStore(admin)
    await store.ensure("quiet", "test")
    await store.add("quiet", [("md5", MD5, None), ("md5", "1" * 32, None), ("md5", "2" * 32, None)])
    async with BankWatcher(one, refresh_seconds=0.3, count_every=1) as watcher:

        def held(md5: str) -> bool:
            return bool(watcher.index.match(bank_hashes(md5)))

        bank = watcher.index.banks["quiet"]
        await admin.execute("UPDATE bank_entry SET value = $1 WHERE value = $2", "3" * 32, MD5)
        await wait_for(lambda: held("3" * 32) and not held(MD5))
        assert watcher.index.banks["quiet"] is not bank
        async with admin.acquire() as conn:
            await conn.execute("SET session_replication_role = replica")
            await conn.execute("DELETE FROM bank_entry WHERE value = $1", "1" * 32)
            await conn.execute("SET session_replication_role = DEFAULT")
        await wait_for(lambda: not held("1" * 32))
        assert held("2" * 32) and held("3" * 32)
        await admin.execute("TRUNCATE bank_entry")
        await wait_for(lambda: watcher.index.counts() == {"quiet": 0})
        assert watcher.failures == 0


async def test_matches_go_on_while_a_reload_applies_changes(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The indexes change in a worker thread while matches run on the event loop: every
    entry nobody changed is found throughout, and a new kind appears whole."""
    rng = np.random.default_rng(12)
    kept = [random_pdq(rng) for _ in range(300)]
    kept_md5 = [f"{i:032x}" for i in range(300)]
    store = BankStore(pool)
    await store.ensure("busy", "test")
    await store.add("busy", [("pdq", h, None) for h in kept] + [("md5", m, None) for m in kept_md5])
    index = await BankIndex.load(pool)
    # Enough to fill the PDQ tail (4,096) a few times: the delta is rebuilt meanwhile.
    await store.add(
        "busy",
        [("pdq", random_pdq(rng), None) for _ in range(20_000)]
        + [("md5", f"{i:032x}", None) for i in range(300, 20_300)]
        + [("sha256", SHA, None)],
    )
    await store.remove("busy", [("pdq", kept[0]), ("md5", kept_md5[0])])
    threads: list[threading.Thread] = []
    real_apply = _Bank.apply

    def apply(bank: _Bank, *args: object) -> None:
        threads.append(threading.current_thread())
        real_apply(bank, *args)

    monkeypatch.setattr(_Bank, "apply", apply)
    reload = asyncio.create_task(index.reload(pool, "busy"))
    matched = 0
    while not reload.done():
        i = 1 + matched % 299
        found = index.match(hashes((kept[i], 100), md5=kept_md5[i]))
        assert {(m.kind, m.value) for m in found} == {("pdq", kept[i]), ("md5", kept_md5[i])}
        sha = [m.kind for m in index.match(hashes(sha256=SHA, md5="f" * 32))]
        assert sha in ([], ["sha256"])
        matched += 1
        await asyncio.sleep(0)
    assert await reload is index
    assert threads and threading.main_thread() not in threads
    assert matched > 1
    assert index.counts() == {"busy": 40_599}
    assert [m.kind for m in index.match(hashes(sha256=SHA, md5="f" * 32))] == ["sha256"]
    assert index.match(hashes((kept[0], 100), md5=kept_md5[0])) == []


def test_bank_match_is_a_fact() -> None:
    found = BankMatch("b", "c", "md5", MD5, 1, 0)
    with pytest.raises(AttributeError):
        found.distance = 3  # type: ignore[misc]


async def test_reload_applies_only_the_changes_in_place(pool: asyncpg.Pool) -> None:
    store = BankStore(pool)
    await store.ensure("grow", "test")
    rng = np.random.default_rng(7)
    first = [random_pdq(rng) for _ in range(50)]
    await store.add("grow", [("pdq", h, None) for h in first] + [("md5", MD5, None)])
    index = await BankIndex.load(pool)
    bridge = media(BRIDGE)
    assert [m.kind for m in index.match(bridge)] == ["md5"]

    # Added: the bridge's PDQ; removed: its MD5 and one of the random hashes.
    await store.add("grow", [("pdq", bridge.pdq[0].hash, "later")])
    await store.remove("grow", [("md5", MD5), ("pdq", first[0])])
    reloaded = await index.reload(pool, "grow")
    assert reloaded is index  # in place: no copy of the bank
    assert [m.kind for m in index.match(bridge)] == ["pdq"]
    assert len(index) == 50
    fresh = await BankIndex.load(pool)  # the same answer as reading everything again
    assert fresh.counts() == index.counts()
    probe = Hashes(
        "0" * 64, "0" * 32, "image", "image/jpeg", (PdqHash(first[0], 100),), (), 1, 1, 1
    )
    assert index.match(probe) == fresh.match(probe) == []
    probe = Hashes(
        "0" * 64, "0" * 32, "image", "image/jpeg", (PdqHash(first[1], 100),), (), 1, 1, 1
    )
    assert [m.value for m in index.match(probe)] == [m.value for m in fresh.match(probe)]

    # A bank deleted and made again under the same name is read whole.
    await store.delete("grow")
    await store.ensure("grow", "test")
    await store.add("grow", [("md5", MD5, None)])
    again = await index.reload(pool, "grow")
    assert again is not index
    assert [m.kind for m in again.match(bridge)] == ["md5"]
