"""The review UI: server-rendered pages on the admin listener, under ``/review``.

Every decision works without JavaScript (plain forms); a small script adds keyboard
shortcuts. The pages never load anything from elsewhere (``Content-Security-Policy``
allows this origin only), and a post's text is shown as plain text: a remote post
cannot make a moderator's browser fetch anything.

What a moderator sees of a file is a preview made here (``relay.review.preview``).
The original is served only to the moderator who revealed it, within
``[review] reveal_seconds`` of the reveal, and every reveal is logged.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from aiohttp_session import get_session, new_session

from relay.evidence import EvidenceError
from relay.media.sniff import sniff
from relay.people import Accounts, AuditLog, Principal, TooManyAttempts
from relay.reports.errors import ReportError
from relay.reports.transparency import figures
from relay.review.decide import DECISIONS, DecisionError
from relay.review.drafts import render
from relay.review.preview import NoPreview, preview
from relay.review.queue import Filters, ReviewQueue, text_of
from relay.review.session import csrf_token, valid_csrf
from relay.review.submit import Submissions, SubmitError
from relay.review.wellness import Day, Exposure, Settings

if TYPE_CHECKING:
    from relay.app import Sluice

__all__ = ["PREFIX", "ReviewUI"]

PREFIX = "/review"

log = structlog.get_logger(__name__)

_HERE = Path(__file__).parent
#: Routes that need no login.
_OPEN = frozenset({PREFIX + "/login", PREFIX + "/static/{name}"})
#: Previews kept made, (evidence, file, blur, greyscale) -> JPEG: blurred and small,
#: so keeping them is safe; the evidence is read (and audited) once per look.
_CACHED_PREVIEWS = 512
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'self'; "
        "script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_WHO = web.RequestKey("review_who", Principal)


class ReviewUI:
    def __init__(self, parts: Sluice, accounts: Accounts) -> None:
        self.parts = parts
        self.accounts = accounts
        self.queue = ReviewQueue(parts.pool)
        self.exposure = Exposure(parts.pool, parts.config.review)
        self.audit = AuditLog(parts.pool)
        self._previews: OrderedDict[tuple[int, int, int, bool], bytes] = OrderedDict()
        self.submissions = Submissions(
            parts.pool,
            parts.flow.evidence,
            self.exposure,
            parts.config.reports,
            parts.config.receipts.jurisdictions,
        )

    def setup(self, app: web.Application) -> None:
        env = aiohttp_jinja2.setup(
            app,
            loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
            autoescape=True,
            undefined=jinja2.ChainableUndefined,  # verdicts have optional keys
        )
        env.globals["prefix"] = PREFIX
        app.router.add_routes(self.routes())

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "/login", self.login_form),
            web.post(PREFIX + "/login", self.login),
            web.post(PREFIX + "/logout", self.logout),
            web.get(PREFIX, self.queue_page),
            web.get(PREFIX + "/item/{row:\\d{1,18}}", self.item_page),
            web.get(PREFIX + "/item/{row:\\d{1,18}}/preview/{n:\\d{1,4}}", self.preview),
            web.post(PREFIX + "/item/{row:\\d{1,18}}/reveal/{n:\\d{1,4}}", self.reveal),
            web.get(PREFIX + "/item/{row:\\d{1,18}}/original/{n:\\d{1,4}}", self.original),
            web.post(PREFIX + "/item/{row:\\d{1,18}}/decide", self.decide),
            web.get(PREFIX + "/item/{row:\\d{1,18}}/report/{kind:ncmec|uk|sor}", self.report),
            web.post(PREFIX + "/item/{row:\\d{1,18}}/report/{kind:ncmec|sor}/submit", self.submit),
            web.post(PREFIX + "/item/{row:\\d{1,18}}/report/{kind:ncmec|uk|sor}/filed", self.filed),
            web.get(PREFIX + "/settings", self.settings_page),
            web.post(PREFIX + "/settings", self.settings),
            web.get(PREFIX + "/transparency", self.transparency),
            web.get(PREFIX + "/static/{name}", self.static),
        ]

    # -- the guard ---------------------------------------------------------------------

    def guards(self, route: str) -> bool:
        return route == PREFIX or route.startswith(PREFIX + "/")

    async def guard(self, request: web.Request, route: str) -> None:
        """A login for every page but the login form; a CSRF token on every POST."""
        if route in _OPEN:
            return
        session = await get_session(request)
        name = session.get("name")
        account = await self.accounts.get(name) if isinstance(name, str) else None
        if account is None or account.disabled or account.id != session.get("account"):
            if request.method == "GET":
                raise web.HTTPSeeOther(PREFIX + "/login")
            raise web.HTTPForbidden(text="log in first")
        if request.method == "POST" and not await valid_csrf(request, await request.post()):
            log.warning("csrf_refused", who=account.name, path=request.path)
            raise web.HTTPForbidden(text="this form has expired or was not ours: reload the page")
        request[_WHO] = Principal.of(account)

    async def _page(
        self, request: web.Request, template: str, context: dict[str, Any]
    ) -> web.Response:
        session = await get_session(request)
        who = request.get(_WHO)
        day: Day | None = None
        if who is not None and who.account_id is not None:
            day = await self.exposure.seen(who.account_id)
        context = {
            "who": who,
            "csrf": csrf_token(session),
            "day": day,
            "review": self.parts.config.review,
            **context,
        }
        response = aiohttp_jinja2.render_template(template, request, context)
        response.headers.update(_HEADERS)
        return response

    # -- logging in and out -----------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        return await self._page(request, "login.html", {"error": None})

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not await valid_csrf(request, form):
            raise web.HTTPForbidden(text="this form has expired: reload the login page")
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        address = request.remote or ""
        try:
            account = await self.accounts.authenticate(name, password, address=address)
        except TooManyAttempts as exc:
            response = await self._page(
                request, "login.html", {"error": "Too many attempts: wait a minute."}
            )
            response.set_status(429)
            response.headers["Retry-After"] = str(int(exc.retry_after) + 1)
            return response
        if account is None:
            log.info("login_refused", name=name[:64], address=address)
            response = await self._page(request, "login.html", {"error": "Wrong name or password."})
            response.set_status(401)
            return response
        session = await new_session(request)  # a fresh session: no fixation
        session["account"] = account.id
        session["name"] = account.name
        csrf_token(session)
        await self.audit.record(account.name, "ui.login", detail={"address": address})
        raise web.HTTPSeeOther(PREFIX)

    async def logout(self, request: web.Request) -> web.Response:
        session = await get_session(request)
        session.invalidate()
        raise web.HTTPSeeOther(PREFIX + "/login")

    # -- the queue and an item --------------------------------------------------------

    async def queue_page(self, request: web.Request) -> web.Response:
        q = request.query
        filters = Filters(
            category=q.get("category", "")[:100],
            rule=q.get("rule", "")[:500],
            origin=q.get("origin", "")[:253],
            escalated=q.get("escalated") == "1",
        )
        try:
            offset = max(0, int(q.get("offset", "0")))
        except ValueError:
            offset = 0
        page = await self.queue.page(
            filters, offset=offset, limit=self.parts.config.review.page_size
        )
        return await self._page(
            request,
            "queue.html",
            {"page": page, "filters": filters, "choices": await self.queue.choices()},
        )

    async def _item(self, request: web.Request) -> dict[str, Any]:
        item = await self.queue.item(int(request.match_info["row"]))
        if item is None:
            raise web.HTTPNotFound(text="no such item")
        return item

    async def item_page(self, request: web.Request) -> web.Response:
        item = await self._item(request)
        who = request[_WHO]
        assert who.account_id is not None
        settings = await self.exposure.settings(who.account_id)
        verdict = item["verdict"]
        files = await self._files(item)
        open_reveals = {
            f["index"]
            for f in files
            if f["index"] is not None
            and await self.exposure.revealed(who.account_id, item["evidence_id"], f["index"])
        }
        history = await self.audit.entries(50, about_row=item["id"])
        drafts = await self.parts.pool.fetch(
            "SELECT kind, status, created_by, created_at, submitted_by, submitted_at, "
            "external_id FROM report_draft "
            "WHERE activity_row = $1 ORDER BY id",
            item["id"],
        )
        return await self._page(
            request,
            "item.html",
            {
                "item": item,
                "verdict": verdict,
                "files": files,
                "matches": [s for s in verdict.get("signals", []) if s.get("kind") == "match"],
                "others": [
                    s
                    for s in verdict.get("signals", [])
                    if s.get("kind") not in ("match", "hashed")
                ],
                "text": text_of(item["document"]),
                "settings": settings,
                "revealed": open_reveals,
                "reveals": await self.exposure.reveals_of(item["id"]),
                "history": history,
                "drafts": [
                    {**dict(d), "submittable": self.submissions.can(d["kind"])} for d in drafts
                ],
                "decisions": DECISIONS,
                "message": request.query.get("done", "")[:200],
            },
        )

    async def _files(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """The item's files as the page lists them: each ``hashed`` signal's facts, with
        ``index``, its place among the files the evidence kept (None: its bytes were not
        kept). Routes, reveals and drafts all number files the evidence's way. A
        quarantined row keeps no signals in clear: its files are the evidence's."""
        kept: list[str] = []
        evidence = self.parts.flow.evidence
        if item["evidence_id"] is not None and evidence is not None:
            meta = await evidence.metadata(item["evidence_id"])
            found = ((meta or {}).get("summary") or {}).get("sha256")
            kept = [h for h in found if isinstance(h, str)] if isinstance(found, list) else []
        hashed = [
            dict(s["detail"])
            for s in item["verdict"].get("signals", [])
            if s.get("kind") == "hashed"
            and isinstance(s.get("detail"), dict)
            and isinstance(s["detail"].get("sha256"), str)
        ]
        if not hashed:  # a quarantine's row keeps only the outline of its signals
            hashed = [{"sha256": h} for h in kept]
        for f in hashed:
            f["index"] = kept.index(f["sha256"]) if f.get("sha256") in kept else None
        return hashed

    async def _media(self, item: dict[str, Any], n: int, who: Principal, what: str) -> bytes:
        """File ``n`` of the item's sealed media, read on the record."""
        evidence = self.parts.flow.evidence
        if item["evidence_id"] is None or evidence is None:
            raise web.HTTPNotFound(text="no media kept for this item")
        try:
            _, files = await evidence.read(
                item["evidence_id"], who=who.name, why=f"review of row {item['id']}", what=what
            )
        except EvidenceError as exc:
            raise web.HTTPNotFound(text=str(exc)) from exc
        if n >= len(files):
            raise web.HTTPNotFound(text="no such file")
        return files[n]

    async def preview(self, request: web.Request) -> web.Response:
        item = await self._item(request)
        who = request[_WHO]
        assert who.account_id is not None
        n = int(request.match_info["n"])
        look = (await self.exposure.settings(who.account_id)).look
        key = (int(item["evidence_id"] or 0), n, look.blur, look.greyscale)
        made = self._previews.get(key)
        if made is None:
            data = await self._media(item, n, who, f"preview of file {n}")
            try:
                made = preview(data, look)
            except NoPreview as exc:
                raise web.HTTPNotFound(text=str(exc)) from exc
            self._previews[key] = made
            while len(self._previews) > _CACHED_PREVIEWS:
                self._previews.popitem(last=False)
        return web.Response(body=made, content_type="image/jpeg", headers=_HEADERS)

    async def reveal(self, request: web.Request) -> web.Response:
        item = await self._item(request)
        who = request[_WHO]
        assert who.account_id is not None
        n = int(request.match_info["n"])
        if item["evidence_id"] is None or n not in {f["index"] for f in await self._files(item)}:
            raise web.HTTPNotFound(text="no such file kept for this item")
        until = await self.exposure.reveal(
            who.account_id, who.name, row=item["id"], evidence_id=item["evidence_id"], media=n
        )
        await self.audit.record(
            who.name,
            "review.reveal",
            detail={"row": item["id"], "evidence": item["evidence_id"], "media": n},
        )
        log.info("revealed", row=item["id"], media=n, who=who.name, until=until.isoformat())
        raise web.HTTPSeeOther(f"{PREFIX}/item/{item['id']}#file-{n}")

    async def original(self, request: web.Request) -> web.Response:
        item = await self._item(request)
        who = request[_WHO]
        assert who.account_id is not None
        n = int(request.match_info["n"])
        if item["evidence_id"] is None or not await self.exposure.revealed(
            who.account_id, item["evidence_id"], n
        ):
            raise web.HTTPForbidden(text="reveal this file first (each reveal is logged)")
        data = await self._media(item, n, who, f"reveal of file {n}")
        kind, found = sniff(data)  # what the bytes are, not what a sender said
        mime = found if found and kind in ("image", "video", "audio") else ""
        mime = mime or "application/octet-stream"
        headers = {
            **_HEADERS,
            "Content-Disposition": "inline",
            "Content-Security-Policy": "sandbox",
        }
        return web.Response(body=data, content_type=mime, headers=headers)

    # -- decisions ------------------------------------------------------------------

    async def decide(self, request: web.Request) -> web.Response:
        row = int(request.match_info["row"])
        form = await request.post()
        decision = str(form.get("decision", ""))
        why = str(form.get("why", "")).strip()
        decisions = self.parts.decisions
        if decisions is None:
            raise web.HTTPServiceUnavailable(text="decisions are not ready yet")
        who = request[_WHO]
        try:
            if decision == "confirm":
                outcome = await decisions.confirm(
                    row, who, why=why or None, bank=form.get("bank") == "on"
                )
            elif decision == "false_positive":
                outcome = await decisions.false_positive(row, who, why=why)
            elif decision == "escalate":
                outcome = await decisions.escalate(row, who, why=why)
            else:
                raise DecisionError(f"unknown decision {decision!r}", 400)
        except DecisionError as exc:
            response = web.Response(text=str(exc), status=exc.status, headers=_HEADERS)
            return response
        self.parts.flow.wake()
        done = f"{decision.replace('_', ' ')}: now {outcome.state}"
        raise web.HTTPSeeOther(f"{PREFIX}/item/{row}?done={done}")

    async def report(self, request: web.Request) -> web.Response:
        """A confirmed case's report draft, made now from its evidence (read on the
        record) and the reveal log; never sent from here."""
        row, kind = int(request.match_info["row"]), request.match_info["kind"]
        who = request[_WHO]
        draft = await self.parts.pool.fetchrow(
            "SELECT evidence_id, created_by, created_at FROM report_draft "
            "WHERE activity_row = $1 AND kind = $2",
            row,
            kind,
        )
        evidence = self.parts.flow.evidence
        if draft is None or draft["evidence_id"] is None or evidence is None:
            raise web.HTTPNotFound(text=f"no {kind} draft for item {row}")
        try:
            record = await evidence.read_facts(
                draft["evidence_id"], who=who.name, why=f"{kind} report draft of row {row}"
            )
            made = render(
                kind,
                record=record,
                row=row,
                viewed=await self.exposure.viewed(draft["evidence_id"]),
                reporter=self.parts.config.reports.reporter,
                jurisdictions=self.parts.config.receipts.jurisdictions,
                decided_by=draft["created_by"],
                decided_at=draft["created_at"],
            )
        except (EvidenceError, ReportError) as exc:
            raise web.HTTPConflict(text=f"the {kind} draft cannot be made: {exc}") from exc
        await self.audit.record(who.name, "report.draft", detail={"row": row, "kind": kind})
        headers = {**_HEADERS, "Content-Disposition": f'inline; filename="{made.filename}"'}
        return web.Response(body=made.body, content_type=made.media_type, headers=headers)

    async def submit(self, request: web.Request) -> web.Response:
        """An admin submits a reviewed draft (NCMEC, the Transparency Database)."""
        row, kind = int(request.match_info["row"]), request.match_info["kind"]
        try:
            found = await self.submissions.submit(row, kind, request[_WHO])
        except SubmitError as exc:
            return web.Response(text=str(exc), status=exc.status, headers=_HEADERS)
        raise web.HTTPSeeOther(f"{PREFIX}/item/{row}?done={kind} submitted: {found}")

    async def filed(self, request: web.Request) -> web.Response:
        """An admin filed a draft by hand (with the authority's reference, if any)."""
        row, kind = int(request.match_info["row"]), request.match_info["kind"]
        form = await request.post()
        try:
            await self.submissions.filed(row, kind, request[_WHO], str(form.get("reference", "")))
        except SubmitError as exc:
            return web.Response(text=str(exc), status=exc.status, headers=_HEADERS)
        raise web.HTTPSeeOther(f"{PREFIX}/item/{row}?done={kind} marked filed")

    # -- settings, figures, static ------------------------------------------------------

    async def settings_page(self, request: web.Request) -> web.Response:
        who = request[_WHO]
        assert who.account_id is not None
        settings = await self.exposure.settings(who.account_id)
        return await self._page(request, "settings.html", {"settings": settings})

    async def settings(self, request: web.Request) -> web.Response:
        who = request[_WHO]
        assert who.account_id is not None
        form = await request.post()
        try:
            blur = int(str(form.get("blur", "")))
        except ValueError:
            raise web.HTTPBadRequest(text="blur must be a whole number from 0 to 64") from None
        if not 0 <= blur <= 64:
            raise web.HTTPBadRequest(text="blur must be a whole number from 0 to 64")
        settings = Settings(
            blur=blur,
            greyscale=form.get("greyscale") == "on",
            autoplay=form.get("autoplay") == "on",
            muted=form.get("muted") == "on",
        )
        await self.exposure.choose(who.account_id, settings)
        await self.audit.record(who.name, "ui.settings", detail=settings.as_json())
        raise web.HTTPSeeOther(PREFIX + "/settings")

    async def transparency(self, request: web.Request) -> web.Response:
        until = datetime.now(UTC)
        try:
            days = max(1, min(3660, int(request.query.get("days", "365"))))
        except ValueError:
            days = 365
        found = await figures(self.parts.pool, until - timedelta(days=days), until)
        if request.query.get("format") == "json":
            return web.json_response(found)
        return await self._page(
            request, "transparency.html", {"figures": found, "days": days, "raw": json.dumps}
        )

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {
            "review.css": "text/css",
            "review.js": "text/javascript",
            "favicon.svg": "image/svg+xml",
        }
        if name not in types:
            raise web.HTTPNotFound()
        body = (_HERE / "static" / name).read_bytes()
        return web.Response(
            body=body, content_type=types[name], headers={"Cache-Control": "max-age=3600"}
        )
