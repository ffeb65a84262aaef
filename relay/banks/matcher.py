"""The banks' matcher: ``BankIndex`` behind the ``relay.matcher.Matcher`` protocol."""

from __future__ import annotations

from collections.abc import Callable

from relay.banks.index import BankIndex
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
        for m in self.index().match(media):
            fact = m.as_signal(media)
            detail = {"matcher": self.name, **fact.detail, "exact": m.exact}
            found.append(Signal(fact.kind, fact.source, detail, media=media))
        return found
