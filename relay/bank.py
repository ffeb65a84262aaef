"""Banks: named hash lists in PostgreSQL, matched in memory by every Sluice process.

- ``BankStore`` writes banks and their entries; triggers in migration 0002 announce
  every change on channel ``sluice_bank`` (payload: the bank's name).
- ``parse_hash_file`` reads the lists admins get: ThreatExchange "local file" lines
  (``pdq <hex>``), bare hashes of one kind, and CSV with a header.
- ``BankIndex`` holds every bank in memory, matched against a file's ``Media``: one
  index per hash kind, built by the kind (an ``ExactIndex`` for digests, a
  ``PdqIndex`` for PDQ, both for 10 million hashes). Nothing here names a kind.
  ``BankWatcher`` keeps it current: a notification naming a bank
  applies what changed past the bank's marks, and a periodic pass does so for every
  bank, in case a notification was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import asyncpg.pool
import numpy as np
import structlog

from relay.config import BankConfig, bank_name
from relay.errors import SluiceError
from relay.hashing import KINDS, HashKind, KindIndex, by_alias
from relay.signal import Signal
from relay.store.db import Connection, translating

if TYPE_CHECKING:
    from relay.media.image import Hashes
    from relay.media.media import Media

__all__ = [
    "CHANNEL",
    "BankError",
    "BankIndex",
    "BankMatch",
    "BankStore",
    "BankWatcher",
    "Entry",
    "parse_hash_file",
    "read_hash_file",
]

log = structlog.get_logger(__name__)

#: The LISTEN/NOTIFY channel; its payload is the name of the bank that changed.
CHANNEL = "sluice_bank"

#: (kind, normalised hex value, note)
Entry = tuple[str, str, str | None]

_CSV_HASH = ("hash", "value", "signal_value", "signal", "indicator")
_CSV_TYPE = ("type", "kind", "signal_type", "hash_type", "indicator_type")
_CSV_NOTE = ("note", "notes", "comment", "description")
_CSV_EXTRA = ("id", "category")  # kept in the note, as id=... category=...
_MAX_PROBLEMS = 20  # listed in one error; the rest are counted

# Serialises changes to one bank (with the bank id as second key); any constant works.
_CHANGE_LOCK = 0x5B4E
# What BankIndex reads of a bank's row.
_BANK_COLUMNS = "id, name, category, changed_at"
# Changes held outside an index's main part before they are folded in: past this, each
# add rebuilds the pending part, in a worker thread (PDQ: 46 ms at 100k pending).
_COMPACT_MIN = 65_536


class BankError(SluiceError):
    """A bank operation was refused, or a hash list is malformed (every problem listed)."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:_MAX_PROBLEMS]
        more = len(self.problems) - len(shown)
        super().__init__("\n".join(shown) + (f"\n… and {more} more" if more > 0 else ""))


# -- hash list files ------------------------------------------------------------


