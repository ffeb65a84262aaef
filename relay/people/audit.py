"""The audit log: who did what through the admin door or the CLI, when, and why.

Evidence reads keep their own log beside the evidence (relay.evidence); this one
records the decisions people take: releases, review decisions, replays, accounts and
tokens made or revoked.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from relay.store.db import Connection, translating

__all__ = ["AuditLog"]


class AuditLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @translating
    async def record(
        self,
        who: str,
        action: str,
        *,
        why: str | None = None,
        detail: dict[str, Any] | None = None,
        connection: Connection | None = None,
    ) -> int:
        """Write one entry (in ``connection``'s transaction when given); its id."""
        query = (
            "INSERT INTO audit_log (who, action, why, detail) "
            "VALUES ($1, $2, $3, $4::jsonb) RETURNING id"
        )
        args = (who, action, why, json.dumps(detail or {}))
        if connection is not None:
            return int(await connection.fetchval(query, *args))
        return int(await self.pool.fetchval(query, *args))

    @translating
    async def entries(
        self,
        limit: int = 100,
        *,
        who: str | None = None,
        action: str | None = None,
        about_row: int | None = None,
    ) -> list[dict[str, Any]]:
        """The newest entries first, optionally only one person's, one action's, or
        those about one activity row (``detail.row``: an item's history)."""
        rows = await self.pool.fetch(
            "SELECT id, at, who, action, why, detail FROM audit_log "
            "WHERE ($2::text IS NULL OR who = $2) AND ($3::text IS NULL OR action = $3) "
            "AND ($4::bigint IS NULL OR detail @> jsonb_build_object('row', $4::bigint)) "
            "ORDER BY at DESC, id DESC LIMIT $1",
            limit,
            who,
            action,
            about_row,
        )
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]
