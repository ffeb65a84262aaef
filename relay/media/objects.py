"""Objects an activity names only by id, which the instance fetches from their origin.

Mastodon sends every boost as ``Announce`` whose ``object`` is a URI; the instance
fetches that post, its attachments, its author and the author's avatar. A
``Create`` or ``Update`` by URI, a quote (``quote``, ``quoteUrl``...) and an author
the instance does not know yet work the same way. The hold must see what the
instance will see, so it fetches these documents too (``ObjectFetcher``) and checks
their media as if they had been embedded.

``object_refs`` finds the references, without fetching anything. Not followed:
``inReplyTo`` (thread resolution) and mentioned accounts; the README names them as
known limits.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.errors import FetchError
from relay.media.refs import MediaRef, _each, _is_http, _join, _types, media_refs
from relay.network import FetchSigner, NetworkPolicy, fetch_json_document

__all__ = ["Dereferenced", "ObjectFetcher", "ObjectRef", "extract", "object_refs"]


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object the instance will fetch by id, and why."""

    url: str  # absolute http(s) URL, as found (surrounding whitespace stripped)
    where: str  # path in the document, e.g. "object", "object.quoteUrl"
    role: str  # object (of Announce/Create/Update/Add), quote, author; id: the same
    # object again, by the id the document served at the URL claims


# Activities whose `object` the instance fetches when it is given by id. Mastodon's
# Add fetches the post an actor pins (its featured collection).
_FETCHING_VERBS = frozenset({"Announce", "Create", "Update", "Add"})
_ACTOR_TYPES = frozenset({"Person", "Service", "Group", "Organization", "Application"})
# Quote posts: FEP-044f and Mastodon 4.4 `quote`, Misskey `_misskey_quote` and
# `quoteUrl`, Fedibird `quoteUri` (and the spelling `quoteURL`).
_QUOTE_KEYS = ("quote", "quoteUrl", "quoteUri", "quoteURL", "_misskey_quote")
# FEP-e232 object links in `tag` (Akkoma and Friendica send quotes this way).
_OBJECT_LINK_TYPES = ("application/activity+json", "application/ld+json")
# Objects an Announce may embed that Mastodon fetches again by id unless the
# announcer wrote them (a boost of someone else's post is never taken as sent).
_CONTENT_TYPES = frozenset({"Note", "Article", "Page", "Question", "Event", "Video", "Audio"})


def object_refs(document: Any, *, max_depth: int = 8) -> list[ObjectRef]:
    """The objects ``document`` names by id that the instance will fetch, deduplicated
    by URL, in document order. Values of the wrong JSON type are skipped."""
    found = _Found()
    if isinstance(document, dict):
        found.node(document, "", 0, max_depth)
    return found.refs


class _Found:
    def __init__(self) -> None:
        self.refs: list[ObjectRef] = []
        self.seen: set[str] = set()

    def add(self, value: Any, where: str, role: str) -> None:
        if not isinstance(value, str):
            return
        url = value.strip()
        if url in self.seen or not _is_http(url):
            return
        self.seen.add(url)
        self.refs.append(ObjectRef(url, where, role))

    def node(self, node: dict[str, Any], where: str, depth: int, max_depth: int) -> None:
        if depth > max_depth:
            return
        types = _types(node)
        if types & _ACTOR_TYPES:
            return  # an actor's own links (outbox, featured...) are not followed here
        if types & _FETCHING_VERBS:
            if depth > 0:
                # An embedded activity (Lemmy's community Announce): its actor too.
                for path, item in _each(node.get("actor"), _join(where, "actor")):
                    self.add(_id_of(item), path, "author")
            actor = _id_of(node.get("actor"))
            for path, item in _each(node.get("object"), _join(where, "object")):
                if isinstance(item, str):
                    self.add(item, path, "object")
                elif isinstance(item, dict):
                    if "Announce" in types and _fetched_again(item, actor):
                        self.add(item.get("id"), _join(path, "id"), "object")
                    self.node(item, path, depth + 1, max_depth)
        for key in _QUOTE_KEYS:
            for path, item in _each(node.get(key), _join(where, key)):
                self.add(_id_of(item), path, "quote")
        for path, item in _each(node.get("tag"), _join(where, "tag")):
            if isinstance(item, dict) and _is_object_link(item):
                self.add(item.get("href"), _join(path, "href"), "quote")
        for path, item in _each(node.get("attributedTo"), _join(where, "attributedTo")):
            self.add(_id_of(item), path, "author")