def read_hash_file(path: str | Path, *, default_kind: str | None = None) -> list[Entry]:
    """``parse_hash_file`` on a file; BankError if it cannot be read or is not UTF-8."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BankError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise BankError(f"{source}:{line}: not UTF-8 text") from exc
    return parse_hash_file(text, default_kind=default_kind, source=source)


def parse_hash_file(
    text: str, *, default_kind: str | None = None, source: str = "<text>"
) -> list[Entry]:
    """Every entry of a hash list, or BankError naming ``source:line`` of each bad line.

    Accepted: ThreatExchange local-file lines ``<type> <hash> [anything]``, bare
    ``<hash> [anything]`` when ``default_kind`` is given, and CSV whose first line is a
    header naming a hash column (``hash``, ``value``, ``signal_value``) and optionally
    a type (``type``, ``kind``, ``signal_type``) and a ``note``. Blank lines and lines
    starting with ``#`` are skipped. Nothing is returned unless every line is good,
    so an import is all or nothing.
    """
    if default_kind is not None and default_kind not in KINDS:
        raise BankError(f"unknown hash type `{default_kind}` (known: {', '.join(sorted(KINDS))})")
    lines = text.removeprefix("\ufeff").splitlines()
    first = next((i for i, line in enumerate(lines) if _is_content(line)), None)
    if first is None:
        return []
    problems: list[str] = []
    if "," in lines[first] and not _is_hash_line(lines[first], default_kind):
        entries = _parse_csv(lines, first, default_kind, source, problems)
    else:
        entries = _parse_lines(lines, default_kind, source, problems)
    if problems:
        raise BankError(problems)
    return entries


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _is_hash_line(line: str, default_kind: str | None) -> bool:
    """Whether a line reads as ``<type> <hash>`` or a bare hash rather than a CSV header."""
    first = line.split(maxsplit=1)[0]
    if by_alias(first) is not None:
        return True
    return default_kind is not None and _valid(default_kind, first) is not None


def _valid(kind: str, value: str) -> str | None:
    try:
        return KINDS[kind].validate(value)
    except ValueError:
        return None


def _entry(
    kind_name: str, value: str, note: str | None, where: str, problems: list[str]
) -> Entry | None:
    try:
        return kind_name, KINDS[kind_name].validate(value), note or None
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return None


def _parse_lines(
    lines: list[str], default_kind: str | None, source: str, problems: list[str]
) -> list[Entry]:
    entries: list[Entry] = []
    for number, line in enumerate(lines, 1):
        if not _is_content(line):
            continue
        where = f"{source}:{number}"
        first, *rest = line.split(maxsplit=1)
        kind_name = _kind_named(first)
        if kind_name is not None:
            if not rest:
                problems.append(f"{where}: `{first}` is not followed by a hash")
                continue
            value, *rest = rest[0].split(maxsplit=1)
        elif default_kind is not None:
            kind_name, value = default_kind, first
        elif _guess(first):
            problems.append(
                f"{where}: a bare hash needs its type: write `{_guess(first)} {first}`, "
                "or give the type of every line (--type)"
            )
            continue
        else:
            known = ", ".join(sorted(KINDS))
            problems.append(f"{where}: unknown hash type `{first}` (known: {known})")
            continue
        entry = _entry(kind_name, value, rest[0].strip() if rest else None, where, problems)
        if entry is not None:
            entries.append(entry)
    return entries


def _kind_named(name: str) -> str | None:
    """The registered name of the kind a list calls ``name`` (its types are ours,
    ThreatExchange's indicator types or python-threatexchange's signal types)."""
    found = by_alias(name)
    return found.name if found is not None else None


def _guess(value: str) -> str | None:
    """The kind a bare hash could be, for a helpful message; SHA-256 and PDQ look alike."""
    fits = [name for name in KINDS if _valid(name, value) is not None]
    fits.sort(key=lambda name: (not KINDS[name].exact, name))  # digests first
    return " or ".join(fits) if fits else None


def _parse_csv(
    lines: list[str], first: int, default_kind: str | None, source: str, problems: list[str]
) -> list[Entry]:
    reader = csv.reader(lines[first:])
    header = [cell.strip().lower() for cell in next(reader)]
    header_where = f"{source}:{first + 1}"
    column = {name: index for index, name in reversed(list(enumerate(header)))}
    hash_col = next((column[n] for n in _CSV_HASH if n in column), None)
    type_col = next((column[n] for n in _CSV_TYPE if n in column), None)
    note_col = next((column[n] for n in _CSV_NOTE if n in column), None)
    extras = [(n, column[n]) for n in _CSV_EXTRA if n in column]
    if hash_col is None:
        problems.append(
            f"{header_where}: a CSV file needs a header naming its hash column "
            f"({', '.join(_CSV_HASH[:3])}); this one has: {', '.join(header)}"
        )
        return []
    if type_col is None and default_kind is None:
        problems.append(
            f"{header_where}: no type column ({', '.join(_CSV_TYPE[:3])}); "
            "add one, or give the type of every row (--type)"
        )
        return []
    needed = max(c for c in (hash_col, type_col, note_col) if c is not None) + 1
    entries: list[Entry] = []
    for row in reader:
        # line_num counts the lines read so far, header included: the row's last line.
        where = f"{source}:{first + reader.line_num}"
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) < needed:
            problems.append(f"{where}: expected {len(header)} columns, got {len(row)}")
            continue
        type_value = row[type_col].strip() if type_col is not None else ""
        if type_value:
            kind_name = _kind_named(type_value)
            if kind_name is None:
                known = ", ".join(sorted(KINDS))
                problems.append(f"{where}: unknown hash type `{type_value}` (known: {known})")
                continue
        elif default_kind is not None:
            kind_name = default_kind
        else:
            problems.append(f"{where}: the type column is empty")
            continue
        parts = [row[note_col].strip()] if note_col is not None else []
        parts += [f"{n}={row[c].strip()}" for n, c in extras if c < len(row) and row[c].strip()]
        entry = _entry(kind_name, row[hash_col], "; ".join(p for p in parts if p), where, problems)
        if entry is not None:
            entries.append(entry)
    return entries


# -- storage ----------------------------------------------------------------------


class BankStore:
    """Banks and entries in PostgreSQL. Every change is one transaction, so an import
    is all or nothing, and one notification tells the running processes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @translating
    async def ensure(
        self, name: str, category: str | None = None, source: str | None = None
    ) -> int:
        """The bank's id, creating it when it does not exist (which needs a category).

        An existing bank's category is never changed here: rules act on categories,
        so moving a bank from ``unwanted`` to ``csam`` must be a deliberate step.
        """
        problem = bank_name(name)
        if problem:
            raise BankError(f"bank name `{name}`: {problem}")
        if category is not None and not category.strip():
            raise BankError(f"bank `{name}`: the category must not be empty")
        for _ in range(2):  # a second try covers a concurrent creation
            row = await self.pool.fetchrow("SELECT id, category FROM bank WHERE name = $1", name)
            if row is not None:
                if category is not None and row["category"] != category:
                    raise BankError(
                        f"bank `{name}` has category `{row['category']}`, not `{category}`; "
                        "a bank's category is not changed by adding to it"
                    )
                return int(row["id"])
            if category is None:
                raise BankError(
                    f"no bank named `{name}`; give a category (--category) to create it"
                )
            created = await self.pool.fetchval(
                "INSERT INTO bank (name, category, source) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO NOTHING RETURNING id",
                name,
                category,
                source,
            )
            if created is not None:
                log.info("bank_created", bank=name, category=category, source=source)
                return int(created)
        raise BankError(f"bank `{name}` could not be created")  # pragma: no cover

    @translating
    async def add(self, bank: str, entries: Iterable[tuple[str, str, str | None]]) -> int:
        """Add entries (kind, hex, note) to an existing bank; how many were new.

        Every value is validated first; then one COPY and one INSERT in one
        transaction, so a million-line list is one statement and one notification.
        """
        rows = _validated(entries)
        if not rows:
            await self._id(self.pool, bank)
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            bank_id = await self._lock(conn, bank)
            await conn.execute(
                "CREATE TEMPORARY TABLE bank_import (kind text, value text, note text) "
                "ON COMMIT DROP"
            )
            await conn.copy_records_to_table("bank_import", records=rows)
            status = await conn.execute(
                "INSERT INTO bank_entry (bank_id, kind, value, note) "
                "SELECT DISTINCT ON (kind, value) $1::integer, kind, value, note "
                "FROM bank_import ORDER BY kind, value "
                "ON CONFLICT (bank_id, kind, value) DO NOTHING",
                bank_id,
            )
        added = int(status.split()[-1])
        log.info("bank_entries_added", bank=bank, added=added, given=len(rows))
        return added

    @translating
    async def remove(self, bank: str, entries: Iterable[Sequence[Any]]) -> int:
        """Remove entries given as (kind, hex[, note]); how many were there."""
        rows = _validated((e[0], e[1], None) for e in entries)
        async with self.pool.acquire() as conn, conn.transaction():
            bank_id = await self._lock(conn, bank)
            status = await conn.execute(
                "DELETE FROM bank_entry e USING unnest($2::text[], $3::text[]) AS r(kind, value) "
                "WHERE e.bank_id = $1 AND e.kind = r.kind AND e.value = r.value",
                bank_id,
                [r[0] for r in rows],
                [r[1] for r in rows],
            )
        removed = int(status.split()[-1])
        log.info("bank_entries_removed", bank=bank, removed=removed)
        return removed

    @translating
    async def delete(self, bank: str) -> bool:
        """Drop a bank and its entries; False when there was none."""
        status = await self.pool.execute("DELETE FROM bank WHERE name = $1", bank)
        return status.endswith(" 1")

    @translating
    async def list(self) -> list[dict[str, Any]]:
        """Every bank with its entry count per kind and the time of its last change."""
        banks = await self.pool.fetch(
            "SELECT id, name, category, source, confidential, created_at, changed_at "
            "FROM bank ORDER BY name"
        )
        counts = await self.pool.fetch(
            "SELECT bank_id, kind, count(*) AS n FROM bank_entry GROUP BY bank_id, kind"
        )
        per_bank: dict[int, dict[str, int]] = {}
        for row in counts:
            per_bank.setdefault(row["bank_id"], {})[row["kind"]] = row["n"]
        return [
            {
                "name": b["name"],
                "category": b["category"],
                "source": b["source"],
                "confidential": b["confidential"],
                "counts": {k: per_bank.get(b["id"], {}).get(k, 0) for k in sorted(KINDS)},
                "created_at": b["created_at"],
                "changed_at": b["changed_at"],
            }
            for b in banks
        ]

    @classmethod
    async def _lock(cls, conn: Connection, bank: str) -> int:
        """The bank's id, with its changes serialised until commit: entry ids then commit
        in increasing order per bank, which lets running processes read only what is
        new since the highest id they have (see ``BankIndex.reload``)."""
        bank_id = await cls._id(conn, bank)
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _CHANGE_LOCK, bank_id)
        return bank_id

    @staticmethod
    async def _id(conn: asyncpg.Pool | Connection, bank: str) -> int:
        bank_id = await conn.fetchval("SELECT id FROM bank WHERE name = $1", bank)
        if bank_id is None:
            raise BankError(f"no bank named `{bank}`")
        return int(bank_id)


