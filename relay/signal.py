"""A Signal is one piece of evidence a check found about an activity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Signal"]


@dataclass(frozen=True, slots=True)
class Signal:
    """One finding: a bank match, a checker's answer, a timeout, a peer's receipt.

    ``kind`` names what was found (``"match"``, ``"hashed"``, ``"unchecked"``,
    ``"timeout"``, ``"error"``…), ``source`` which bank or check found it,
    ``detail`` the facts an admin needs to understand it (distance, hash, URL…),
    JSON-serialisable.
    """

    kind: str
    source: str
    detail: dict[str, Any] = field(default_factory=dict)
    #: The media bytes a match is about, in memory only, for the evidence of a
    #: quarantine: never serialised, never logged.
    payload: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def targets(self) -> frozenset[str]:
        """What a ``[[rule]] match`` may name to fire on this signal."""
        if self.kind == "match":
            return frozenset({self.source, f"category:{self.detail.get('category')}"})
        return frozenset({f"signal:{self.kind}"})

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "detail": self.detail}
