"""The instance's deliveries through the outbound door: held and checked like inbound.

A signed ActivityPub POST the instance sends through the forward proxy is one of its
deliveries to a remote inbox. It is stored durably with its destination, answered
202 at once (the instance's job is done: it does not learn the remote's answer), and
goes through the same hold as an inbound activity: its media are the instance's own
files, fetched from the instance. Delivered only on a verdict of deliver, unchanged
(same body bytes, signed headers, method and path), with retries, but never once its
signature has expired (Mastodon refuses signatures about an hour old, facts/doors.md):
what cannot be sent in time is dead-lettered. Everything else goes to the next handler.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

import structlog
import yarl
from aiohttp import web

from relay.activity import parse_activity
from relay.envelope import Envelope, forwardable_headers
from relay.errors import BlockedAddress, DecodeError, StoreUnavailable
from relay.flow import Flow
from relay.network import NetworkPolicy
from relay.outbound.proxy import Handler
from relay.signature import Verified, signed_at

__all__ = ["Deliveries", "is_delivery"]

log = structlog.get_logger(__name__)

_KEY_ID = re.compile(r'keyid="([^"]+)"', re.IGNORECASE)

_ACTIVITY_TYPES = frozenset({"application/activity+json", "application/ld+json"})


def is_delivery(request: web.BaseRequest) -> bool:
    """A POST that speaks ActivityPub and carries an HTTP signature (draft-cavage or
    RFC 9421): what an instance sends to a remote inbox."""
    if request.method != "POST":
        return False
    headers = request.headers
    if "Signature" not in headers and "Signature-Input" not in headers:
        return False
    content_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return content_type in _ACTIVITY_TYPES


class Deliveries:
    """The outbound door's handler for deliveries; ``forward`` handles everything else."""

    def __init__(
        self,
        flow: Flow,
        forward: Handler,
        policy: NetworkPolicy,
        *,
        max_age: float = 3600.0,
        max_bytes: int = 1_048_576,
    ) -> None:
        """``max_age``: the longest after signing that a delivery is still sent
        (``[outbound] delivery_max_age_seconds``); ``max_bytes``: larger bodies get 413."""
        self.flow = flow
        self.forward = forward
        self.policy = policy
        self.max_age = max_age
        self.max_bytes = max_bytes

    async def __call__(self, request: web.BaseRequest, url: yarl.URL) -> web.StreamResponse:
        if not is_delivery(request):
            return await self.forward(request, url)
        try:
            self.policy.check_url(url)
        except BlockedAddress as exc:
            return _answer(403, f"Sluice refused this destination: {exc}")
        if request.content_length is not None and request.content_length > self.max_bytes:
            return _answer(413, f"a delivery may be at most {self.max_bytes} bytes")
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read(request)
        if body is None:
            return _answer(413, f"a delivery may be at most {self.max_bytes} bytes")
        try:
            activity = parse_activity(body)
        except DecodeError as exc:
            # What the remote would answer: the instance does not retry a 400.
            return _answer(400, str(exc))
        now = time.time()
        signed = signed_at(request.headers)
        envelope = Envelope(
            method=request.method,
            target=url.raw_path_qs,
            # Expect was for Sluice (answered above), not for the remote.
            headers=tuple(
                (k, v) for k, v in forwardable_headers(request.headers) if k.lower() != "expect"
            ),
            body=body,
            remote=request.remote,
            received_at=now,
        )
        destination = str(url)
        try:
            stored = await self.flow.accept(
                envelope,
                activity,
                _vouched(request.headers, activity.actor, signed or now),
                destination=destination,
                deadline=(signed if signed is not None else now) + self.max_age,
            )
        except StoreUnavailable as exc:
            log.error("delivery_store_unavailable", error=str(exc))
            return _answer(503, "Sluice cannot store deliveries now; retry later")
        log.info(
            "delivery_accepted",
            row=stored.id if stored else None,
            duplicate=stored is None,
            activity_id=activity.id,
            actor=activity.actor,
            destination=destination,
        )
        return web.Response(status=202)

    async def _read(self, request: web.BaseRequest) -> bytes | None:
        """The whole body, or None past ``max_bytes`` (chunked bodies name no length)."""
        body = bytearray()
        while chunk := await request.content.read(65_536):
            body += chunk
            if len(body) > self.max_bytes:
                return None
        return bytes(body)


def _vouched(headers: Mapping[str, str], actor: str, signed: float) -> Verified:
    """The instance's own delivery, vouched for by the instance (only it reaches the
    proxy): its actor stands as the signer, so its Delete cancels its own held Create
    as an inbound one does. The signature itself is the remote's to verify."""
    rfc9421 = "Signature-Input" in headers
    found = _KEY_ID.search(headers.get("Signature-Input" if rfc9421 else "Signature", ""))
    return Verified(
        "rfc9421" if rfc9421 else "cavage", found.group(1) if found else "", actor, signed
    )


def _answer(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text.rstrip("\n") + "\n")
