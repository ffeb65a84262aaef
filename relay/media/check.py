"""The media check: the hold's check for every picture, video or sound an activity
would make the instance fetch.

For each MediaRef: fetch it (or reuse its hashes), hash it, match the hashes
against the banks, and say what was found as signals: ``hashed`` (what was looked
at, for the record), ``match`` (a bank entry, carrying the bytes for evidence),
``unchecked`` (video and audio: exact hashes only), ``error`` (could not fetch or
decode: ``[hold] on_error`` decides).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from relay.activity import Activity
from relay.bank import BankIndex
from relay.errors import DecodeError, FetchError
from relay.media.actors import FreshActors
from relay.media.fetch import HashCache, MediaFetcher
from relay.media.image import Hashes, hash_media, sniff
from relay.media.refs import MediaRef, media_refs
from relay.metrics import Metrics
from relay.signal import Signal

__all__ = ["MediaCheck"]


class MediaCheck:
    name = "media"

    def __init__(
        self,
        fetcher: MediaFetcher,
        banks: Callable[[], BankIndex],
        cache: HashCache,
        *,
        max_refs: int = 32,
        max_pixels: int = 50_000_000,
        fresh_actors: FreshActors | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.banks = banks
        self.cache = cache
        self.max_refs = max_refs
        self.max_pixels = max_pixels
        self.fresh_actors = fresh_actors or FreshActors(ttl=0)
        self.metrics = metrics or Metrics()
        self._inflight: dict[str, asyncio.Future[_Obtained]] = {}

    def _refs(self, activity: Activity, actor: dict[str, Any] | None) -> list[MediaRef]:
        refs = media_refs(activity.document, max_refs=self.max_refs + 1)
        if actor is not None:
            # As if the actor had sent an Update of itself: its avatar and header.
            update = {"type": "Update", "object": actor}
            seen = {r.url for r in refs}
            for ref in media_refs(update, max_refs=self.max_refs + 1):
                if ref.url not in seen:
                    refs.append(replace(ref, where="signer's actor document: " + ref.where))
        return refs

    def applies(self, activity: Activity) -> bool:
        return bool(self._refs(activity, self.fresh_actors.peek(activity.actor)))

    async def run(self, activity: Activity) -> Sequence[Signal]:
        refs = self._refs(activity, self.fresh_actors.take(activity.actor))
        signals: list[Signal] = []
        if len(refs) > self.max_refs:
            # Checking only some would let the rest through unchecked.
            signals.append(
                Signal(
                    "error",
                    self.name,
                    {
                        "stage": "extract",
                        "error": f"more than {self.max_refs} media URLs ([media] max_refs)",
                    },
                )
            )
            refs = refs[: self.max_refs]
        for found in await asyncio.gather(*(self._check(ref) for ref in refs)):
            signals.extend(found)
        return signals

    async def _check(self, ref: MediaRef) -> list[Signal]:
        started = time.perf_counter()
        where = {"url": ref.url, "where": ref.where, "role": ref.role}
        # One fetch per URL at a time: activities arriving together share it.
        task = self._inflight.get(ref.url)
        if task is None:
            task = asyncio.ensure_future(self._obtain(ref.url))
            self._inflight[ref.url] = task
            task.add_done_callback(lambda _: self._inflight.pop(ref.url, None))
        try:
            hashes, data, cached, problem = await asyncio.shield(task)
        except _Failed as failed:
            self.metrics.media.labels(f"{failed.detail['stage']}_error").inc()
            return [Signal("error", self.name, {**where, **failed.detail})]
        matches = self.banks().match(hashes)
        refetch: dict[str, object] = {}
        if matches and data is None:
            # Known from the cache, and now in a bank (added since, or matched before):
            # fetch it again, so that the evidence holds the file and the verdict
            # judges what the origin serves now. Rare; the cache is for clean media.
            try:
                hashes, data, cached, problem = await self._obtain(ref.url, cache=False)
                matches = self.banks().match(hashes)
            except _Failed as failed:
                refetch = {"refetch_error": failed.detail["error"]}
        signals = [Signal("hashed", self.name, {**where, **_facts(hashes), "cached": cached})]
        outcome = "cached" if cached else hashes.kind
        if problem is not None:
            outcome = f"{problem['stage']}_error"
            signals.append(Signal("error", self.name, {**where, **problem}))
        self.metrics.media.labels(outcome).inc()
        if hashes.kind in ("video", "audio"):
            signals.append(
                Signal("unchecked", self.name, {**where, "kind": hashes.kind, "mime": hashes.mime})
            )
        for match in matches:
            self.metrics.matches.labels(match.bank, match.kind).inc()
            signal = match.as_signal()
            detail = {**signal.detail, **where, **refetch}
            signals.append(Signal(signal.kind, signal.source, detail, payload=data))
        signals[0].detail["seconds"] = round(time.perf_counter() - started, 4)
        return signals

    async def _obtain(self, url: str, *, cache: bool = True) -> _Obtained:
        """The hashes of ``url`` (cached, or fetched and hashed), the bytes if fetched,
        whether they came from the cache, and what went wrong decoding, if anything.
        Without ``cache``, fetched and hashed whatever the cache knows."""
        hashes = self.cache.by_url(url) if cache else None
        if hashes is not None:
            return hashes, None, True, None
        try:
            data = await self.fetcher.get(url)
        except FetchError as exc:
            raise _Failed({"stage": "fetch", "error": str(exc)}) from exc
        hashes = self.cache.by_sha256(hashlib.sha256(data).hexdigest()) if cache else None
        cached = hashes is not None
        if hashes is None:
            try:
                hashes = await asyncio.to_thread(hash_media, data, max_pixels=self.max_pixels)
            except DecodeError as exc:
                # Undecodable is no excuse: the exact hashes still meet the banks.
                problem = {"stage": "decode", "error": str(exc), "bytes": len(data)}
                return _exact_only(data), data, False, problem
        self.cache.put(url, hashes)
        return hashes, data, cached, None


_Obtained = tuple[Hashes, bytes | None, bool, dict[str, object] | None]


def _exact_only(data: bytes) -> Hashes:
    kind, mime = sniff(data)
    return Hashes(
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        kind=kind,
        mime=mime,
        pdq=(),
        pdq_dihedral=(),
        width=None,
        height=None,
        frames=0,
    )


class _Failed(Exception):
    def __init__(self, detail: dict[str, object]) -> None:
        super().__init__(detail.get("error"))
        self.detail = detail


def _facts(hashes: Hashes) -> dict[str, object]:
    first = hashes.pdq[0] if hashes.pdq else None
    return {
        "kind": hashes.kind,
        "mime": hashes.mime,
        "sha256": hashes.sha256,
        "md5": hashes.md5,
        "pdq": first.hash if first else None,
        "quality": first.quality if first else None,
        "width": hashes.width,
        "height": hashes.height,
        "frames": hashes.frames,
    }
