"""Signers' public keys: what a verified signature establishes, and fetching, caching, rotation.

Fediverse servers publish keys in several shapes, all accepted here:

- an actor document with ``publicKey`` (an object or a list), as Mastodon, Misskey and most
  servers serve;
- the key document itself (``id``/``owner``/``publicKeyPem``), as Mastodon answers at
  ``…#main-key`` URLs and GoToSocial at ``…/main-key``;
- FEP-521a ``assertionMethod`` Multikey entries (``publicKeyMultibase``), as Mastodon 4.4+
  and Fedify publish for Ed25519;
- a bare Multikey document with a ``controller``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from relay.errors import FetchError, KeyFetchError, SignatureError

__all__ = [
    "KeyCache",
    "KeyResolver",
    "PublicKey",
    "Verified",
    "check_owner",
    "parse_key_document",
    "verify_with_key",
]

# Multicodec prefixes (varint) of FEP-521a publicKeyMultibase values.
_ED25519_PUB = b"\xed\x01"
_RSA_PUB = b"\x85\x24"  # 0x1205, followed by a DER PKCS#1 RSAPublicKey


@dataclass(frozen=True)
class PublicKey:
    """A public key and the actor that owns it, as published by the key's origin."""

    id: str
    owner: str
    key: RSAPublicKey | Ed25519PublicKey


@dataclass(frozen=True)
class Verified:
    """Who signed a request: the outcome of a verified HTTP signature."""

    scheme: Literal["cavage", "rfc9421"]
    key_id: str
    signer: str
    created: float


class KeyResolver(Protocol):
    """Finds the public key named by a signature's key id."""

    async def resolve(self, key_id: str, *, refresh: bool = False) -> PublicKey: ...