def _id_of(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


def _fetched_again(obj: dict[str, Any], announcer: Any) -> bool:
    """An embedded post that Mastodon does not take from the Announce but fetches."""
    if not _types(obj) & _CONTENT_TYPES:
        return False
    authors = obj.get("attributedTo")
    first = authors[0] if isinstance(authors, list) and authors else authors
    return bool(_id_of(first) != announcer)


def _is_object_link(node: dict[str, Any]) -> bool:
    declared = node.get("mediaType")
    return (
        "Link" in _types(node)
        and isinstance(declared, str)
        and declared.strip().lower().startswith(_OBJECT_LINK_TYPES)
    )


# -- fetching --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dereferenced:
    """What a fetched document holds that the instance would fetch in turn.

    Only references are kept, never a verdict: the media are matched again on every use.
    """

    url: str
    id: str | None  # the document's own id, when it is a string
    type: str | None
    media: tuple[MediaRef, ...]  # `where` relative to the document
    objects: tuple[ObjectRef, ...]  # likewise; includes the id when it is not the URL


class ObjectFetcher:
    """Fetches ActivityStreams documents (SSRF-guarded, size bounded), one fetch per URL
    at a time, and remembers what they reference for ``cache_seconds``: many servers
    boost the same post within minutes. A fetch ends within ``timeout`` even when every
    activity waiting on it has given up, so a slow origin holds a connection no longer."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        policy: NetworkPolicy,
        *,
        cache_seconds: float = 300.0,
        max_entries: int = 10_000,
        max_refs: int = 64,
        timeout: float = 20.0,
        max_redirects: int = 5,
        signer: FetchSigner | None = None,
    ) -> None:
        self.session = session
        self.policy = policy
        self.signer = signer  # Sluice's actor signs the GETs, where it has one
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.cache_seconds = cache_seconds
        self.max_entries = max_entries
        self.max_refs = max_refs
        self._cache: OrderedDict[str, tuple[float, Dereferenced]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Dereferenced]] = {}

    async def get(self, url: str, *, timeout: float, fresh: bool = False) -> Dereferenced:
        """The references of the document at ``url``; FetchError or DecodeError naming
        the URL and why. ``fresh`` skips the cache (an Update: the object has changed)."""
        if not fresh:
            cached = self._cached(url)
            if cached is not None:
                return cached
        task = self._inflight.get(url)
        if task is None:
            task = asyncio.ensure_future(self._fetch(url))
            self._inflight[url] = task
            task.add_done_callback(lambda done: self._forget(url, done))
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            raise FetchError(f"{url}: no complete answer within {timeout:.1f} s") from None

    async def _fetch(self, url: str) -> Dereferenced:
        # Signed where Sluice has an actor: a server in authorized-fetch mode answers
        # 401 to an unsigned GET.
        fetched = await fetch_json_document(
            self.session,
            self.policy,
            url,
            max_redirects=self.max_redirects,
            total_timeout=self.timeout,
            signer=self.signer,
        )
        found = extract(url, fetched.document, max_refs=self.max_refs)
        if self.cache_seconds > 0:
            self._cache[url] = (time.monotonic() + self.cache_seconds, found)
            self._cache.move_to_end(url)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return found

    def _forget(self, url: str, done: asyncio.Future[Dereferenced]) -> None:
        self._inflight.pop(url, None)
        if not done.cancelled():
            # Every waiter may have given up (its time ran out) before the fetch ended.
            done.exception()

    def _cached(self, url: str) -> Dereferenced | None:
        entry = self._cache.get(url)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._cache[url]
            return None
        return entry[1]


def extract(url: str, document: dict[str, Any], *, max_refs: int = 64) -> Dereferenced:
    """A fetched document's media and references, as if it had been embedded.

    A document whose id is not the URL it was fetched from is not that object: the
    instance either refuses it (Mastodon) or fetches it again by its id, so the id is
    one more reference to follow, and the media of what was served are checked too.
    """
    ident = document.get("id")
    ident = ident if isinstance(ident, str) else None
    kinds = sorted(_types(document))
    objects = object_refs(document)
    if ident is not None and _without_fragment(ident) != _without_fragment(url):
        objects = [ObjectRef(ident.strip(), "id", "id"), *objects]
    return Dereferenced(
        url=url,
        id=ident,
        type=kinds[0] if kinds else None,
        media=tuple(media_refs(document, max_refs=max_refs)),
        objects=tuple(objects),
    )


def _without_fragment(url: str) -> str:
    return url.strip().split("#", 1)[0]
