"""The database learns the hash kinds from Sluice's registry (migration 0009).

``bank_entry`` refers to ``hash_kind`` for its kind and is checked against its length, so a kind
registered in ``relay.hashing`` can be stored as soon as Sluice has started once.
"""

from __future__ import annotations

from relay.errors import SluiceError
from relay.hashing import KINDS
from relay.store.db import Connection

__all__ = ["store_kinds"]


async def store_kinds(conn: Connection) -> None:
    """Every registered kind in ``hash_kind`` (an idempotent upsert); SluiceError if the
    database knows one of them at another length (its stored values would not load)."""
    kinds = [(k.name, k.hex_length) for k in KINDS.values()]
    await conn.executemany(
        "INSERT INTO hash_kind (name, hex_length) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        kinds,
    )
    rows = await conn.fetch(
        "SELECT name, hex_length FROM hash_kind WHERE name = ANY($1::text[])",
        [name for name, _ in kinds],
    )
    stored: dict[str, int] = {r["name"]: r["hex_length"] for r in rows}
    wrong = [f"{n} ({stored[n]}, not {length})" for n, length in kinds if stored[n] != length]
    if wrong:
        raise SluiceError(
            "hash kinds stored with another length of hex digits: " + ", ".join(wrong)
        )
