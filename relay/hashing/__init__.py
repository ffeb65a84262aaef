"""Hash kinds, registered in one place: a new kind is one module and one ``register``.

Each kind has the shape of ``relay.hashing.base.HashKind`` (names, validation,
hashing, variants, distance, threshold, index, size, examples), so the matcher, the
bank loader, the CLI and the database never name a kind. Sluice writes the registry
into the database's ``hash_kind`` table at start (``relay.store.db.migrate``), which
is what lets ``bank_entry`` hold a kind's values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from relay.hashing.base import Found, HashKind, KindIndex
from relay.hashing.md5 import Md5
from relay.hashing.pdq import Pdq
from relay.hashing.sha256 import Sha256

__all__ = [
    "KINDS",
    "Found",
    "HashKind",
    "KindIndex",
    "Md5",
    "Pdq",
    "Sha256",
    "by_alias",
    "kind",
    "register",
    "registered",
    "unregister",
]


def _register(kinds: list[type[HashKind]]) -> dict[str, type[HashKind]]:
    registry: dict[str, type[HashKind]] = {}
    for k in kinds:
        if k.name in registry:
            raise ValueError(f"hash kind {k.name!r} registered twice")
        registry[k.name] = k
    return registry


#: Changed in place by register/unregister: modules that imported it see every kind.
#: In the order listings show them (``sluice bank list``'s columns).
KINDS: dict[str, type[HashKind]] = _register([Pdq, Md5, Sha256])


def register(new: type[HashKind]) -> type[HashKind]:
    """Add ``new`` to the registry (usable as a class decorator); ValueError if its name
    or one of its aliases is taken."""
    taken = {a for k in KINDS.values() for a in (k.name, *k.aliases)}
    clash = sorted({new.name, *new.aliases} & taken)
    if clash:
        raise ValueError(f"hash kind {new.name!r}: {', '.join(clash)} already registered")
    if new.name != new.name.strip().lower() or not new.name:
        raise ValueError(f"hash kind name must be lowercase, not {new.name!r}")
    KINDS[new.name] = new
    return new


def unregister(name: str) -> None:
    """Take kind ``name`` out of the registry (tests; a kind a database still holds
    entries of cannot be loaded without it)."""
    KINDS.pop(name, None)


@contextmanager
def registered(new: type[HashKind]) -> Iterator[type[HashKind]]:
    """``new`` registered for the block."""
    register(new)
    try:
        yield new
    finally:
        unregister(new.name)


def by_alias(name: str) -> type[HashKind] | None:
    """The kind a hash list means by ``name`` (its name or an alias, any case)."""
    key = name.strip().lower()
    for k in KINDS.values():
        if key == k.name or key in k.aliases:
            return k
    return None


def kind(name: str) -> type[HashKind]:
    """The hash kind called ``name``; KeyError listing the known names otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown hash kind {name!r} (known: {', '.join(sorted(KINDS))})") from None
