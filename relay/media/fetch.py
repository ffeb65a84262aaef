"""Fetching media for the hold: SSRF-safe, bounded, retried, and remembered.

Bytes stay in memory. What is remembered (by URL and by the file's SHA-256, its
identity, for ``[media] cache_seconds``) is the Media without its bytes, its hashes
by kind: matching runs again on every use, so a hash added to a bank catches media
seen before it was added.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import aiohttp

from relay.errors import BlockedAddress, FetchError
from relay.network import FetchSigner, NetworkPolicy, fetch

if TYPE_CHECKING:
    from relay.media.media import Media

__all__ = ["HashCache", "MediaFetcher"]

#: Statuses worth a second try; any other error answer is final.
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})
_HOLD_ENDS = "not fetched before the hold's deadline ([hold] max_seconds)"


class MediaFetcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        policy: NetworkPolicy,
        *,
        max_bytes: int,
        timeout: float = 30.0,
        max_redirects: int = 5,
        attempts: int = 2,
        retry_delay: float = 1.0,
        signer: FetchSigner | None = None,
    ) -> None:
        self.session = session
        self.policy = policy
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.signer = signer  # Sluice's actor signs the GETs, where it has one

    async def get(self, url: str, *, deadline: float | None = None) -> bytes:
        """The bytes at ``url``; FetchError naming the URL and why, after retries.

        All attempts and the pauses between them end by ``deadline``
        (``time.monotonic()`` seconds), when given: the hold's, so that a slow
        origin is this file's error, not a timeout that ends the whole hold."""
        for attempt in range(1, self.attempts + 1):
            timeout, cut = self.timeout, False
            if deadline is not None and deadline - time.monotonic() < timeout:
                timeout, cut = math.floor((deadline - time.monotonic()) * 10) / 10, True
                if timeout <= 0:
                    raise FetchError(f"{url}: {_HOLD_ENDS}")
            try:
                fetched = await fetch(
                    self.session,
                    self.policy,
                    url,
                    max_bytes=self.max_bytes,
                    headers={"Accept": "image/*, video/*, audio/*, */*;q=0.5"},
                    max_redirects=self.max_redirects,
                    total_timeout=timeout,
                    signer=self.signer,
                )
                return fetched.body
            except BlockedAddress:
                raise
            except FetchError as exc:
                if cut and exc.status is None and "total timeout" in str(exc):
                    raise FetchError(f"{exc}, cut short: {_HOLD_ENDS}") from exc
                final = exc.status is not None and exc.status not in _TRANSIENT
                too_big = "exceeds" in str(exc) or "too large" in str(exc)
                delay = self.retry_delay * attempt
                late = deadline is not None and time.monotonic() + delay >= deadline
                if final or too_big or late or attempt == self.attempts:
                    raise
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")


class HashCache:
    """Media (without bytes) by URL and by SHA-256, each kept ``ttl`` seconds, at most
    ``max_entries``."""

    def __init__(self, ttl: float, *, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Media]] = OrderedDict()

    def by_url(self, url: str) -> Media | None:
        return self._get("url " + url)

    def by_sha256(self, sha256: str) -> Media | None:
        return self._get("sha256 " + sha256)

    def put(self, url: str | None, hashes: Media) -> None:
        """Remember ``hashes`` by its SHA-256, and by ``url`` unless None (a file with no
        URL of its own: an upload)."""
        if self.ttl <= 0:
            return
        expires = time.monotonic() + self.ttl
        keys = (
            ("sha256 " + hashes.sha256,)
            if url is None
            else ("url " + url, "sha256 " + hashes.sha256)
        )
        for key in keys:
            self._entries[key] = (expires, hashes)
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _get(self, key: str) -> Media | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key]
            return None
        return entry[1]
