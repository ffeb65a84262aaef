"""A Signal is one piece of evidence a check found about an activity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Signal"]


@dataclass(frozen=True, slots=True)
class Signal:
    """One finding: a bank match, a checker's answer, a timeout, a peer's receipt.

    ``kind`` names what was found (``"match"``, ``"unchecked"``, ``"timeout"``,
    ``"error"``…), ``source`` which check or bank found it, ``detail`` the facts
    an admin needs to understand it (distance, hash, URL…), JSON-serialisable.
    """

    kind: str
    source: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "detail": self.detail}
