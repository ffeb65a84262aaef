"""The receipt door: Sluice's own inbox, its followers and its receipts collection,
at the paths of Sluice's actor (``[actor] base_url``).

- ``GET receipts``: an OrderedCollection (``totalItems``, ``first``); ``?page=true``
  (``&before=ID``) an OrderedCollectionPage of signed receipts, newest first, with
  ``next``; ``GET receipts/ID`` one receipt, as signed.
- ``GET followers``: how many follow, never who (peers' lists are theirs to tell).
- ``POST inbox``: signed by the activity's own actor. A ``Follow`` of Sluice's actor is
  accepted or rejected by ``accepts`` and answered by an ``Accept`` or ``Reject`` sent
  through the outbox; an ``Undo`` of it ends it; anything else goes to ``on_activity``
  (peers' receipts). Answered ``202``; a bad signature ``401`` with the reason, a body
  that is no activity ``400``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol, TypeVar

import structlog
import yarl
from aiohttp import web

from relay.activity import Activity, parse_activity
from relay.doors.inbound import _content_coding, _not_text
from relay.effects.send import sends
from relay.errors import DecodeError, RateLimited, SignatureError, StoreUnavailable
from relay.hosts import LocalHosts
from relay.network import JsonDocument, same_url
from relay.outbox import Outbox
from relay.signature import KeyCache, KeyResolver, Verified, verify_request
from relay.store.db import translated
from relay.store.receipts import ReceiptStore

__all__ = ["ACTIVITY_JSON", "AS_CONTEXT", "ActorFetcher", "OnActivity", "ReceiptDoor", "Speaker"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
AS_CONTEXT = "https://www.w3.org/ns/activitystreams"
ACTIVITY_JSON = "application/activity+json"


class Speaker(Protocol):
    """What the door needs of Sluice's actor (``relay.actor.Actor``)."""

    id: str
    inbox: str
    followers: str
    receipts: str


#: Fetches a peer's actor document (SSRF-guarded): where its inbox is.
ActorFetcher = Callable[[str], Awaitable["Mapping[str, object] | JsonDocument"]]
#: Handed each verified activity the door does not handle itself.
OnActivity = Callable[[Activity, Verified], Awaitable[None]]


async def _ignore(activity: Activity, verified: Verified) -> None:
    log.info("receipt_inbox_ignored", type=activity.type, actor=activity.actor)


