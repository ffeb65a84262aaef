"""The inbound door: inbox POSTs are verified, stored, answered 202, then held.

Only cheap work happens before the 202 (limits, parse, signature, one INSERT);
the hold and the delivery run in ``relay.flow``. The sender learns nothing of
what is checked: every stored activity gets the same 202.
"""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import structlog
from aiohttp import web
from multidict import CIMultiDictProxy

from relay.activity import Activity, parse_activity
from relay.doors import Handler
from relay.envelope import Envelope, Proxies
from relay.errors import (
    DecodeError,
    KeyFetchError,
    RateLimited,
    SignatureError,
    StoreUnavailable,
)
from relay.flow import Flow
from relay.hosts import LocalHosts
from relay.metrics import Metrics
from relay.signature import KeyCache, Verified, verify_request
from relay.signature.objects import ObjectVerifier

__all__ = ["InboundDoor", "OnReceipt", "inbox_matcher", "looks_inbound", "normalized_path"]

log = structlog.get_logger(__name__)

#: Told of every accepted activity (its verified signer, if any): receipts are judged.
OnReceipt = Callable[[Activity, Verified | None], Awaitable[None]]


def inbox_matcher(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regex for the configured globs; ``*`` stands for exactly one path segment.

    Matching is as lenient as the servers behind us: any case, a trailing slash, a
    format suffix (Rails routes ``/inbox.json`` to the inbox). A spelling the
    instance accepts but Sluice did not recognise would pass through unchecked.
    """
    parts = [re.escape(p).replace(r"\*", "[^/]+") for p in patterns]
    return re.compile("^(?:" + "|".join(parts) + r")(?:\.[^/.]+)?/?$", re.IGNORECASE)


_ACTIVITY_TYPES = frozenset({"application/activity+json", "application/ld+json"})


def looks_inbound(headers: Mapping[str, str]) -> bool:
    """A POST that speaks ActivityPub, whatever its path: checked, never passed unchecked.

    Inbox paths differ per server and per version (Pixelfed's ``/f/inbox``, Pleroma's
    ``/relay/inbox``) and routers accept spellings we cannot foresee, so a list alone
    fails open. What a delivery cannot do without is its content type or its signature.
    """
    if "Signature" in headers or "Signature-Input" in headers:
        return True
    if "Authorization" in headers:
        # A client posting to its own outbox (Pleroma's C2S API) with its OAuth token:
        # not a federation delivery, which would carry a signature.
        return False
    content_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return content_type in _ACTIVITY_TYPES


def normalized_path(path: str) -> str:
    """The path as the instance's router will see it: repeated slashes collapsed and
    dot-segments resolved (Rails and nginx both do), so ``//inbox`` is still an inbox."""
    collapsed = re.sub("/{2,}", "/", path)
    normal = posixpath.normpath(collapsed)
    return normal + "/" if collapsed.endswith("/") and normal != "/" else normal


class InboundDoor:
    """Inbox POSTs, on whatever path they come; other POSTs go to ``otherwise``."""

    def __init__(
        self,
        flow: Flow,
        keys: KeyCache,
        metrics: Metrics,
        *,
        inbox_paths: Iterable[str] = (),
        otherwise: Handler,
        require_signatures: bool = True,
        max_age: float = 43200,
        clock_skew: float = 3600,
        hosts: Iterable[str] = (),
        trusted_proxies: Iterable[str] = (),
        objects: ObjectVerifier,
        unavailable_retry_after: int = 5,
        receipts: OnReceipt | None = None,
    ) -> None:
        self.flow = flow
        self.inbox = inbox_matcher(inbox_paths)
        self.otherwise = otherwise  # the passthrough: a POST that is no delivery
        self.keys = keys
        self.metrics = metrics
        self.require_signatures = require_signatures
        self.max_age = max_age
        self.clock_skew = clock_skew
        self.hosts = LocalHosts(hosts)
        self.proxies = Proxies(trusted_proxies)
        self.objects = objects  # relayed objects' own signatures, at a bounded price
        self.unavailable_retry_after = unavailable_retry_after  # seconds, database down
        # A Delete or Flag carrying a peer's moderation receipt: handed on to be judged.
        self.receipts = receipts

    def routes(self) -> list[web.RouteDef]:
        # Any path: an inbox the configuration does not name is still checked.
        return [web.post("/{tail:.*}", self.handle)]

    def claims(self, request: web.Request) -> bool:
        """An inbox POST: a configured inbox path, or a request that speaks ActivityPub."""
        return bool(self.inbox.match(normalized_path(request.path))) or looks_inbound(
            request.headers
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.claims(request):
            return await self.otherwise(request)
        started = time.perf_counter()
        try:
            response = await self._handle(request)
        finally:
            self.metrics.receive_seconds.observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        coding = _content_coding(request.headers)
        if coding:
            # Digest and Content-Digest cover the bytes as sent, the instance expects what
            # was signed, and no fediverse server compresses what it POSTs; refused before
            # aiohttp decodes it (a body that is not what it claims would fail there).
            self.metrics.received.labels("malformed").inc()
            response = _refuse(
                415, f"Content-Encoding {coding[:40]!r} is not accepted; send the body as is"
            )
            response.headers["Accept-Encoding"] = "identity"
            return response
        odd = _not_text(request.raw_path, request.headers)
        if odd:
            # aiohttp keeps bytes that are no UTF-8 as surrogates, which neither the
            # signature base nor the stored row can hold; no server sends them.
            self.metrics.received.labels("malformed").inc()
            return _refuse(400, f"{odd} is not UTF-8 text")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            self.metrics.received.labels("too_large").inc()
            return _refuse(413, f"body too large: {exc.text}")
        remote = self.proxies.client(request.remote, request.headers)
        envelope = Envelope(
            method=request.method,
            target=request.raw_path,  # raw: what the sender signed, byte for byte
            headers=tuple(self.proxies.forwardable(request.remote, remote, request.headers)),
            body=body,
            remote=remote,
            received_at=time.time(),
        )
        host = request.headers.get("Host", "")
        if not self.hosts.answers_to(host):
            # Signed for another server and replayed here (Host and @authority are signed).
            self.metrics.received.labels("wrong_host").inc()
            log.warning("wrong_host", host=host, remote=remote, target=envelope.target)
            return _refuse(401, f"signed for host {host!r}, which this instance does not answer to")
        try:
            activity = parse_activity(body)
        except DecodeError as exc:
            self.metrics.received.labels("malformed").inc()
            log.info("malformed", target=envelope.target, remote=envelope.remote, error=str(exc))
            return _refuse(400, str(exc))

        bound = log.bind(
            activity_id=activity.id,
            type=activity.type,
            actor=activity.actor,
            remote=envelope.remote,
        )
        verified: Verified | None
        try:
            verified = await self._verify(request, envelope, activity)
        except RateLimited as exc:
            # Costly to check and too many at once: the sender retries later, nothing lost.
            self.metrics.received.labels("rate_limited").inc()
            bound.warning("rate_limited", reason=str(exc))
            response = _refuse(429, str(exc))
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        except SignatureError as exc:
            if isinstance(exc, KeyFetchError) and exc.gone and activity.type == "Delete":
                # The actor is gone and took its key with it: there is nothing left to
                # verify or to deliver. Mastodon and relays drop these the same way.
                self.metrics.received.labels("gone_delete").inc()
                bound.info("dropped_delete_of_gone_actor", reason=str(exc))
                return web.Response(status=202)
            if self.require_signatures:
                self.metrics.received.labels("bad_signature").inc()
                bound.warning("signature_refused", reason=str(exc))
                return _refuse(401, f"signature not accepted: {exc}")
            # Accepted unverified by configuration; the row's NULL signer says so.
            bound.warning("signature_not_verified", reason=str(exc))
            verified = None

        try:
            stored = await self.flow.accept(envelope, activity, verified)
        except StoreUnavailable as exc:
            # Nothing was stored; the sender retries, as it does for any overloaded server.
            self.metrics.received.labels("unavailable").inc()
            bound.error("store_unavailable", error=str(exc))  # the reason stays here
            response = _refuse(503, "database unavailable, retry later")
            response.headers["Retry-After"] = str(self.unavailable_retry_after)
            return response
        if stored is None:
            self.metrics.received.labels("duplicate").inc()
            bound.info("duplicate", signer=verified and verified.signer)
            return web.Response(status=202)
        self.metrics.received.labels("accepted").inc()
        if self.receipts is not None:
            await self.receipts(activity, verified)
        bound.info(
            "received",
            row=stored.id,
            signer=verified and verified.signer,
            claimed=stored.claimed,
            cancelled=stored.cancelled,
        )
        return web.Response(status=202)

    async def _verify(
        self, request: web.Request, envelope: Envelope, activity: Activity
    ) -> Verified:
        """Who signed the request, and may they speak for the activity's actor?"""
        # Keys new to us cost fetches at the sender's choosing: a few at a time per client.
        keys = self.keys.for_client(envelope.remote)
        verified = await verify_request(
            request.method,
            envelope.target,
            request.headers,
            envelope.body,
            keys,
            max_age=self.max_age,
            clock_skew=self.clock_skew,
        )
        if verified.signer != activity.actor:
            # Relayed or forwarded activities: the signer only carried it. Accept it
            # only with the actor's own signature on the document itself.
            try:
                await self.objects.verify(
                    activity.document, activity.actor, keys, signer=verified.signer
                )
            except RateLimited:
                raise
            except SignatureError as exc:
                raise SignatureError(
                    f"request signed by {verified.signer}, not by the actor "
                    f"{activity.actor}, and the activity carries no valid signature "
                    f"of its actor: {exc}"
                ) from exc
        return verified


def _content_coding(headers: CIMultiDictProxy[str]) -> str:
    """The request's content codings other than identity, as sent; empty when none."""
    codings = ",".join(headers.getall("Content-Encoding", ()))
    if all(c.strip().lower() in ("", "identity") for c in codings.split(",")):
        return ""
    return codings.strip()


def _not_text(target: str, headers: CIMultiDictProxy[str]) -> str:
    """What in the request line and headers is not UTF-8, as aiohttp decoded it."""
    for what, value in (("request target", target), *headers.items()):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return what if what == "request target" else f"header `{what[:60]}`"
    return ""


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
