"""Report drafts rendered from an evidence record as ``flow._facts`` writes one: the
CyberTipline XML in NCMEC's order with fileViewedByEsp from the reveal log only, the UK
referral with IWF URL reports, and a statement of reasons the database would take."""

from __future__ import annotations

import base64
import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from relay.evidence import EvidenceRecord
from relay.reports import sor
from relay.reports.errors import ReportError
from relay.review.drafts import PLACEHOLDER, Draft, render
from tests.reports.test_ncmec import (
    FILE_DETAILS,
    INCIDENT_SUMMARY,
    IP_EVENT,
    PERSON,
    REPORT,
    REPORTED,
    REPORTER,
    in_order,
    names,
)
from tests.reports.test_sor import problems
from tests.reports.test_uk import ADDITIONAL, ALL_REFERRALS, IMAGES

ACTOR = "https://origin.example/users/bad"
NOTE = "https://origin.example/users/bad/statuses/1"
PAGE = "https://origin.example/@bad/1"
URLS = [
    "https://files.origin.example/media/holiday%20one.jpg",
    "https://files.origin.example/m/2.png",
]
FILES = [b"first file", b"second file"]
RECEIVED = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
DECIDED = datetime(2026, 12, 4, 9, 30, tzinfo=timezone(timedelta(hours=1)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def hashed(n: int, mime: str) -> dict[str, Any]:
    """The ``hashed`` signal of file n, as the inspector writes it."""
    data = FILES[n]
    return {
        "kind": "hashed",
        "source": "media",
        "detail": {
            "url": URLS[n], "where": "object.attachment", "role": "attachment",
            "kind": mime.split("/")[0], "mime": mime, "sha256": sha256(data), "md5": md5(data),
            "pdq": f"{n:x}" * 64, "quality": 100, "width": 32, "height": 24, "frames": 1,
            "bytes": len(data), "cached": False,
        },
    }  # fmt: skip


def match(n: int, bank: str, category: str, kind: str, value: str, distance: int) -> dict[str, Any]:
    return {
        "kind": "match",
        "source": bank,
        "detail": {
            "matcher": "banks", "category": category, "hash_kind": kind, "distance": distance,
            "entry": 7 + n, "value": value, "variant": 0, "category_rule": f"category:{category}",
            "exact": kind != "pdq", "url": URLS[n], "where": "object.attachment",
            "role": "attachment",
        },
    }  # fmt: skip


def activity() -> dict[str, Any]:
    return {
        "@context": "https://www.w3.org/ns/activitystreams",
        "id": f"{NOTE}/activity",
        "type": "Create",
        "actor": ACTOR,
        "object": {
            "id": NOTE,
            "type": "Note",
            "url": PAGE,
            "published": "2026-12-02T23:30:00Z",
            "attributedTo": ACTOR,
            "attachment": [
                {"type": "Document", "mediaType": "image/jpeg", "url": URLS[0]},
                {"type": "Document", "mediaType": "image/png", "url": URLS[1]},
            ],
        },
    }


def a_record(signals: list[dict[str, Any]] | None = None, **facts: Any) -> EvidenceRecord:
    """A quarantine's evidence: both files matched, file 0 perceptually (its entry holds
    the match, not its MD5: that is in its ``hashed`` signal), file 1 exactly."""
    if signals is None:
        signals = [
            hashed(0, "image/jpeg"),
            match(0, "my-list", "unwanted", "pdq", "0" * 64, 12),
            hashed(1, "image/png"),
            match(1, "known-csam", "csam", "sha256", sha256(FILES[1]), 0),
        ]
    document = activity()
    body = json.dumps(document).encode()
    matches = [s for s in signals if s["kind"] == "match"]
    default: dict[str, Any] = {
        "activity": document,
        "actor": ACTOR,
        "signer": ACTOR,
        "key_id": f"{ACTOR}#main-key",
        "remote": "192.0.2.7",
        "target": "/inbox",
        "headers": [["Host", "instance.example"], ["Content-Type", "application/activity+json"],
                    ["Signature", 'keyId="https://origin.example/users/bad#main-key",...']],
        "body_base64": base64.b64encode(body).decode("ascii"),
        "received_at": RECEIVED.timestamp(),
        "signals": signals,
        "verdict": {"action": "quarantine", "rule": "known", "signals": signals, "timings": {}},
        "media_without_bytes": [],
    }  # fmt: skip
    return EvidenceRecord(
        id=42,
        activity_row=12,
        created_at=RECEIVED,
        retain_until=RECEIVED + timedelta(days=365),
        facts={**default, **facts},
        media=[
            {
                "url": m["detail"]["url"],
                "hashes": {k: m["detail"][k] for k in ("hash_kind", "value", "distance")},
                "size": len(FILES[n]),
                "blob": f"media-{n}",
            }
            for n, m in enumerate(matches)
        ],
    )


def draft(kind: str, record: EvidenceRecord | None = None, **more: Any) -> Draft:
    arguments: dict[str, Any] = {
        "record": record or a_record(),
        "row": 12,
        "viewed": (),
        "decided_by": "Mo Derator",
        "decided_at": DECIDED,
        **more,
    }
    return render(kind, **arguments)


def child(element: ET.Element, tag: str) -> ET.Element:
    found = element.find(tag)
    assert found is not None, tag
    return found


def test_the_ncmec_draft_follows_the_schemas_sequences() -> None:
    out = draft("ncmec", reporter={"name": "Ada Admin", "email": "abuse@instance.example"})
    assert (out.kind, out.media_type, out.filename) == (
        "ncmec",
        "application/xml",
        "ncmec-case-12.xml",
    )
    root = ET.fromstring(out.body)
    assert names(root) == ["report", "fileDetails", "fileDetails"]
    report = child(root, "report")
    assert names(report) == ["incidentSummary", "internetDetails", "reporter",
                             "personOrUserReported", "additionalInfo"]  # fmt: skip
    assert in_order(names(report), REPORT)
    summary = child(report, "incidentSummary")
    assert in_order(names(summary), INCIDENT_SUMMARY)
    # The incident is when the activity arrived, not when it was confirmed.
    assert summary.findtext("incidentDateTime") == "2026-12-03T12:00:00Z"
    assert "known-csam" in (summary.findtext("incidentDateTimeDescription") or "")
    assert report.findtext("internetDetails/webPageIncident/url") == PAGE
    reporter = child(report, "reporter")
    assert in_order(names(reporter), REPORTER)
    person = child(reporter, "reportingPerson")
    assert in_order(names(person), PERSON)
    assert [person.findtext(n) for n in ("firstName", "lastName", "email")] == [
        "Ada", "Admin", "abuse@instance.example"
    ]  # fmt: skip
    assert reporter.findtext("legalURL") == PLACEHOLDER
    user = child(report, "personOrUserReported")
    assert names(user) == ["espIdentifier", "espService", "screenName", "profileUrl",
                           "ipCaptureEvent", "thirdPartyUserReported"]  # fmt: skip
    assert in_order(names(user), REPORTED)
    assert user.findtext("espIdentifier") == ACTOR
    assert user.findtext("espService") == "instance.example"  # the Host it was sent to
    assert user.findtext("screenName") == "bad@origin.example"
    assert user.findtext("profileUrl") == ACTOR
    assert user.findtext("thirdPartyUserReported") == "true"
    event = child(user, "ipCaptureEvent")
    assert in_order(names(event), IP_EVENT)
    assert event.findtext("ipAddress") == "192.0.2.7"
    # The sender's address is its server's, maybe not the user's own.
    assert (event.findtext("eventName"), event.findtext("possibleProxy")) == ("Other", "true")
    assert event.findtext("dateTime") == "2026-12-03T12:00:00Z"
    info = report.findtext("additionalInfo") or ""
    assert "Mo Derator" in info and "evidence record 42" in info

    details = root.findall("fileDetails")
    for n, file in enumerate(details):
        assert in_order(names(file), FILE_DETAILS)
        assert file.findtext("locationOfFile") == URLS[n]
        assert file.findtext("publiclyAvailable") == "true"
        hashes = {e.get("hashType"): e.text for e in file.iter("originalFileHash")}
        assert hashes == {"MD5": md5(FILES[n]), "SHA256": sha256(FILES[n])}
    assert [f.findtext("originalFileName") for f in details] == ["holiday one.jpg", "2.png"]


def test_file_viewed_by_esp_only_for_revealed_files() -> None:
    record = a_record()

    def viewed(*revealed: int) -> list[str | None]:
        root = ET.fromstring(draft("ncmec", record, viewed=revealed).body)
        return [f.findtext("fileViewedByEsp") for f in root.iter("fileDetails")]

    # Matched by a bank, nobody looked: not viewed.
    assert viewed() == ["false", "false"]
    # A reveal after the confirmation counts when the draft is opened again.
    assert viewed(1) == ["false", "true"]
    assert viewed(0, 1) == ["true", "true"]


def test_a_draft_without_a_reporter_says_what_to_set() -> None:
    root = ET.fromstring(draft("ncmec").body)
    person = child(root, "report/reporter/reportingPerson")
    assert {person.findtext(n) for n in ("firstName", "lastName", "email")} == {PLACEHOLDER}
    document = json.loads(draft("uk").body)
    assert document["referral"]["provider"]["contact_email"] == PLACEHOLDER
    # No placeholder goes to the IWF as an address: the report is anonymous instead.
    assert all(r["anonymous"] and r["reporter_email"] is None for r in document["iwf"])


def test_the_uk_draft_holds_the_referral_and_iwf_reports() -> None:
    out = draft("uk", viewed=[0], reporter={"email": "abuse@instance.example"})
    assert (out.media_type, out.filename) == ("application/json", "uk-case-12.json")
    document = json.loads(out.body)
    assert set(document) == {"referral", "iwf"}
    referral = document["referral"]
    assert referral["format"] == "sluice-uk-csea-referral/1"
    assert set(ALL_REFERRALS + IMAGES) <= set(referral["subject"])
    assert set(referral["additional"]) == set(ADDITIONAL)
    assert referral["reason"]["code"] == "csam"
    assert referral["route"]["images_attached"] is False
    assert referral["provider"]["contact_email"] == "abuse@instance.example"
    assert referral["incident"]["detected_at"] == "2026-12-03T12:00:00Z"
    assert referral["incident"]["urls"] == [PAGE]
    assert referral["subject"]["account"] == ACTOR
    assert [(c["location"], c["sha256"], c["md5"], c["viewed_by_provider"])
            for c in referral["content"]] == [
        (URLS[0], sha256(FILES[0]), md5(FILES[0]), True),
        (URLS[1], sha256(FILES[1]), md5(FILES[1]), False),
    ]  # fmt: skip
    assert referral["retention"] == {
        "evidence_id": 42, "retain_until": "2027-12-03T12:00:00Z", "minimum_days": 90
    }  # fmt: skip
    assert "subject.email_addresses|subject.mobile_numbers" in referral["missing"]
    assert [(r["url"], r["kind"]) for r in document["iwf"]] == [
        (URLS[0], "image"), (URLS[1], "image"), (PAGE, "page")
    ]  # fmt: skip
    assert {r["reporter_email"] for r in document["iwf"]} == {"abuse@instance.example"}


def test_the_statement_of_reasons_is_one_the_database_takes() -> None:
    out = draft("sor", jurisdictions=("EU", "GB"))
    assert (out.media_type, out.filename) == ("application/json", "sor-case-12.json")
    statement = json.loads(out.body)
    sor.check(statement)
    assert problems(statement) == []
    # The strongest match is the csam bank's, though the first signal is another list's.
    assert statement["category"] == "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"
    assert statement["category_specification"] == ["KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL"]
    assert statement["decision_ground"] == "DECISION_GROUND_ILLEGAL_CONTENT"
    assert statement["automated_detection"] == "Yes"
    assert statement["automated_decision"] == "AUTOMATED_DECISION_NOT_AUTOMATED"
    assert statement["content_type"] == ["CONTENT_TYPE_IMAGE"]
    assert statement["content_date"] == "2026-12-02"  # the post's published
    assert statement["application_date"] == "2026-12-04"  # decided 09:30+01:00
    assert statement["puid"] == sha256(f"{NOTE}/activity".encode())
    assert len(statement["territorial_scope"]) == 27
    # A moderator's name is no part of a public statement.
    assert "Mo Derator" not in out.body.decode()


def test_the_category_is_the_strongest_match() -> None:
    # A perceptual csam match outweighs an exact match in the instance's own list.
    signals = [
        hashed(0, "image/jpeg"),
        match(0, "my-list", "unwanted", "md5", md5(FILES[0]), 0),
        hashed(1, "image/png"),
        match(1, "known-csam", "csam", "pdq", "0" * 64, 30),
    ]
    statement = json.loads(draft("sor", a_record(signals)).body)
    assert statement["category"] == "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"
    # terrorism outweighs ncii (as the review weighs them when it records drafts).
    heavier = [
        {**s, "detail": {**s["detail"], "category": "ncii"}} if s["kind"] == "match" else s
        for s in signals
    ]
    heavier[3]["detail"]["category"] = "terrorism"
    statement = json.loads(draft("sor", a_record(heavier)).body)
    assert statement["category"] == "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY"
    assert problems(statement) == []
    # Among categories of equal weight, the exact match before a perceptual one.
    others = [
        {**s, "detail": {**s["detail"], "category": "spam"}} if s["kind"] == "match" else s
        for s in signals
    ]
    others[1]["detail"]["category"] = "my-own"
    statement = json.loads(draft("sor", a_record(others)).body)
    assert statement["category"] == "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"
    assert "(my-own)" in statement["decision_facts"]


def test_a_statement_for_another_category() -> None:
    signals = [hashed(0, "video/mp4"), match(0, "my-list", "unwanted", "md5", md5(FILES[0]), 0)]
    statement = json.loads(draft("sor", a_record(signals)).body)
    assert problems(statement) == []
    assert statement["category"] == "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"
    assert statement["decision_ground"] == "DECISION_GROUND_INCOMPATIBLE_CONTENT"
    assert statement["content_type"] == ["CONTENT_TYPE_VIDEO"]
    assert "territorial_scope" not in statement


def test_what_a_draft_cannot_be_made_from() -> None:
    record = a_record()
    with pytest.raises(ReportError, match="unknown report kind 'iwf'"):
        draft("iwf")
    with pytest.raises(ReportError, match="no activity"):
        draft("ncmec", replace(record, facts={**record.facts, "activity": None}))
    with pytest.raises(ReportError, match="when the activity was received"):
        draft("uk", replace(record, facts={**record.facts, "received_at": None}))
    with pytest.raises(ReportError, match="no actor"):
        no_actor = {k: v for k, v in activity().items() if k != "actor"}
        draft("ncmec", replace(record, facts={**record.facts, "actor": None, "activity": no_actor}))
    with pytest.raises(ReportError, match="viewed names file 2"):
        draft("ncmec", viewed=[2])
    with pytest.raises(ReportError, match="time zone"):
        draft("ncmec", decided_at=datetime(2026, 12, 4, 9, 30))
    with pytest.raises(ReportError, match="decided_by"):
        draft("sor", decided_by=" ")
    with pytest.raises(ReportError, match="reporter has no field 'mail'"):
        draft("ncmec", reporter={"mail": "abuse@instance.example"})
    # A perceptual match alone, without its hashed signal: no MD5 to report.
    bare = a_record([match(0, "my-list", "csam", "pdq", "0" * 64, 10)])
    with pytest.raises(ReportError, match="no sha256 of file 0"):
        draft("ncmec", bare)
    assert json.loads(draft("sor", bare).body)["content_type"] == ["CONTENT_TYPE_OTHER"]
    with pytest.raises(ReportError, match="no file"):
        draft("ncmec", replace(record, media=[]))


def test_a_case_no_bank_matched() -> None:
    """Held for review without a match (a video that could not be checked), and
    confirmed: the review's evidence keeps every file with its hashes."""
    held = replace(a_record([hashed(0, "video/mp4")]), media=[
        {"url": URLS[0], "hashes": {"sha256": sha256(FILES[0]), "md5": md5(FILES[0]),
                                    "pdq": None},
         "size": 10, "blob": "media-0"}
    ])  # fmt: skip
    statement = json.loads(draft("sor", held).body)
    assert problems(statement) == []
    # The instance's terms, found by no machine, decided by a person.
    assert statement["category"] == "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"
    assert statement["incompatible_content_ground"] == "The instance's terms of service"
    assert statement["automated_detection"] == "No"
    assert statement["automated_decision"] == "AUTOMATED_DECISION_NOT_AUTOMATED"
    assert statement["content_type"] == ["CONTENT_TYPE_VIDEO"]
    root = ET.fromstring(draft("ncmec", held, viewed=[0]).body)
    assert root.findtext("fileDetails/originalFileName") == "holiday one.jpg"
    assert root.findtext("fileDetails/fileViewedByEsp") == "true"
