"""The admin API with people's own tokens: who acts is the token's account, a
moderator reaches only review, release and the evidence listing, and decisions and
replays are in the audit log under the account's name (or ``shared-token``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from relay.doors.admin import AdminDoor
from relay.evidence import EvidenceKey, EvidenceStore
from relay.people import Accounts, ApiTokens, AuditLog
from tests.conftest import Fediverse, Running, Upstream, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import Origin, with_media

guarded, origin, evidence_key = media_hold.guarded, media_hold.origin, media_hold.evidence_key

SHARED = "people-shared-token"
PASSWORD = "a long enough password"
API = "/_sluice/api"
#: What a moderator may use; every other guarded route is the admins'.
MODERATOR_ROUTES = {
    ("GET", API + "/me"),
    ("GET", API + "/review"),
    ("POST", API + "/review/{row}/{decision}"),
    ("POST", API + "/quarantine/{row}/release"),
    ("GET", API + "/evidence"),
    ("GET", API + "/evidence/{id}"),
}
OPEN = {"/healthz", "/readyz", "/metrics"}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def people(sluice: Running) -> dict[str, str]:
    """An admin ``ada`` and a moderator ``mo``, each with a token: name -> secret."""
    accounts, tokens = Accounts(sluice.parts.pool), ApiTokens(sluice.parts.pool)
    await accounts.add("ada", "admin", PASSWORD)
    await accounts.add("mo", "moderator", PASSWORD)
    return {name: (await tokens.issue(name)).secret for name in ("ada", "mo")}


async def call(
    sluice: Running, method: str, path: str, headers: dict[str, str], **kwargs: Any
) -> tuple[int, Any]:
    async with sluice.session.request(
        method, sluice.admin_url + path, headers=headers, **kwargs
    ) as response:
        text = await response.text()
        is_json = response.content_type == "application/json"
        return response.status, (await response.json()) if is_json and text else text


async def test_a_persons_token_works_without_the_shared_one_and_the_role_limits_it(
    sluice_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLUICE_ADMIN_TOKEN", raising=False)
    sluice: Running = await sluice_factory()
    secrets = await people(sluice)
    assert await call(sluice, "GET", API + "/me", bearer(secrets["ada"])) == (
        200,
        {"name": "ada", "role": "admin"},
    )
    assert await call(sluice, "GET", API + "/me", bearer(secrets["mo"])) == (
        200,
        {"name": "mo", "role": "moderator"},
    )

    routes = [
        (route.method, route.resource.canonical)
        for route in AdminDoor(sluice.parts).app().router.routes()
        if route.resource is not None
        and route.resource.canonical not in OPEN
        and route.method != "HEAD"  # answered without a body: checked on its own below
    ]
    assert {r for r in routes if r in MODERATOR_ROUTES} == MODERATOR_ROUTES
    for method, canonical in routes:
        path = re.sub(r"\{[^}]*\}", "1", canonical)
        status, answer = await call(sluice, method, path, bearer(secrets["mo"]))
        if (method, canonical) in MODERATOR_ROUTES:
            assert status not in (401, 403), (method, path, status, answer)
        else:
            assert status == 403, (method, path, status)
            assert answer == {"error": "a moderator may not use this; ask an admin"}
        status, answer = await call(sluice, method, path, bearer(secrets["ada"]))
        assert status not in (401, 403), (method, path, status, answer)
    # HEAD is a GET: a moderator cannot probe an admin route with it.
    status, _ = await call(sluice, "HEAD", API + "/dead-letters", bearer(secrets["mo"]))
    assert status == 403

    # No token at all: the shared one is off, so 403 as before; a wrong one: 401.
    status, answer = await call(sluice, "GET", API + "/review", {})
    assert status == 403 and "sluice user token NAME" in answer["error"]
    for wrong in ("sluice_not-a-token", secrets["ada"] + "x", SHARED):
        status, _ = await call(sluice, "GET", API + "/review", bearer(wrong))
        assert status == 401, wrong

    # A revoked token and a disabled account's token stop working.
    assert await ApiTokens(sluice.parts.pool).revoke("mo") == 1
    status, _ = await call(sluice, "GET", API + "/review", bearer(secrets["mo"]))
    assert status == 401
    await Accounts(sluice.parts.pool).set_disabled("ada", True)
    status, _ = await call(sluice, "GET", API + "/me", bearer(secrets["ada"]))
    assert status == 401


@pytest.fixture
def shared_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", SHARED)


async def test_decisions_and_replays_are_audited_under_who_acted(
    shared_token: None,  # before ``guarded``: its Sluice reads the environment
    guarded: Running,
    evidence_key: Path,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,
) -> None:
    sluice = guarded
    secrets = await people(sluice)
    alice = fediverse.actor("alice")

    # A moderator approves a review: the token names the moderator, not the body.
    pen = with_media(alice, origin.url("pen.png"), media_type="image/png")
    assert (await sluice.post(alice, pen))[0] == 202
    held = await media_hold._settled(sluice, pen["id"])
    assert held["state"] == "review"
    status, answer = await call(
        sluice,
        "POST",
        f"{API}/review/{held['id']}/approve",
        bearer(secrets["mo"]),
        json={"moderator": "someone-else", "reason": "a pen on a coaster"},
    )
    assert (status, answer) == (200, {"row": held["id"], "state": "queued"})
    delivered = await wait_for(lambda: upstream.ids() == [pen["id"]])
    assert delivered

    # Another review rejected with the shared token: the body's name is kept as detail.
    other = with_media(alice, origin.url("pen.png"), media_type="image/png")
    assert (await sluice.post(alice, other))[0] == 202
    second = await media_hold._settled(sluice, other["id"])
    status, _ = await call(
        sluice,
        "POST",
        f"{API}/review/{second['id']}/reject",
        bearer(SHARED),
        json={"moderator": "mod-sam"},
    )
    assert status == 200

    # A moderator releases a quarantine: only a reason is asked of a person.
    bridge = with_media(alice, origin.url("bridge-edit.jpg"))
    assert (await sluice.post(alice, bridge))[0] == 202
    quarantined = await media_hold._settled(sluice, bridge["id"])
    assert quarantined["state"] == "quarantined"
    release = f"{API}/quarantine/{quarantined['id']}/release"
    assert await call(sluice, "POST", release, bearer(secrets["mo"]), json={}) == (
        400,
        {"error": 'expected {"reason": "TEXT"}, non-empty'},
    )
    status, answer = await call(
        sluice, "POST", release, bearer(secrets["mo"]), json={"reason": "a bridge, not abuse"}
    )
    assert (status, answer) == (200, {"row": quarantined["id"], "state": "queued"})

    # Replays by an admin's token and by the shared token.
    for secret in (secrets["ada"], SHARED):
        status, _ = await call(
            sluice, "POST", f"{API}/dead-letters/replay", bearer(secret), json={"all": True}
        )
        assert status == 200
    status, _ = await call(
        sluice, "POST", f"{API}/effects/replay", bearer(secrets["ada"]), json={"ids": [42]}
    )
    assert status == 200

    entries = await AuditLog(sluice.parts.pool).entries()
    assert [(e["who"], e["action"], e["why"], e["detail"]) for e in reversed(entries)] == [
        (
            "mo",
            "review.approve",
            "a pen on a coaster",
            {"row": held["id"], "state": "queued", "moderator": "mo"},
        ),
        (
            "shared-token",
            "review.reject",
            None,
            {"row": second["id"], "state": "rejected", "moderator": "mod-sam"},
        ),
        (
            "mo",
            "quarantine.release",
            "a bridge, not abuse",
            {"row": quarantined["id"], "state": "queued", "moderator": "mo"},
        ),
        ("ada", "dead_letters.replay", None, {"ids": "all", "replayed": 0}),
        ("shared-token", "dead_letters.replay", None, {"ids": "all", "replayed": 0}),
        ("ada", "effects.replay", None, {"ids": [42], "replayed": 0}),
    ]
    record = await sluice.parts.store.get(held["id"])
    assert record is not None and record["verdict"]["moderator"] == "mo"
    # The evidence's own log names the person too.
    store = EvidenceStore(
        sluice.parts.pool,
        sluice.parts.config.storage.data_dir / "evidence",
        EvidenceKey.load(evidence_key),
    )
    [read, *_] = await store.audit(quarantined["evidence_id"])
    assert (read["who"], read["why"]) == ("mo", "a bridge, not abuse")

    # The audit log is an admin's to read: filtered by who, not open to a moderator.
    status, answer = await call(sluice, "GET", f"{API}/audit?who=mo", bearer(secrets["ada"]))
    assert status == 200
    assert [e["action"] for e in answer["audit"]] == ["quarantine.release", "review.approve"]
    assert answer["audit"][0]["at"].startswith("20")
    status, _ = await call(sluice, "GET", f"{API}/audit", bearer(secrets["mo"]))
    assert status == 403
