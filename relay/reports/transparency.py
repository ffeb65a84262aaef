"""Transparency figures (UK interim code, Principle 11; DSA Article 15): what Sluice
decided in a period, counted from the verdicts the activity table keeps.

Counted per activity decided in ``[since, until)`` (``decided_at``):

- ``disposition``: the hold's verdict (deliver, review, reject, quarantine); a lazily
  handed-on activity counts by its later check (``checked_after``) and is counted in
  ``checked_after`` too;
- ``category``: the category of each bank match it rests on (the match's own, or its
  bank's when the row keeps only the outline of a quarantine), ``none`` without a match;
  an activity matching two categories counts once in each, once in the totals;
- ``automated`` or ``human``: human when a moderator decided (``moderator`` in the
  verdict), automated otherwise;
- ``released_after_review``: held, then let through by a moderator (an approval from
  review, a quarantine released as a false positive), per moderator action.

The activity table forgets finished rows after ``[storage]`` retention: figures for a
period must be taken before then. No content, no account, no address is in them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from relay.store.db import Connection
from relay.verdict import LAZY, Disposition

__all__ = ["RELEASING", "figures"]

#: Moderator actions that let a held activity through.
RELEASING = ("approve", "release")

_QUERY = """
WITH decided AS (
    SELECT id,
           CASE WHEN verdict ->> 'rule' = $3 AND checked_after IS NOT NULL
                THEN checked_after ELSE verdict END AS v,
           verdict ->> 'rule' = $3 AND checked_after IS NOT NULL AS lazy,
           verdict ? 'moderator' AS human,
           verdict ->> 'moderator_action' AS moderated
    FROM activity
    WHERE decided_at >= $1 AND decided_at < $2 AND verdict IS NOT NULL
), categorised AS (
    SELECT d.*, c.category
    FROM decided AS d
    LEFT JOIN LATERAL (
        SELECT DISTINCT coalesce(s -> 'detail' ->> 'category', b.category) AS category
        FROM jsonb_array_elements(
                 CASE WHEN jsonb_typeof(d.v -> 'signals') = 'array'
                      THEN d.v -> 'signals' ELSE '[]'::jsonb END) AS s
        LEFT JOIN bank AS b ON b.name = s ->> 'source'
        WHERE s ->> 'kind' = 'match'
    ) AS c ON c.category IS NOT NULL
)
SELECT coalesce(category, 'none') AS category, v ->> 'action' AS action, human, moderated,
       lazy, GROUPING(coalesce(category, 'none')) = 1 AS total, count(DISTINCT id) AS n
FROM categorised
GROUP BY GROUPING SETS ((1, 2, 3, 4, 5), (2, 3, 4, 5))
"""


async def figures(
    db: asyncpg.Pool | Connection,
    since: datetime,
    until: datetime,
    *,
    releasing: Sequence[str] = RELEASING,
) -> dict[str, Any]:
    """The period's figures as JSON-able data (see the module's docstring)."""
    rows = await db.fetch(_QUERY, since, until, LAZY)
    totals = _tally()
    by_category: dict[str, dict[str, Any]] = {}
    for row in rows:
        # The grouping set without the category is the totals: each activity once.
        target = totals if row["total"] else by_category.setdefault(row["category"], _tally())
        _count(target, row, releasing)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        **totals,
        "by_category": {name: by_category[name] for name in sorted(by_category)},
    }


def _tally() -> dict[str, Any]:
    return {
        "decisions": 0,
        "by_disposition": {d.value: 0 for d in Disposition},
        "automated": 0,
        "human": 0,
        "released_after_review": {"total": 0, "by_action": {}},
        "checked_after": 0,
    }


def _count(tally: dict[str, Any], row: asyncpg.Record, releasing: Sequence[str]) -> None:
    n = int(row["n"])
    tally["decisions"] += n
    action = row["action"] or "unknown"
    tally["by_disposition"][action] = tally["by_disposition"].get(action, 0) + n
    tally["human" if row["human"] else "automated"] += n
    if row["moderated"] in releasing:
        released = tally["released_after_review"]
        released["total"] += n
        released["by_action"][row["moderated"]] = released["by_action"].get(row["moderated"], 0) + n
    if row["lazy"]:
        tally["checked_after"] += n
