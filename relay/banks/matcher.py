"""The banks' matcher: ``BankIndex`` behind the ``relay.matcher.Matcher`` protocol.

Banks of category ``ALLOW`` list media known to be harmless (a moderator's false
positives, by SHA-256): an exact match in one suppresses every bank match of that
file, so that the same file never holds again; the matcher says so with one
``allowed`` signal instead.
"""

from __future__ import annotations

from collections.abc import Callable

from relay.banks.index import ALLOW, BankIndex
from relay.media.media import Media
from relay.signal import Signal

__all__ = ["BankMatcher"]


class BankMatcher:
    """The banks' index: the nearest entry per (bank, kind) within the bank's distance."""

    name = "banks"

    def __init__(self, index: Callable[[], BankIndex]) -> None:
        # A callable: the watcher replaces its index when a bank is read whole.
        self.index = index

    async def match(self, media: Media) -> list[Signal]:
        found = []
        matches = self.index().match(media)
        # Only an exact match in an allow bank vouches for the file: a perceptual one
        # could be a crafted near-collision of an allowed picture, which must not wave a
        # listed file through. Allow-bank matches are never "match" signals either (a
        # rule firing on category:allow would hold what the moderator cleared).
        allowed = next((m for m in matches if m.category == ALLOW and m.exact), None)
        if allowed is not None:
            detail = {
                "matcher": self.name,
                "category": ALLOW,
                "hash_kind": allowed.kind,
                "entry": allowed.entry_id,
                "suppressed": sorted({m.bank for m in matches if m.category != ALLOW}),
            }
            return [Signal("allowed", allowed.bank, detail, media=media)]
        for m in matches:
            if m.category == ALLOW:
                continue
            fact = m.as_signal(media)
            detail = {"matcher": self.name, **fact.detail, "exact": m.exact}
            found.append(Signal(fact.kind, fact.source, detail, media=media))
        return found
