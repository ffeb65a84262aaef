"""Signatures carried by objects, checked at a price the sender cannot run up.

An activity relayed by someone other than its actor must carry the actor's own
signature: a FEP-8b32 eddsa-jcs-2022 proof (cheap, JCS) or a Mastodon RsaSignature2017
(JSON-LD canonicalisation, dear). Anyone with two actors can ask for the dear one, so
ObjectVerifier bounds it three ways: size limits before canonicalising, a time budget
on worker processes of its own, and a rate per signer (the server that relayed it).
"""

from __future__ import annotations

import atexit
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from relay.errors import RateLimited, SignatureError
from relay.rate import TokenBuckets
from relay.signature import linked_data, proof
from relay.signature.canonical import Canonicaliser
from relay.signature.keys import KeyResolver

__all__ = ["ObjectVerifier", "SignerRate", "shared"]


class SignerRate:
    """A token bucket per signer: `per_minute` checks, refilled evenly, as a burst at most."""

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._buckets = TokenBuckets(per_minute, clock=clock)

    def take(self, signer: str) -> None:
        """Spend one check for `signer`, or raise RateLimited saying when to come back."""
        wait = self._buckets.take(signer)
        if wait:
            retry_after = max(1, math.ceil(wait - 1e-9))  # float dust is no extra second
            raise RateLimited(
                f"too many signed objects relayed by {signer}; retry in {retry_after} s",
                retry_after=retry_after,
            )


class ObjectVerifier:
    """Verifies signatures carried by objects; owns worker processes, so close() it.

    `max_bytes`, `max_nodes`: RsaSignature2017 documents above these are refused before
    canonicalising. `budget_seconds`: a canonicalisation that runs longer is abandoned
    and its worker killed. `workers`, `max_waiting`: canonicalisations at once, and how
    many may wait (past that, RateLimited). `per_signer_per_minute`: object
    verifications (of any kind) per HTTP signer; `per_host`: canonicalisations queued or
    running for one signer's host at once; `unlimited_signers` (a relay you subscribe
    to) are exempt from both, though not from the size limits and the workers' queue.
    """

    def __init__(
        self,
        *,
        max_bytes: int = linked_data.MAX_BYTES,
        max_nodes: int = linked_data.MAX_NODES,
        budget_seconds: float = 2.0,
        workers: int = 1,
        max_waiting: int = 16,
        per_signer_per_minute: float = 30,
        unlimited_signers: Iterable[str] = (),
        per_host: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_nodes = max_nodes
        self.canonicaliser = Canonicaliser(
            workers=workers, budget_seconds=budget_seconds, max_waiting=max_waiting
        )
        self.rate = SignerRate(per_signer_per_minute, clock=clock)
        self.unlimited_signers = frozenset(unlimited_signers)
        self.per_host = per_host
        self._by_host: dict[str, int] = {}

    async def verify(
        self,
        document: Mapping[str, Any],
        actor_id: str,
        keys: KeyResolver,
        *,
        signer: str | None = None,
    ) -> str:
        """Verify the object's own signature by `actor_id`; return which kind it was.

        `signer` is whoever signed the HTTP request that carried it; each call costs
        them one check of their rate. A FEP-8b32 proof is preferred over an
        RsaSignature2017. Raises SignatureError, or RateLimited (retry_after set).
        """
        if signer is not None and signer not in self.unlimited_signers:
            self.rate.take(signer)
        if proof.find_proof(document) is not None:
            await proof.verify_proof(document, actor_id, keys)
            return proof.CRYPTOSUITE
        signature = document.get("signature")
        if isinstance(signature, Mapping) and signature.get("type") == linked_data.SIGNATURE_TYPE:
            with self._host_share(signer):
                await linked_data.verify_ld(
                    document,
                    actor_id,
                    keys,
                    self.canonicaliser,
                    max_bytes=self.max_bytes,
                    max_nodes=self.max_nodes,
                )
            return linked_data.SIGNATURE_TYPE
        raise SignatureError("object carries no RsaSignature2017 signature or eddsa-jcs-2022 proof")

    @contextmanager
    def _host_share(self, signer: str | None) -> Iterator[None]:
        """At most ``per_host`` canonicalisations of one signer's host queued or running:
        a host's many actors cannot keep the few workers and their queue to themselves."""
        host = (urlsplit(signer).hostname or "") if signer else ""
        if not host or signer in self.unlimited_signers:
            yield
            return
        if self._by_host.get(host, 0) >= self.per_host:
            raise RateLimited(
                f"too many linked-data signatures from {host} being checked at once; retry later",
                retry_after=max(1, math.ceil(self.canonicaliser.budget_seconds)),
            )
        self._by_host[host] = self._by_host.get(host, 0) + 1
        try:
            yield
        finally:
            self._by_host[host] -= 1
            if not self._by_host[host]:
                del self._by_host[host]

    def close(self) -> None:
        """Stop the worker processes; later RsaSignature2017 checks fail."""
        self.canonicaliser.close()


_shared: ObjectVerifier | None = None
_shared_lock = threading.Lock()


def shared() -> ObjectVerifier:
    """The process-wide verifier with default limits, behind relay.signature.verify_object."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ObjectVerifier()
            atexit.register(_shared.close)
        return _shared
