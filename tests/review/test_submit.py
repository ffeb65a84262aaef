"""An admin submits a reviewed draft, and only then: NCMEC's CyberTipline (against a
stand-in written from NCMEC's documentation) and the DSA Transparency Database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Fediverse
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import Origin
from tests.reports import test_ncmec, test_sor
from tests.reports.test_ncmec import StandIn as CyberTip
from tests.reports.test_sor import StandIn as Database
from tests.review.support import PICTURES, PREFIX, Reviewer, hold, reviewing

origin, evidence_key = media_hold.origin, media_hold.evidence_key
cybertip, database = test_ncmec.cybertip, test_sor.database


async def test_an_admin_submits_a_confirmed_case_once_a_moderator_cannot(
    sluice_factory: Any,
    evidence_key: Path,
    fediverse: Fediverse,
    origin: Origin,
    cybertip: CyberTip,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cybertip.server is not None and database.server is not None
    monkeypatch.setenv("SLUICE_NCMEC_CREDENTIALS", f"{test_ncmec.USERNAME}:{test_ncmec.PASSWORD}")
    monkeypatch.setenv("SLUICE_DSA_TOKEN", test_sor.TOKEN)
    sluice = await reviewing(
        sluice_factory,
        evidence_key,
        reports={
            "contact_name": "Ada Admin",
            "contact_email": "abuse@social.example",
            "ncmec_url": str(cybertip.server.make_url("/ispws")),
            "dsa_url": str(database.server.make_url("/")),
        },
        receipts={"jurisdictions": ["US", "EU"]},
    )
    _, record = await hold(sluice, fediverse, origin, "red.jpg")
    row = record["id"]
    mo, ada = Reviewer(sluice), Reviewer(sluice)
    try:
        assert await mo.login("mo") == 200
        await mo.get(f"{PREFIX}/item/{row}")
        await mo.post(f"{PREFIX}/item/{row}/reveal/0", {})
        await mo.get(f"{PREFIX}/item/{row}")
        status, _, _ = await mo.post(f"{PREFIX}/item/{row}/decide", {"decision": "confirm"})
        assert status == 303
        assert cybertip.calls == [] and database.received == []  # nothing sent by itself

        status, page = await mo.get(f"{PREFIX}/item/{row}")
        assert "submit-ncmec" not in page  # a moderator has no such button
        status, _, text = await mo.post(f"{PREFIX}/item/{row}/report/ncmec/submit", {})
        assert status == 403 and "admin" in text
        assert cybertip.calls == []

        assert await ada.login("ada") == 200
        status, page = await ada.get(f"{PREFIX}/item/{row}")
        assert 'id="submit-ncmec"' in page and 'id="submit-sor"' in page
        assert 'id="submit-uk"' not in page  # no API: filed by hand
        status, where, _ = await ada.post(f"{PREFIX}/item/{row}/report/ncmec/submit", {})
        assert status == 303, where
        assert cybertip.calls == ["submit", "upload", "fileinfo", "finish"]
        [report] = cybertip.reports.values()
        assert report["done"]
        [(name, data)] = report["files"].values()
        assert data == PICTURES["red.jpg"] and name.endswith(".jpg")
        reporter = report["xml"].find("reporter/reportingPerson")
        assert reporter is not None and reporter.findtext("email") == "abuse@social.example"
        assert report["details"][0].findtext("fileViewedByEsp") == "true"

        status, _, _ = await ada.post(f"{PREFIX}/item/{row}/report/sor/submit", {})
        assert status == 303
        [batch] = database.received
        [statement] = batch["statements"]
        assert statement["automated_decision"] == "AUTOMATED_DECISION_NOT_AUTOMATED"

        drafts = await sluice.parts.pool.fetch(
            "SELECT kind, status, submitted_by, external_id FROM report_draft "
            "WHERE activity_row = $1 ORDER BY kind",
            row,
        )
        assert [tuple(d) for d in drafts] == [
            ("ncmec", "submitted", "ada", "1000"),
            ("sor", "submitted", "ada", "uuid-1"),
            ("uk", "draft", None, None),
        ]
        # Submitted once: a second press sends nothing.
        await ada.get(f"{PREFIX}/item/{row}")
        status, _, text = await ada.post(f"{PREFIX}/item/{row}/report/ncmec/submit", {})
        assert status == 409 and "already" in text
        assert len(cybertip.reports) == 1
        audit = await sluice.parts.pool.fetch(
            "SELECT who, detail->>'kind' AS kind FROM audit_log WHERE action = 'report.submit' "
            "ORDER BY id"
        )
        assert [(a["who"], a["kind"]) for a in audit] == [("ada", "ncmec"), ("ada", "sor")]
        reads = await sluice.parts.pool.fetch(
            "SELECT who, what FROM evidence_access WHERE what = 'submit to NCMEC'"
        )
        assert [(r["who"], r["what"]) for r in reads] == [("ada", "submit to NCMEC")]
        # The UK draft has no API: an admin marks it filed, with the NCA's reference.
        await mo.get(f"{PREFIX}/item/{row}")
        status, _, _ = await mo.post(f"{PREFIX}/item/{row}/report/uk/filed", {"reference": "x"})
        assert status == 403
        await ada.get(f"{PREFIX}/item/{row}")
        status, _, _ = await ada.post(
            f"{PREFIX}/item/{row}/report/uk/filed", {"reference": "NCA-2026-42"}
        )
        assert status == 303
        filed = await sluice.parts.pool.fetchrow(
            "SELECT status, submitted_by, external_id FROM report_draft "
            "WHERE activity_row = $1 AND kind = 'uk'",
            row,
        )
        assert tuple(filed) == ("submitted", "ada", "NCA-2026-42")
    finally:
        await mo.close()
        await ada.close()
