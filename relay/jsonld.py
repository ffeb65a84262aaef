"""JSON-LD processing that never touches the network.

pyld fetches remote contexts by default. The relay must not: a fetch per activity would
be slow, would leak what we process, and would let a sender point us anywhere. So pyld
gets `document_loader`, which serves the contexts bundled in ``relay/contexts.json`` and
raises UnknownContext for anything else.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from pyld import jsonld

__all__ = ["UnknownContext", "document_loader", "normalize"]

_CONTEXTS = Path(__file__).with_name("contexts.json")


class UnknownContext(LookupError):
    """A document refers to a JSON-LD context that is not bundled with Sluice."""

    def __init__(self, url: str) -> None:
        super().__init__(f"JSON-LD context {url} is not bundled in relay/contexts.json")
        self.url = url


@cache
def _contexts() -> dict[str, Any]:
    """Load the bundled contexts once, on first use (it is ~200 kB of JSON)."""
    with _CONTEXTS.open(encoding="utf-8") as f:
        return json.load(f)


def _spellings(url: str) -> list[str]:
    """The same context as written by different servers: http/https, trailing '#' or '/'."""
    bare = url.rstrip("#")
    forms = [url, bare, bare.rstrip("/"), bare.rstrip("/") + "/"]
    swapped = [
        "https://" + f[7:] if f.startswith("http://") else "http://" + f[8:]
        for f in forms
        if f.startswith(("http://", "https://"))
    ]
    return forms + swapped


def document_loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """pyld document loader over the bundled contexts; raises UnknownContext otherwise."""
    contexts = _contexts()
    for spelling in _spellings(url):
        document = contexts.get(spelling)
        if document is not None:
            return {
                "contentType": "application/ld+json",
                "contextUrl": None,
                "documentUrl": url,
                # pyld keeps what it is given in its context cache; hand it a copy.
                "document": copy.deepcopy(document),
            }
    raise UnknownContext(url)


def normalize(document: dict[str, Any]) -> str:
    """URDNA2015 canonical N-Quads of `document`, as linked-data signatures hash it.

    Raises UnknownContext when the document uses a context we do not have, and
    jsonld.JsonLdError when it is not valid JSON-LD.
    """
    options = {
        "algorithm": "URDNA2015",
        "format": "application/n-quads",
        "documentLoader": document_loader,
    }
    try:
        return jsonld.normalize(document, options)
    except jsonld.JsonLdError as exc:
        unknown = _unknown_context(exc)
        if unknown is not None:
            raise unknown from exc
        raise


def _unknown_context(exc: BaseException | None) -> UnknownContext | None:
    """pyld wraps loader errors several layers deep; find ours."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, UnknownContext):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
