"""The banks' matcher: ``BankIndex`` behind the ``relay.matcher.Matcher`` protocol.

Banks of category ``ALLOW`` list media known to be harmless (a moderator's false
positives, by SHA-256): an exact match in one suppresses every bank match of that
file, so that the same file never holds again; the matcher says so with one
``allowed`` signal instead.

A video's vPDQ hash (``relay.hashing.vpdq``), or an animated picture's, is matched
frame by frame against the PDQ banks: a bank matches when at least ``THRESHOLD``
percent of the video's usable frames (quality >= ``QUALITY``) are within the bank's
PDQ distance of its entries. A perceptual match, never an exact one. A bank that
already matched the file itself (exactly, or by one of an animation's frames) says so
once: its vPDQ match is left out.

vpdq also asks the other way ("compared match percent": how much of the listed video
the query holds). Sluice does not, by design: a clip cut from a listed video, or a
GIF made of its few seconds, is the listed material all the same, and a bank of
frames says nothing of which video they came from. What guards against chance is
the share of the query's own frames that must each lie within distance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.banks.index import ALLOW, BankIndex
from relay.hashing.vpdq import THRESHOLD, VpdqHash
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
        index = self.index()
        matches = index.match(media)
        videos: list[Signal] = []
        if media.vpdq is not None and media.vpdq.usable():
            # Thousands of lookups for an hour of video: off the event loop.
            videos = await asyncio.to_thread(_video_matches, index, media.vpdq, media)
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
                "suppressed": sorted(
                    {m.bank for m in matches if m.category != ALLOW} | {v.source for v in videos}
                ),
            }
            return [Signal("allowed", allowed.bank, detail, media=media)]
        for m in matches:
            if m.category == ALLOW:
                continue
            fact = m.as_signal(media)
            detail = {"matcher": self.name, **fact.detail, "exact": m.exact}
            found.append(Signal(fact.kind, fact.source, detail, media=media))
        matched = {s.source for s in found}
        return found + [v for v in videos if v.source not in matched]


def _video_matches(index: BankIndex, vpdq: VpdqHash, media: Media) -> list[Signal]:
    """One ``match`` per PDQ bank holding enough of the video's usable frames."""
    usable = vpdq.usable()
    found = []
    for bank, category, hits in index.each("pdq", [f.hash for f in usable]):
        if category == ALLOW:  # a perceptual match never vouches for a file
            continue
        percent = 100.0 * len(hits) / len(usable)
        if percent < THRESHOLD:
            continue
        best = min(hits, key=lambda h: (h.distance, h.entry_id))
        detail = {
            "matcher": BankMatcher.name,
            "category": category,
            "hash_kind": "vpdq",
            "exact": False,
            "query_percent": round(percent, 1),
            "frames": len(hits),
            "usable_frames": len(usable),
            "complete": vpdq.complete,
            "distance": best.distance,
            "entry": best.entry_id,
            "value": best.value,
            "timestamp": usable[best.query].timestamp,
            "category_rule": f"category:{category}",
        }
        found.append(Signal("match", bank, detail, media=media))
    found.sort(key=lambda s: (s.detail["distance"], s.source))
    return found
