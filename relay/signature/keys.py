"""Signers' public keys: what a verified signature establishes, and fetching, caching, rotation.

Fediverse servers publish keys in several shapes, all accepted here:

- an actor document with ``publicKey`` (an object or a list), as Mastodon, Misskey and most
  servers serve;
- the key document itself (``id``/``owner``/``publicKeyPem``), as Mastodon answers at
  ``…#main-key`` URLs and GoToSocial at ``…/main-key``;
- FEP-521a ``assertionMethod`` Multikey entries (``publicKeyMultibase``), as Mastodon 4.4+
  and Fedify publish for Ed25519;
- a bare Multikey document with a ``controller``.

A document only says who owns a key; any file a host serves (a user's upload, the end of
an open redirect) can say it. So the claim is believed only when the owner says so too,
as Mastodon confirms the owner: the key came from the owner's own document, served at its
id on the key id's origin, or the owner's document lists exactly this key id with the
same key material.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
    load_pem_public_key,
)

from relay.errors import DecodeError, FetchError, KeyFetchError, RateLimited, SignatureError
from relay.network import JsonDocument, absolute_url, same_origin, same_url

__all__ = [
    "KeyCache",
    "KeyFetcher",
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

# What fetches a key document: the document alone (taken as served at the URL asked
# for, so a fetcher that follows redirects must say where it ended), or a JsonDocument.
KeyFetcher = Callable[[str], Awaitable["Mapping[str, Any] | JsonDocument"]]


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


@dataclass(frozen=True)
class _Known:
    """A cached outcome for a key id: its confirmed key, or why there is none."""

    expires: float
    key: PublicKey | None = None
    error: str = ""
    gone: bool = False

    def outcome(self) -> PublicKey:
        if self.key is None:
            raise KeyFetchError(self.error, gone=self.gone)
        return self.key


class KeyCache:
    """A KeyResolver that fetches, confirms and caches keys, and fetches sparingly.

    Every key id a request names costs a fetch from a URL the sender chose, so:

    - confirmed keys are kept `ttl` seconds, failures (404/410, timeouts, documents that
      do not confirm the key) `failure_ttl` seconds; a gone key stays gone from the cache,
      so a Delete from a deleted actor is still recognised;
    - concurrent resolves of one key share a single fetch;
    - ``refresh=True`` (a signature failed: the key may have been rotated) fetches again,
      but once a refresh has found the key unchanged or unreachable, further refreshes of
      that key are answered from the cache for `refresh_interval` seconds;
    - at most `per_host` confirmations (one or two fetches each) run at once per host; one
      waits at most `timeout` seconds for its turn (then fails, and nothing is cached) and
      runs at most `timeout` seconds;
    - ``for_client(remote)`` gives a view that lets one client address (an IPv6 /64) wait
      on at most `per_client` uncached keys at once.
    """

    def __init__(
        self,
        fetch_json: KeyFetcher,
        *,
        ttl: float = 3600,
        failure_ttl: float = 300,
        refresh_interval: float = 300,
        timeout: float | None = 5,
        per_host: int = 2,
        per_client: int = 8,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10000,
    ) -> None:
        self._fetch_json = fetch_json
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._refresh_interval = refresh_interval
        self._timeout = timeout
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[str, _Known] = OrderedDict()  # confirmed keys
        # Failures apart: keyIds a sender makes up must not push confirmed keys out.
        self._failures: OrderedDict[str, _Known] = OrderedDict()
        self._quiet: OrderedDict[str, float] = OrderedDict()  # key id -> no refresh until
        self._inflight: dict[str, asyncio.Future[PublicKey]] = {}
        self._hosts = _Slots(per_host)
        self._clients = _Waiting(per_client)

    async def resolve(self, key_id: str, *, refresh: bool = False) -> PublicKey:
        return await self._resolve(key_id, refresh, None)

    def for_client(self, remote: str | None) -> KeyResolver:
        """This cache, as seen by requests from `remote` (None: no per-client limit)."""
        return _ClientKeys(self, _client_bucket(remote))

    async def _resolve(self, key_id: str, refresh: bool, client: str | None) -> PublicKey:
        now = self._clock()
        if refresh and self._quiet.get(key_id, now) > now:
            refresh = False
        if not refresh:
            for table in (self._entries, self._failures):
                known = table.get(key_id)
                if known is not None and known.expires > now:
                    table.move_to_end(key_id)
                    return known.outcome()
        with self._clients.waiting(client, key_id):
            task = self._inflight.get(key_id)
            if task is None:
                task = asyncio.ensure_future(self._load(key_id, refresh))
                self._inflight[key_id] = task
                task.add_done_callback(lambda done: self._landed(key_id, done))
            # shield: one caller giving up must not cancel the fetch the others wait on.
            return await asyncio.shield(task)

    def _landed(self, key_id: str, task: asyncio.Future[PublicKey]) -> None:
        if self._inflight.get(key_id) is task:
            del self._inflight[key_id]
        if not task.cancelled():
            task.exception()  # mark retrieved, should every waiter have gone

    async def _load(self, key_id: str, refresh: bool) -> PublicKey:
        before = self._live_key(key_id)
        try:
            async with self._hosts.slot(_host(key_id), wait=self._timeout):
                async with asyncio.timeout(self._timeout):
                    key = await self._confirmed(key_id)
        except _Busy:
            # Our own queue for the host was full: nothing was learnt, so keep nothing.
            raise RateLimited(
                f"could not fetch key {key_id} (too many fetches from its host); retry later",
                retry_after=math.ceil(self._timeout or 1),
            ) from None
        except KeyFetchError as exc:
            failure = exc
        except TimeoutError:
            failure = KeyFetchError(
                f"could not fetch key {key_id} (no answer within {self._timeout:g} s)"
            )
        else:
            self._store(key_id, _Known(self._clock() + self._ttl, key=key))
            if refresh:
                self._quieten(key_id, found_nothing_new=key == before)
            return key
        if refresh:
            self._quieten(key_id, found_nothing_new=True)
        if not (refresh and before is not None and not failure.gone):
            # A refresh that fails for a passing reason keeps the key it had.
            expires = self._clock() + self._failure_ttl
            self._store(key_id, _Known(expires, error=str(failure), gone=failure.gone))
        raise failure

    def _live_key(self, key_id: str) -> PublicKey | None:
        known = self._entries.get(key_id)
        if known is None or known.expires <= self._clock():
            return None
        return known.key

    def _quieten(self, key_id: str, *, found_nothing_new: bool) -> None:
        if not found_nothing_new:
            self._quiet.pop(key_id, None)
            return
        self._quiet[key_id] = self._clock() + self._refresh_interval
        self._quiet.move_to_end(key_id)
        while len(self._quiet) > self._max_entries:
            self._quiet.popitem(last=False)

    def _store(self, key_id: str, known: _Known) -> None:
        home, other = (
            (self._entries, self._failures) if known.key else (self._failures, self._entries)
        )
        other.pop(key_id, None)
        home[key_id] = known
        home.move_to_end(key_id)
        while len(home) > self._max_entries:
            home.popitem(last=False)

    async def _confirmed(self, key_id: str) -> PublicKey:
        """Fetch the key and make sure its owner stands behind it."""
        try:
            at, document = await self._fetch(key_id.partition("#")[0])
        except (FetchError, DecodeError) as exc:
            gone = isinstance(exc, FetchError) and exc.status in (404, 410)
            raise KeyFetchError(f"could not fetch key {key_id} ({_why(exc)})", gone=gone) from exc
        if not same_origin(at, key_id):
            raise KeyFetchError(f"key {key_id} was served from another origin")
        key = parse_key_document(document, key_id)
        if same_url(document.get("id"), at) and same_url(key.owner, at, fragment=True):
            return key  # the owner's own document, served at its own id
        await self._confirm_owner(key, document, at)
        return key

    async def _confirm_owner(self, key: PublicKey, document: Mapping[str, Any], at: str) -> None:
        """Fetch the key's owner; it must list exactly this key id, with the same key."""
        owner = key.owner
        refused = f"key {key.id} is not confirmed by its owner {owner}"
        if not same_origin(owner, key.id):
            raise KeyFetchError(f"{refused}: the owner is on another origin")
        try:
            owner_at, owner_doc = await self._fetch(owner)
        except (FetchError, DecodeError) as exc:
            if _authorized_fetch_only(exc) and _served_stub(key, document, at):
                return
            raise KeyFetchError(f"{refused}: the owner could not be fetched ({_why(exc)})") from exc
        # The owner URL is the actor's, not the sender's choice: where its own server
        # redirects it on the same origin (a canonical path) is that server's word too.
        if not same_origin(owner_at, owner):
            raise KeyFetchError(f"{refused}: the owner was served from another origin")
        if not same_url(owner_doc.get("id"), owner, fragment=True):
            raise KeyFetchError(f"{refused}: the owner's document has another id")
        listed = _listed(owner_doc, key.id)
        if listed is None:
            raise KeyFetchError(f"{refused}: the owner does not list it")
        if isinstance(listed, str):
            # Listed by reference: the key document must then be the key's own.
            if document.get("id") != key.id or not same_url(key.id, at):
                raise KeyFetchError(f"{refused}: the key document is not served at its id")
            return
        entry_owner = listed.get("owner") or listed.get("controller") or owner_doc.get("id")
        if entry_owner != owner:
            raise KeyFetchError(f"{refused}: the owner lists it for someone else")
        if not _same_key(_load_key(listed, key.id), key.key):
            raise KeyFetchError(f"{refused}: the owner lists another key under its id")

    async def _fetch(self, url: str) -> tuple[str, Mapping[str, Any]]:
        fetched = await self._fetch_json(url)
        document: object
        if isinstance(fetched, JsonDocument):
            at, document = fetched.url, fetched.document
        else:
            at, document = url, fetched
        if not isinstance(document, Mapping):
            raise DecodeError(f"{at}: not a JSON object")
        return at, document


