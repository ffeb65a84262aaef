"""Matching banks: ``BankIndex`` holds every bank in memory, matched against a file's
``Media``: one index per hash kind, built by the kind (an ``ExactIndex`` for digests, a
``PdqIndex`` for PDQ, both for 10 million hashes). Nothing here names a kind. The
loader reads banks from PostgreSQL by binary COPY, whole or past a bank's marks.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import numpy as np
import structlog

from relay.banks.files import BankError
from relay.config import BankConfig
from relay.hashing import KINDS, Found, HashKind, KindIndex
from relay.signal import Signal
from relay.store.db import Connection, translating

if TYPE_CHECKING:
    from relay.media.hashes import Hashes
    from relay.media.media import Media

__all__ = ["ALLOW", "BankIndex", "BankMatch"]

log = structlog.get_logger(__name__)

#: The category of banks that list media known to be harmless (a moderator's false
#: positives): an exact match in one suppresses the file's other bank matches
#: (relay.banks.matcher.BankMatcher). Here, not in the matcher, so that
#: ``relay.banks`` can export it without importing ``relay.media``.
ALLOW = "allow"

# What BankIndex reads of a bank's row.
_BANK_COLUMNS = "id, name, category, changed_at"


@dataclass(frozen=True, slots=True)
class BankMatch:
    """A file's hash found in a bank: exactly (distance 0) or within the bank's radius."""

    bank: str
    category: str
    kind: str
    value: str  # the bank entry's hash, not the file's
    entry_id: int
    distance: int
    variant: int | None = None  # which rotation/flip of the file matched (dihedral banks)
    exact: bool = True  # the kind's exactness: equal hashes, or near ones

    def as_signal(self, media: Media | None = None) -> Signal:
        # A rule fires on the bank's name or "category:NAME" (relay.signal.Signal.targets);
        # category_rule spells the latter out for whoever reads the record. The matcher
        # (relay.banks.matcher.BankMatcher) adds its name and the kind's exactness.
        return Signal(
            kind="match",
            source=self.bank,
            detail={
                "category": self.category,
                "hash_kind": self.kind,
                "distance": self.distance,
                "entry": self.entry_id,
                "value": self.value,
                "variant": self.variant,
                "category_rule": f"category:{self.category}",
            },
            media=media,
        )


#: Per kind: the ids (int64) and the hashes as raw bytes ((N, size) uint8) of entries.
_Added = Mapping[str, tuple[np.ndarray, np.ndarray]]
#: A field of a binary COPY row: its name, then numpy dtype arguments (big-endian).
_Field = tuple[str, tuple[Any, ...]]


@dataclass(slots=True)
class _Bank:
    """One bank in memory, changed in place so a change of one hash costs no copy of it.

    ``apply`` runs in a worker thread while ``match`` reads the bank on the event loop:
    the indexes take changes under their own locks and answer from one consistent state
    (see ExactIndex and PdqIndex), and the kind-to-index map is replaced, never
    changed, so a match never iterates a map that grows under it.
    """

    name: str
    category: str
    radius: Mapping[str, int]  # kind -> largest distance that matches (0: exact kinds)
    dihedral: bool
    indexes: Mapping[str, KindIndex]  # kind -> its index
    bank_id: int = 0
    last_entry: int = 0  # the highest entry id read
    last_removal: int = 0  # the highest bank_entry_removal id read
    # The bank's changed_at when the marks last explained it: an entry changed in a way
    # the marks cannot see (UPDATE in place, TRUNCATE) moves it, and nothing else does.
    changed_at: datetime | None = None

    def apply(self, added: _Added, removed: np.ndarray) -> None:
        """Entries added since the marks, and the ids of entries removed since then.

        A match running meanwhile may see some of the changes and not others; entries
        nobody changed are found throughout.
        """
        if len(removed):
            for index in self.indexes.values():
                index.remove(removed)
        for kind_name, (ids, values) in added.items():
            built = self.indexes.get(kind_name)
            if built is not None:
                built.add(values, ids)
                continue
            fresh = _build(KINDS[kind_name], ids, values, self.radius)
            self.indexes = {**self.indexes, kind_name: fresh}  # published in one assignment

    @property
    def size(self) -> int:
        return sum(map(len, self.indexes.values()))


@dataclass(frozen=True)
class BankIndex:
    """Every bank in memory. A bank read whole builds a new index that replaces the old
    one in one assignment; changes to a bank already in memory are applied to it in
    place (see ``_Bank``)."""

    banks: Mapping[str, _Bank] = field(default_factory=dict)
    configs: Mapping[str, BankConfig] = field(default_factory=dict)

    @classmethod
    @translating
    async def load(cls, pool: asyncpg.Pool, configs: Sequence[BankConfig] = ()) -> BankIndex:
        """Read every bank in one snapshot.

        Banks in the database but not in the configuration are matched too, with their
        stored category and each kind's default distance: an admin who imported a list
        expects it to work, and ``[[bank]]`` only adds policy (distance, dihedral).
        """
        by_name = {c.name: c for c in configs}
        banks: dict[str, _Bank] = {}
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            for row in await conn.fetch(f"SELECT {_BANK_COLUMNS} FROM bank ORDER BY name"):
                banks[row["name"]] = await _read_bank(conn, row, by_name.get(row["name"]))
        return cls(banks, by_name)

    @translating
    async def reload(self, pool: asyncpg.Pool, name: str, *, verify: bool = False) -> BankIndex:
        """The index with bank ``name`` brought up to date (or gone, if it was deleted).

        A bank already in memory gets only what changed since its marks, in place (the
        indexes change in a thread). A new bank, or one deleted and created again, is
        read whole into a new index; so is one changed where the marks cannot see: its
        ``changed_at`` moved with nothing past the marks (an entry updated in place, a
        TRUNCATE), or, when ``verify`` is set, its entry count differs from the
        database's (a delete in replica mode, which fires no trigger).

        Call it for one bank at a time: two reloads of one bank would apply its changes
        twice. BankWatcher runs every reload in its one task, one after another.
        """
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(f"SELECT {_BANK_COLUMNS} FROM bank WHERE name = $1", name)
            current = self.banks.get(name)
            config = self.configs.get(name)
            if row is not None and current is not None and current.bank_id == row["id"]:
                if await _catch_up(conn, current):
                    current.changed_at = row["changed_at"]
                current.category = _category(row, config)
                if row["changed_at"] == current.changed_at and (
                    not verify or await _count(conn, current.bank_id) == current.size
                ):
                    return self
                log.warning("bank_out_of_step", bank=name, entries=current.size)
            bank = await _read_bank(conn, row, config) if row else None
        banks = {k: v for k, v in self.banks.items() if k != name}
        if bank is not None:
            banks[name] = bank
        return BankIndex(banks, self.configs)

    @translating
    async def refresh(self, pool: asyncpg.Pool, *, verify: bool = True) -> BankIndex:
        """Every bank, in the database or in memory, brought up to date by ``reload``:
        what lost notifications missed, read past the marks. ``verify`` counts each
        bank's entries too (a scan: about 1 s per 10M entries in PostgreSQL)."""
        names = {r["name"] for r in await pool.fetch("SELECT name FROM bank")}
        index = self
        for name in sorted(names | self.banks.keys()):
            index = await index.reload(pool, name, verify=verify)
        return index

    def __len__(self) -> int:
        return sum(bank.size for bank in self.banks.values())

    def counts(self) -> dict[str, int]:
        """Entries per bank, for metrics and ``/readyz``."""
        return {name: bank.size for name, bank in self.banks.items()}

    def match(self, media: Media | Hashes) -> list[BankMatch]:
        """The nearest entry per (bank, kind) that matches, nearest first.

        Each kind's index is asked with every value the file has of that kind (PDQ:
        every frame of quality >= 50); a dihedral bank also tries the kind's variants
        (the first frame rotated and flipped) and reports which one matched.
        """
        from relay.media.media import Media  # here: relay.media imports this module

        if not isinstance(media, Media):  # the hasher's result, as tests and benches hold
            media = Media.of(b"", media)
        found: list[BankMatch] = []
        for bank in self.banks.values():
            for kind_name, index in bank.indexes.items():
                values = media.hashes.get(kind_name, ())
                if not values or not len(index):
                    continue
                queries: list[str] = list(values)
                variants: list[int | None] = [None] * len(values)
                turned = media.variants.get(kind_name, ()) if bank.dihedral else ()
                for number, value in enumerate(turned):
                    if number:  # [0] is the value as is, asked already
                        queries.append(value)
                        variants.append(number)
                best = index.best(queries, bank.radius[kind_name])
                if best is not None:
                    kind = KINDS[kind_name]
                    found.append(
                        BankMatch(
                            bank.name,
                            bank.category,
                            kind_name,
                            best.value,
                            best.entry_id,
                            best.distance,
                            variants[best.query],
                            kind.exact,
                        )
                    )
        found.sort(key=lambda m: (m.distance, m.bank, m.kind))
        return found

    def each(self, kind_name: str, values: Sequence[str]) -> list[tuple[str, str, list[Found]]]:
        """Per bank holding entries of kind ``kind_name``: its name, its category, and
        the nearest entry within its radius of each value (one lookup per distinct
        value; ``Found.query`` is the value's place in ``values``), for media matched
        as shares of their frames (vPDQ). Banks with no hit are left out."""
        found: list[tuple[str, str, list[Found]]] = []
        for bank in self.banks.values():
            index = bank.indexes.get(kind_name)
            if index is None or not len(index):
                continue
            radius = bank.radius[kind_name]
            nearest: dict[str, Found | None] = {}
            hits: list[Found] = []
            for number, value in enumerate(values):
                if value not in nearest:
                    nearest[value] = index.best([value], radius)
                best = nearest[value]
                if best is not None:
                    hits.append(best._replace(query=number))
            if hits:
                found.append((bank.name, bank.category, hits))
        return found


