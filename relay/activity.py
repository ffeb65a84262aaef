"""The parsed activity: only what routing, ordering and the hold need."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relay.errors import DecodeError

__all__ = ["MAX_DEPTH", "Activity", "parse_activity"]

#: How deep arrays and objects may nest. An activity nests about ten deep; the JSON-LD
#: canonicaliser, media discovery and the store's JSON all recurse, so a body thousands
#: deep is refused here, with a 400, instead of exhausting Python's stack in any of them.
MAX_DEPTH = 100


def _id_of(value: Any) -> str | None:
    """An AS2 reference may be a bare IRI or an embedded object with an ``id``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        ident = value.get("id")
        return ident if isinstance(ident, str) else None
    if isinstance(value, list) and len(value) == 1:
        return _id_of(value[0])
    return None


def _host(url: str) -> str:
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:  # "https://[x/": an unclosed IPv6 bracket
        raise DecodeError(f"{url[:200]!r} is not a URL") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth_within(document: Any, limit: int) -> bool:
    """Whether arrays and objects nest at most ``limit`` deep; without recursion."""
    level: list[Any] = [document] if isinstance(document, dict | list) else []
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return True
    return False


def _check_text(name: str, value: str | None) -> None:
    """Refuse what PostgreSQL cannot store as text: a NUL, an unpaired surrogate."""
    if value is None or (value.isascii() and "\x00" not in value):
        return
    if "\x00" in value:
        raise DecodeError(f"activity `{name}` contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError(f"activity `{name}` contains an unpaired surrogate") from None


def _type_of(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, list):  # JSON-LD allows several types; the first is the AS2 one
        kind = next((k for k in kind if isinstance(k, str)), None)
    return kind if isinstance(kind, str) else None


@dataclass(frozen=True, slots=True)
class Activity:
    id: str | None
    type: str
    actor: str
    object_id: str | None  # what ordering is keyed on: the object this activity is about
    object_type: str | None
    document: dict[str, Any]

    @property
    def dedup_key(self) -> str:
        """The actor and the activity id (or a digest of an id-less, transient document).

        Keyed on the actor too, so that nobody can pre-empt another actor's activity
        by sending something else under its (predictable) id first.
        """
        if self.id:
            return f"{self.actor} {self.id}"
        canonical = json.dumps(self.document, sort_keys=True, separators=(",", ":"))
        return f"{self.actor} sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def parse_activity(body: bytes) -> Activity:
    """Parse an inbox body; say exactly what is wrong when it is not an activity."""
    try:
        # ValueError: broken JSON, bytes that are no UTF-8/16/32, NaN, a number of more
        # than 4,300 digits. RecursionError: the C decoder's own limit, near 1,000 deep.
        document = json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError(f"body nests deeper than {MAX_DEPTH} levels") from None
    # Each array or object opens with a bracket: with few of them, none nests too deep.
    brackets = body.count(b"[") + body.count(b"{")
    if brackets > MAX_DEPTH and not _depth_within(document, MAX_DEPTH):
        raise DecodeError(f"body nests deeper than {MAX_DEPTH} levels")
    if not isinstance(document, dict):
        raise DecodeError("body is not a JSON object")
    kind = _type_of(document)
    if kind is None:
        raise DecodeError("activity has no `type`")
    actor = _id_of(document.get("actor"))
    if actor is None:
        raise DecodeError("activity has no `actor`")
    ident = document.get("id")
    if ident is not None and not isinstance(ident, str):
        raise DecodeError("activity `id` is not a string")
    if ident is not None and _host(ident) != _host(actor):
        # Mastodon refuses these too: an actor may only speak for ids of its own server.
        raise DecodeError(f"activity id {ident} is not on the actor's host {_host(actor)}")
    obj = document.get("object")
    object_id = _id_of(obj)
    for name, value in (("type", kind), ("actor", actor), ("id", ident), ("object", object_id)):
        _check_text(name, value)
    return Activity(
        id=ident,
        type=kind,
        actor=actor,
        object_id=object_id,
        object_type=_type_of(obj),
        document=document,
    )
