"""The review UI over HTTP, as a browser uses it: a login, CSRF tokens, previews that
are never the original, reveals that are logged, and the three decisions."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from relay.banks import ALLOW
from relay.media.hashes import hash_media
from tests.conftest import Fediverse, Running, Upstream, settled_row, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import Origin
from tests.review.support import PICTURES, PREFIX, Reviewer, hold, reviewing

origin, evidence_key = media_hold.origin, media_hold.evidence_key


@pytest.fixture
async def held(sluice_factory: Any, evidence_key: Path) -> Running:
    return await reviewing(sluice_factory, evidence_key)


@pytest.fixture
async def mo(held: Running) -> AsyncIterator[Reviewer]:
    reviewer = Reviewer(held)
    assert await reviewer.login("mo") == 200
    yield reviewer
    await reviewer.close()


async def test_nothing_without_a_login_and_no_post_without_the_forms_token(
    held: Running, fediverse: Fediverse, origin: Origin
) -> None:
    _, record = await hold(held, fediverse, origin, "red.jpg")
    row = record["id"]
    anonymous = Reviewer(held)
    try:
        for path in (PREFIX, f"{PREFIX}/item/{row}", f"{PREFIX}/item/{row}/preview/0"):
            status, _, body = await anonymous.raw(path)
            assert status == 303, path  # to the login form, nothing else
            assert body == b"" or b"red" not in body
        status, _, _ = await anonymous.post(f"{PREFIX}/item/{row}/reveal/0", {}, csrf="x")
        assert status == 403
        # A wrong password, then a right one.
        await anonymous.get(PREFIX + "/login")
        status, _, text = await anonymous.post(
            PREFIX + "/login", {"name": "mo", "password": "not the password"}
        )
        assert status == 401 and "Wrong name or password" in text
        assert await anonymous.login("mo") == 200
        # Logged in, a POST with another token is refused and changes nothing.
        status, _, text = await anonymous.post(
            f"{PREFIX}/item/{row}/decide", {"decision": "confirm"}, csrf="forged"
        )
        assert status == 403 and "form" in text
        assert (await held.parts.store.get(row))["state"] == "review"
        reveals = await held.parts.pool.fetchval("SELECT count(*) FROM reveal")
        assert reveals == 0
    finally:
        await anonymous.close()


async def test_the_login_form_is_rate_limited(held: Running) -> None:
    reviewer = Reviewer(held)
    try:
        await reviewer.get(PREFIX + "/login")
        statuses = [
            (await reviewer.post(PREFIX + "/login", {"name": "mo", "password": "wrong"}))[0]
            for _ in range(6)
        ]
        assert statuses[:5] == [401] * 5 and statuses[5] == 429
    finally:
        await reviewer.close()


async def test_the_queue_orders_by_severity_then_age_and_filters(
    held: Running, fediverse: Fediverse, origin: Origin, mo: Reviewer
) -> None:
    _, first = await hold(held, fediverse, origin, "red.jpg")
    _, second = await hold(held, fediverse, origin, "green.jpg", author="bob")
    status, page = await mo.get(PREFIX)
    assert status == 200
    assert page.index(f"#{first['id']}") < page.index(f"#{second['id']}")
    assert "2</small>" in page
    # By origin: both come from the same fediverse host; by rule: both.
    host = first["actor"].split("/")[2]
    status, page = await mo.get(f"{PREFIX}?origin={host}&rule=nothing-like-this")
    assert "Nothing is waiting" in page
    status, page = await mo.get(f"{PREFIX}?category=test")
    assert f"#{first['id']}" in page and f"#{second['id']}" in page
    status, page = await mo.get(f"{PREFIX}?category=csam")
    assert "Nothing is waiting" in page


async def test_previews_are_small_blurred_and_grey_and_the_original_needs_a_logged_reveal(
    held: Running, fediverse: Fediverse, origin: Origin, mo: Reviewer
) -> None:
    _, record = await hold(held, fediverse, origin, "red.jpg")
    row, original = record["id"], PICTURES["red.jpg"]
    status, page = await mo.get(f"{PREFIX}/item/{row}")
    assert status == 200
    assert f"{PREFIX}/item/{row}/preview/0" in page
    assert "/original/0" not in page

    status, kind, body = await mo.raw(f"{PREFIX}/item/{row}/preview/0")
    assert status == 200 and kind == "image/jpeg"
    assert body != original and original not in body
    shown = Image.open(io.BytesIO(body))
    assert max(shown.size) <= 320 and shown.mode == "L"  # small, greyscale
    assert hash_media(body).pdq[0].hash != hash_media(original).pdq[0].hash

    # The original: refused before a reveal.
    status, _, body = await mo.raw(f"{PREFIX}/item/{row}/original/0")
    assert status == 403 and original not in body

    status, where, _ = await mo.post(f"{PREFIX}/item/{row}/reveal/0", {})
    assert status == 303 and where.endswith(f"/item/{row}#file-0")
    status, kind, body = await mo.raw(f"{PREFIX}/item/{row}/original/0")
    assert status == 200 and body == original and kind == "image/jpeg"

    [reveal] = await held.parts.pool.fetch(
        "SELECT who, media, activity_row, until > at AS open FROM reveal"
    )
    assert (reveal["who"], reveal["media"], reveal["activity_row"], reveal["open"]) == (
        "mo",
        0,
        row,
        True,
    )
    audit = await held.parts.pool.fetch(
        "SELECT who, action FROM audit_log WHERE action = 'review.reveal'"
    )
    assert [(a["who"], a["action"]) for a in audit] == [("mo", "review.reveal")]
    # Every evidence read (the preview, the original) is in the evidence's own log.
    reads = await held.parts.pool.fetch(
        "SELECT who, what, outcome FROM evidence_access WHERE evidence_id = $1 ORDER BY id",
        record["evidence_id"],
    )
    assert [(r["who"], r["what"], r["outcome"]) for r in reads] == [
        ("mo", "preview of file 0", "ok"),
        ("mo", "reveal of file 0", "ok"),
    ]
    # The reveal is counted against the moderator's day.
    status, page = await mo.get(f"{PREFIX}/item/{row}")
    assert "1 of 100 reveals" in page and "revealed file 0" in page


async def test_a_reveal_ends(
    sluice_factory: Any, evidence_key: Path, fediverse: Fediverse, origin: Origin
) -> None:
    sluice = await reviewing(sluice_factory, evidence_key, review={"reveal_seconds": 1})
    _, record = await hold(sluice, fediverse, origin, "green.jpg")
    reviewer = Reviewer(sluice)
    try:
        assert await reviewer.login("mo") == 200
        await reviewer.get(f"{PREFIX}/item/{record['id']}")
        await reviewer.post(f"{PREFIX}/item/{record['id']}/reveal/0", {})
        assert (await reviewer.raw(f"{PREFIX}/item/{record['id']}/original/0"))[0] == 200

        async def closed() -> bool:
            return (await reviewer.raw(f"{PREFIX}/item/{record['id']}/original/0"))[0] == 403

        await wait_for(closed, timeout=5)
    finally:
        await reviewer.close()


async def test_settings_change_the_preview_and_are_the_moderators_own(
    held: Running, fediverse: Fediverse, origin: Origin, mo: Reviewer
) -> None:
    _, record = await hold(held, fediverse, origin, "blue.jpg")
    await mo.get(PREFIX + "/settings")
    status, _, _ = await mo.post(PREFIX + "/settings", {"blur": "0", "muted": "on"})
    assert status == 303
    status, _, body = await mo.raw(f"{PREFIX}/item/{record['id']}/preview/0")
    assert Image.open(io.BytesIO(body)).mode == "RGB"  # greyscale turned off
    status, _, text = await mo.post(PREFIX + "/settings", {"blur": "99"})
    assert status == 400 and "0 to 64" in text
    own = await held.parts.pool.fetchval("SELECT settings FROM account WHERE name = 'mo'")
    assert json.loads(own) == {"blur": 0, "greyscale": False, "autoplay": False, "muted": True}
    assert await held.parts.pool.fetchval("SELECT settings FROM account WHERE name = 'ada'") == "{}"


async def test_confirm_quarantines_drafts_reports_and_banks_on_request(
    held: Running, fediverse: Fediverse, origin: Origin, upstream: Upstream, mo: Reviewer
) -> None:
    _, record = await hold(held, fediverse, origin, "red.jpg")
    row = record["id"]
    await mo.get(f"{PREFIX}/item/{row}")
    await mo.post(f"{PREFIX}/item/{row}/reveal/0", {})
    await mo.get(f"{PREFIX}/item/{row}")
    status, where, _ = await mo.post(
        f"{PREFIX}/item/{row}/decide",
        {"decision": "confirm", "why": "known material", "bank": "on"},
    )
    assert status == 303
    after = await held.parts.store.get(row)
    assert after["state"] == "quarantined"
    assert after["verdict"]["moderator"] == "mo"
    assert after["verdict"]["moderator_action"] == "confirm"
    assert after["verdict"]["rule"].startswith("moderator: confirmed by mo")
    assert after["evidence_id"] == record["evidence_id"]
    body = await held.parts.pool.fetchval("SELECT body FROM activity WHERE id = $1", row)
    assert body is None  # the evidence keeps it
    drafts = await held.parts.pool.fetch(
        "SELECT kind, created_by FROM report_draft WHERE activity_row = $1 ORDER BY kind", row
    )
    assert [(d["kind"], d["created_by"]) for d in drafts] == [
        ("ncmec", "mo"),
        ("sor", "mo"),
        ("uk", "mo"),
    ]
    sha256 = hash_media(PICTURES["red.jpg"]).sha256
    banked = await held.parts.pool.fetchval(
        "SELECT count(*) FROM bank_entry e JOIN bank b ON b.id = e.bank_id "
        "WHERE b.name = 'confirmed-test' AND b.category = 'test'"
    )
    assert banked >= 2  # sha256, md5 and PDQ of the matched file
    # The NCMEC draft: the file the moderator revealed is marked viewed.
    status, page = await mo.get(where.split("?")[0])
    assert "ncmec" in page
    # Quarantined, its row keeps no signals in clear: the files are the evidence's.
    assert f"{PREFIX}/item/{row}/original/0" in page  # revealed a moment ago
    status, kind, _ = await mo.raw(f"{PREFIX}/item/{row}/preview/0")
    assert (status, kind) == (200, "image/jpeg")
    status, kind, xml = await mo.raw(f"{PREFIX}/item/{row}/report/ncmec")
    assert status == 200 and kind == "application/xml"
    assert b"<fileViewedByEsp>true</fileViewedByEsp>" in xml
    assert sha256.encode() in xml
    status, kind, sor = await mo.raw(f"{PREFIX}/item/{row}/report/sor")
    assert (
        status == 200
        and json.loads(sor)["automated_decision"] == "AUTOMATED_DECISION_NOT_AUTOMATED"
    )
    status, kind, uk = await mo.raw(f"{PREFIX}/item/{row}/report/uk")
    assert status == 200 and "referral" in json.loads(uk)
    assert upstream.ids() == []
    actions = {
        a["action"]
        for a in await held.parts.pool.fetch("SELECT action FROM audit_log WHERE who = 'mo'")
    }
    assert {"ui.login", "review.reveal", "review.confirm", "report.draft"} <= actions


async def test_a_false_positive_is_delivered_and_the_same_picture_then_passes(
    held: Running, fediverse: Fediverse, origin: Origin, upstream: Upstream, mo: Reviewer
) -> None:
    activity, record = await hold(held, fediverse, origin, "green.jpg")
    row = record["id"]
    await mo.get(f"{PREFIX}/item/{row}")
    status, _, text = await mo.post(f"{PREFIX}/item/{row}/decide", {"decision": "false_positive"})
    assert status == 400 and "reason" in text  # a reason is needed
    status, _, _ = await mo.post(
        f"{PREFIX}/item/{row}/decide", {"decision": "false_positive", "why": "a flag"}
    )
    assert status == 303
    assert (await settled_row(held, activity["id"]))["state"] == "delivered"
    allowed = await held.parts.pool.fetch(
        "SELECT e.kind FROM bank_entry e JOIN bank b ON b.id = e.bank_id WHERE b.name = $1", ALLOW
    )
    assert [a["kind"] for a in allowed] == ["sha256"]
    await wait_for(lambda: "allow" in held.parts.banks.index.counts(), timeout=5)

    again, later = await hold(held, fediverse, origin, "green.jpg", author="bob")
    assert later["state"] == "delivered"
    assert any(s["kind"] == "allowed" for s in later["verdict"]["signals"])
    assert upstream.ids() == [activity["id"], again["id"]]
    # Another picture of the same bank still holds.
    _, other = await hold(held, fediverse, origin, "blue.jpg")
    assert other["state"] == "review"


async def test_escalated_items_wait_for_an_admin(
    held: Running, fediverse: Fediverse, origin: Origin, upstream: Upstream, mo: Reviewer
) -> None:
    activity, record = await hold(held, fediverse, origin, "blue.jpg")
    row = record["id"]
    await mo.get(f"{PREFIX}/item/{row}")
    status, _, _ = await mo.post(
        f"{PREFIX}/item/{row}/decide", {"decision": "escalate", "why": "not sure"}
    )
    assert status == 303
    status, page = await mo.get(f"{PREFIX}?escalated=1")
    assert f"#{row}" in page and "escalated" in page
    status, _, text = await mo.post(
        f"{PREFIX}/item/{row}/decide", {"decision": "false_positive", "why": "fine"}
    )
    assert status == 403 and "an admin decides" in text
    ada = Reviewer(held)
    try:
        assert await ada.login("ada") == 200
        await ada.get(f"{PREFIX}/item/{row}")
        status, _, _ = await ada.post(
            f"{PREFIX}/item/{row}/decide", {"decision": "false_positive", "why": "fine"}
        )
        assert status == 303
    finally:
        await ada.close()
    assert (await settled_row(held, activity["id"]))["state"] == "delivered"


async def test_the_api_takes_the_same_decisions(
    held: Running, fediverse: Fediverse, origin: Origin
) -> None:
    from relay.people import ApiTokens

    _, record = await hold(held, fediverse, origin, "red.jpg")
    token = (await ApiTokens(held.parts.pool).issue("mo")).secret
    async with held.session.post(
        f"{held.admin_url}/_sluice/api/review/{record['id']}/confirm",
        json={"reason": "known"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 200
        assert await response.json() == {
            "row": record["id"],
            "state": "quarantined",
            "drafts": ["ncmec", "uk", "sor"],
            "banked": 0,
        }


async def test_the_login_limits_and_password_length_are_the_configs(
    sluice_factory: Any, evidence_key: Path
) -> None:
    from relay.people import Accounts, PeopleError

    sluice = await reviewing(
        sluice_factory,
        evidence_key,
        admin={"logins_per_name_per_minute": 2, "min_password_length": 30},
    )
    with pytest.raises(PeopleError, match="at least 30"):
        await Accounts.configured(sluice.parts.pool, sluice.parts.config.admin).add(
            "short", "moderator", "only twenty-two chars"
        )
    reviewer = Reviewer(sluice)
    try:
        await reviewer.get(PREFIX + "/login")
        statuses = [
            (await reviewer.post(PREFIX + "/login", {"name": "mo", "password": "wrong"}))[0]
            for _ in range(3)
        ]
        assert statuses == [401, 401, 429]
    finally:
        await reviewer.close()
