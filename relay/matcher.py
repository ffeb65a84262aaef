"""Matchers: what looks at one media file and says what it found, as frozen signals.

A matcher sees a ``Media`` (its bytes when fetched, its hashes by kind, its facts)
and answers ``match`` signals carrying ``detail["matcher"]`` (its name, which a
``[[rule]] match`` may name), ``"exact"``, ``"distance"``, ``"hash_kind"`` and
``"category"``, each with the Media attached for the evidence. The banks are the
first; an external checker is one more module with a ``Matcher`` and a config
section. One module, not a package: the protocol is small, and each matcher lives
with what it matches against (the banks' in ``relay.bank``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from relay.bank import BankIndex
from relay.media.media import Media
from relay.signal import Signal

__all__ = ["BankMatcher", "Matcher"]


@runtime_checkable
class Matcher(Protocol):
    """Looks at a file; its signals are facts (nothing changes them afterwards)."""

    name: str

    async def match(self, media: Media) -> Sequence[Signal]: ...


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