_COPY_HEADER = 19  # signature (11), flags (4), header extension length (4)


async def _copy(
    conn: Connection, what: str, query: str, *args: object, fields: Sequence[_Field]
) -> dict[str, np.ndarray]:
    """Each field of the rows of ``query``, as a native array: read as binary COPY and
    parsed with numpy as fixed-size records, in a thread (no per-row Python: 10M rows in
    seconds, not minutes, and the event loop goes on meanwhile)."""
    buffer = io.BytesIO()
    await conn.copy_from_query(query, *args, output=buffer, format="binary")
    return await asyncio.to_thread(_parse, buffer, fields, what)


def _parse(buffer: io.BytesIO, fields: Sequence[_Field], what: str) -> dict[str, np.ndarray]:
    """Binary COPY rows: a field count, then each field's length and value. Every field
    must be of its dtype's size (so no NULLs)."""
    layout: list[tuple[Any, ...]] = [("fields", ">i2")]
    for name, dtype in fields:
        layout += [(f"{name}_len", ">i4"), (name, *dtype)]
    row = np.dtype(layout)
    data = buffer.getbuffer()[_COPY_HEADER:-2]  # the trailer is a field count of -1
    rows = np.frombuffer(data, dtype=row) if len(data) % row.itemsize == 0 else None
    if rows is None or (
        len(rows)
        and not (
            (rows["fields"] == len(fields)).all()
            and all((rows[f"{n}_len"] == row[n].itemsize).all() for n, _ in fields)
        )
    ):
        raise BankError(f"{what}: unexpected rows in the database")
    return {n: rows[n].astype(rows[n].dtype.newbyteorder("=")) for n, _ in fields}


