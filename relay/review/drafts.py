"""Report drafts of a confirmed case, rendered from its evidence when someone opens one.

A moderator's confirmation records draft rows (``report_draft``: ncmec, uk or sor); the
body is made here, each time it is asked for, from the evidence record and the reveal
log, so a file revealed after the confirmation still counts as viewed. Nothing here
sends anything: an admin reads the draft and submits it.

- ``ncmec``: the CyberTipline ``<report>`` (``relay.reports.ncmec.report_xml``) and one
  ``<fileDetails>`` per file, in one ``<draft>`` document. NCMEC assigns the report's
  and the files' ids only when the report is sent (``CyberTipline.send``), so the draft
  carries ``reportId`` 0 and ``fileId`` ``(assigned by NCMEC)``.
- ``uk``: ``{"referral": uk.referral(...), "iwf": uk.iwf_reports(...)}``.
- ``sor``: a DSA statement of reasons (``sor.statement``), checked (``sor.check``).

What a relay does not know of the instance (its contact person) comes from
``reporter``; what is left unset reads ``(set [reports] contact)``, never a guess.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from relay.evidence import EvidenceRecord
from relay.reports import ncmec, sor, uk
from relay.reports.errors import ReportError

__all__ = [
    "KINDS",
    "PLACEHOLDER",
    "REPORTER_FIELDS",
    "UNASSIGNED",
    "Draft",
    "ncmec_case",
    "render",
    "statement_of",
]

KINDS = ("ncmec", "uk", "sor")
#: What a draft says where the instance's contact details are not configured.
PLACEHOLDER = "(set [reports] contact)"
#: The keys ``reporter`` may hold (``name`` is split into first and last name when
#: those are not given).
REPORTER_FIELDS = frozenset(
    {"name", "first_name", "last_name", "email", "phone", "instance_name", "instance_url",
     "company_template", "terms_of_service"}
)  # fmt: skip
#: The fileId of a file NCMEC has not yet received.
UNASSIGNED = "(assigned by NCMEC)"

#: A bank category's weight in choosing the strongest match, as the review's decision
#: weighs it when it records the drafts (``relay.review.decide``): csam, terrorism,
#: ncii, then any other.
_SEVERITY = {"csam": 4, "terrorism": 3, "ncii": 2}
#: A statement's content_date may not be earlier (the database's rule).
_EARLIEST_CONTENT = date(2000, 1, 1)


@dataclass(frozen=True)
class Draft:
    """A rendered draft: what the review UI serves for ``filename``."""

    kind: str  # "ncmec" | "uk" | "sor"
    media_type: str  # "application/xml" or "application/json"
    filename: str  # e.g. "ncmec-case-12.xml"
    body: bytes


def render(
    kind: str,
    *,
    record: EvidenceRecord,
    row: int,
    viewed: Collection[int],
    reporter: Mapping[str, str] | None = None,
    jurisdictions: Sequence[str] = (),
    decided_by: str,
    decided_at: datetime,
) -> Draft:
    """The ``kind`` draft of the case of activity ``row``, from its evidence ``record``.

    ``viewed``: the indexes (into ``record.media``) of the files a person revealed,
    from the reveal log: only those are ``fileViewedByEsp``. ``reporter``: the
    instance's contact (``REPORTER_FIELDS``). ``jurisdictions``: where the decision
    applies (ISO codes or "EU"; the statement's territorial scope). ``decided_by``,
    ``decided_at``: the moderator who confirmed the case, and when (an aware time).
    ``ReportError`` names what is missing or wrong.
    """
    if kind not in KINDS:
        raise ReportError(f"unknown report kind {kind!r}: one of {', '.join(KINDS)}")
    case = _case(record, row, viewed, reporter, decided_by, decided_at)
    if kind == "ncmec":
        return Draft(kind, "application/xml", f"ncmec-case-{row}.xml", _ncmec(case.ncmec()))
    if kind == "uk":
        built = case.ncmec()
        document = {
            "referral": uk.referral(built, evidence_id=record.id, retain_until=record.retain_until),
            "iwf": uk.iwf_reports(built, reporter_email=case.contact("email")),
        }
        return Draft(kind, "application/json", f"uk-case-{row}.json", _json(document))
    document = statement_of(
        record=record,
        row=row,
        reporter=reporter,
        jurisdictions=jurisdictions,
        decided_by=decided_by,
        decided_at=decided_at,
    )
    return Draft(kind, "application/json", f"sor-case-{row}.json", _json(document))


def ncmec_case(
    *,
    record: EvidenceRecord,
    row: int,
    viewed: Collection[int],
    reporter: Mapping[str, str] | None = None,
    decided_by: str,
    decided_at: datetime,
) -> ncmec.Case:
    """The case an admin submits to NCMEC (``CyberTipline.send``), as ``render`` drafts it."""
    return _case(record, row, viewed, reporter, decided_by, decided_at).ncmec()


def statement_of(
    *,
    record: EvidenceRecord,
    row: int,
    reporter: Mapping[str, str] | None = None,
    jurisdictions: Sequence[str] = (),
    decided_by: str,
    decided_at: datetime,
) -> dict[str, Any]:
    """The statement of reasons an admin submits to the Transparency Database, checked."""
    case = _case(record, row, (), reporter, decided_by, decided_at)
    statement = sor.statement(case.decision(jurisdictions))
    sor.check(statement)
    return statement


def _case(
    record: EvidenceRecord,
    row: int,
    viewed: Collection[int],
    reporter: Mapping[str, str] | None,
    decided_by: str,
    decided_at: datetime,
) -> _Case:
    if not decided_by.strip():
        raise ReportError("decided_by must name the moderator who confirmed the case")
    if decided_at.tzinfo is None:
        raise ReportError("decided_at must carry its time zone")
    return _Case(record, row, viewed, reporter or {}, decided_by.strip(), decided_at)


class _Case:
    """What the evidence holds about one case, read once per draft."""

    def __init__(
        self,
        record: EvidenceRecord,
        row: int,
        viewed: Collection[int],
        reporter: Mapping[str, str],
        decided_by: str,
        decided_at: datetime,
    ) -> None:
        unknown = set(reporter) - REPORTER_FIELDS
        if unknown:
            raise ReportError(f"reporter has no field {sorted(unknown)[0]!r}")
        self.record = record
        self.row = row
        self.facts: Mapping[str, Any] = record.facts if isinstance(record.facts, dict) else {}
        self.reporter = reporter
        self.decided_by = decided_by
        self.decided_at = decided_at
        wrong = sorted(i for i in viewed if not 0 <= i < len(record.media))
        if wrong:
            raise ReportError(
                f"viewed names file {wrong[0]}, but the evidence holds {len(record.media)}"
            )
        self.viewed = frozenset(viewed)
        activity = self.facts.get("activity")
        if not isinstance(activity, dict):
            raise ReportError(f"evidence {record.id} holds no activity")
        self.activity: Mapping[str, Any] = activity
        self.received = _received(self.facts.get("received_at"), record.id)
        self.signals = list(_signals(self.facts))

    # --- reading the facts ---------------------------------------------------------

    def contact(self, name: str) -> str | None:
        value = self.reporter.get(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    def actor(self) -> str:
        for found in (self.facts.get("actor"), self.activity.get("actor")):
            if isinstance(found, dict):
                found = found.get("id")
            if isinstance(found, str) and found:
                return found
        raise ReportError(f"evidence {self.record.id} names no actor")

    def host(self) -> str | None:
        """The Host the activity was sent to: the instance's name."""
        for name, value in _headers(self.facts.get("headers")):
            if name.lower() == "host" and value:
                return value
        return None

    def pages(self) -> tuple[str, ...]:
        """The post's address: the object's ``url`` (else its ``id``)."""
        found = self.activity.get("object")
        if not isinstance(found, dict):
            return ()
        for value in (found.get("url"), found.get("id")):
            for url in _links(value):
                if url.startswith(("https://", "http://")):
                    return (url,)
        return ()

    def matches(self) -> list[Mapping[str, Any]]:
        return [s for s in self.signals if s.get("kind") == "match"]

    def hashed(self, url: str) -> Mapping[str, Any]:
        """The ``hashed`` signal's detail about the file at ``url`` ({} if none)."""
        for signal in self.signals:
            detail = signal.get("detail")
            if (
                signal.get("kind") == "hashed"
                and isinstance(detail, dict)
                and detail.get("url") == url
            ):
                return detail
        return {}

    def digest(self, index: int, name: str) -> str:
        """The file's sha256 or md5: from its evidence entry (a ``hashed`` signal's
        hashes, or a match on that kind), else from the ``hashed`` signal of its URL."""
        entry = self.record.media[index]
        found = entry.get("hashes")
        hashes: Mapping[str, Any] = found if isinstance(found, dict) else {}
        value = hashes.get(name)
        if not isinstance(value, str) and hashes.get("hash_kind") == name:
            value = hashes.get("value")
        if not isinstance(value, str):
            value = self.hashed(str(entry.get("url") or "")).get(name)
        if not isinstance(value, str) or not value:
            raise ReportError(
                f"evidence {self.record.id} holds no {name} of file {index} "
                f"({entry.get('url') or 'no URL'})"
            )
        return value.lower()

    # --- the report modules' inputs ------------------------------------------------

    def reporter_of(self) -> ncmec.Reporter:
        first, last = self.contact("first_name"), self.contact("last_name")
        name = self.contact("name")
        if name and not (first or last):
            first, _, last = name.rpartition(" ") if " " in name else (name, "", "")
        return ncmec.Reporter(
            first_name=first or PLACEHOLDER,
            last_name=last or PLACEHOLDER,
            email=self.contact("email") or PLACEHOLDER,
            instance_name=self.contact("instance_name") or self.host() or PLACEHOLDER,
            instance_url=self.contact("instance_url") or PLACEHOLDER,
            phone=self.contact("phone"),
            company_template=self.contact("company_template"),
            terms_of_service=self.contact("terms_of_service"),
        )

    def files(self) -> tuple[ncmec.File, ...]:
        files = []
        for index, entry in enumerate(self.record.media):
            url = str(entry.get("url") or "")
            files.append(
                ncmec.File(
                    original_name=_file_name(url, index),
                    location=url,
                    sha256=self.digest(index, "sha256"),
                    md5=self.digest(index, "md5"),
                    publicly_available=True,
                )
            )
        return tuple(files)

    def ncmec(self) -> ncmec.Case:
        if not self.record.media:
            raise ReportError(f"evidence {self.record.id} holds no file")
        actor = self.actor()
        remote = self.facts.get("remote")
        events: tuple[ncmec.IpEvent, ...] = ()
        if isinstance(remote, str) and remote:
            # The server that delivered the activity, not necessarily the user's own
            # address: a federated post reaches the relay through its origin server.
            events = (ncmec.IpEvent(remote, self.received, "Other", possible_proxy=True),)
        user = ncmec.ReportedUser(
            esp_identifier=actor,
            screen_name=_screen_name(actor),
            profile_url=(actor,),
            ip_events=events,
            # An activity the instance sends out (``destination``) is its own user's.
            third_party="destination" not in self.facts,
        )
        files = self.files()
        revealed = {files[i].sha256 for i in self.viewed}
        return ncmec.Case(
            incident_time=self.received,
            summary=self.summary(len(files)),
            reporter=self.reporter_of(),
            reported_user=user,
            files=files,
            urls=self.pages(),
            additional_info=(
                f"Confirmed by moderator {self.decided_by} at "
                f"{ncmec.xml_time(self.decided_at)}. Sluice evidence record "
                f"{self.record.id}, activity row {self.row}."
                + (
                    f" The IP address is that of the server that delivered the activity "
                    f"({remote}), not necessarily the user's."
                    if events
                    else ""
                )
            ),
        ).viewed(revealed)

    def summary(self, count: int) -> str:
        banks = sorted({str(s.get("source")) for s in self.matches() if s.get("source")})
        matched = f", matching {', '.join(banks)}" if banks else ""
        return (
            f"An activity the instance's relay received at {ncmec.xml_time(self.received)} "
            f"carried {count} file{'s' if count != 1 else ''}{matched}; a moderator "
            "confirmed it as apparent child sexual abuse material."
        )

    def decision(self, jurisdictions: Sequence[str]) -> sor.Decision:
        """The moderator's decision: about the category of the strongest bank match
        (found by a bank: automated detection), else a matter of the instance's terms
        (found by no machine)."""
        strongest = _strongest(self.matches())
        category = "unwanted"
        if strongest is not None:
            detail = strongest.get("detail")
            found = detail.get("category") if isinstance(detail, dict) else None
            category = found if isinstance(found, str) and found else category
        count = len(self.record.media)
        files = f"{count} file{'s' if count != 1 else ''}"
        media_types = [self.media_type(i) for i in range(count)]
        ident = self.activity.get("id")
        decision = sor.Decision.for_category(
            category,
            puid=ident if isinstance(ident, str) and ident else f"sluice-row-{self.row}",
            facts=(
                f"A post sent to the instance carried {files} that matched a list of known "
                f"material ({category}); a moderator confirmed the match and the post was "
                "not delivered."
                if strongest is not None
                else f"A post sent to the instance carried {files} that a moderator judged "
                "against the instance's terms; the post was not delivered."
            ),
            content_date=self.content_date(),
            application_date=self.decided_at.astimezone(UTC).date(),
            automated_detection=strongest is not None,
            human=True,
            jurisdictions=tuple(jurisdictions),
            content_type=sor.content_type_for([t for t in media_types if t]),
        )
        # A person decided; a bank at most found it. The receipts Sluice sends for a
        # moderator's decision say the same (relay.effects.receipt).
        return replace(decision, automated_decision="AUTOMATED_DECISION_NOT_AUTOMATED")

    def media_type(self, index: int) -> str | None:
        detail = self.hashed(str(self.record.media[index].get("url") or ""))
        for name in ("mime", "kind"):
            value = detail.get(name)
            if isinstance(value, str) and value and value != "unknown":
                return value
        return None

    def content_date(self) -> date:
        """When the post was published (its ``published``), else when it arrived."""
        found = self.activity.get("object")
        for where in (found if isinstance(found, dict) else {}, self.activity):
            published = where.get("published")
            if isinstance(published, str):
                try:
                    at = datetime.fromisoformat(published.replace("Z", "+00:00"))
                except ValueError:
                    continue
                day = (at.astimezone(UTC) if at.tzinfo else at).date()
                if _EARLIEST_CONTENT <= day <= self.received.date():
                    return day
        return self.received.date()


# --- helpers ----------------------------------------------------------------------------


def _ncmec(case: ncmec.Case) -> bytes:
    """The report and each file's details, in one document (NCMEC takes them as
    separate requests; their ids exist only once it has)."""
    root = ET.Element("draft", {"format": "sluice-ncmec-draft/1"})
    root.append(ET.fromstring(ncmec.report_xml(case)))
    for file in case.files:
        root.append(ET.fromstring(ncmec.file_details_xml(0, UNASSIGNED, file)))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _json(document: Any) -> bytes:
    return json.dumps(document, indent=2, ensure_ascii=False).encode()


def _received(value: Any, evidence_id: int) -> datetime:
    """``received_at`` (seconds since the epoch, as ``flow._facts`` writes it)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if at.tzinfo is not None:
                return at
    raise ReportError(f"evidence {evidence_id} does not say when the activity was received")


def _signals(facts: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    verdict = facts.get("verdict")
    groups = (facts.get("signals"), verdict.get("signals") if isinstance(verdict, dict) else None)
    for group in groups:
        if isinstance(group, list):
            yield from (s for s in group if isinstance(s, dict))


def _strongest(matches: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The match that weighs most: by category, then exact before perceptual, then
    the nearest."""

    def weight(signal: Mapping[str, Any]) -> tuple[int, bool, float]:
        detail = signal.get("detail")
        detail = detail if isinstance(detail, dict) else {}
        distance = detail.get("distance")
        near = float(distance) if isinstance(distance, int | float) else float("inf")
        return (_SEVERITY.get(str(detail.get("category")), 1), detail.get("exact") is True, -near)

    return max(matches, key=weight, default=None)


def _headers(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        value = list(value.items())
    if isinstance(value, list):
        for pair in value:
            if isinstance(pair, list | tuple) and len(pair) == 2:
                name, text = pair
                if isinstance(name, str) and isinstance(text, str):
                    yield name, text


def _links(value: Any) -> Iterator[str]:
    """A ``url``/``id`` value's addresses: a string, a Link (``href``), or a list."""
    for one in value if isinstance(value, list) else [value]:
        if isinstance(one, dict):
            one = one.get("href")
        if isinstance(one, str):
            yield one


def _file_name(url: str, index: int) -> str:
    """The last path segment of the file's URL, else ``file-N``."""
    segment = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])
    return segment or f"file-{index}"


def _screen_name(actor: str) -> str | None:
    """``name@host`` from an actor's URL (``https://host/users/name``, ``/@name``)."""
    parts = urlsplit(actor)
    name = unquote(parts.path.rstrip("/").rpartition("/")[2]).lstrip("@")
    if not parts.hostname or not name:
        return None
    return f"{name}@{parts.hostname}"
