"""Queries on moderation receipts: those Sluice published (its collection, newest
first), the peers that follow it (where receipts are pushed), and the receipts peers
sent (each judged once: the id guards against a replay)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from relay.store.db import Connection, translating

__all__ = ["Follower", "Published", "ReceiptStore"]


@dataclass(frozen=True, slots=True)
class Published:
    """A receipt Sluice issued: ``document`` is the signed receipt, served as is."""

    id: str
    published: datetime
    document: dict[str, Any]
    activity_id: int | None
    category: str | None


@dataclass(frozen=True, slots=True)
class Follower:
    """A peer whose Follow was accepted; ``delivery`` is where receipts go."""

    actor: str
    inbox: str
    shared_inbox: str | None
    follow_id: str | None
    accepted_at: datetime

    @property
    def delivery(self) -> str:
        return self.shared_inbox or self.inbox


_RECEIPT = "id, published, document::text AS document, activity_id, category"


def _published(row: asyncpg.Record) -> Published:
    return Published(
        id=row["id"],
        published=row["published"],
        document=json.loads(row["document"]),
        activity_id=row["activity_id"],
        category=row["category"],
    )


class ReceiptStore:
    """Receipts, followers and received receipts in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- receipts Sluice published -------------------------------------------------

    @translating
    async def add_receipt(
        self,
        document: Mapping[str, Any],
        *,
        published: datetime,
        activity_id: int | None = None,
        category: str | None = None,
        conn: Connection | None = None,
    ) -> bool:
        """Keep a signed receipt under its ``id``; with ``conn``, in the caller's
        transaction (with its fan-out). False when that id is already kept: a receipt
        is issued once, never rewritten."""
        ident = document.get("id")
        if not isinstance(ident, str) or not ident:
            raise ValueError("a receipt needs a string `id`")
        db = conn if conn is not None else self.pool
        result = await db.execute(
            "INSERT INTO receipt (id, published, document, activity_id, category) "
            "VALUES ($1, $2, $3::jsonb, $4, $5) ON CONFLICT (id) DO NOTHING",
            ident,
            published,
            json.dumps(document, ensure_ascii=False),
            activity_id,
            category,
        )
        return result.split()[-1] == "1"

    @translating
    async def receipt(self, ident: str) -> Published | None:
        row = await self.pool.fetchrow(f"SELECT {_RECEIPT} FROM receipt WHERE id = $1", ident)
        return _published(row) if row is not None else None

    @translating
    async def page(self, before: str | None = None, limit: int = 20) -> list[Published]:
        """Receipts newest first; after ``before`` (a receipt id, the previous page's
        last) when given. A ``before`` that names no receipt gives an empty page."""
        if before is None:
            rows = await self.pool.fetch(
                f"SELECT {_RECEIPT} FROM receipt ORDER BY published DESC, id DESC LIMIT $1",
                limit,
            )
        else:
            rows = await self.pool.fetch(
                f"SELECT {_RECEIPT} FROM receipt "
                "WHERE (published, id) < (SELECT published, id FROM receipt WHERE id = $1) "
                "ORDER BY published DESC, id DESC LIMIT $2",
                before,
                limit,
            )
        return [_published(r) for r in rows]

    @translating
    async def count(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM receipt"))

    # -- followers ---------------------------------------------------------------

    @translating
    async def add_follower(
        self,
        actor: str,
        inbox: str,
        *,
        shared_inbox: str | None = None,
        follow_id: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Record an accepted Follow; a repeated one updates where receipts go."""
        db = conn if conn is not None else self.pool
        await db.execute(
            "INSERT INTO follower (actor, inbox, shared_inbox, follow_id) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (actor) DO UPDATE SET "
            "inbox = EXCLUDED.inbox, shared_inbox = EXCLUDED.shared_inbox, "
            "follow_id = EXCLUDED.follow_id",
            actor,
            inbox,
            shared_inbox,
            follow_id,
        )

    @translating
    async def remove_follower(
        self, actor: str, *, follow_id: str | None = None, conn: Connection | None = None
    ) -> bool:
        """Forget a follower (an Undo of its Follow, a Reject); with ``follow_id``, only
        when that is the Follow recorded. False when nothing was removed."""
        db = conn if conn is not None else self.pool
        result = await db.execute(
            "DELETE FROM follower WHERE actor = $1 AND ($2::text IS NULL OR follow_id = $2)",
            actor,
            follow_id,
        )
        return result.split()[-1] != "0"

    @translating
    async def followers(self) -> list[Follower]:
        rows = await self.pool.fetch(
            "SELECT actor, inbox, shared_inbox, follow_id, accepted_at FROM follower "
            "ORDER BY accepted_at, actor"
        )
        return [Follower(**dict(r)) for r in rows]

    @translating
    async def follower_count(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM follower"))

    @translating
    async def inboxes(self) -> list[str]:
        """Where a receipt goes: each follower's shared inbox, else its own, once each."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT coalesce(shared_inbox, inbox) AS url FROM follower ORDER BY 1"
        )
        return [r["url"] for r in rows]

    # -- receipts peers sent -------------------------------------------------------

    @translating
    async def record_received(
        self,
        ident: str,
        *,
        peer: str,
        document: Mapping[str, Any],
        honoured: bool,
        reason: str | None = None,
    ) -> bool:
        """Record a peer's receipt and the trust judge's decision; False when that id
        was recorded before (a replay: judge it no further)."""
        result = await self.pool.execute(
            "INSERT INTO received_receipt (id, peer, document, honoured, reason) "
            "VALUES ($1, $2, $3::jsonb, $4, $5) ON CONFLICT (id) DO NOTHING",
            ident,
            peer,
            json.dumps(document, ensure_ascii=False),
            honoured,
            reason,
        )
        return result.split()[-1] == "1"

    @translating
    async def received(
        self, limit: int = 100, *, honoured: bool | None = None
    ) -> list[dict[str, Any]]:
        """Peers' receipts, newest first, with the trust judge's decision (``honoured``:
        only those honoured, or only those not)."""
        rows = await self.pool.fetch(
            "SELECT id, peer, honoured, reason, received_at, "
            "document->>'category' AS category, document->>'automatedDecision' AS decision "
            "FROM received_receipt WHERE ($2::boolean IS NULL OR honoured = $2) "
            "ORDER BY received_at DESC, id LIMIT $1",
            limit,
            honoured,
        )
        return [dict(row) for row in rows]

    @translating
    async def seen_received(self, ident: str) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM received_receipt WHERE id = $1)", ident
            )
        )
