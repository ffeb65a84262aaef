"""One door shape (issue 12, point 8): doors are route sets, ``Flow.accept`` is the only
way in, the admin door is a sub-app whose middleware guards every route but the open
ones, and the parts reach handlers typed."""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

import relay.doors
from relay.activity import parse_activity
from relay.doors.admin import AdminDoor
from relay.envelope import Envelope
from tests.conftest import Fediverse, Running, Upstream, wait_for

DOORS = Path(relay.doors.__file__).parent
RELAY = DOORS.parent
OPEN = {"/healthz", "/readyz", "/metrics"}


def admin_requests(door: AdminDoor) -> list[tuple[str, str, bool]]:
    """(method, path, open) for each route of the admin sub-app, parameters filled in."""
    found = []
    for route in door.app().router.routes():
        resource = route.resource
        assert resource is not None
        path = re.sub(r"\{[^}]*\}", "1", resource.canonical)
        found.append((route.method, path, resource.canonical in OPEN))
    return found


async def test_every_admin_route_but_the_open_ones_needs_the_token(
    sluice_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    disabled = await sluice_factory()  # no token configured: the API is off (403)
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "s3cret")
    sluice: Running = await sluice_factory()
    routes = admin_requests(AdminDoor(sluice.parts))
    assert {path for _, path, is_open in routes if is_open} == OPEN
    assert len([r for r in routes if not r[2]]) >= 7  # the API is walked, not skipped
    wrong = {"Authorization": "Bearer not-it"}
    for method, path, is_open in routes:
        async with sluice.session.request(method, sluice.admin_url + path) as response:
            if is_open:
                assert response.status not in (401, 403), (method, path)
                continue
            assert response.status == 401, (method, path, response.status)
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="sluice"'
        async with sluice.session.request(
            method, sluice.admin_url + path, headers=wrong
        ) as response:
            assert response.status == 401, (method, path)
        async with disabled.session.request(method, disabled.admin_url + path) as response:
            assert response.status == 403, (method, path)
    # Fails closed: a path no route knows does not tell what exists without the token.
    async with sluice.session.get(sluice.admin_url + "/_sluice/api/nothing") as response:
        assert response.status == 401


async def test_flow_accept_is_the_way_in(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    alice = fediverse.actor("alice")
    activity = alice.activity()
    body = json.dumps(activity).encode()
    envelope = Envelope(
        method="POST",
        target="/inbox",
        headers=(("Host", "social.example"), ("Content-Type", "application/activity+json")),
        body=body,
        remote="127.0.0.1",
        received_at=time.time(),
    )
    flow = sluice.parts.flow
    stored = await flow.accept(envelope, parse_activity(body), None)
    assert stored is not None and stored.claimed and not stored.cancelled
    [got] = await wait_for(upstream.inbox_posts)
    assert got.body == body
    record = await sluice.parts.store.get(stored.id)
    assert record is not None and record["state"] == "delivered"
    assert record["signer"] is None  # accepted unverified: the row says so
    assert await flow.accept(envelope, parse_activity(body), None) is None  # a duplicate


async def test_the_public_doors_share_the_catch_all(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    """A POST that is no delivery passes through; a delivery on an unknown path is checked."""
    async with sluice.session.post(sluice.url + "/api/v1/statuses", data=b"x=1") as response:
        assert response.status == 202  # the fake instance's answer
    assert [r.path for r in upstream.requests] == ["/api/v1/statuses"]
    alice = fediverse.actor("alice")
    assert (await sluice.post(alice, b"{", path="/f/inbox"))[0] == 400  # ours, not passed
    async with sluice.session.get(sluice.url + "/healthz") as response:
        assert await response.json() == {"status": "ok"}
    for door in (sluice.parts.inbound, sluice.parts.passthrough):
        assert door.routes()  # each door is a route set


def calls(tree: ast.AST) -> set[str]:
    """The names of what a module calls: ``f(...)`` and ``x.f(...)``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                names.add(func.attr)
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


@pytest.mark.parametrize("module", sorted(p.name for p in DOORS.glob("*.py")))
def test_no_door_builds_store_rows(module: str) -> None:
    called = calls(ast.parse((DOORS / module).read_text()))
    assert not called & {"insert", "Item", "submit", "note_blocked"}, module


def test_handlers_reach_the_parts_typed() -> None:
    """No ``app["name"]`` lookups and no ``Any`` where a door finds the process's parts."""
    for path in RELAY.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "app"
            ):
                assert not isinstance(node.slice, ast.Constant), f"{path}:{node.lineno}"
    for path in DOORS.glob("*.py"):
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        assert "Any" not in names, path
