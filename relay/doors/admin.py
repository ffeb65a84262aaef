"""The admin door: health, metrics, and the JSON API behind a bearer token.

It has its own listener (``[admin] listen``, loopback by default). The public
listener, which senders reach, answers ``/healthz`` and nothing else of ours:
per-bank match counters on a public ``/metrics`` would let a sender tune an image
until it stops matching, and ``/readyz`` would tell them about our database.

On its listener the door is a sub-app (``app()``) whose middleware asks for the token
on every route but ``/healthz``, ``/readyz`` and ``/metrics`` (for probes and
scrapers): a route added later is guarded without a line of its own.

A bearer token is the shared ``[admin]`` token (scripts; it acts as an admin and is
audited as ``shared-token``) or a person's own (``sluice user token NAME``), which
says who acts: a moderator may list and decide reviews, release quarantines and list
evidence; an admin may use everything. Decisions and replays go to the audit log.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp_session import session_middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.banks.sync import sync_status
from relay.config.sluice import on_failure
from relay.errors import StoreUnavailable
from relay.outbox import STATES, Outbox
from relay.people import Accounts, ApiTokens, AuditLog, Principal
from relay.people.tokens import PREFIX
from relay.release import ReleaseError, release
from relay.review.decide import DECISIONS, DecisionError
from relay.review.session import storage
from relay.review.ui import PREFIX as UI_PREFIX
from relay.review.ui import ReviewUI
from relay.store.activities import ActivityStore
from relay.store.db import translated
from relay.store.uploads import UploadRecords

if TYPE_CHECKING:
    from relay.app import Sluice

__all__ = ["API_PREFIX", "WHO", "AdminDoor", "database_unavailable"]

API_PREFIX = "/_sluice/api"

#: Admin routes answered without the token: liveness, readiness, Prometheus.
_OPEN = frozenset({"/healthz", "/readyz", "/metrics"})

#: What a moderator may use, (method, route); the rest, and any route added later, is
#: the admins' alone.
_MODERATOR = frozenset(
    {
        ("GET", API_PREFIX + "/me"),
        ("GET", API_PREFIX + "/review"),
        ("POST", API_PREFIX + "/review/{row}/{decision}"),
        ("POST", API_PREFIX + "/quarantine/{row}/release"),
        ("GET", API_PREFIX + "/evidence"),
        ("GET", API_PREFIX + "/evidence/{id}"),
    }
)

#: Who is acting: set on every guarded request by the token check.
WHO = web.RequestKey("who", Principal)

log = structlog.get_logger(__name__)


@web.middleware
async def database_unavailable(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """While PostgreSQL cannot be reached the admin API says so (503), not a bare 500."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        log.warning("store_unavailable", path=request.path, error=str(exc))
        return web.json_response(
            {"error": "database unavailable, retry later"},
            status=503,
            headers={"Retry-After": "5"},
        )