async def _read_hashes(
    conn: Connection, bank_id: int, kind: type[HashKind], after: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, hashes as (N, size) uint8) of a bank's entries of ``kind``, every one or
    those with ids past ``after``: a binary COPY of ``(id, decode(value, 'hex'))``."""
    query = "SELECT id, decode(value, 'hex') FROM bank_entry WHERE bank_id = $1 AND kind = $2"
    args: list[object] = [bank_id, kind.name]
    if after is not None:
        query += " AND id > $3"
        args.append(after)
    size = kind.size()
    fields: list[_Field] = [("id", (">i8",)), ("hash", ("u1", size))]
    rows = await _copy(conn, f"bank {bank_id}: {kind.name} entries", query, *args, fields=fields)
    return rows["id"], rows["hash"]


async def _catch_up(conn: Connection, bank: _Bank) -> bool:
    """Apply to ``bank`` the entries added and removed since its marks; whether there
    were any."""
    added: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for kind in KINDS.values():
        ids, values = await _read_hashes(conn, bank.bank_id, kind, after=bank.last_entry)
        if len(ids):
            added[kind.name] = ids, values
    removals = await _copy(
        conn,
        f"bank {bank.bank_id}: removals",
        "SELECT id, entry_id FROM bank_entry_removal WHERE bank_id = $1 AND id > $2",
        bank.bank_id,
        bank.last_removal,
        fields=[("id", (">i8",)), ("entry_id", (">i8",))],
    )
    removed = removals["entry_id"]
    if added or len(removed):
        # A full tail rebuilds an index's delta (tens of ms at 65k pending): not here.
        await asyncio.to_thread(bank.apply, added, removed)
    if added:
        bank.last_entry = max(int(ids.max()) for ids, _ in added.values())
    if len(removed):
        bank.last_removal = int(removals["id"].max())
    return bool(added or len(removed))


async def _count(conn: Connection, bank_id: int) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM bank_entry WHERE bank_id = $1", bank_id))


def _category(row: asyncpg.Record, config: BankConfig | None) -> str:
    """Rules are written against the configured category: the admin's file wins."""
    return config.category if config is not None else row["category"]


