"""The parsed activity: only what routing, ordering and the hold need."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relay.errors import DecodeError

__all__ = ["Activity", "parse_activity"]


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
    return urlsplit(url).netloc.lower()


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
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from exc
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
    return Activity(
        id=ident,
        type=kind,
        actor=actor,
        object_id=_id_of(obj),
        object_type=_type_of(obj),
        document=document,
    )
