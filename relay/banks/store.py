"""Writing banks: ``BankStore`` changes banks and their entries in PostgreSQL, each
change one transaction; triggers in migration 0002 announce every change on channel
``sluice_bank`` (payload: the bank's name).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import structlog

from relay.banks.files import BankError, Entry
from relay.config import bank_name
from relay.hashing import KINDS
from relay.store.db import Connection, translating
from relay.trust import is_peer_bank

__all__ = ["BankStore"]

log = structlog.get_logger(__name__)

# Serialises changes to one bank (with the bank id as second key); any constant works.
_CHANGE_LOCK = 0x5B4E


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
        problem = None if is_peer_bank(name) else bank_name(name)
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