class ReceiptDoor:
    """Routes at the actor's inbox, followers and receipts URLs."""

    def __init__(
        self,
        actor: Speaker,
        store: ReceiptStore,
        outbox: Outbox,
        keys: KeyResolver,
        fetch_actor: ActorFetcher,
        *,
        accepts: Callable[[str], bool] = lambda actor_id: True,
        on_activity: OnActivity = _ignore,
        page_size: int = 20,
        max_body_bytes: int = 262144,
        max_age: float = 43200,
        clock_skew: float = 3600,
        hosts: Iterable[str] | None = None,
        unavailable_retry_after: int = 5,
    ) -> None:
        """``accepts``: the follow policy (``[receipts] followers``); ``hosts``: the
        ``Host`` a signed request must name (default: ``actor.inbox``'s)."""
        self.actor = actor
        self.store = store
        self.outbox = outbox
        self.keys = keys
        self.fetch_actor = fetch_actor
        self.accepts = accepts
        self.on_activity = on_activity
        self.page_size = page_size
        self.max_body_bytes = max_body_bytes
        self.max_age = max_age
        self.clock_skew = clock_skew
        self.hosts = LocalHosts(hosts if hosts is not None else [yarl.URL(actor.inbox).authority])
        self.unavailable_retry_after = unavailable_retry_after

    def routes(self) -> list[web.RouteDef]:
        receipts = yarl.URL(self.actor.receipts).path.rstrip("/")
        return [
            web.post(yarl.URL(self.actor.inbox).path, self.inbox),
            web.get(yarl.URL(self.actor.followers).path, self.followers),
            web.get(receipts, self.collection),
            web.get(receipts + "/{receipt:.+}", self.receipt),
        ]

    # -- reading -----------------------------------------------------------------------

    async def followers(self, request: web.Request) -> web.Response:
        count = await self._read(self.store.follower_count())
        return _activity_json(
            {
                "@context": AS_CONTEXT,
                "id": self.actor.followers,
                "type": "OrderedCollection",
                "totalItems": count,
            }
        )

    async def collection(self, request: web.Request) -> web.Response:
        base = self.actor.receipts
        if request.query.get("page") != "true":
            count = await self._read(self.store.count())
            return _activity_json(
                {
                    "@context": AS_CONTEXT,
                    "id": base,
                    "type": "OrderedCollection",
                    "totalItems": count,
                    "first": f"{base}?page=true",
                }
            )
        before = request.query.get("before") or None
        found = await self._read(self.store.page(before, self.page_size + 1))
        items, more = found[: self.page_size], len(found) > self.page_size
        here = yarl.URL(base).with_query({"page": "true", **({"before": before} if before else {})})
        page: dict[str, object] = {
            "@context": AS_CONTEXT,
            "id": str(here),
            "type": "OrderedCollectionPage",
            "partOf": base,
            "orderedItems": [r.document for r in items],
        }
        if more:
            page["next"] = str(yarl.URL(base).with_query({"page": "true", "before": items[-1].id}))
        return _activity_json(page)

    async def receipt(self, request: web.Request) -> web.Response:
        ident = f"{self.actor.receipts.rstrip('/')}/{request.match_info['receipt']}"
        found = await self._read(self.store.receipt(ident))
        if found is None:
            return _refuse(404, "no such receipt")
        return _activity_json(found.document)

    async def _read(self, pending: Awaitable[_T]) -> _T:
        try:
            return await pending
        except StoreUnavailable as exc:
            log.error("store_unavailable", error=str(exc))
            raise web.HTTPServiceUnavailable(
                text='{"error": "database unavailable, retry later"}',
                content_type="application/json",
                headers={"Retry-After": str(self.unavailable_retry_after)},
            ) from None

    # -- the inbox -----------------------------------------------------------------------

    async def inbox(self, request: web.Request) -> web.Response:
        coding = _content_coding(request.headers)
        if coding:
            return _refuse(
                415, f"Content-Encoding {coding[:40]!r} is not accepted; send the body as is"
            )
        odd = _not_text(request.raw_path, request.headers)
        if odd:
            return _refuse(400, f"{odd} is not UTF-8 text")
        if (request.content_length or 0) > self.max_body_bytes:
            return _refuse(413, f"body too large: more than {self.max_body_bytes} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            return _refuse(413, f"body too large: {exc.text}")
        if len(body) > self.max_body_bytes:
            return _refuse(413, f"body too large: more than {self.max_body_bytes} bytes")
        host = request.headers.get("Host", "")
        if not self.hosts.answers_to(host):
            return _refuse(401, f"signed for host {host!r}, which is not this inbox's")
        try:
            activity = parse_activity(body)
        except DecodeError as exc:
            return _refuse(400, str(exc))
        bound = log.bind(activity_id=activity.id, type=activity.type, actor=activity.actor)
        keys = (
            self.keys.for_client(request.remote) if isinstance(self.keys, KeyCache) else self.keys
        )
        try:
            verified = await verify_request(
                request.method,
                request.raw_path,
                request.headers,
                body,
                keys,
                max_age=self.max_age,
                clock_skew=self.clock_skew,
            )
        except RateLimited as exc:
            response = _refuse(429, str(exc))
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        except SignatureError as exc:
            bound.warning("receipt_inbox_signature_refused", reason=str(exc))
            return _refuse(401, f"signature not accepted: {exc}")
        if verified.signer != activity.actor:
            bound.warning("receipt_inbox_not_actor", signer=verified.signer)
            return _refuse(
                401, f"request signed by {verified.signer}, not by the actor {activity.actor}"
            )
        try:
            if activity.type == "Follow" and same_url(_object_id(activity), self.actor.id):
                return await self._follow(activity, bound)
            if not (activity.type == "Undo" and await self._unfollow(activity, bound)):
                await self.on_activity(activity, verified)
        except StoreUnavailable as exc:
            bound.error("store_unavailable", error=str(exc))
            response = _refuse(503, "database unavailable, retry later")
            response.headers["Retry-After"] = str(self.unavailable_retry_after)
            return response
        return web.Response(status=202)

    async def _follow(
        self, activity: Activity, bound: structlog.typing.FilteringBoundLogger
    ) -> web.Response:
        try:
            fetched = await self.fetch_actor(activity.actor)
        except Exception as exc:  # the peer retries its Follow; nothing was recorded
            bound.warning("follower_unreachable", error=str(exc))
            return _refuse(502, f"could not fetch {activity.actor} to find its inbox")
        document = fetched.document if isinstance(fetched, JsonDocument) else dict(fetched)
        served_elsewhere = isinstance(fetched, JsonDocument) and not fetched.at_its_id
        inbox, shared = _inboxes(document)
        if served_elsewhere or not same_url(document.get("id"), activity.actor) or inbox is None:
            return _refuse(400, f"{activity.actor} is not an actor document with an inbox")
        accepted = self.accepts(activity.actor)
        kind = "Accept" if accepted else "Reject"
        answer: dict[str, object] = {
            "@context": AS_CONTEXT,
            "id": f"{self.actor.id}#{kind.lower()}-{_digest(activity)}",
            "type": kind,
            "actor": self.actor.id,
            "object": {
                k: activity.document[k]
                for k in ("id", "type", "actor", "object")
                if k in activity.document
            },
        }
        key = f"follow:{activity.dedup_key}:{kind.lower()}"
        with translated():
            async with self.store.pool.acquire() as conn, conn.transaction():
                if accepted:
                    await self.store.add_follower(
                        activity.actor,
                        inbox,
                        shared_inbox=shared,
                        follow_id=activity.id,
                        conn=conn,
                    )
                else:
                    await self.store.remove_follower(activity.actor, conn=conn)
                await self.outbox.enqueue(sends(answer, [inbox], key), conn=conn)
        bound.info("follow_accepted" if accepted else "follow_rejected", inbox=inbox)
        return web.Response(status=202)

    async def _unfollow(
        self, activity: Activity, bound: structlog.typing.FilteringBoundLogger
    ) -> bool:
        """End a follow when ``activity`` (an Undo) undoes one: a Follow of Sluice's actor
        embedded (Mastodon, Misskey), or named by the id of the Follow recorded (an Undo
        of anything else has an id too, and goes on to ``on_activity``)."""
        target = activity.document.get("object")
        if isinstance(target, str):
            removed = await self.store.remove_follower(activity.actor, follow_id=target)
            if removed:
                bound.info("follow_undone")
            return removed
        if not isinstance(target, dict) or target.get("type") != "Follow":
            return False
        followed = target.get("object")
        followed = followed.get("id") if isinstance(followed, dict) else followed
        if followed is not None and not same_url(followed, self.actor.id):
            return False
        removed = await self.store.remove_follower(activity.actor)
        bound.info("follow_undone", removed=removed)
        return True


def _object_id(activity: Activity) -> object:
    target = activity.document.get("object")
    return target.get("id") if isinstance(target, dict) else target


def _inboxes(document: Mapping[str, object]) -> tuple[str | None, str | None]:
    """The actor's inbox and shared inbox (``endpoints.sharedInbox``), when URLs."""
    inbox = document.get("inbox")
    endpoints = document.get("endpoints")
    shared = endpoints.get("sharedInbox") if isinstance(endpoints, dict) else None
    return (
        inbox if isinstance(inbox, str) and inbox.startswith(("https://", "http://")) else None,
        shared if isinstance(shared, str) and shared.startswith(("https://", "http://")) else None,
    )


def _digest(activity: Activity) -> str:
    return hashlib.sha256(activity.dedup_key.encode()).hexdigest()[:32]


def _activity_json(document: Mapping[str, object]) -> web.Response:
    return web.json_response(document, content_type=ACTIVITY_JSON)


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
