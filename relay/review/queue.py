"""The review queue as moderators see it: ordered by severity, then age, filtered by
category, rule and origin; and one item with everything that explains it.

Severity is PostgreSQL's ``review_severity(verdict)`` (migration 0016), the same
expression as the queue's index, so a page of 10,000 held items is an index scan.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import asyncpg

from relay.state import State, sql_list
from relay.store.db import translating

__all__ = ["SEVERITY", "Filters", "Page", "ReviewQueue", "plain_text", "text_of"]

#: What a severity number means, for the pages.
SEVERITY = {4: "csam", 3: "serious", 2: "match", 1: "other"}

_REVIEW = sql_list(State.REVIEW)


@dataclass(frozen=True, slots=True)
class Filters:
    category: str = ""
    rule: str = ""
    origin: str = ""  # the actor's host
    escalated: bool = False

    def where(self, args: list[Any]) -> str:
        """The SQL conditions, their values appended to ``args``."""
        sql = [f"state = {_REVIEW}"]
        if self.category:
            args.append(
                json.dumps({"signals": [{"kind": "match", "detail": {"category": self.category}}]})
            )
            sql.append(f"verdict @> ${len(args)}::jsonb")
        if self.rule:
            args.append(self.rule)
            sql.append(f"verdict->>'rule' = ${len(args)}")
        if self.origin:
            args.append(self.origin.lower())
            sql.append(f"lower(split_part(actor, '/', 3)) = ${len(args)}")
        if self.escalated:
            sql.append("verdict ? 'escalated'")
        return " AND ".join(sql)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < self.total else None

    @property
    def previous_offset(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None


#: How long the filters' choices are reused: they scan every held item.
_CHOICES_SECONDS = 10.0


class ReviewQueue:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._choices: tuple[float, dict[str, list[str]]] | None = None

    @translating
    async def page(self, filters: Filters, *, offset: int = 0, limit: int = 50) -> Page:
        args: list[Any] = []
        where = filters.where(args)
        total = await self.pool.fetchval(f"SELECT count(*) FROM activity WHERE {where}", *args)
        rows = await self.pool.fetch(
            "SELECT id, ap_id, type, actor, received_at, evidence_id, "
            "review_severity(verdict) AS severity, verdict->>'rule' AS rule, "
            "verdict->'escalated' AS escalated, "
            "(SELECT array_agg(DISTINCT s->'detail'->>'category') "
            " FROM jsonb_array_elements(verdict->'signals') s "
            " WHERE s->>'kind' = 'match') AS categories "
            f"FROM activity WHERE {where} "
            f"ORDER BY review_severity(verdict) DESC, id "
            f"LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
            *args,
            limit,
            offset,
        )
        items = []
        for r in rows:
            item = dict(r)
            item["escalated"] = json.loads(r["escalated"]) if r["escalated"] else None
            item["categories"] = [c for c in (r["categories"] or []) if c]
            item["label"] = SEVERITY.get(r["severity"], "other")
            items.append(item)
        return Page(items, int(total), offset, limit)

    async def choices(self) -> dict[str, list[str]]:
        """What the filters may choose from, among the items held lately (reused for
        ten seconds: a moderator paging through the queue does not rescan it)."""
        now = time.monotonic()
        if self._choices is None or now - self._choices[0] > _CHOICES_SECONDS:
            self._choices = (now, await self._scan_choices())
        return self._choices[1]

    @translating
    async def _scan_choices(self) -> dict[str, list[str]]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT verdict->>'rule' AS rule, lower(split_part(actor, '/', 3)) AS origin "
            f"FROM activity WHERE state = {_REVIEW}"
        )
        categories = await self.pool.fetch(
            "SELECT DISTINCT s->'detail'->>'category' AS category FROM activity, "
            "jsonb_array_elements(verdict->'signals') s "
            f"WHERE state = {_REVIEW} AND s->>'kind' = 'match'"
        )
        return {
            "category": sorted(c["category"] for c in categories if c["category"]),
            "rule": sorted({r["rule"] for r in rows if r["rule"]}),
            "origin": sorted({r["origin"] for r in rows if r["origin"]}),
        }

    @translating
    async def item(self, row: int) -> dict[str, Any] | None:
        """One row, any state, with its body and sender's address when it still has
        them (a quarantine clears them: the evidence keeps them)."""
        found = await self.pool.fetchrow(
            "SELECT id, ap_id, type, actor, signer, key_id, object_id, state, target, remote, "
            "received_at, decided_at, finished_at, verdict, evidence_id, body, "
            "review_severity(verdict) AS severity FROM activity WHERE id = $1",
            row,
        )
        if found is None:
            return None
        item = dict(found)
        item["verdict"] = json.loads(found["verdict"]) if found["verdict"] else {}
        item["label"] = SEVERITY.get(found["severity"], "other")
        body = found["body"]
        item["document"] = _document(bytes(body)) if body is not None else None
        item.pop("body")
        return item


def _document(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def text_of(document: dict[str, Any] | None) -> str:
    """The post's words as plain text: its object's ``content`` (HTML) or ``name``."""
    if not document:
        return ""
    found = document.get("object")
    post = found if isinstance(found, dict) else document
    for key in ("content", "summary", "name"):
        value = post.get(key)
        if isinstance(value, str) and value.strip():
            return plain_text(value)
    return ""


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "p", "div", "li"):
            self.parts.append("\n")


def plain_text(html: str, limit: int = 5000) -> str:
    """HTML made text: no tag, no link, no image survives (the page escapes the rest).
    A remote post must not make a moderator's browser fetch anything."""
    parser = _Text()
    parser.feed(html[: limit * 4])
    parser.close()
    text = "".join(parser.parts).strip()
    return text[:limit]