class _ClientKeys:
    """A KeyCache as one client sees it: its uncached keys count against its limit."""

    def __init__(self, cache: KeyCache, client: str | None) -> None:
        self._cache = cache
        self._client = client

    async def resolve(self, key_id: str, *, refresh: bool = False) -> PublicKey:
        return await self._cache._resolve(key_id, refresh, self._client)


class _Busy(Exception):
    """No slot became free in time."""


class _Slots:
    """At most `size` holders at once per name; a name's semaphore lives while it is used."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._used: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def slot(self, name: str, *, wait: float | None) -> AsyncIterator[None]:
        """Hold one of `name`'s slots; raise _Busy when none frees within `wait` seconds."""
        semaphore, users = self._used.get(name, (None, 0))
        if semaphore is None:
            semaphore = asyncio.Semaphore(self._size)
        self._used[name] = (semaphore, users + 1)
        try:
            try:
                async with asyncio.timeout(wait):
                    await semaphore.acquire()
            except TimeoutError:
                raise _Busy from None
            try:
                yield
            finally:
                semaphore.release()
        finally:
            semaphore, users = self._used[name]
            if users == 1:
                del self._used[name]
            else:
                self._used[name] = (semaphore, users - 1)


class _Waiting:
    """Which uncached keys each client is waiting on, at most `limit` per client."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._by_client: dict[str, dict[str, int]] = {}

    @contextmanager
    def waiting(self, client: str | None, key_id: str) -> Iterator[None]:
        if client is None:
            yield
            return
        keys = self._by_client.get(client, {})
        if key_id not in keys and len(keys) >= self._limit:
            # Retryable: a genuine sender behind a busy address must not lose its post.
            raise RateLimited(
                f"too many unknown keys from this sender are being fetched at once "
                f"(limit {self._limit}); retry later",
                retry_after=5,
            )
        self._by_client[client] = keys
        keys[key_id] = keys.get(key_id, 0) + 1
        try:
            yield
        finally:
            keys[key_id] -= 1
            if not keys[key_id]:
                del keys[key_id]
            if not keys:
                self._by_client.pop(client, None)


def _client_bucket(remote: str | None) -> str | None:
    """Who counts as one client: an IPv4 address, an IPv6 /64 (one site's allocation)."""
    if not remote:
        return None
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_key_document(document: Mapping[str, Any], key_id: str) -> PublicKey:
    """Find the key `key_id` in a fetched actor, key or Multikey document.

    This reads what the document claims; KeyCache confirms the claim with the owner.
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
    for entry in _entries(document):
        # Entries given only by reference (a string) would need another fetch; skip them.
        if isinstance(entry, Mapping) and (
            "publicKeyPem" in entry or "publicKeyMultibase" in entry
        ):
            found.append(entry)
    return found


def _entries(document: Mapping[str, Any]) -> Iterator[object]:
    for field in ("publicKey", "assertionMethod"):
        value = document.get(field)
        yield from value if isinstance(value, list) else [value]


def _listed(owner_doc: Mapping[str, Any], key_id: str) -> Mapping[str, Any] | str | None:
    """The owner's entry for exactly `key_id`: an embedded key, a reference, or None."""
    for entry in _entries(owner_doc):
        if entry == key_id or (isinstance(entry, Mapping) and entry.get("id") == key_id):
            return entry  # type: ignore[return-value]
    return None


def _served_stub(key: PublicKey, document: Mapping[str, Any], at: str) -> bool:
    """GoToSocial's shape, trusted when its owner refuses unsigned fetches.

    GoToSocial serves a stub of the actor at ``…/users/NAME/main-key`` (unsigned, so keys
    can be fetched at all) and the actor itself only to signed requests. Without the
    owner's word, the stub is believed only where nothing but the server speaks: served
    at exactly the key id, one path segment below the owner it names, listing the key
    by that id.
    """
    key_url = absolute_url(key.id, fragment=True)
    owner_url = absolute_url(key.owner, fragment=True)
    if key_url is None or owner_url is None or key_url.fragment or owner_url.fragment:
        return False
    base = owner_url.path.rstrip("/")
    below = key_url.path.removeprefix(base + "/")
    return (
        bool(base)
        and key_url.path.startswith(base + "/")
        and bool(below)
        and "/" not in below
        and not key_url.query_string
        and not owner_url.query_string
        and same_url(at, key.id, fragment=True)
        and document.get("id") == key.owner
        and any(c.get("id") == key.id for c in _candidates(document))
    )


def _authorized_fetch_only(exc: Exception) -> bool:
    """What GoToSocial answers an unsigned actor fetch: 401. Not 403, which firewalls
    (Cloudflare's bot checks) answer too, on hosts whose paths anyone may fill."""
    return isinstance(exc, FetchError) and exc.status == 401


def _why(exc: Exception) -> str:
    """A fetch failure in words for the sender: the status, never our network's details."""
    if isinstance(exc, DecodeError):
        return "not a JSON object"
    status = getattr(exc, "status", None)
    return f"HTTP {status}" if status else "fetch failed"


def _load_key(entry: Mapping[str, Any], key_id: str) -> RSAPublicKey | Ed25519PublicKey:
    pem = entry.get("publicKeyPem")
    key: object
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


def _same_key(a: RSAPublicKey | Ed25519PublicKey, b: RSAPublicKey | Ed25519PublicKey) -> bool:
    spki = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(*spki) == b.public_bytes(*spki)


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:  # an unbalanced "[": no host we could fetch from
        return ""


def check_owner(key: PublicKey, actor_id: str) -> None:
    """Refuse a key that belongs to someone other than the actor who should have signed."""
    if key.owner != actor_id:
        raise SignatureError(f"key {key.id} belongs to {key.owner}, not to {actor_id}")


async def verify_with_key(
    keys: KeyResolver, key_id: str, check: Callable[[PublicKey], str | None]
) -> PublicKey:
    """Run `check` against the signer's key; return the key it accepts.

    `check` returns None when the signature verifies, else the reason it does not. On a
    failure the key is asked for once more with ``refresh=True``, because the actor may
    have rotated its key since we cached it (KeyCache decides whether that fetches). If
    that finds the actor gone, KeyFetchError (gone=True) is raised; any other fetch
    failure leaves the original reason standing.
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
