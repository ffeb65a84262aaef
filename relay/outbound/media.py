"""Remote media the instance fetches through the outbound proxy is checked, and the
instance gets the checked copy: what it stores is exactly what Sluice judged.

``MediaGuard`` is a ``Handler`` wrapping the proxy's ``Forwarder``. A GET is sent on as
it came; the origin's answer is media when its Content-Type says image/*, video/*,
audio/* or application/octet-stream, or when its first bytes sniff as a picture, video
or sound (the origin chooses the header, not the bytes). Anything else (an ActivityPub
document, a web page) streams through untouched, as do other methods.

Media is read whole into memory, at most ``max_bytes`` (more: 502, never passed on
unchecked), at most ``concurrency`` files at once, so the memory checks take is bounded
by their product; nothing is written to disk. Each file is decoded on the hold's
hasher (charged to the origin host's budget), met by the hold's inspector and decided
by the hold's policy, as uploads are (relay.media.judge). Deliver: the instance gets
the very bytes judged, with the origin's status and end-to-end headers. Any other
verdict: 403 with a plain reason; a fetch cannot wait for a moderator, so review
refuses too. What cannot be decided (an undecodable picture, a failed matcher, no
verdict within ``timeout``) is ``on_error``'s: ``"refuse"`` (fail closed) or
``"accept"`` (fail open: the bytes go on as fetched). A refused match keeps its
evidence when an evidence key is set, and the verdict's effects go through the outbox.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import aiohttp
import structlog
import yarl
from aiohttp import web

from relay.effects.notify import right_away
from relay.evidence import EvidenceStore, MediaItem
from relay.media.fetch import HashCache
from relay.media.hasher import MediaHasher
from relay.media.inspect import Inspector
from relay.media.judge import decide, inspect_bytes, keep_evidence
from relay.media.refs import MediaRef
from relay.media.sniff import sniff
from relay.outbound.proxy import Forwarder, end_to_end, stream
from relay.outbox import Outbox, enqueue_now
from relay.policy import Policy
from relay.verdict import Disposition, Verdict

__all__ = ["BUSY", "KNOWN", "REVIEW", "TOO_LARGE", "UNCHECKED", "MediaGuard", "is_media"]

log = structlog.get_logger(__name__)

KNOWN = "Sluice refused this file: it matches material this server does not accept."
REVIEW = "Sluice refused this file: it needs a moderator's review, and a fetch cannot wait for one."
UNCHECKED = "Sluice refused this file: it could not be checked."
BUSY = "Sluice refused this file: too many files from this host are being checked; retry later."
TOO_LARGE = "Sluice refused this file: it is larger than the {} bytes Sluice checks."
_OTHER = "Sluice refused this file: this server's rules do not accept it."

_MEDIA_TYPES = ("image/", "video/", "audio/")
_PEEK = 512  # enough for relay.media.sniff (an MPEG transport stream needs 377)
_WHOLE = ("Range", "If-Range", "Accept-Encoding")  # what would make a body partial or coded


def is_media(content_type: str | None, head: bytes) -> bool:
    """Would the instance store this answer as a file? Its type or its first bytes say so."""
    kind = (content_type or "").partition(";")[0].strip().lower()
    if kind.startswith(_MEDIA_TYPES) or kind == "application/octet-stream":
        return True
    return sniff(head)[0] != "unknown"


class MediaGuard:
    """The checking handler; ``policy`` is a callable so that what the running hold
    uses is what fetches meet."""

    def __init__(
        self,
        forwarder: Forwarder,
        *,
        inspector: Inspector,
        policy: Callable[[], Policy],
        hasher: MediaHasher,
        evidence: EvidenceStore | None = None,
        outbox: Outbox | None = None,
        webhooks: Sequence[str] = (),
        admin_url: Callable[[], str | None] = lambda: None,
        on_error: str = "refuse",
        max_bytes: int = 33_554_432,
        timeout: float = 20.0,
        concurrency: int = 4,
        cache: HashCache | None = None,
    ) -> None:
        """``cache``: the hold's hashes by SHA-256, so that a file the hold just checked
        is not decoded again when the instance fetches it."""
        if on_error not in ("accept", "refuse"):
            raise ValueError(f"on_error must be accept or refuse, not {on_error!r}")
        if max_bytes < 1 or concurrency < 1:
            raise ValueError("max_bytes and concurrency must be at least 1")
        self.forwarder = forwarder
        self.inspector = inspector
        self.policy = policy
        self.hasher = hasher
        self.cache = cache
        self.evidence = evidence
        self.outbox = outbox
        self.webhooks = tuple(webhooks)
        self.admin_url = admin_url
        self.on_error = on_error
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._turns = asyncio.Semaphore(concurrency)

    async def __call__(self, request: web.BaseRequest, url: yarl.URL) -> web.StreamResponse:
        if request.method != "GET":
            return await self.forwarder(request, url)

        async def answer(
            request: web.BaseRequest, upstream: aiohttp.ClientResponse
        ) -> web.StreamResponse:
            return await self._answer(request, url, upstream)

        # Media is checked whole and as it is: ask for all of it, uncompressed. A server
        # may answer a Range with the whole file (RFC 9110 14.2), and the instance then
        # gets that checked whole.
        return await self.forwarder.exchange(request, url, answer, leave_out=_WHOLE)

    async def _answer(
        self, request: web.BaseRequest, url: yarl.URL, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        content_type = upstream.headers.get("Content-Type")
        declared = upstream.content_length
        if declared is not None and declared > self.max_bytes and is_media(content_type, b""):
            return self._too_large(url, declared)
        head = await _read_up_to(upstream.content, _PEEK)
        if not is_media(content_type, head):
            return await stream(request, upstream, head)
        async with self._turns:
            data = await self._body(upstream, head)
            if data is None:
                return self._too_large(url, self.max_bytes + 1)
            refusal = await self._judge(url, upstream, data)
        if refusal is not None:
            return refusal
        response = web.Response(status=upstream.status, reason=upstream.reason, body=data)
        for name, value in end_to_end(upstream.headers):
            if name.lower() not in ("content-length", "content-type"):
                response.headers.add(name, value)
        if content_type is not None:  # as the origin wrote it, not aiohttp's default
            response.headers["Content-Type"] = content_type
        else:
            response.headers.pop("Content-Type", None)
        return response

    async def _body(self, upstream: aiohttp.ClientResponse, head: bytes) -> bytes | None:
        """The whole body, or None as soon as it exceeds ``max_bytes``."""
        chunks = [head]
        size = len(head)
        async for chunk in upstream.content.iter_any():
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: yarl.URL, size: int) -> web.Response:
        log.info("outbound_media", host=url.host, path=url.path, outcome="too_large", size=size)
        return web.Response(status=502, text=TOO_LARGE.format(self.max_bytes) + "\n")

    async def _judge(
        self, url: yarl.URL, upstream: aiohttp.ClientResponse, data: bytes
    ) -> web.Response | None:
        """None when the instance may have ``data``; otherwise the refusal."""
        started = time.perf_counter()
        facts = {"host": url.host, "path": url.path, "size": len(data)}
        try:
            async with asyncio.timeout(self.timeout):
                inspected = await inspect_bytes(
                    data,
                    MediaRef(str(url), "fetch", "fetch", None, None),
                    inspector=self.inspector,
                    hasher=self.hasher,
                    sender=f"host:{url.host}",
                    source="outbound",
                    cache=self.cache,
                )
            chosen = Disposition.REJECT if self.on_error == "refuse" else Disposition.DELIVER
            verdict = decide(
                self.policy(), inspected.signals, on_error=chosen, rule="outbound.on_error"
            )
        except TimeoutError:
            log.info("outbound_media", **facts, outcome="timeout", on_error=self.on_error)
            return None if self.on_error == "accept" else _refused(UNCHECKED)
        except Exception as exc:
            log.exception("outbound_media_check_failed", **facts, error=type(exc).__name__)
            return None if self.on_error == "accept" else _refused(UNCHECKED)
        evidence_id = await self._preserve(url, upstream, data, inspected.sha256, verdict)
        await self._effects(url, verdict, evidence_id)
        log.info(
            "outbound_media",
            **facts,
            outcome=verdict.disposition.value,
            rule=verdict.rule,
            evidence=evidence_id,
            seconds=round(time.perf_counter() - started, 3),
        )
        if verdict.disposition == Disposition.DELIVER:
            return None
        return _refused(_reason(verdict))

    async def _preserve(
        self,
        url: yarl.URL,
        upstream: aiohttp.ClientResponse,
        data: bytes,
        sha256: str,
        verdict: Verdict,
    ) -> int | None:
        """A refused match keeps its evidence (when a key is set): the facts and the file."""
        facts: dict[str, object] = {
            "fetch": {"url": str(url), "destination": url.host, "status": upstream.status},
            "headers": dict(upstream.headers),
        }
        item = MediaItem(str(url), data, {"sha256": sha256})
        return await keep_evidence(self.evidence, verdict, facts, [item], host=url.host)

    async def _effects(self, url: yarl.URL, verdict: Verdict, evidence_id: int | None) -> None:
        pending = right_away(
            verdict,
            event="fetch",
            activity={"type": "Fetch", "id": str(url)},
            about={"url": str(url), "destination": url.host},
            webhooks=self.webhooks,
            admin_url=self.admin_url() or "",
            evidence_id=evidence_id,
        )
        await enqueue_now(self.outbox, pending, host=url.host)


async def _read_up_to(content: aiohttp.StreamReader, size: int) -> bytes:
    """The first ``size`` bytes of a body, fewer when it is shorter."""
    head = b""
    while len(head) < size:
        chunk = await content.read(size - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _refused(reason: str) -> web.Response:
    return web.Response(status=403, text=reason + "\n")


def _reason(verdict: Verdict) -> str:
    if any(s.kind == "match" for s in verdict.signals) and verdict.rule.startswith("rule["):
        return KNOWN if verdict.disposition != Disposition.REVIEW else REVIEW
    if verdict.rule == "media.over_budget":
        return BUSY
    if verdict.rule == "outbound.on_error":
        return UNCHECKED
    if verdict.disposition == Disposition.REVIEW:
        return REVIEW
    return _OTHER
