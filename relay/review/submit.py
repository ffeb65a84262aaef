"""Submitting a reviewed report draft, when an admin presses submit: never otherwise.

- ``ncmec``: the case goes to NCMEC's CyberTipline API (``[reports] ncmec_url``, the
  test environment by default) with the files' bytes, read from the evidence on the
  record; NCMEC's report id is kept on the draft.
- ``sor``: the statement of reasons goes to the DSA Transparency Database; its uuid is
  kept.
- ``uk``: there is no API to send it to; it is filed by hand.

A draft is submitted once: a second press is refused, not sent again.
"""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import structlog

from relay.config.sluice import ReportsConfig
from relay.evidence import EvidenceError, EvidenceStore
from relay.people import AuditLog, Principal
from relay.reports.errors import ReportError, SubmissionError
from relay.reports.ncmec import CyberTipline
from relay.reports.sor import TransparencyDatabase
from relay.review.drafts import ncmec_case, statement_of
from relay.review.wellness import Exposure

__all__ = ["SUBMITTABLE", "Submissions", "SubmitError"]

log = structlog.get_logger(__name__)

#: The drafts an API takes.
SUBMITTABLE = ("ncmec", "sor")


class SubmitError(Exception):
    """Nothing was submitted (or NCMEC retracted what it got); ``status`` for HTTP."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class Submissions:
    def __init__(
        self,
        pool: asyncpg.Pool,
        evidence: EvidenceStore | None,
        exposure: Exposure,
        config: ReportsConfig,
        jurisdictions: tuple[str, ...] = (),
    ) -> None:
        self.pool = pool
        self.evidence = evidence
        self.exposure = exposure
        self.config = config
        self.jurisdictions = jurisdictions
        self.audit = AuditLog(pool)

    def can(self, kind: str) -> bool:
        """Whether ``kind`` drafts can be submitted here (credentials configured)."""
        if kind == "ncmec":
            return self.config.ncmec_credentials is not None
        if kind == "sor":
            return self.config.dsa_token is not None
        return False

    async def submit(self, row: int, kind: str, who: Principal) -> str:
        """Submit the ``kind`` draft of ``row``; the authority's id for it."""
        if who.role != "admin":
            raise SubmitError("only an admin submits a report", 403)
        if kind not in SUBMITTABLE:
            raise SubmitError(f"{kind} drafts have no API: file them by hand", 400)
        if not self.can(kind):
            raise SubmitError(f"no credentials for {kind}: see [reports] in the config", 400)
        draft = await self.pool.fetchrow(
            "SELECT evidence_id, created_by, created_at, status FROM report_draft "
            "WHERE activity_row = $1 AND kind = $2",
            row,
            kind,
        )
        if draft is None or draft["evidence_id"] is None or self.evidence is None:
            raise SubmitError(f"no {kind} draft for item {row}", 404)
        if draft["status"] != "draft":
            raise SubmitError(f"the {kind} draft of item {row} was {draft['status']} already")
        why = f"submit the {kind} report of row {row}"
        try:
            if kind == "ncmec":
                external = await self._ncmec(row, draft, who, why)
            else:
                external = await self._sor(row, draft, who, why)
        except (EvidenceError, ReportError, SubmissionError) as exc:
            log.warning("report_not_submitted", row=row, kind=kind, error=str(exc))
            await self.audit.record(
                who.name, "report.submit_failed", why=str(exc), detail={"row": row, "kind": kind}
            )
            raise SubmitError(f"the {kind} report was not submitted: {exc}", 502) from exc
        await self.pool.execute(
            "UPDATE report_draft SET status = 'submitted', submitted_by = $3, "
            "submitted_at = now(), external_id = $4 WHERE activity_row = $1 AND kind = $2",
            row,
            kind,
            who.name,
            external,
        )
        await self.audit.record(
            who.name, "report.submit", detail={"row": row, "kind": kind, "id": external}
        )
        log.info("report_submitted", row=row, kind=kind, id=external, who=who.name)
        return external

    async def filed(self, row: int, kind: str, who: Principal, reference: str) -> None:
        """An admin filed the draft by hand (the UK's, or any other): it is no longer a
        draft, so nothing waits for it (a purge, relay.effects.act)."""
        if who.role != "admin":
            raise SubmitError("only an admin marks a report filed", 403)
        done = await self.pool.execute(
            "UPDATE report_draft SET status = 'submitted', submitted_by = $3, "
            "submitted_at = now(), external_id = $4 "
            "WHERE activity_row = $1 AND kind = $2 AND status = 'draft'",
            row,
            kind,
            who.name,
            reference.strip()[:200] or "filed by hand",
        )
        if not str(done).endswith(" 1"):
            raise SubmitError(f"no {kind} draft of item {row} waits to be filed", 409)
        await self.audit.record(
            who.name, "report.filed", why=reference, detail={"row": row, "kind": kind}
        )

    async def _ncmec(self, row: int, draft: asyncpg.Record, who: Principal, why: str) -> str:
        assert self.evidence is not None and self.config.ncmec_credentials is not None
        record, files = await self.evidence.read(
            draft["evidence_id"], who=who.name, why=why, what="submit to NCMEC"
        )
        case = ncmec_case(
            record=record,
            row=row,
            viewed=await self.exposure.viewed(draft["evidence_id"]),
            reporter=self.config.reporter,
            decided_by=draft["created_by"],
            decided_at=draft["created_at"],
        )
        username, _, password = self.config.ncmec_credentials.partition(":")
        api = CyberTipline(self.config.ncmec_url, username, password)
        done = await api.send(case, {hashlib.sha256(data).hexdigest(): data for data in files})
        return str(done.report_id)

    async def _sor(self, row: int, draft: asyncpg.Record, who: Principal, why: str) -> str:
        assert self.evidence is not None and self.config.dsa_token is not None
        record = await self.evidence.read_facts(draft["evidence_id"], who=who.name, why=why)
        statement = statement_of(
            record=record,
            row=row,
            reporter=self.config.reporter,
            jurisdictions=self.jurisdictions,
            decided_by=draft["created_by"],
            decided_at=draft["created_at"],
        )
        api = TransparencyDatabase(self.config.dsa_token, base_url=self.config.dsa_url)
        answer: Any = await api.submit(statement)
        found = answer.get("statements") if isinstance(answer, dict) else answer
        first = found[0] if isinstance(found, list) and found else {}
        return str(first.get("uuid", "")) if isinstance(first, dict) else ""
