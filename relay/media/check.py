"""The media check: the hold's check for every picture, video or sound an activity
would make the instance fetch.

For each MediaRef: fetch it (or reuse its hashes), hash it into a ``Media``, and
hand that to the ``Inspector`` (``relay.media.inspect``), whose matchers (the banks
first) say what was found as signals: ``hashed`` (what was looked at, for the
record), ``match`` (carrying the Media, bytes included, for evidence), ``unchecked``
(video and audio: exact hashes only); and here ``error`` (could not fetch or decode:
``[hold] on_error`` decides).

Objects the activity names only by id (a boost by URI, a quote, an unknown author)
are fetched first, bounded in number, depth and time, and their media checked like
the rest (``relay.media.objects``); one that cannot be fetched is an ``error``
signal (stage ``dereference``), never a reason to skip the check.

Each signal is reported to the hold as soon as it is known, and every fetch (media
with its retries, objects) ends by the hold's deadline: a slow origin is that URL's
``error``, and a match found before it still counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import aiohttp

from relay.activity import Activity
from relay.banks import BankIndex
from relay.banks.matcher import BankMatcher
from relay.errors import DecodeError, FetchError
from relay.hold import Findings
from relay.hosts import LocalHosts
from relay.matcher import Matcher
from relay.media.actors import FreshActors
from relay.media.fetch import HashCache, MediaFetcher
from relay.media.hasher import MediaHasher, OverBudget
from relay.media.inspect import Inspector
from relay.media.media import Media
from relay.media.objects import (
    Dereferenced,
    ObjectFetcher,
    ObjectRef,
    extract,
    object_refs,
)
from relay.media.refs import MediaRef, media_refs
from relay.metrics import Metrics
from relay.policy import OVER_BUDGET
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
        hasher: MediaHasher | None = None,
        fresh_actors: FreshActors | None = None,
        metrics: Metrics | None = None,
        local_hosts: frozenset[str] = frozenset(),
        max_dereferences: int = 8,
        max_dereference_depth: int = 3,
        dereference_seconds: float = 20.0,
        dereference_cache_seconds: float = 300.0,
        object_session: aiohttp.ClientSession | None = None,
        matchers: Sequence[Matcher] = (),
    ) -> None:
        self.fetcher = fetcher
        self.banks = banks
        self.cache = cache
        # Every file meets the banks, then any other matcher (an external checker).
        self.inspector = Inspector([BankMatcher(banks), *matchers], source=self.name)
        self.max_refs = max_refs
        # Decoding on its own pool, within a memory gate and a budget per sender.
        self.hasher = hasher or MediaHasher()
        self.fresh_actors = fresh_actors or FreshActors(ttl=0)
        self.metrics = metrics or Metrics()
        # The instance's own names ([server] hosts): it does not fetch its own objects.
        self.local_hosts = LocalHosts(local_hosts)
        self.max_dereferences = max_dereferences
        self.max_dereference_depth = max_dereference_depth
        self.dereference_seconds = dereference_seconds
        # Objects come over a session of their own: slow origins named by boosts must
        # not hold the connections media fetches need.
        self.objects = ObjectFetcher(
            object_session or fetcher.session,
            fetcher.policy,
            cache_seconds=dereference_cache_seconds,
            max_refs=max_refs + 1,
            timeout=dereference_seconds,
            max_redirects=fetcher.max_redirects,
            signer=fetcher.signer,
        )
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

    def _objects(self, activity: Activity) -> list[ObjectRef]:
        return [r for r in object_refs(activity.document) if self._wanted(r, activity)]

    def _wanted(self, ref: ObjectRef, activity: Activity) -> bool:
        """Whether the instance would fetch ``ref``: not its own objects, and not the
        sending actor, whose document (when new) comes from the key fetch."""
        if ref.role == "author" and ref.url == activity.actor:
            return False
        return not self.local_hosts.owns(ref.url)

    def applies(self, activity: Activity) -> bool:
        return bool(self._refs(activity, self.fresh_actors.peek(activity.actor))) or bool(
            self._objects(activity)
        )

    async def run(self, activity: Activity) -> Sequence[Signal]:
        """All the signals, once every media file is checked (no deadline)."""
        found = Findings(self.name)
        await self.report(activity, found)
        return found.signals

    async def report(self, activity: Activity, found: Findings) -> None:
        refs = self._refs(activity, self.fresh_actors.take(activity.actor))
        checks: list[asyncio.Future[None]] = []
        seen: set[str] = set()
        too_many = False

        async def check(ref: MediaRef) -> None:
            found.begin(ref.url)
            found.extend(await self._check(ref, activity.actor, found.deadline))
            found.end(ref.url)

        def submit(refs: Iterable[MediaRef]) -> None:
            """Start checking media as they are found; the rest is still being fetched."""
            nonlocal too_many
            for ref in refs:
                if ref.url in seen:
                    continue
                if len(seen) >= self.max_refs:
                    if not too_many:  # checking only some would let the rest through
                        too_many = True
                        found.add(Signal("error", self.name, self._too_many()))
                    continue
                seen.add(ref.url)
                checks.append(asyncio.ensure_future(check(ref)))

        try:
            submit(refs)
            await self._dereference(activity, submit, found)
            await asyncio.gather(*checks)
        finally:
            for task in checks:  # the hold gave up, or a check broke: stop the others
                task.cancel()

    def _too_many(self) -> dict[str, object]:
        return {
            "stage": "extract",
            "error": f"more than {self.max_refs} media URLs ([media] max_refs)",
        }

    async def _dereference(
        self,
        activity: Activity,
        submit: Callable[[Iterable[MediaRef]], None],
        found: Findings,
    ) -> None:
        """Fetch what the activity names by id, level by level, and submit the media
        found there; bounded by ``max_dereferences`` fetches, ``max_dereference_depth``
        levels and ``dereference_seconds`` in all (and the hold's deadline). What lies
        beyond a bound is an error: the instance would fetch it, unchecked."""
        deadline = time.monotonic() + self.dereference_seconds
        limit = (
            f"objects took more than {self.dereference_seconds:g} s ([media] dereference_seconds)"
        )
        if found.deadline < deadline:
            deadline = found.deadline
            limit = "the hold's time ran out ([hold] max_seconds)"
        level = self._objects(activity)
        seen: set[str] = set()
        fetched = 0
        beyond: dict[str, list[ObjectRef]] = {"count": [], "depth": []}
        depth = 1
        while level:
            batch: list[ObjectRef] = []
            for ref in level:
                if ref.url in seen:
                    continue
                seen.add(ref.url)
                if depth > self.max_dereference_depth:
                    beyond["depth"].append(ref)
                elif fetched >= self.max_dereferences:
                    beyond["count"].append(ref)
                else:
                    fetched += 1
                    batch.append(ref)
            # An Update changes its object: what was fetched for earlier activities is stale.
            fresh = activity.type == "Update" and depth == 1
            results = await asyncio.gather(
                *(self._dereference_one(ref, deadline, limit, found, fresh=fresh) for ref in batch)
            )
            level = []
            for ref, result in zip(batch, results, strict=True):
                if isinstance(result, Signal):
                    found.add(result)
                    continue
                found.add(Signal("dereferenced", self.name, _dereferenced(ref, result)))
                prefix = f"{ref.where} <{ref.url}>"
                submit(replace(m, where=f"{prefix}: {m.where}") for m in result.media)
                for child in result.objects:
                    role = ref.role if child.role == "id" else child.role
                    child = ObjectRef(child.url, f"{prefix}: {child.where}", role)
                    if self._wanted(child, activity):
                        level.append(child)
            depth += 1
        for bound, refs in beyond.items():
            if refs:
                found.add(Signal("error", self.name, self._beyond(bound, refs)))

    async def _dereference_one(
        self, ref: ObjectRef, deadline: float, limit: str, found: Findings, *, fresh: bool
    ) -> Dereferenced | Signal:
        if ref.role == "author":
            # Just fetched to verify a signature of its own: no need to fetch it again.
            document = self.fresh_actors.peek(ref.url)
            if document is not None:
                return extract(ref.url, document, max_refs=self.max_refs + 1)
        remaining = deadline - time.monotonic()
        found.begin(ref.url)
        try:
            if remaining <= 0:
                raise FetchError(f"{ref.url}: not fetched: {limit}")
            got = await self.objects.get(ref.url, timeout=remaining, fresh=fresh)
            found.end(ref.url)
            return got
        except (FetchError, DecodeError) as exc:
            found.end(ref.url)
            self.metrics.media.labels("dereference_error").inc()
            detail: dict[str, object] = {"stage": "dereference", "url": ref.url}
            detail |= {"where": ref.where, "role": ref.role}
            if isinstance(exc, FetchError) and exc.status is not None:
                # 401: a server in authorized-fetch mode; Sluice cannot sign (yet).
                detail["status"] = exc.status
            return Signal("error", self.name, {**detail, "error": str(exc)})

    def _beyond(self, bound: str, refs: list[ObjectRef]) -> dict[str, object]:
        if bound == "count":
            why = f"more than {self.max_dereferences} objects to fetch ([media] max_dereferences)"
        else:
            why = (
                f"objects more than {self.max_dereference_depth} references deep "
                "([media] max_dereference_depth)"
            )
        first = refs[0]
        return {
            "stage": "dereference",
            "url": first.url,
            "where": first.where,
            "role": first.role,
            "error": f"{why}: {len(refs)} not fetched, so their media went unchecked",
        }

    async def _check(self, ref: MediaRef, sender: str, deadline: float) -> list[Signal]:
        """Signals about one media file, fetched by ``deadline``; decoding it is charged
        to ``sender``'s budget."""
        started = time.perf_counter()
        where = {"url": ref.url, "where": ref.where, "role": ref.role}
        # One fetch per URL at a time: activities arriving together share it (the
        # first one's sender pays for the decoding).
        task = self._inflight.get(ref.url)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(self._obtain(ref.url, sender=sender, deadline=deadline))
            self._inflight[ref.url] = task
            task.add_done_callback(lambda _: self._inflight.pop(ref.url, None))
        try:
            media, problem = await _by(deadline, asyncio.shield(task), ref.url)
            if shared and problem is not None and problem["stage"] == "budget":
                # Another sender's budget ran out on this file, not ours: sharing its
                # fetch must not send our activity to review.
                media, problem = await self._obtain(ref.url, sender=sender, deadline=deadline)
        except _Failed as failed:
            self.metrics.media.labels(f"{failed.detail['stage']}_error").inc()
            return [Signal("error", self.name, {**where, **failed.detail})]
        signals = await self.inspector.inspect(self._seen(media, ref, started))
        refetch: dict[str, object] = {}
        if media.data is None and any(s.kind == "match" for s in signals):
            # Known from the cache, and now matched (in a bank added since, or matched
            # before): fetch it again, so that the evidence holds the file and the
            # verdict judges what the origin serves now. Rare; the cache is for clean
            # media.
            try:
                media, problem = await self._obtain(
                    ref.url, sender=sender, cache=False, deadline=deadline
                )
                signals = await self.inspector.inspect(self._seen(media, ref, started))
            except _Failed as failed:
                refetch = {"refetch_error": failed.detail["error"]}
        outcome: str = "cached" if media.cached else media.kind
        if problem is not None:
            outcome = f"{problem['stage']}_error"
            # Over budget is not an error on_error may wave through: at least review.
            kind = OVER_BUDGET if problem["stage"] == "budget" else "error"
            signals.insert(1, Signal(kind, self.name, {**where, **problem}))
        self.metrics.media.labels(outcome).inc()
        for i, signal in enumerate(signals):
            if signal.kind != "match":
                continue
            self.metrics.matches.labels(signal.source, str(signal.detail.get("hash_kind"))).inc()
            if refetch:  # a new fact, not a change to the matcher's
                detail = {**signal.detail, **refetch}
                signals[i] = Signal(signal.kind, signal.source, detail, media=signal.media)
        return signals

    @staticmethod
    def _seen(media: Media, ref: MediaRef, started: float) -> Media:
        """``media`` as this activity met it: at ``ref``, after this long."""
        return replace(media, ref=ref, seconds=round(time.perf_counter() - started, 4))

    async def _obtain(
        self, url: str, *, sender: str, cache: bool = True, deadline: float | None = None
    ) -> _Obtained:
        """The Media at ``url`` (cached, without bytes; or fetched by ``deadline`` and
        hashed), and what went wrong decoding, if anything. Without ``cache``, fetched
        and hashed whatever the cache knows."""
        known = self.cache.by_url(url) if cache else None
        if known is not None:
            return known, None
        try:
            data = await self.fetcher.get(url, deadline=deadline)
        except FetchError as exc:
            raise _Failed({"stage": "fetch", "error": str(exc)}) from exc
        known = self.cache.by_sha256(hashlib.sha256(data).hexdigest()) if cache else None
        if known is not None:
            self.cache.put(url, known)
            return replace(known, data=data), None
        try:
            decoded = await self.hasher.hash(data, sender=sender)
        except DecodeError as exc:
            # Undecodable (or not decoded) is no excuse: the exact hashes still meet
            # the banks. Nothing is cached: the file was not judged as a picture.
            stage = "budget" if isinstance(exc, OverBudget) else "decode"
            problem = {"stage": stage, "error": str(exc), "bytes": len(data)}
            return Media.of(data), problem
        media = Media.of(data, decoded)
        self.cache.put(url, media.remembered())
        return media, None


_Obtained = tuple[Media, dict[str, object] | None]


async def _by(deadline: float, shared: Awaitable[_Obtained], url: str) -> _Obtained:
    """Wait for ``shared`` (a fetch another activity may have started, with a later
    deadline than ours) until ``deadline``; then it is this activity's fetch error."""
    try:
        async with asyncio.timeout(None if math.isinf(deadline) else deadline - time.monotonic()):
            return await shared
    except TimeoutError:
        error = f"{url}: not fetched before the hold's deadline ([hold] max_seconds)"
        raise _Failed({"stage": "fetch", "error": error}) from None


class _Failed(Exception):
    def __init__(self, detail: dict[str, object]) -> None:
        super().__init__(detail.get("error"))
        self.detail = detail


def _dereferenced(ref: ObjectRef, found: Dereferenced) -> dict[str, object]:
    """What was fetched in the activity's stead, for the record."""
    return {
        "url": ref.url,
        "where": ref.where,
        "role": ref.role,
        "id": found.id,
        "type": found.type,
        "media": len(found.media),
    }
