"""Matchers: what looks at one media file and says what it found, as frozen signals.

A matcher sees a ``Media`` (its bytes when fetched, its hashes by kind, its facts)
and answers ``match`` signals carrying ``detail["matcher"]`` (its name, which a
``[[rule]] match`` may name), ``"exact"``, ``"distance"``, ``"hash_kind"`` and
``"category"``, each with the Media attached for the evidence. The banks are the
first; an external checker is one more module with a ``Matcher`` and a config
section. One module, not a package: the protocol is small, and each matcher lives
with what it matches against (the banks' in ``relay.banks.matcher``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from relay.media.media import Media
from relay.signal import Signal

__all__ = ["Matcher"]


@runtime_checkable
class Matcher(Protocol):
    """Looks at a file; its signals are facts (nothing changes them afterwards)."""

    name: str

    async def match(self, media: Media) -> Sequence[Signal]: ...
