"""Acting on the instance (relay.effects.act, relay.instance_actions) against stand-ins
for Mastodon, Lemmy and Misskey written from their API documentation (facts: review.md
§6), served over real HTTP on loopback, checking each call's token and recording it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.effects import Decided, EffectFailed
from relay.effects.act import KINDS, Ban, Purge, Remove, Report, planner
from relay.instance_actions import InstanceActions, for_software
from relay.signal import Signal
from relay.verdict import Disposition, Verdict
from tests.conftest import start_server

TOKEN = "admin-token-0123"
ACTOR = "https://remote.example/users/bad"
POST = "https://remote.example/notes/1"
OTHER = "https://remote.example/users/unknown"


@dataclass
class Call:
    method: str
    path: str
    fields: dict[str, Any]


@dataclass
class StandIn:
    """One server family's API: ``known`` maps URIs to local ids; ``fail`` holds the
    statuses the next calls to a path answer with (then it behaves again)."""

    software: str
    #: Lemmy's API version: "v3" (0.19) or "v4" (1.0).
    version: str = "v3"
    calls: list[Call] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)
    delay: float = 0.0
    server: TestServer | None = None
    known: dict[str, tuple[str, Any]] = field(
        default_factory=lambda: {ACTOR: ("account", 7), POST: ("post", 42)}
    )

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/"))

    def paths(self) -> list[str]:
        return [f"{c.method} {c.path}" for c in self.calls]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        fields: dict[str, Any]
        if request.content_type == "application/json":
            fields = await request.json()
        elif request.method == "POST":
            form = await request.post()
            fields = {k: form.getall(k) for k in form}
            fields = {k: v[0] if len(v) == 1 else v for k, v in fields.items()}
        else:
            fields = dict(request.query)
        path = request.path
        self.calls.append(Call(request.method, path, fields))
        queued = self.fail.get(path)
        if queued:
            return web.json_response({"error": "stand-in fault"}, status=queued.pop(0))
        if self.software == "misskey":
            if fields.get("i") != TOKEN or "Authorization" in request.headers:
                return web.json_response({"error": {"code": "CREDENTIAL_REQUIRED"}}, status=401)
            return self.misskey(path, fields)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "The access token is invalid"}, status=401)
        return self.mastodon(path, fields) if self.software == "mastodon" else self.lemmy(path)

    def mastodon(self, path: str, fields: dict[str, Any]) -> web.StreamResponse:
        if path == "/api/v2/search":
            assert fields["resolve"] == "true"
            found = self.known.get(fields["q"])
            kind = {"accounts": "account", "statuses": "post"}[fields["type"]]
            items = (
                [{"id": str(found[1]), "uri": fields["q"]}] if found and found[0] == kind else []
            )
            return web.json_response(
                {"accounts": [], "statuses": [], "hashtags": [], **{fields["type"]: items}}
            )
        if path.startswith("/api/v1/admin/accounts/") and path.endswith("/action"):
            assert fields["type"] in ("suspend", "silence")
            return web.json_response({})
        if path == "/api/v1/reports":
            assert "account_id" in fields and len(fields["comment"]) <= 1000
            return web.json_response({"id": "1"})
        return web.json_response({"error": "Record not found"}, status=404)

    def lemmy(self, path: str) -> web.StreamResponse:
        api = f"/api/{self.version}"
        if path == f"{api}/resolve_object":
            q = self.calls[-1].fields["q"]
            found = self.known.get(q)
            if found is None:
                return web.json_response({"error": "couldnt_find_object"}, status=400)
            if self.version == "v4":  # the view itself, tagged by type_ (ResolveObjectView)
                if found[0] == "account":
                    person = {"id": found[1], "ap_id": q}
                    view = {"type_": "person", "person": person, "is_admin": False}
                    return web.json_response({**view, "banned": False})
                post = {"id": found[1], "ap_id": q}
                return web.json_response({"type_": "post", "post": post, "can_mod": True})
            if found[0] == "account":
                return web.json_response({"person": {"person": {"id": found[1], "actor_id": q}}})
            return web.json_response({"post": {"post": {"id": found[1], "ap_id": q}}})
        ban = "/api/v3/user/ban" if self.version == "v3" else "/api/v4/admin/ban"
        if path in (
            ban,
            f"{api}/post/remove",
            f"{api}/admin/purge/post",
            f"{api}/admin/purge/person",
            f"{api}/post/report",
        ):
            if self.version == "v4":  # reasons are required in v4
                assert self.calls[-1].fields["reason"]
            return web.json_response({"success": True})
        return web.json_response({"error": "unknown"}, status=404)

    def misskey(self, path: str, fields: dict[str, Any]) -> web.StreamResponse:
        if path == "/api/ap/show":
            found = self.known.get(fields["uri"])
            if found is None:
                return web.json_response({"error": {"code": "NO_SUCH_OBJECT"}}, status=400)
            kind = "User" if found[0] == "account" else "Note"
            return web.json_response({"type": kind, "object": {"id": f"9a{found[1]}"}})
        if path in ("/api/admin/suspend-user", "/api/notes/delete"):
            return web.Response(status=204)
        return web.json_response({"error": {"code": "NO_SUCH_ENDPOINT"}}, status=404)


async def _serve(software: str, version: str = "v3") -> StandIn:
    stand_in = StandIn(software, version)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    stand_in.server = await start_server(app)
    return stand_in


@pytest.fixture(params=["mastodon", "lemmy", "misskey"])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[StandIn]:
    stand_in = await _serve(request.param)
    yield stand_in
    assert stand_in.server is not None
    await stand_in.server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def actions(stand_in: StandIn, http: aiohttp.ClientSession, **kw: Any) -> InstanceActions:
    made = for_software(stand_in.software, stand_in.url, kw.pop("token", TOKEN), http, **kw)
    return made


def payload(
    kind: str, *, delivered: bool = True, obj: str | None = POST, row: int = 1, evidence: Any = None
) -> dict[str, Any]:
    """A payload as the planner makes it from a recorded verdict, key added as the
    outbox adds it."""
    verdict = Verdict(
        Disposition.QUARANTINE,
        "csam-exact",
        (Signal("match", "bank", {"category": "csam"}),),
        effects=(kind,),
    )
    activity = {"id": "https://remote.example/acts/1", "type": "Create", "actor": ACTOR}
    activity |= {"signer": ACTOR, "object": obj}
    planned = planner(kind)(Decided(row, activity, verdict, evidence, after=delivered))
    assert len(planned) == 1
    return {**planned[0].payload, "key": planned[0].key}


# -- each effect's calls per software ------------------------------------------------------


async def test_ban(api: StandIn, http: aiohttp.ClientSession) -> None:
    await Ban(actions(api, http)).run(payload("ban"))
    expected = {
        "mastodon": ["GET /api/v2/search", "POST /api/v1/admin/accounts/7/action"],
        "lemmy": ["GET /api/v3/resolve_object", "POST /api/v3/user/ban"],
        "misskey": ["POST /api/ap/show", "POST /api/admin/suspend-user"],
    }[api.software]
    assert api.paths() == expected
    done = api.calls[-1].fields
    if api.software == "mastodon":
        assert api.calls[0].fields["q"] == ACTOR and api.calls[0].fields["type"] == "accounts"
        assert done["type"] == "suspend" and "csam" in done["text"]
    elif api.software == "lemmy":
        assert done["person_id"] == 7 and done["ban"] is True and done["remove_data"] is False
    else:
        assert done["userId"] == "9a7"


async def test_remove(api: StandIn, http: aiohttp.ClientSession) -> None:
    await Remove(actions(api, http)).run(payload("remove"))
    if api.software == "mastodon":  # no admin status API: silence, then a report naming it
        assert api.paths() == [
            "GET /api/v2/search",
            "GET /api/v2/search",
            "POST /api/v1/admin/accounts/7/action",
            "POST /api/v1/reports",
        ]
        assert api.calls[2].fields["type"] == "silence"
        report = api.calls[3].fields
        assert report["status_ids[]"] == "42" and report["forward"] == "false"
    elif api.software == "lemmy":
        assert api.paths() == ["GET /api/v3/resolve_object", "POST /api/v3/post/remove"]
        sent = api.calls[1].fields
        assert (sent["post_id"], sent["removed"]) == (42, True) and "csam-exact" in sent["reason"]
    else:
        assert api.paths() == ["POST /api/ap/show", "POST /api/notes/delete"]
        assert api.calls[1].fields["noteId"] == "9a42"


async def test_remove_of_what_never_reached_the_instance_asks_nothing(
    api: StandIn, http: aiohttp.ClientSession
) -> None:
    """Resolving a post Sluice kept back would make the instance fetch its media."""
    await Remove(actions(api, http)).run(payload("remove", delivered=False))
    api.known.pop(POST)
    await Remove(actions(api, http)).run(payload("remove"))  # gone from the instance: done
    assert all("remove" not in p and "delete" not in p and "action" not in p for p in api.paths())
    assert len(api.calls) == 1


async def test_report(api: StandIn, http: aiohttp.ClientSession) -> None:
    effect = Report(actions(api, http))
    if api.software == "misskey":
        with pytest.raises(EffectFailed) as failed:
            await effect.run(payload("report"))
        assert failed.value.permanent and "report" in failed.value.reason
        return
    await effect.run(payload("report"))
    if api.software == "mastodon":
        assert api.paths()[-1] == "POST /api/v1/reports"
        sent = api.calls[-1].fields
        assert sent["account_id"] == "7" and sent["category"] == "legal"
        assert sent["status_ids[]"] == "42" and sent["forward"] == "false"
        api.calls.clear()
        await effect.run(payload("report", delivered=False))  # the account alone
        assert "status_ids[]" not in api.calls[-1].fields
    else:
        assert api.paths()[-1] == "POST /api/v3/post/report"
        assert api.calls[-1].fields["post_id"] == 42
        with pytest.raises(EffectFailed) as failed:  # Lemmy reports posts only
            await effect.run(payload("report", delivered=False))
        assert failed.value.permanent


async def test_purge(
    api: StandIn, http: aiohttp.ClientSession, migrated_pool: asyncpg.Pool
) -> None:
    effect = Purge(actions(api, http), migrated_pool)
    if api.software != "lemmy":
        with pytest.raises(EffectFailed) as failed:
            await effect.run(payload("purge"))
        assert failed.value.permanent and "purging a post" in failed.value.reason
        assert api.calls == []
        return
    await effect.run(payload("purge"))
    assert api.paths() == ["GET /api/v3/resolve_object", "POST /api/v3/admin/purge/post"]
    assert api.calls[-1].fields["post_id"] == 42
    await effect.run(payload("purge", obj=None, row=2))  # about the actor: the person
    assert api.paths()[-1] == "POST /api/v3/admin/purge/person"
    assert api.calls[-1].fields["person_id"] == 7


# -- lookups, retries ------------------------------------------------------------------


async def test_lookups_are_cached_and_bounded(api: StandIn, http: aiohttp.ClientSession) -> None:
    made = actions(api, http)
    made.cache_size = 1
    effect = Ban(made)
    await effect.run(payload("ban"))
    await effect.run(payload("ban", row=2))
    assert made.lookups == 1 and len(api.calls) == 3  # one lookup, two bans
    assert await made.post(POST) is not None  # evicts the account
    assert await made.account(ACTOR) is not None
    assert made.lookups == 3
    with pytest.raises(EffectFailed) as failed:  # unknown: permanent, and not cached
        await effect.run({**payload("ban"), "activity": {"actor": OTHER}})
    assert failed.value.permanent and OTHER in failed.value.reason


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_busy_answers_are_retried(
    api: StandIn, http: aiohttp.ClientSession, status: int
) -> None:
    ban_path = {
        "mastodon": "/api/v1/admin/accounts/7/action",
        "lemmy": "/api/v3/user/ban",
        "misskey": "/api/admin/suspend-user",
    }[api.software]
    api.fail[ban_path] = [status]
    effect = Ban(actions(api, http))
    with pytest.raises(EffectFailed) as failed:
        await effect.run(payload("ban"))
    assert not failed.value.permanent and str(status) in failed.value.reason
    await effect.run(payload("ban"))  # the next try goes through
    assert api.paths()[-1].endswith(ban_path)


async def test_refusals_are_permanent(api: StandIn, http: aiohttp.ClientSession) -> None:
    lookup = {
        "mastodon": "/api/v2/search",
        "lemmy": "/api/v3/resolve_object",
        "misskey": "/api/ap/show",
    }[api.software]
    api.fail[lookup] = [422]
    with pytest.raises(EffectFailed) as failed:
        await Ban(actions(api, http)).run(payload("ban"))
    assert failed.value.permanent and "422" in failed.value.reason
    with pytest.raises(EffectFailed) as failed:
        await Ban(actions(api, http, token="wrong")).run(payload("ban"))
    assert failed.value.permanent and "[upstream] token" in failed.value.reason
    assert "401" in failed.value.reason


async def test_timeouts_are_retried(api: StandIn, http: aiohttp.ClientSession) -> None:
    api.delay = 1.0
    with pytest.raises(EffectFailed) as failed:
        await Ban(actions(api, http, timeout=0.2)).run(payload("ban"))
    assert not failed.value.permanent and "timed out" in failed.value.reason


async def test_an_unreachable_instance_is_retried(http: aiohttp.ClientSession) -> None:
    from tests.conftest import free_port

    made = for_software("lemmy", f"http://127.0.0.1:{free_port()}", TOKEN, http)
    with pytest.raises(EffectFailed) as failed:
        await Ban(made).run(payload("ban"))
    assert not failed.value.permanent and "unreachable" in failed.value.reason


# -- nothing is purged while a draft or a hold needs it ------------------------------------


async def _activity(pool: asyncpg.Pool, actor: str = ACTOR) -> int:
    return int(
        await pool.fetchval(
            "INSERT INTO activity (type, actor, target, headers, body, deadline) "
            "VALUES ('Create', $1, '/inbox', '[]'::jsonb, ''::bytea, now()) RETURNING id",
            actor,
        )
    )


async def _evidence(pool: asyncpg.Pool, row: int | None) -> int:
    return int(
        await pool.fetchval(
            "INSERT INTO evidence (activity_row, retain_until, blobs, summary) "
            "VALUES ($1, now() + interval '1 year', '[]'::jsonb, '{}'::jsonb) RETURNING id",
            row,
        )
    )


async def test_purge_waits_for_a_legal_hold(
    http: aiohttp.ClientSession, migrated_pool: asyncpg.Pool
) -> None:
    lemmy = await _serve("lemmy")
    try:
        row = await _activity(migrated_pool)
        evidence = await _evidence(migrated_pool, None)  # named by the payload only
        await migrated_pool.execute(
            "INSERT INTO evidence_hold (evidence_id, held_by, held_why) "
            "VALUES ($1, 'counsel', 'subpoena')",
            evidence,
        )
        effect = Purge(actions(lemmy, http), migrated_pool)
        with pytest.raises(EffectFailed) as failed:
            await effect.run(payload("purge", row=row, evidence=evidence))
        assert failed.value.deferred == 3600 and "legal hold" in failed.value.reason
        assert lemmy.calls == []  # not even looked up
        await migrated_pool.execute(
            "UPDATE evidence_hold SET released_by = 'counsel', released_why = 'closed', "
            "released_at = now()"
        )
        await effect.run(payload("purge", row=row, evidence=evidence))
        assert lemmy.paths()[-1] == "POST /api/v3/admin/purge/post"
    finally:
        assert lemmy.server is not None
        await lemmy.server.close()


async def test_purge_waits_for_an_open_report_draft(
    http: aiohttp.ClientSession, migrated_pool: asyncpg.Pool
) -> None:
    lemmy = await _serve("lemmy")
    try:
        row = await _activity(migrated_pool)
        other = await _activity(migrated_pool)  # the same actor's other activity
        evidence = await _evidence(migrated_pool, row)
        draft = await migrated_pool.fetchval(
            "INSERT INTO report_draft (activity_row, evidence_id, kind, created_by) "
            "VALUES ($1, $2, 'ncmec', 'mod') RETURNING id",
            row,
            evidence,
        )
        effect = Purge(actions(lemmy, http), migrated_pool, recheck_seconds=60)
        for planned in (
            payload("purge", row=row),  # by the activity's row
            payload("purge", row=999_999, evidence=evidence),  # by the evidence
            payload("purge", row=other, obj=None),  # a person's purge: any of its rows
        ):
            with pytest.raises(EffectFailed) as failed:
                await effect.run(planned)
            assert failed.value.deferred == 60 and "report draft" in failed.value.reason
        assert lemmy.calls == []
        # A hold on the same evidence, by the activity row: still deferred once submitted.
        await migrated_pool.execute(
            "UPDATE report_draft SET status = 'submitted', submitted_by = 'mod', "
            "submitted_at = now() WHERE id = $1",
            draft,
        )
        await migrated_pool.execute(
            "INSERT INTO evidence_hold (evidence_id, held_by, held_why) VALUES ($1, 'a', 'b')",
            evidence,
        )
        with pytest.raises(EffectFailed) as failed:
            await effect.run(payload("purge", row=other, obj=None))
        assert failed.value.deferred == 60 and "legal hold" in failed.value.reason
        await migrated_pool.execute("UPDATE evidence_hold SET released_at = now()")
        await effect.run(payload("purge", row=row))
        await effect.run(payload("purge", row=other, obj=None))
        assert lemmy.paths()[-3:] == [
            "POST /api/v3/admin/purge/post",
            "GET /api/v3/resolve_object",
            "POST /api/v3/admin/purge/person",
        ]
        # Another actor's draft does not stop this one.
        stranger = await _activity(migrated_pool, OTHER)
        await migrated_pool.execute(
            "INSERT INTO report_draft (activity_row, kind, created_by) VALUES ($1, 'uk', 'm')",
            stranger,
        )
        await effect.run(payload("purge", row=other, obj=None))
    finally:
        assert lemmy.server is not None
        await lemmy.server.close()


# -- planning ------------------------------------------------------------------------------


def test_planner() -> None:
    planned = payload("purge", evidence=5, delivered=False)
    assert planned["key"] == "verdict:1:purge"
    assert planned["evidence_id"] == 5 and planned["delivered"] is False
    assert planned["category"] == "csam" and planned["rule"] == "csam-exact"
    assert planned["activity"]["object"] == POST
    verdict = Verdict(Disposition.QUARANTINE, "r")
    assert planner("remove")(Decided(1, {"actor": ACTOR, "object": None}, verdict)) == []
    assert planner("ban")(Decided(1, {"actor": None}, verdict)) == []
    assert json.dumps(planned)  # an outbox payload is JSON
    with pytest.raises(ValueError):
        planner("explode")
    assert set(KINDS) == {"ban", "remove", "purge", "report"}
    assert (Ban.irreversible, Remove.irreversible, Purge.irreversible) == (True, True, True)
    assert Report.irreversible is False


async def test_unsupported_software(http: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="gotosocial"):
        for_software("gotosocial", "http://127.0.0.1:1", TOKEN, http)


async def test_a_lemmy_ban_removes_the_persons_content_when_configured(
    http: aiohttp.ClientSession,
) -> None:
    stand_in = await _serve("lemmy")
    try:
        actions = for_software("lemmy", stand_in.url, TOKEN, http, ban_removes_data=True)
        await Ban(actions).run(payload("ban"))
        [ban] = [c for c in stand_in.calls if c.path == "/api/v3/user/ban"]
        assert ban.fields["remove_data"] is True
    finally:
        assert stand_in.server is not None
        await stand_in.server.close()


async def test_lemmy_1_0_is_spoken_to_in_api_v4(
    http: aiohttp.ClientSession, migrated_pool: asyncpg.Pool
) -> None:
    """Lemmy 1.0 ([upstream] lemmy_api = "v4"): the ban is admin/ban, resolve_object
    answers the view itself, and a report goes to the instance's admins alone."""
    stand_in = await _serve("lemmy", version="v4")
    try:
        made = for_software("lemmy", stand_in.url, TOKEN, http, lemmy_api="v4")
        await Ban(made).run(payload("ban"))
        assert stand_in.paths() == ["GET /api/v4/resolve_object", "POST /api/v4/admin/ban"]
        ban = stand_in.calls[-1].fields
        assert (ban["person_id"], ban["ban"], ban["remove_or_restore_data"]) == (7, True, False)
        assert "remove_data" not in ban and "csam" in ban["reason"]
        await Remove(made).run(payload("remove"))
        assert stand_in.paths()[-2:] == ["GET /api/v4/resolve_object", "POST /api/v4/post/remove"]
        assert stand_in.calls[-1].fields["post_id"] == 42
        await Report(made).run(payload("report"))
        assert stand_in.paths()[-1] == "POST /api/v4/post/report"
        assert stand_in.calls[-1].fields["violates_instance_rules"] is True
        await Purge(made, migrated_pool).run(payload("purge", row=3))
        assert stand_in.paths()[-1] == "POST /api/v4/admin/purge/post"
        assert stand_in.calls[-1].fields["post_id"] == 42
        assert not any("/api/v3/" in path for path in stand_in.paths())
        # A version mismatch is not misread as "not found": the v3 path is a 404.
        v3 = for_software("lemmy", stand_in.url, TOKEN, http)
        with pytest.raises(EffectFailed) as failed:
            await Ban(v3).run(payload("ban", row=4))
        assert failed.value.permanent and "404" in failed.value.reason
    finally:
        assert stand_in.server is not None
        await stand_in.server.close()


async def test_lemmy_api_version_is_checked(http: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="v5"):
        for_software("lemmy", "http://127.0.0.1:1", TOKEN, http, lemmy_api="v5")
