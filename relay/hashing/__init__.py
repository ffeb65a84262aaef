"""Hash kinds, registered in one list: a new kind is one module and one line here.

Each kind has the shape of ``relay.hashing.base.HashKind`` (name, exact,
validate, distance), so the matcher and the bank loader never name a kind.
"""

from __future__ import annotations

from relay.hashing.base import HashKind
from relay.hashing.md5 import Md5
from relay.hashing.pdq import Pdq
from relay.hashing.sha256 import Sha256

__all__ = ["KINDS", "HashKind", "Md5", "Pdq", "Sha256", "kind"]


def _register(kinds: list[type[HashKind]]) -> dict[str, type[HashKind]]:
    registry: dict[str, type[HashKind]] = {}
    for k in kinds:
        if k.name in registry:
            raise ValueError(f"hash kind {k.name!r} registered twice")
        registry[k.name] = k
    return registry


KINDS: dict[str, type[HashKind]] = _register([Sha256, Md5, Pdq])


def kind(name: str) -> type[HashKind]:
    """The hash kind called ``name``; KeyError listing the known names otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown hash kind {name!r} (known: {', '.join(sorted(KINDS))})") from None