class KeyCache:
    """A KeyResolver that fetches key documents and caches the keys for `ttl` seconds.

    Concurrent resolves of one key share a single fetch, so a burst of deliveries from a
    new peer costs one request to its server. ``refresh=True`` skips the cache: the
    verifiers use it once when a signature fails, in case the key was rotated.
    """

    def __init__(
        self,
        fetch_json: Callable[[str], Awaitable[dict]],
        *,
        ttl: float = 3600,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10000,
    ) -> None:
        self._fetch_json = fetch_json
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, PublicKey]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[PublicKey]] = {}

    async def resolve(self, key_id: str, *, refresh: bool = False) -> PublicKey:
        if not refresh:
            entry = self._entries.get(key_id)
            if entry is not None and entry[0] > self._clock():
                self._entries.move_to_end(key_id)
                return entry[1]
        task = self._inflight.get(key_id)
        if task is None:
            task = asyncio.ensure_future(self._load(key_id))
            self._inflight[key_id] = task
            task.add_done_callback(lambda done: self._landed(key_id, done))
        # shield: one caller giving up must not cancel the fetch the others wait on.
        return await asyncio.shield(task)

    def _landed(self, key_id: str, task: asyncio.Future[PublicKey]) -> None:
        if self._inflight.get(key_id) is task:
            del self._inflight[key_id]
        if not task.cancelled():
            task.exception()  # mark retrieved, should every waiter have gone

    async def _load(self, key_id: str) -> PublicKey:
        url = key_id.partition("#")[0]
        try:
            document = await self._fetch_json(url)
        except FetchError as exc:
            gone = exc.status in (404, 410)
            reason = f"HTTP {exc.status}" if exc.status else "fetch failed"
            raise KeyFetchError(f"could not fetch key {key_id} ({reason})", gone=gone) from exc
        if not isinstance(document, Mapping):
            raise KeyFetchError(f"key document for {key_id} is not a JSON object")
        key = parse_key_document(document, key_id)
        self._store(key_id, key)
        return key

    def _store(self, key_id: str, key: PublicKey) -> None:
        self._entries[key_id] = (self._clock() + self._ttl, key)
        self._entries.move_to_end(key_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


def parse_key_document(document: Mapping[str, Any], key_id: str) -> PublicKey:
    """Find the key `key_id` in a fetched actor, key or Multikey document.

    Raises KeyFetchError when there is no usable key, or when the key claims an owner on
    another host: the document came from the key id's host, which may speak only for
    its own actors.
    """
    candidates = _candidates(document)
    chosen = [c for c in candidates if c.get("id") == key_id]
    if not chosen and len(candidates) == 1:
        chosen = candidates
    if not chosen:
        raise KeyFetchError(f"no key {key_id} in the fetched document")
    entry = chosen[0]
    owner = entry.get("owner") or entry.get("controller")
    if entry is not document and not owner:
        owner = document.get("id")
    if not isinstance(owner, str) or not owner:
        raise KeyFetchError(f"key {key_id} names no owner")
    if _host(owner) != _host(key_id):
        raise KeyFetchError(f"key {key_id} claims an owner on another host")
    return PublicKey(id=key_id, owner=owner, key=_load_key(entry, key_id))


def _candidates(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Key-like objects: the document itself, or its publicKey and assertionMethod entries."""
    if "publicKeyPem" in document or "publicKeyMultibase" in document:
        return [document]
    found: list[Mapping[str, Any]] = []
    for field in ("publicKey", "assertionMethod"):
        value = document.get(field)
        for entry in value if isinstance(value, list) else [value]:
            # Entries given only by reference (a string) would need another fetch; skip them.
            if isinstance(entry, Mapping) and (
                "publicKeyPem" in entry or "publicKeyMultibase" in entry
            ):
                found.append(entry)
    return found


def _load_key(entry: Mapping[str, Any], key_id: str) -> RSAPublicKey | Ed25519PublicKey:
    pem = entry.get("publicKeyPem")
    try:
        if isinstance(pem, str):
            key = load_pem_public_key(pem.strip().encode("ascii"))
        else:
            key = _load_multibase(entry.get("publicKeyMultibase"))
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise KeyFetchError(f"key {key_id} cannot be read") from exc
    if not isinstance(key, RSAPublicKey | Ed25519PublicKey):
        raise KeyFetchError(f"key {key_id} is neither RSA nor Ed25519")
    return key


def _load_multibase(value: object) -> object:
    """Decode a FEP-521a publicKeyMultibase: 'z' + base58btc(multicodec prefix + key)."""
    from relay.signature.proof import b58decode  # proof imports this module

    if not isinstance(value, str) or not value.startswith("z"):
        raise ValueError("publicKeyMultibase is not base58btc")
    raw = b58decode(value[1:])
    if raw.startswith(_ED25519_PUB) and len(raw) == 34:
        return Ed25519PublicKey.from_public_bytes(raw[2:])
    if raw.startswith(_RSA_PUB):
        return load_der_public_key(raw[2:])
    raise ValueError("unsupported multicodec key type")


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def check_owner(key: PublicKey, actor_id: str) -> None:
    """Refuse a key that belongs to someone other than the actor who should have signed."""
    if key.owner != actor_id:
        raise SignatureError(f"key {key.id} belongs to {key.owner}, not to {actor_id}")


async def verify_with_key(
    keys: KeyResolver, key_id: str, check: Callable[[PublicKey], str | None]
) -> PublicKey:
    """Run `check` against the signer's key; return the key it accepts.

    `check` returns None when the signature verifies, else the reason it does not. On a
    failure the key is fetched once more, bypassing the cache, because the actor may have
    rotated its key since we cached it. If that fetch finds the actor gone, KeyFetchError
    (gone=True) is raised; any other fetch failure leaves the original reason standing.
    """
    key = await keys.resolve(key_id)
    problem = check(key)
    if problem is None:
        return key
    try:
        fresh = await keys.resolve(key_id, refresh=True)
    except KeyFetchError as exc:
        if exc.gone:  # the actor is gone: that matters more than the bad signature
            raise
        raise SignatureError(problem) from exc
    if fresh != key:
        problem = check(fresh)
        if problem is None:
            return fresh
    raise SignatureError(problem)
