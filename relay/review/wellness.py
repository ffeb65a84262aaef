"""What protects the moderators who must look: their own settings, reveals that are
deliberate, temporary and logged, and exposure counted per day.

The evidence on blurring is mixed (industry tools blur and grey by default; a 2026
trial found no benefit), so the defaults protect and each moderator may choose.
What is not optional is the record: every reveal is a row (who, when, which file,
until when), and a moderator's day is counted against ``[review]`` limits with a
prompt to stop and links to support.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from relay.config.sluice import ReviewConfig
from relay.review.preview import Look
from relay.store.db import translating

__all__ = ["Day", "Exposure", "Settings"]

#: The longest gap between two pages that still counts as time in the queue.
_GAP_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Settings:
    """A moderator's view: the instance's defaults, then their own choices."""

    blur: int
    greyscale: bool
    autoplay: bool
    muted: bool

    @classmethod
    def defaults(cls, config: ReviewConfig) -> Settings:
        return cls(config.blur, config.greyscale, config.autoplay, config.muted)

    def chosen(self, own: dict[str, Any]) -> Settings:
        """These defaults with what the moderator chose (bad values ignored)."""
        fields: dict[str, Any] = {}
        blur = own.get("blur")
        if isinstance(blur, int) and not isinstance(blur, bool) and 0 <= blur <= 64:
            fields["blur"] = blur
        for name in ("greyscale", "autoplay", "muted"):
            if isinstance(own.get(name), bool):
                fields[name] = own[name]
        return replace(self, **fields)

    @property
    def look(self) -> Look:
        return Look(self.blur, self.greyscale)

    def as_json(self) -> dict[str, Any]:
        return {
            "blur": self.blur,
            "greyscale": self.greyscale,
            "autoplay": self.autoplay,
            "muted": self.muted,
        }


@dataclass(frozen=True, slots=True)
class Day:
    """One moderator's exposure today, and what the limits make of it."""

    reveals: int
    seconds: int
    config: ReviewConfig

    @property
    def minutes(self) -> int:
        return self.seconds // 60

    @property
    def over(self) -> bool:
        """Past a daily limit: the pages ask the moderator to stop for today."""
        return (
            self.minutes >= self.config.exposure_minutes_per_day
            or self.reveals >= self.config.reveals_per_day
        )

    @property
    def break_due(self) -> bool:
        """Another ``break_every_minutes`` in the queue have just passed: the pages
        suggest a break for the five minutes after each."""
        every = self.config.break_every_minutes
        return self.minutes >= every and self.minutes % every < 5


class Exposure:
    """Settings, reveals and exposure, in PostgreSQL (so every process agrees)."""

    def __init__(self, pool: asyncpg.Pool, config: ReviewConfig) -> None:
        self.pool = pool
        self.config = config

    @translating
    async def settings(self, account_id: int) -> Settings:
        own = await self.pool.fetchval("SELECT settings FROM account WHERE id = $1", account_id)
        return Settings.defaults(self.config).chosen(json.loads(own) if own else {})

    @translating
    async def choose(self, account_id: int, settings: Settings) -> None:
        await self.pool.execute(
            "UPDATE account SET settings = $2::jsonb WHERE id = $1",
            account_id,
            json.dumps(settings.as_json()),
        )

    @translating
    async def seen(self, account_id: int) -> Day:
        """A page of the queue was shown: count the time since the last one (at most
        a minute: a moderator who left is not counted), and say how the day stands."""
        row = await self.pool.fetchrow(
            "INSERT INTO exposure AS e (account_id, day, last_seen) "
            "VALUES ($1, (now() AT TIME ZONE 'UTC')::date, now()) "
            "ON CONFLICT (account_id, day) DO UPDATE SET last_seen = now(), "
            "seconds = e.seconds + least($2, greatest(0, "
            "  extract(epoch FROM now() - coalesce(e.last_seen, now()))))::int "
            "RETURNING reveals, seconds",
            account_id,
            _GAP_SECONDS,
        )
        assert row is not None
        return Day(row["reveals"], row["seconds"], self.config)

    @translating
    async def today(self, account_id: int) -> Day:
        row = await self.pool.fetchrow(
            "SELECT reveals, seconds FROM exposure "
            "WHERE account_id = $1 AND day = (now() AT TIME ZONE 'UTC')::date",
            account_id,
        )
        return Day(row["reveals"] if row else 0, row["seconds"] if row else 0, self.config)

    @translating
    async def reveal(
        self, account_id: int, who: str, *, row: int, evidence_id: int, media: int
    ) -> datetime:
        """Record that ``who`` reveals file ``media`` of the item: it may be seen until
        the time returned."""
        async with self.pool.acquire() as conn, conn.transaction():
            until: datetime = await conn.fetchval(
                "INSERT INTO reveal (account_id, who, activity_row, evidence_id, media, until) "
                "VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) "
                "RETURNING until",
                account_id,
                who,
                row,
                evidence_id,
                media,
                float(self.config.reveal_seconds),
            )
            await conn.execute(
                "INSERT INTO exposure AS e (account_id, day, reveals) "
                "VALUES ($1, (now() AT TIME ZONE 'UTC')::date, 1) "
                "ON CONFLICT (account_id, day) DO UPDATE SET reveals = e.reveals + 1",
                account_id,
            )
        return until

    @translating
    async def revealed(self, account_id: int, evidence_id: int, media: int) -> bool:
        """Whether this moderator's reveal of that file is still open."""
        found = await self.pool.fetchval(
            "SELECT 1 FROM reveal WHERE account_id = $1 AND evidence_id = $2 AND media = $3 "
            "AND now() < until LIMIT 1",
            account_id,
            evidence_id,
            media,
        )
        return found is not None

    @translating
    async def viewed(self, evidence_id: int) -> set[int]:
        """The files of a record a person ever revealed (NCMEC's fileViewedByEsp)."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT media FROM reveal WHERE evidence_id = $1", evidence_id
        )
        return {int(r["media"]) for r in rows}

    @translating
    async def reveals_of(self, row: int) -> list[dict[str, Any]]:
        """Who revealed which file of an item, when: its history."""
        rows = await self.pool.fetch(
            "SELECT who, media, at, until FROM reveal WHERE activity_row = $1 ORDER BY id",
            row,
        )
        return [dict(r) for r in rows]
