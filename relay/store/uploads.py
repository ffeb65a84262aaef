"""The record of the upload door's decisions (``upload_record``, migration 0018): what
``GET /_sluice/api/uploads`` lists, so an admin can say why an upload was refused."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from relay.signal import Signal
from relay.store.activities import outline
from relay.store.db import translating

__all__ = ["UploadRecords"]


class UploadRecords:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @translating
    async def record(
        self,
        *,
        path: str,
        family: str,
        remote: str | None,
        account: Mapping[str, Any] | None,
        outcome: str,
        rule: str | None = None,
        signals: Iterable[Signal] = (),
        evidence_id: int | None = None,
        size: int = 0,
        seconds: float | None = None,
        checked_after: bool = False,
    ) -> int:
        """One decision; the signals in outline only (the evidence keeps the rest)."""
        row: int = await self.pool.fetchval(
            "INSERT INTO upload_record (path, family, remote, account, outcome, rule, "
            "signals, evidence_id, bytes, seconds, checked_after) "
            "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7::jsonb, $8, $9, $10, $11) RETURNING id",
            path[:2000],
            family,
            remote,
            json.dumps(dict(account)) if account is not None else None,
            outcome,
            rule,
            json.dumps(outline(signals)),
            evidence_id,
            size,
            seconds,
            checked_after,
        )
        return row

    @translating
    async def recent(self, limit: int = 100, outcome: str | None = None) -> list[dict[str, Any]]:
        """The newest first, optionally one outcome's (``reject``, ``timeout``…)."""
        rows = await self.pool.fetch(
            "SELECT id, at, path, family, remote, account, outcome, rule, signals, "
            "evidence_id, bytes, seconds, checked_after FROM upload_record "
            "WHERE ($2::text IS NULL OR outcome = $2) ORDER BY at DESC, id DESC LIMIT $1",
            limit,
            outcome,
        )
        return [
            {
                **dict(r),
                "account": json.loads(r["account"]) if r["account"] else None,
                "signals": json.loads(r["signals"]),
            }
            for r in rows
        ]

    @translating
    async def prune(self, keep_days: int) -> int:
        done = await self.pool.execute(
            "DELETE FROM upload_record WHERE at < now() - make_interval(days => $1)", keep_days
        )
        return int(str(done).split()[-1])