class AdminDoor:
    def __init__(self, parts: Sluice) -> None:
        self.parts = parts
        self.ui: ReviewUI | None = None
        # One per process: its login rate limits are the process's.
        self.accounts = Accounts.configured(parts.pool, parts.config.admin)

    def _parts(self, request: web.Request) -> Sluice:
        return self.parts

    def _store(self, request: web.Request) -> ActivityStore:
        return self.parts.store

    def app(self, session_key: bytes | None = None) -> web.Application:
        """The admin listener's application: every route, the API behind the token, and
        with ``session_key`` the review UI behind a login."""
        sessions: list[Middleware] = []
        if session_key is not None:
            admin = self.parts.config.admin
            cookies = storage(
                session_key, secure=admin.secure_cookies, hours=admin.session_hours, path=UI_PREFIX
            )
            sessions.append(session_middleware(cookies))
            self.ui = ReviewUI(self.parts, self.accounts)
        middlewares = [*sessions, database_unavailable, self._authenticate]
        app = web.Application(middlewares=middlewares)
        app.router.add_routes(self.routes())
        if self.ui is not None:
            self.ui.setup(app)
        return app

    @web.middleware
    async def _authenticate(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        # Fails closed: a path no route knows asks for the token too (no route map).
        resource = request.match_info.route.resource
        route = "" if resource is None else resource.canonical
        if self.ui is not None and self.ui.guards(route):
            await self.ui.guard(request, route)  # a login, not a token
        elif route not in _OPEN:
            who = await self._authorize(request)
            method = "GET" if request.method == "HEAD" else request.method
            if who.role != "admin" and (method, route) not in _MODERATOR:
                raise web.HTTPForbidden(
                    text=json.dumps({"error": f"a {who.role} may not use this; ask an admin"}),
                    content_type="application/json",
                )
            request[WHO] = who
        return await handler(request)

    def public_routes(self) -> list[web.RouteDef]:
        """What the public listener serves of ours: liveness, nothing more."""
        return [web.get("/healthz", self.healthz)]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.prometheus),
            web.get(API_PREFIX + "/activities", self.activity),
            web.get(API_PREFIX + "/activities/{key}", self.activity),
            web.get(API_PREFIX + "/dead-letters", self.dead_letters),
            web.post(API_PREFIX + "/dead-letters/replay", self.replay),
            web.get(API_PREFIX + "/effects", self.effects),
            web.get(API_PREFIX + "/evidence", self.evidence),
            web.get(API_PREFIX + "/evidence/{id}", self.evidence),
            web.post(API_PREFIX + "/effects/replay", self.replay_effects),
            web.get(API_PREFIX + "/receipts", self.receipts),
            web.get(API_PREFIX + "/review", self.review),
            web.post(API_PREFIX + "/review/{row}/{decision}", self.moderate),
            web.post(API_PREFIX + "/quarantine/{row}/release", self.release),
            web.get(API_PREFIX + "/me", self.me),
            web.get(API_PREFIX + "/banks/sync", self.bank_syncs),
            web.get(API_PREFIX + "/uploads", self.uploads),
            web.get(API_PREFIX + "/audit", self.audit),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            with translated():
                await self._store(request).pool.fetchval("SELECT 1")
        except (StoreUnavailable, asyncpg.PostgresError) as exc:
            # The reason goes to the log, not to whoever asked.
            log.warning("not_ready", error=str(exc))
            return web.json_response({"status": "database unavailable"}, status=503)
        # What happens when a check cannot decide: per door, per external checker.
        return web.json_response(
            {"status": "ready", "on_failure": on_failure(self._parts(request).config)}
        )

    async def prometheus(self, request: web.Request) -> web.Response:
        body = generate_latest(self._parts(request).metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _authorize(self, request: web.Request) -> Principal:
        """Who the bearer token says is acting: the shared token, or a person's."""
        token = self._parts(request).config.admin.token
        header = request.headers.get("Authorization", "")
        # Header bytes that are not UTF-8 arrive as surrogates; they are simply wrong.
        given = header.encode("utf-8", "surrogateescape")
        if token and hmac.compare_digest(given, f"Bearer {token}".encode()):
            return Principal.shared()
        scheme, _, secret = header.partition(" ")
        if scheme == "Bearer" and secret.startswith(PREFIX):
            account = await ApiTokens(self._store(request).pool).resolve(secret)
            if account is not None:
                return Principal.of(account)
        if not token and not header:
            raise web.HTTPForbidden(
                text=json.dumps(
                    {
                        "error": "no bearer token: use a person's token (sluice user token "
                        "NAME); the shared token is off ([admin] token_file or "
                        "SLUICE_ADMIN_TOKEN sets it)"
                    }
                ),
                content_type="application/json",
            )
        raise web.HTTPUnauthorized(
            text='{"error": "missing or wrong bearer token"}',
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="sluice"'},
        )

    async def activity(self, request: web.Request) -> web.Response:
        """Why was this held? ``/activities/ROW`` or ``/activities?id=ACTIVITY-ID``."""
        key: int | str = request.match_info.get("key") or request.query.get("id", "")
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        record = await self._store(request).get(key)
        if record is None:
            return web.json_response({"error": f"no activity {key}"}, status=404)
        return web.json_response(record)

    async def dead_letters(self, request: web.Request) -> web.Response:
        limit = _limit(request)
        return web.json_response({"dead_letters": await self._store(request).dead_letters(limit)})

    async def evidence(self, request: web.Request) -> web.Response:
        """Evidence metadata (``/evidence`` the newest, ``?limit=N``; ``/evidence/ID``
        one): activity row, dates, blobs, summary. Nothing is decrypted here; reading
        the content is ``sluice evidence show``, audited with who and why."""
        store = self._parts(request).flow.evidence
        if store is None:
            return web.json_response({"error": "no evidence store"}, status=404)
        key = request.match_info.get("id")
        if key is None:
            return _json({"evidence": await store.list(_limit(request))})
        if not (key.isascii() and key.isdigit() and len(key) <= 18):
            return web.json_response({"error": "use /evidence/ID"}, status=404)
        record = await store.metadata(int(key))
        if record is None:
            return web.json_response({"error": f"no evidence {key}"}, status=404)
        return _json(record)

    async def receipts(self, request: web.Request) -> web.Response:
        """Receipts: those Sluice issued (``issued``), and peers' (``received``) with the
        trust judge's decision and its reason; ``?honoured=false`` lists only those not
        honoured, ``?limit=N`` each list's length."""
        store = self._parts(request).receipts
        if store is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "receipts are not ready yet"}', content_type="application/json"
            )
        choice = request.query.get("honoured")
        if choice not in (None, "true", "false"):
            raise _bad_request("honoured must be true or false")
        limit = _limit(request)
        issued = [
            {
                "id": r.id,
                "published": r.published,
                "category": r.category,
                "activity_row": r.activity_id,
            }
            for r in await store.page(limit=limit)
        ]
        received = await store.received(
            limit, honoured=None if choice is None else choice == "true"
        )
        return _json({"issued": issued, "received": received})

    async def review(self, request: web.Request) -> web.Response:
        """Activities held for a moderator, with the verdict that put them there."""
        return web.json_response({"review": await self._store(request).in_review()})

    async def moderate(self, request: web.Request) -> web.Response:
        """``POST /review/ROW/approve`` delivers it, ``/reject`` drops it (recorded),
        audited. A person's token names the moderator; with the shared token the body
        may: ``{"moderator": "alice"}``; ``"reason"`` goes to the audit log."""
        decision = request.match_info["decision"].replace("-", "_")
        row = request.match_info["row"]
        if not (row.isascii() and row.isdigit() and len(row) <= 18):
            return web.json_response({"error": "use POST /review/ROW/DECISION"}, status=404)
        if decision in DECISIONS:
            return await self._decide(request, int(row), decision)
        if decision not in ("approve", "reject"):
            return web.json_response(
                {
                    "error": "use POST /review/ROW/DECISION, DECISION one of approve, reject, "
                    "confirm, false-positive, escalate"
                },
                status=404,
            )
        who = request[WHO]
        moderator = who.name if who.is_person else "admin"
        reason = None
        if request.can_read_body:
            try:
                payload = await request.json()
            except ValueError:
                return web.json_response({"error": "body is not JSON"}, status=400)
            if isinstance(payload, dict):
                if not who.is_person and isinstance(payload.get("moderator"), str):
                    moderator = payload["moderator"]
                if isinstance(payload.get("reason"), str):
                    reason = payload["reason"]
        state = await self._store(request).moderate(int(row), decision, moderator)
        if state is None:
            return web.json_response({"error": f"row {row} is not in review"}, status=409)
        await self._audit(request).record(
            who.name,
            f"review.{decision}",
            why=reason,
            detail={"row": int(row), "state": state, "moderator": moderator},
        )
        self._parts(request).flow.wake()
        return web.json_response({"row": int(row), "state": state})

    async def _decide(self, request: web.Request, row: int, decision: str) -> web.Response:
        """``confirm`` (``{"reason", "bank": true}`` adds the matched files to a local
        bank), ``false-positive`` and ``escalate`` (both need ``{"reason": TEXT}``):
        relay.review.decide, the same as the review UI's buttons."""
        payload: object = {}
        if request.can_read_body:
            try:
                payload = await request.json()
            except ValueError:
                raise _bad_request("body is not JSON") from None
        body = payload if isinstance(payload, dict) else {}
        given = body.get("reason")
        reason = given if isinstance(given, str) else ""
        decisions = self._parts(request).decisions
        if decisions is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "decisions are not ready yet"}', content_type="application/json"
            )
        who = request[WHO]
        try:
            if decision == "confirm":
                outcome = await decisions.confirm(
                    row, who, why=reason or None, bank=body.get("bank") is True
                )
            elif decision == "false_positive":
                outcome = await decisions.false_positive(row, who, why=reason)
            else:
                outcome = await decisions.escalate(row, who, why=reason)
        except DecisionError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        self._parts(request).flow.wake()
        return web.json_response(
            {
                "row": row,
                "state": outcome.state,
                "drafts": list(outcome.drafts),
                "banked": outcome.banked,
            }
        )

    async def release(self, request: web.Request) -> web.Response:
        """``POST /quarantine/ROW/release`` with ``{"moderator": NAME, "reason": TEXT}``
        (a person's token names the moderator itself: ``{"reason": TEXT}``): a false
        positive is queued for delivery again, as it was sent; the evidence stays, and
        its audit log, the people's audit log and the row's verdict name the moderator
        and reason."""
        row = request.match_info["row"]
        if not (row.isascii() and row.isdigit() and len(row) <= 18):
            return web.json_response({"error": "use POST /quarantine/ROW/release"}, status=404)
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        who = request[WHO]
        moderator = payload.get("moderator") if isinstance(payload, dict) else None
        reason = payload.get("reason") if isinstance(payload, dict) else None
        if who.is_person:
            moderator = who.name
            if not (isinstance(reason, str) and reason.strip()):
                return web.json_response(
                    {"error": 'expected {"reason": "TEXT"}, non-empty'}, status=400
                )
        if not (
            isinstance(moderator, str)
            and moderator.strip()
            and isinstance(reason, str)
            and reason.strip()
        ):
            return web.json_response(
                {"error": 'expected {"moderator": "NAME", "reason": "TEXT"}, both non-empty'},
                status=400,
            )
        parts = self._parts(request)
        try:
            state = await release(
                parts.store, parts.flow.evidence, int(row), moderator=moderator, reason=reason
            )
        except ReleaseError as exc:
            log.warning("release_failed", row=int(row), error=str(exc))
            status = {"missing": 404, "conflict": 409}.get(exc.kind, 500)
            return web.json_response({"error": str(exc)}, status=status)
        log.info("released", row=int(row), moderator=moderator, reason=reason)
        await self._audit(request).record(
            who.name,
            "quarantine.release",
            why=reason,
            detail={"row": int(row), "state": state, "moderator": moderator},
        )
        parts.flow.wake()
        return web.json_response({"row": int(row), "state": state})

    async def replay(self, request: web.Request) -> web.Response:
        """Body ``{"ids": [..]}`` replays those; ``{"all": true}`` replays every one."""
        ids = await _chosen(request, "row ids")
        count = await self._store(request).replay(ids)
        await self._audit(request).record(
            request[WHO].name,
            "dead_letters.replay",
            detail={"ids": "all" if ids is None else ids, "replayed": count},
        )
        self._parts(request).flow.wake()
        return web.json_response({"replayed": count})

    def _outbox(self, request: web.Request) -> Outbox:
        outbox = self._parts(request).outbox
        if outbox is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "effects are not running yet"}', content_type="application/json"
            )
        return outbox

    async def effects(self, request: web.Request) -> web.Response:
        """Effects of verdicts (notify…), newest first: ``?state=dead&limit=N``."""
        state = request.query.get("state") or None
        if state is not None and state not in STATES:
            return web.json_response(
                {"error": f"state must be one of {', '.join(STATES)}"}, status=400
            )
        limit = _limit(request)
        return web.json_response({"effects": await self._outbox(request).list(state, limit)})

    async def replay_effects(self, request: web.Request) -> web.Response:
        """Dead effects run again: ``{"ids": [..]}`` those, ``{"all": true}`` every one."""
        ids = await _chosen(request, "effect ids")
        count = await self._outbox(request).replay(ids)
        await self._audit(request).record(
            request[WHO].name,
            "effects.replay",
            detail={"ids": "all" if ids is None else ids, "replayed": count},
        )
        return web.json_response({"replayed": count})

    def _audit(self, request: web.Request) -> AuditLog:
        return AuditLog(self._store(request).pool)

    async def uploads(self, request: web.Request) -> web.Response:
        """What the upload door decided, newest first: ``?outcome=reject&limit=N``
        (outcomes: deliver, review, reject, quarantine, timeout, error, too_large)."""
        outcome = request.query.get("outcome") or None
        records = UploadRecords(self._store(request).pool)
        return _json({"uploads": await records.recent(_limit(request), outcome)})

    async def bank_syncs(self, request: web.Request) -> web.Response:
        """Banks that fill themselves ([[bank]] source): each one's checkpoint, last run,
        last success, last error and counts."""
        return _json({"banks": await sync_status(self._store(request).pool)})

    async def me(self, request: web.Request) -> web.Response:
        """Who this token is: ``{"name", "role"}`` (``shared-token`` for the shared one)."""
        who = request[WHO]
        return web.json_response({"name": who.name, "role": who.role})

    async def audit(self, request: web.Request) -> web.Response:
        """The audit log, newest first: ``?who=NAME&action=ACTION&limit=N``."""
        entries = await self._audit(request).entries(
            _limit(request), who=request.query.get("who"), action=request.query.get("action")
        )
        return _json({"audit": entries})


async def _chosen(request: web.Request, what: str) -> list[int] | None:
    """The ids a replay names (``{"ids": [..]}``), or None for ``{"all": true}``;
    400 for anything else."""
    try:
        payload = await request.json()
    except ValueError:
        raise _bad_request("body is not JSON") from None
    if not isinstance(payload, dict):
        payload = {}
    ids = payload.get("ids")
    if payload.get("all") is True:
        return None
    if isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return ids
    raise _bad_request(f'expected {{"ids": [{what}]}} or {{"all": true}}')


def _bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": reason}), content_type="application/json")


def _limit(request: web.Request) -> int:
    """``?limit=N`` of a listing, 1 to 1000 (100 unless given); 400 if not a number."""
    try:
        return max(1, min(1000, int(request.query.get("limit", "100"))))
    except ValueError:
        raise _bad_request("limit must be a number") from None


def _json(data: object, status: int = 200) -> web.Response:
    """A JSON answer whose dates are ISO 8601."""
    text = json.dumps(data, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else str(o))
    return web.json_response(text=text, status=status)
