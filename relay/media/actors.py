"""Actors new to us: their avatar and header are media the instance is about to fetch.

Verifying a signature fetches the signer's actor document; when that happens, the
actor is (at least to this Sluice) new, and the instance will soon fetch the same
document and its pictures. The media check takes the document from here once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

__all__ = ["FreshActors"]

_ACTOR_TYPES = frozenset({"Person", "Service", "Group", "Organization", "Application"})


class FreshActors:
    def __init__(self, ttl: float = 600.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._docs: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def remember(self, document: Any) -> None:
        if not isinstance(document, dict) or not isinstance(document.get("id"), str):
            return
        kinds = document.get("type")
        kinds = set(kinds) if isinstance(kinds, list) else {kinds}
        if not kinds & _ACTOR_TYPES:
            return
        self._docs[document["id"]] = (time.monotonic() + self.ttl, document)
        self._docs.move_to_end(document["id"])
        while len(self._docs) > self.max_entries:
            self._docs.popitem(last=False)

    def peek(self, actor: str) -> dict[str, Any] | None:
        entry = self._docs.get(actor)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def take(self, actor: str) -> dict[str, Any] | None:
        document = self.peek(actor)
        self._docs.pop(actor, None)
        return document
