"""The upload door: what the instance's own users upload is checked before it is stored.

Two ways in, both on the public listener:

- ``POST /_sluice/validate``, pict-rs's ``[media] external_validation`` hook: the
  body is the file as pict-rs stored it; any 2xx accepts, anything else rejects.
- The upload APIs, routed here by the admin's nginx: Mastodon, GoToSocial, Pleroma
  and Akkoma ``POST /api/v1/media`` and ``/api/v2/media``, Mastodon's ``PATCH
  /api/v1/accounts/update_credentials`` (avatar, header), Misskey's ``POST
  /api/drive/files/create``, Lemmy's ``POST /pictrs/image`` (0.19) and ``POST
  /api/v4/image`` (1.0). The body is read whole, up to ``max_bytes`` (more is 413
  before it is all read), each file part checked, and a clean body forwarded to the
  instance byte for byte; a refused one never reaches it and gets the error its
  clients show.

Each file meets the same ``Inspector`` (banks and matchers) as inbound media, its
decoding on the same ``MediaHasher`` (charged to the uploader's budget), and the same
``Policy``. An upload cannot wait for a moderator, so ``review`` refuses too. What
Sluice cannot decide (an image that does not decode, a failed matcher, no answer
within ``timeout``) is ``on_error``'s to decide: ``"refuse"`` fails closed,
``"accept"`` fails open as pictrs-safety does. A refused match keeps its evidence
(when an evidence key is set) and the verdict's effects go through the outbox.

With ``lazy`` (``[upload] lazy``), an upload goes to the instance at once and is judged
after its answer has been sent: a hit keeps its evidence and runs its effects (the
admins are told) but cannot take back what the instance stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import structlog
from aiohttp import web

from relay.doors import Handler
from relay.doors.multipart import MultipartError, Part, boundary, parts
from relay.doors.passthrough import Passthrough, forwarded
from relay.effects.notify import right_away
from relay.envelope import Proxies
from relay.evidence import EvidenceStore, MediaItem
from relay.media.fetch import HashCache
from relay.media.hasher import MediaHasher
from relay.media.inspect import Inspector
from relay.media.judge import decide, inspect_bytes, keep_evidence
from relay.media.refs import MediaRef
from relay.outbox import Outbox, enqueue_now
from relay.policy import Policy
from relay.signal import Signal
from relay.store.uploads import UploadRecords
from relay.verdict import Disposition, Verdict

__all__ = [
    "BUSY",
    "KNOWN",
    "MALFORMED",
    "REVIEW",
    "ROUTES",
    "UNCHECKED",
    "UNREADABLE",
    "VALIDATE_PATH",
    "Family",
    "UploadDoor",
    "Uploader",
    "Uploaders",
    "upload_route",
]

log = structlog.get_logger(__name__)

#: pict-rs's ``[media] external_validation`` URL path.
VALIDATE_PATH = "/_sluice/validate"
_CHUNK = 64 * 1024

Family = Literal["mastodon", "misskey", "lemmy-0.19", "lemmy-1.0", "pict-rs"]

#: The upload APIs: (method, path) -> the family whose clients call it, and the form
#: fields that carry files there (any other part with a file name is checked too).
ROUTES: Mapping[tuple[str, str], tuple[Family, tuple[str, ...]]] = {
    ("POST", "/api/v1/media"): ("mastodon", ("file", "thumbnail")),
    ("POST", "/api/v2/media"): ("mastodon", ("file", "thumbnail")),
    ("PATCH", "/api/v1/accounts/update_credentials"): ("mastodon", ("avatar", "header")),
    ("PUT", "/api/v1/accounts/update_credentials"): ("mastodon", ("avatar", "header")),
    ("POST", "/api/drive/files/create"): ("misskey", ("file",)),
    ("POST", "/pictrs/image"): ("lemmy-0.19", ("images[]",)),
    ("POST", "/api/v4/image"): ("lemmy-1.0", ("images[]",)),
}


def upload_route(method: str, path: str) -> tuple[Family, tuple[str, ...]] | None:
    """The upload API ``method`` ``path`` is, as its server would route it: any case, a
    trailing ``/``, a format suffix (``.json``: Rails routes all of them to the same
    action), and Mastodon's ``PUT /api/v1/media/ID`` (a new thumbnail); None for any
    other request."""
    if method not in _METHODS:
        return None
    normal = _FORMAT.sub("", path.lower().rstrip("/"))
    if method == "PUT" and _MEDIA_ID.fullmatch(normal):
        return "mastodon", ("thumbnail", "file")
    return ROUTES.get((method, normal))


_METHODS = frozenset(method for method, _ in ROUTES)
_FORMAT = re.compile(r"\.[^/.]+$")
_MEDIA_ID = re.compile(r"/api/v1/media/[^/]+")

# What a refused uploader reads: why, in words, never a hash value nor a bank's name.
KNOWN = "This file cannot be uploaded: it matches material this server does not accept."
REVIEW = (
    "This file cannot be uploaded: it would need a moderator's review first, "
    "and an upload cannot wait for one."
)
BUSY = "Too many images were uploaded in a short time: try again in a minute."
UNCHECKED = "This file could not be checked, so it was not accepted: try again later."
UNREADABLE = "This file could not be read as an image, so it was not accepted."
MALFORMED = "The upload could not be read: its multipart body is malformed."

_MISSKEY_INAPPROPRIATE = {
    "message": "Cannot upload the file because it has been determined that it possibly "
    "contains inappropriate content.",
    "code": "INAPPROPRIATE",
    "id": "bec5bd69-fba3-43c9-b4fb-2894b66ad5d2",
    "kind": "client",
}
_MISSKEY_TOO_BIG = {
    "message": "Cannot upload the file because it exceeds the maximum file size.",
    "code": "MAX_FILE_SIZE_EXCEEDED",
    "id": "b9d8c348-33f0-4673-b9a9-5d4da058977a",
    "kind": "client",
}


def _refusal(family: Family, reason: str, *, status: int | None = None) -> web.Response:
    """The error the family's clients show: Mastodon's 422 ``{"error"}``, Misskey's
    INAPPROPRIATE error object (400), Lemmy's (pict-rs's for 0.19) 400; 413 when too big."""
    too_big = status == 413
    if family == "misskey":
        error: dict[str, object] = {
            **(_MISSKEY_TOO_BIG if too_big else _MISSKEY_INAPPROPRIATE),
            "info": {"reason": reason},
        }
        return web.json_response({"error": error}, status=status or 400)
    if family == "lemmy-0.19":  # pict-rs's own error, passed through by Lemmy 0.19
        code = "payload-too-large" if too_big else "failed-external-validation"
        return web.json_response({"msg": reason, "code": code}, status=status or 400)
    if family == "lemmy-1.0":
        kind = "file_too_large" if too_big else "pictrs_invalid_image_upload"
        return web.json_response({"error": kind, "message": reason}, status=status or 400)
    default = 422 if family == "mastodon" else 403  # pict-rs: any non-2xx rejects
    return web.json_response({"error": reason}, status=status or default)


@dataclass(frozen=True, slots=True)
class Uploader:
    """Who uploaded, as the instance knows them (Mastodon's verify_credentials)."""

    id: str | None
    acct: str | None
    url: str | None

    def as_json(self) -> dict[str, str | None]:
        return {"id": self.id, "acct": self.acct, "url": self.url}


class Uploaders:
    """The account behind a bearer token, asked of the instance
    (``GET /api/v1/accounts/verify_credentials``) and remembered by a hash of the token
    for ``ttl`` seconds, at most ``size`` of them. Failing to learn it is not a reason
    to refuse: the uploader is then unknown."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream_url: str,
        *,
        ttl: float = 300.0,
        size: int = 4096,
        timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.url = upstream_url.rstrip("/") + "/api/v1/accounts/verify_credentials"
        self.ttl = ttl
        self.size = size
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.clock = clock
        self._known: OrderedDict[str, tuple[float, Uploader | None]] = OrderedDict()
        self.asked = 0

    async def of(self, authorization: str | None) -> Uploader | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        key = hashlib.sha256(authorization.encode()).hexdigest()
        now = self.clock()
        known = self._known.get(key)
        if known is not None and known[0] > now:
            self._known.move_to_end(key)
            return known[1]
        account = await self._ask(authorization)
        self._known[key] = (now + self.ttl, account)
        self._known.move_to_end(key)
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return account

    async def _ask(self, authorization: str) -> Uploader | None:
        self.asked += 1
        try:
            async with self.session.get(
                self.url,
                headers={"Authorization": authorization, "Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("upload_account_unknown", error=type(exc).__name__)
            return None
        if not isinstance(body, dict):
            return None

        def text(name: str) -> str | None:
            value = body.get(name)
            return str(value) if isinstance(value, str | int) else None

        return Uploader(text("id"), text("acct") or text("username"), text("url"))


@dataclass
class _Upload:
    """One request being judged: what it came with and what was found."""

    path: str
    family: Family
    remote: str | None
    headers: dict[str, str]
    account: Uploader | None = None
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (label, bytes)
    signals: list[Signal] = field(default_factory=list)
    undecodable: bool = False
    sha256: list[str] = field(default_factory=list)  # each file's, as inspected

    @property
    def uploader(self) -> str:
        """Whose decoding budget it spends: the account, else the address."""
        if self.account is not None and (self.account.url or self.account.id):
            return f"account:{self.account.url or self.account.id}"
        return f"address:{self.remote or 'unknown'}"


class UploadDoor:
    """The upload routes; ``policy`` and ``inspector`` are the hold's own (callables, so
    that what the running hold uses is what uploads meet)."""

    def __init__(
        self,
        *,
        upstream_url: str,
        inspector: Inspector,
        policy: Callable[[], Policy],
        hasher: MediaHasher,
        passthrough: Passthrough,
        evidence: EvidenceStore | None = None,
        outbox: Outbox | None = None,
        webhooks: Sequence[str] = (),
        admin_url: Callable[[], str | None] = lambda: None,
        accounts: Uploaders | None = None,
        trusted_proxies: Iterable[str] = (),
        on_error: str = "refuse",
        max_bytes: int = 41_943_040,
        timeout: float = 20.0,
        concurrency: int = 4,
        lazy: bool = False,
        records: UploadRecords | None = None,
        cache: HashCache | None = None,
    ) -> None:
        """At most ``concurrency`` uploads are read and judged at once, each of at most
        ``max_bytes``: the memory uploads may take is bounded by their product (a lazy
        check holds its turn until it ends). ``records`` keeps each decision for the
        admin API; ``cache`` is the hold's hashes by SHA-256."""
        if on_error not in ("accept", "refuse"):
            raise ValueError(f"on_error must be accept or refuse, not {on_error!r}")
        self.base = upstream_url.rstrip("/")
        self.inspector = inspector
        self.policy = policy
        self.hasher = hasher
        self.cache = cache
        self.passthrough = passthrough
        self.evidence = evidence
        self.outbox = outbox
        self.webhooks = tuple(webhooks)
        self.admin_url = admin_url
        self.accounts = accounts or Uploaders(passthrough.session, upstream_url)
        self.proxies = Proxies(trusted_proxies)
        self.on_error = on_error
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._turns = asyncio.Semaphore(concurrency)
        self._guard = self._in_turn(self.guard)
        self.lazy = lazy
        self.records = records

    def routes(self) -> list[web.RouteDef]:
        # Mounted before the inbound door: pict-rs's POSTs are no inbox's. The upload
        # APIs are found by ``middleware``, under every spelling the servers accept.
        return [web.post(VALIDATE_PATH, self._in_turn(self.validate))]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Uploads, whatever their spelling (``/api/v2/media/``, ``.json``, another case:
        the servers route them all to their upload action), go to ``guard``; every other
        request to its route. On the public app, before any route is chosen."""
        if upload_route(request.method, request.path) is None:
            return await handler(request)
        return await self._guard(request)

    def _in_turn(self, handler: Handler) -> Handler:
        """``handler`` once one of the ``concurrency`` turns is free."""

        async def bounded(request: web.Request) -> web.StreamResponse:
            async with self._turns:
                return await handler(request)

        return bounded

    # -- the two ways in ----------------------------------------------------------

    async def validate(self, request: web.Request) -> web.StreamResponse:
        """pict-rs's hook: 200 accepts the file, anything else rejects it."""
        upload = self._upload(request, "pict-rs")
        body = await self._body(request, upload)
        if isinstance(body, web.StreamResponse):
            return body
        upload.files.append(("file", body))
        if self.lazy:
            accepted = web.json_response({"ok": True}, status=200)
            return await self._after(request, accepted, upload, len(body))
        refused = await self._judge(upload, len(body))
        return refused or web.json_response({"ok": True}, status=200)

    async def guard(self, request: web.Request) -> web.StreamResponse:
        route = upload_route(request.method, request.path)
        assert route is not None  # the middleware sends only uploads here
        family, fields = route
        upload = self._upload(request, family)
        # Asked of the instance while the body is read.
        account = asyncio.ensure_future(self._account(request, family))
        try:
            body = await self._body(request, upload)
        except BaseException:
            account.cancel()
            raise
        if isinstance(body, web.StreamResponse):
            account.cancel()
            return body
        upload.account = await account
        separator = boundary(request.headers.get("Content-Type", ""))
        if separator is not None:
            try:
                found = parts(body, separator)
            except MultipartError as exc:
                log.info("upload_malformed", path=upload.path, error=str(exc))
                return _refusal(family, MALFORMED, status=400)
            upload.files += [
                (p.name or p.filename or f"part-{i}", p.data)
                for i, p in enumerate(found)
                if _is_file(p, fields)
            ]
        if upload.files and self.lazy:
            forwarded = await self._forward(request, body)
            return await self._after(request, forwarded, upload, len(body))
        if upload.files:
            refused = await self._judge(upload, len(body))
            if refused is not None:
                return refused
        return await self._forward(request, body)

    # -- reading, judging, answering ------------------------------------------------

    def _upload(self, request: web.Request, family: Family) -> _Upload:
        kept = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("authorization", "cookie", "proxy-authorization")
        }
        remote = self.proxies.client(request.remote, request.headers)
        return _Upload(request.path, family, remote, kept)

    async def _account(self, request: web.Request, family: Family) -> Uploader | None:
        if family != "mastodon":  # Misskey's token is a form field; Lemmy's a cookie
            return None
        try:
            return await self.accounts.of(request.headers.get("Authorization"))
        except Exception as exc:  # never a reason to refuse
            log.warning("upload_account_failed", error=type(exc).__name__)
            return None

    async def _body(self, request: web.Request, upload: _Upload) -> bytes | web.StreamResponse:
        """The whole body, or 413 as soon as it is known to exceed ``max_bytes``."""
        declared = request.content_length
        if declared is not None and declared > self.max_bytes:
            return await self._too_big(upload, declared)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_big(upload, size)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _too_big(self, upload: _Upload, size: int) -> web.StreamResponse:
        reason = f"This upload is larger than the {self.max_bytes} bytes this server accepts."
        self._log(upload, "too_large", size=size)
        await self._record(upload, "too_large", size=size)
        if upload.family == "pict-rs" and self.on_error == "accept":
            return web.json_response({"ok": True, "unchecked": "too large"}, status=200)
        return _refusal(upload.family, reason, status=413)

    async def _after(
        self, request: web.Request, response: web.StreamResponse, upload: _Upload, size: int
    ) -> web.StreamResponse:
        """Lazy: the uploader has its answer (the instance's) before the bytes are judged;
        what the judgement would refuse is only recorded, with its evidence and effects."""
        if not response.prepared:
            await response.prepare(request)
            await response.write_eof()
        # The answer is sent: a client gone now must not cut the check short.
        await asyncio.shield(self._judge(upload, size))
        return response

    async def _judge(self, upload: _Upload, size: int) -> web.StreamResponse | None:
        """None when the upload may go on; otherwise the refusal to answer with."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                verdict = await self._decide(upload)
        except TimeoutError:
            seconds = time.perf_counter() - started
            self._log(upload, "timeout", size=size, seconds=seconds)
            await self._record(
                upload, "timeout", rule="upload.on_error", size=size, seconds=seconds
            )
            return None if self.on_error == "accept" else _refusal(upload.family, UNCHECKED)
        except Exception as exc:
            log.exception("upload_check_failed", path=upload.path, error=type(exc).__name__)
            await self._record(upload, "error", rule="upload.on_error", size=size)
            return None if self.on_error == "accept" else _refusal(upload.family, UNCHECKED)
        evidence_id = await self._preserve(upload, verdict)
        await self._effects(upload, verdict, evidence_id)
        self._log(
            upload,
            verdict.disposition.value,
            rule=verdict.rule,
            size=size,
            evidence=evidence_id,
            seconds=time.perf_counter() - started,
            **({"checked_after": True} if self.lazy else {}),
        )
        await self._record(
            upload,
            verdict.disposition.value,
            rule=verdict.rule,
            signals=verdict.signals,
            evidence_id=evidence_id,
            size=size,
            seconds=time.perf_counter() - started,
        )
        if verdict.disposition == Disposition.DELIVER:
            return None
        return _refusal(upload.family, _reason(verdict, upload))

    async def _decide(self, upload: _Upload) -> Verdict:
        for label, data in upload.files:
            ref = MediaRef(f"upload:{upload.path}#{label}", label, "upload", None, None)
            inspected = await inspect_bytes(
                data,
                ref,
                inspector=self.inspector,
                hasher=self.hasher,
                sender=upload.uploader,
                source="upload",
                cache=self.cache,
            )
            upload.signals += inspected.signals
            upload.undecodable = upload.undecodable or inspected.undecodable
            upload.sha256.append(inspected.sha256)
        # What cannot be decided is [upload] on_error's, not the hold's.
        chosen = Disposition.REJECT if self.on_error == "refuse" else Disposition.DELIVER
        return decide(self.policy(), upload.signals, on_error=chosen, rule="upload.on_error")

    async def _preserve(self, upload: _Upload, verdict: Verdict) -> int | None:
        """A refused match keeps its evidence (when a key is set): the facts and the files."""
        facts: dict[str, object] = {
            "upload": {"path": upload.path, "family": upload.family},
            "account": upload.account.as_json() if upload.account else None,
            "remote": upload.remote,
            "headers": upload.headers,
        }
        media = [
            MediaItem(f"upload:{upload.path}#{label}", data, {"sha256": sha256})
            for (label, data), sha256 in zip(upload.files, upload.sha256, strict=True)
        ]
        return await keep_evidence(self.evidence, verdict, facts, media, path=upload.path)

    async def _effects(self, upload: _Upload, verdict: Verdict, evidence_id: int | None) -> None:
        account = upload.account
        pending = right_away(
            verdict,
            event="upload",
            activity={"type": "Upload", "actor": account.url if account else None},
            about={
                "path": upload.path,
                "account": account.as_json() if account else None,
                "remote": upload.remote,
                # Lazy: the instance already has it; the verdict could not hold it back.
                **({"checked_after": True} if self.lazy else {}),
            },
            webhooks=self.webhooks,
            admin_url=self.admin_url() or "",
            evidence_id=evidence_id,
        )
        await enqueue_now(self.outbox, pending, path=upload.path)

    async def _record(
        self,
        upload: _Upload,
        outcome: str,
        *,
        rule: str | None = None,
        signals: Sequence[Signal] = (),
        evidence_id: int | None = None,
        size: int = 0,
        seconds: float | None = None,
    ) -> None:
        """Keep the decision for the admin API; a record that cannot be written is
        logged, never a reason to refuse or delay the upload further."""
        if self.records is None:
            return
        account = upload.account
        try:
            await self.records.record(
                path=upload.path,
                family=upload.family,
                remote=upload.remote,
                account=account.as_json() if account else None,
                outcome=outcome,
                rule=rule,
                signals=signals,
                evidence_id=evidence_id,
                size=size,
                seconds=seconds,
                checked_after=self.lazy,
            )
        except Exception as exc:
            log.warning("upload_not_recorded", path=upload.path, error=str(exc))

    def _log(self, upload: _Upload, outcome: str, **facts: object) -> None:
        account = upload.account
        log.info(
            "upload",
            path=upload.path,
            outcome=outcome,
            account=(account.acct or account.url or account.id) if account else None,
            remote=upload.remote,
            files=[len(data) for _, data in upload.files],
            **facts,
        )

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """The body as received, with the headers the passthrough forwards."""
        return await self.passthrough.send(request, forwarded(request), body)


def _is_file(part: Part, fields: tuple[str, ...]) -> bool:
    return part.filename is not None or part.name in fields


def _reason(verdict: Verdict, upload: _Upload) -> str:
    if any(s.kind == "match" for s in verdict.signals) and verdict.rule.startswith("rule["):
        return KNOWN if verdict.disposition != Disposition.REVIEW else REVIEW
    if verdict.rule == "media.over_budget":
        return BUSY
    if verdict.rule == "upload.on_error":
        return UNREADABLE if upload.undecodable else UNCHECKED
    if verdict.disposition == Disposition.REVIEW:
        return REVIEW
    return "This file cannot be uploaded: this server's rules do not accept it."
