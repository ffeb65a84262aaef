"""A Signal is one piece of evidence a check found about an activity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.media.media import Media

__all__ = ["Signal"]


@dataclass(frozen=True, slots=True)
class Signal:
    """One finding: a bank match, a checker's answer, a timeout, a peer's receipt.

    ``kind`` names what was found (``"match"``, ``"hashed"``, ``"unchecked"``,
    ``"timeout"``, ``"error"``…), ``source`` which bank or check found it,
    ``detail`` the facts an admin needs to understand it (distance, hash, URL…),
    JSON-serialisable and read-only: a signal is a fact, shared by whoever reads it.

    A ``match`` carries ``detail["matcher"]`` (the matcher that found it),
    ``"exact"``, ``"distance"``, ``"hash_kind"`` and ``"category"``.
    """

    kind: str
    source: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    #: The media the signal is about (``hashed`` and ``match``), bytes in memory only,
    #: for the evidence of a quarantine: never serialised, never logged.
    media: Media | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A copy: whoever built the dict cannot change the signal afterwards either.
        object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))

    def __reduce__(self) -> tuple[type[Signal], tuple[Any, ...]]:
        # copy and pickle cannot take the read-only view: rebuild from a plain dict.
        return Signal, (self.kind, self.source, dict(self.detail), self.media)

    @property
    def payload(self) -> bytes | None:
        """The media's bytes, if fetched (None when known from the cache)."""
        return self.media.data if self.media is not None else None

    @property
    def targets(self) -> frozenset[str]:
        """What a ``[[rule]] match`` may name to fire on this signal: a match's source
        (the bank), its ``category:NAME`` and its matcher; ``signal:KIND`` otherwise."""
        if self.kind == "match":
            names = {self.source, f"category:{self.detail.get('category')}"}
            matcher = self.detail.get("matcher")
            if isinstance(matcher, str):
                names.add(matcher)
            return frozenset(names)
        return frozenset({f"signal:{self.kind}"})

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "detail": dict(self.detail)}