def _build(
    kind: type[HashKind], ids: np.ndarray, values: np.ndarray, radius: Mapping[str, int]
) -> KindIndex:
    return kind.index(values, ids, radius[kind.name])


def _radius(config: BankConfig | None) -> dict[str, int]:
    """Per kind, the largest distance a bank matches at: the kind's threshold, or the
    bank's ``<kind>_max_distance`` where its configuration has one (``pdq_max_distance``);
    0 for exact kinds."""
    radius = {name: kind.threshold for name, kind in KINDS.items()}
    for name, kind in KINDS.items():
        given = getattr(config, f"{name}_max_distance", None)
        if not kind.exact and isinstance(given, int):
            radius[name] = given
    return radius


async def _read_bank(conn: Connection, row: asyncpg.Record, config: BankConfig | None) -> _Bank:
    """One bank's entries, kind by kind; each index is built in a thread (seconds at
    millions of hashes), so the event loop goes on meanwhile."""
    name = row["name"]
    category = _category(row, config)
    if category != row["category"]:
        log.warning("bank_category_differs", bank=name, stored=row["category"], configured=category)
    radius = _radius(config)
    last_removal = await conn.fetchval("SELECT coalesce(max(id), 0) FROM bank_entry_removal")
    last_entry = 0
    indexes: dict[str, KindIndex] = {}
    for kind in KINDS.values():
        ids, values = await _read_hashes(conn, row["id"], kind)
        if not len(ids):
            continue
        last_entry = max(last_entry, int(ids.max()))
        index = await asyncio.to_thread(_build, kind, ids, values, radius)
        del ids, values
        indexes[kind.name] = index
    dihedral = config.dihedral if config is not None else False
    return _Bank(
        name,
        category,
        radius,
        dihedral,
        indexes,
        bank_id=row["id"],
        last_entry=last_entry,
        last_removal=last_removal,
        changed_at=row["changed_at"],
    )
