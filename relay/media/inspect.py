"""One path from a Media to its signals, for every door that looks at media.

``Inspector.inspect`` says what was looked at (``hashed``, with the Media attached),
that a file was checked by exact hashes only (``unchecked``: audio, and video without
a whole vPDQ hash with frames to match on), and what
every matcher found. A matcher that fails is an ``error`` signal naming it, never a
file let through unlooked at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from relay.media.media import Media
from relay.signal import Signal

if TYPE_CHECKING:
    from relay.matcher import Matcher

__all__ = ["Inspector"]

log = structlog.get_logger(__name__)


class Inspector:
    """The matchers every file meets, and the signals about it, in one order: ``hashed``,
    ``unchecked`` (if so), then each matcher's, nearest match first."""

    def __init__(self, matchers: Sequence[Matcher], *, source: str = "media") -> None:
        names = [m.name for m in matchers]
        if len(set(names)) != len(names):
            raise ValueError(f"matcher names must differ: {', '.join(names)}")
        self.matchers = tuple(matchers)
        self.source = source

    async def inspect(self, media: Media) -> list[Signal]:
        where = _where(media)
        signals = [Signal("hashed", self.source, {**where, **media.facts()}, media=media)]
        why = _unchecked(media)
        if why is not None:
            detail = {**where, "kind": media.kind, "mime": media.mime, "reason": why}
            signals.append(Signal("unchecked", self.source, detail))
        answers = await asyncio.gather(
            *(m.match(media) for m in self.matchers), return_exceptions=True
        )
        for matcher, answer in zip(self.matchers, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer
                log.warning("matcher_failed", matcher=matcher.name, error=repr(answer))
                error = f"matcher {matcher.name} failed: {type(answer).__name__}"
                detail = {**where, "stage": "match", "matcher": matcher.name, "error": error}
                signals.append(Signal("error", self.source, detail))
                continue
            for found in answer:
                # Where the file was found belongs to every finding about it.
                detail = {**found.detail, **where}
                if found.kind == "match":
                    detail.setdefault("matcher", matcher.name)
                signals.append(Signal(found.kind, found.source, detail, media=found.media or media))
        return signals


def _unchecked(media: Media) -> str | None:
    """Why ``media`` met the exact hashes only; None when it was looked at."""
    if media.kind == "audio":
        return "audio is checked by exact hashes only"
    if media.kind != "video":
        return None
    if media.vpdq is None:
        return "video not read: exact hashes only"
    if not media.vpdq.complete:
        return "video read in part (a limit stopped it): the rest is unchecked"
    if not media.vpdq.usable():
        return "no frame of the video is good enough to match on (PDQ quality < 50)"
    return None


def _where(media: Media) -> dict[str, object]:
    ref = media.ref
    if ref is None:
        return {}
    return {"url": ref.url, "where": ref.where, "role": ref.role}