def _validated(entries: Iterable[tuple[str, str, str | None]]) -> list[Entry]:
    rows: list[Entry] = []
    problems: list[str] = []
    for number, (kind_name, value, note) in enumerate(entries, 1):
        kind_class = KINDS.get(kind_name)
        if kind_class is None:
            problems.append(f"entry {number}: unknown hash type `{kind_name}`")
            continue
        try:
            rows.append((kind_name, kind_class.validate(value), note))
        except ValueError as exc:
            problems.append(f"entry {number}: {exc}")
    if problems:
        raise BankError(problems)
    return rows


# -- matching -----------------------------------------------------------------------


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
        # (relay.matcher.BankMatcher) adds its name and the kind's exactness.
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


# -- propagation ----------------------------------------------------------------------


class BankWatcher:
    """Keeps ``index`` current in this process: a change committed anywhere is matched
    here within a fraction of a second.

    One pooled connection is held for LISTEN (so it works with the embedded database,
    whose URL only the pool knows). A notification reloads the bank it names, after a
    short debounce that gathers a burst of changes. Notifications sent while the
    connection was down are lost: every reconnect brings every bank up to date past its
    marks, entries counted (``BankIndex.refresh``), and so does a pass every
    ``refresh_seconds`` as a safety net, counting on every ``count_every``-th pass only
    (a count is a scan), for deletes that fire no trigger. All of it runs in one task,
    one step after another, so two reloads of one bank never overlap.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        configs: Sequence[BankConfig] = (),
        *,
        debounce_seconds: float = 0.1,
        refresh_seconds: float = 60.0,
        count_every: int = 10,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        self.pool = pool
        self.configs = tuple(configs)
        self.debounce = debounce_seconds
        self.refresh = refresh_seconds
        self.count_every = count_every
        self.max_backoff = max_backoff_seconds
        self.index = BankIndex()
        self.reloads = 0  # banks reloaded on notification, for tests and metrics
        self.refreshes = 0  # safety-net passes over every bank
        self.reconnects = 0  # connections lost and made again, everything read whole
        self.failures = 0  # reloads or reconnects that failed and were retried
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None
        self._connected = False
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @translating
    async def start(self) -> None:
        """Listen, then load: a change committed in between is announced, not missed."""
        await self._listen()
        try:
            self.index = await BankIndex.load(self.pool, self.configs)
        except BaseException:
            await self._unlisten()
            raise
        self._task = asyncio.create_task(self._run(), name="bank-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._unlisten()

    async def __aenter__(self) -> BankWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # asyncpg calls these two from the event loop.
    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._pending.add(str(payload))  # a bank's name: NOTIFY payloads are text
        self._wake.set()

    def _lost(self, conn: object) -> None:
        self._connected = False
        self._wake.set()

    async def _listen(self) -> None:
        conn = await self.pool.acquire()
        try:
            conn.add_termination_listener(self._lost)
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.remove_termination_listener(self._lost)
            await self.pool.release(conn)
            raise
        self._conn, self._connected = conn, True

    async def _unlisten(self) -> None:
        conn, self._conn, self._connected = self._conn, None, False
        if conn is None:
            return
        try:
            conn.remove_termination_listener(self._lost)
        except asyncpg.InterfaceError:
            return  # it was closed, and asyncpg has handed it back to the pool already
        try:
            # The pool's reset skips UNLISTEN (relay.store.db._keep): do it here.
            await conn.remove_listener(CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()
        await self.pool.release(conn)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.refresh
        while True:
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(next_refresh):
                        await self._wake.wait()
                if self._pending and self._connected:
                    await asyncio.sleep(self.debounce)
                self._wake.clear()
                if not self._connected:
                    await self._reconnect()
                    next_refresh = loop.time() + self.refresh
                    continue
                names, self._pending = self._pending, set()
                for name in sorted(names):
                    self.index = await self.index.reload(self.pool, name)
                    self.reloads += 1
                    log.info("bank_reloaded", bank=name, entries=self.index.counts().get(name))
                if loop.time() >= next_refresh:
                    if self._conn is not None:
                        await self._conn.execute("SELECT 1")  # a silently dead link shows here
                    verify = (self.refreshes + 1) % self.count_every == 0
                    self.index = await self.index.refresh(self.pool, verify=verify)
                    self.refreshes += 1
                    next_refresh = loop.time() + self.refresh
                await self._compact()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever went wrong, keep watching: giving up would freeze the index.
                log.warning("bank_watch_failed", error=f"{type(exc).__name__}: {exc}")
                self.failures += 1
                self._connected = False
                self._wake.set()

    async def _compact(self) -> None:
        """Fold changes into the main tables once there are many (pending changes slow
        queries and adds; compacting takes seconds at 10M, in a thread, while queries
        go on)."""
        for bank in self.index.banks.values():
            for index in bank.indexes.values():
                if index.pending > _COMPACT_MIN:
                    await asyncio.to_thread(index.compact)

    async def _reconnect(self) -> None:
        delay = 0.1
        while True:
            await self._unlisten()
            try:
                await self._listen()
                self._pending.clear()  # the refresh below covers them
                # What notifications were lost is past the marks (or moved changed_at,
                # or the counts): no bank is read whole, nor held twice, for a blip.
                self.index = await self.index.refresh(self.pool, verify=True)
                self.reconnects += 1
            except Exception as exc:
                self.failures += 1
                log.warning(
                    "bank_watch_reconnect_failed", error=f"{type(exc).__name__}: {exc}", retry=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            log.info("bank_watch_reconnected", entries=len(self.index))
            return
