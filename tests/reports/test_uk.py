"""UK drafts: the interim code's Appendix 6 fields, every one named, what is missing
listed; IWF URL reports for what is on the public web."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from relay.reports import ncmec, uk
from relay.reports.errors import ReportError
from tests.reports.test_ncmec import a_case

# Appendix 6 §2 (shared/seeds/004, "Required data" and "Additional data"), as the
# draft names them.
ALL_REFERRALS = ["email_addresses", "mobile_numbers", "linked_email_addresses",
                 "mobile_ip_details", "port_numbers"]  # fmt: skip
IMAGES = ["upload_ip_addresses", "login_ip_addresses"]
ADDITIONAL = ["billing_addresses", "credit_card_details", "cookies", "device_ids", "recipients"]


def test_a_referral_names_every_appendix_6_field() -> None:
    case = a_case()
    document = uk.referral(case, evidence_id=42)
    json.dumps(document)  # JSON as it is
    assert document["format"] == "sluice-uk-csea-referral/1"
    assert set(ALL_REFERRALS + IMAGES) <= set(document["subject"])
    assert set(document["additional"]) == set(ADDITIONAL)
    assert document["route"]["authority"] == "National Crime Agency"
    assert document["route"]["images_attached"] is False
    assert document["reason"]["code"] == "csam"
    assert document["subject"]["account"] == "https://origin.example/users/bad"
    assert document["subject"]["upload_ip_addresses"] == [
        {"address": "192.0.2.7", "port": 44321, "event": "Upload",
         "at": "2026-12-03T12:00:00Z", "possible_proxy": None}
    ]  # fmt: skip
    assert document["subject"]["port_numbers"] == [44321]
    assert [c["sha256"] for c in document["content"]] == [f.sha256 for f in case.files]
    assert all("bytes" not in c and "data" not in c for c in document["content"])
    # 90 days at least (Appendix 6 §4), from the incident.
    assert document["retention"] == {
        "evidence_id": 42, "retain_until": "2027-03-03T12:00:00Z", "minimum_days": 90
    }  # fmt: skip
    # What a relay cannot know is listed for the admin to add from the instance.
    assert document["missing"] == [
        "subject.email_addresses|subject.mobile_numbers",
        "subject.linked_email_addresses",
        "subject.mobile_ip_details",
        "subject.login_ip_addresses",
    ]
    assert document["chat"] is None


def test_what_the_instance_knows_fills_the_referral() -> None:
    at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    logins = tuple(
        ncmec.IpEvent(f"198.51.100.{n}", at + timedelta(hours=n), "Login", port=5000 + n)
        for n in range(3)
    )
    contacts = uk.Contacts(
        email_addresses=("bad@mail.example",),
        linked_email_addresses=("other@mail.example",),
        login_ip_events=logins,
        mobile_ip_events=(ncmec.IpEvent("203.0.113.9", at, "Other", port=6000),),
    )
    document = uk.referral(a_case(), contacts=contacts, ncmec_report_id=1000, uk_linked=True)
    assert document["missing"] == []
    assert [e["address"] for e in document["subject"]["login_ip_addresses"]] == [
        "198.51.100.0", "198.51.100.1", "198.51.100.2"
    ]  # fmt: skip
    assert document["subject"]["port_numbers"] == [5000, 5001, 5002, 6000, 44321]
    assert document["route"]["already_reported_to_ncmec"] is True
    assert document["route"]["uk_linked"] is True

    chat = uk.referral(a_case(), reason="grooming", contacts=contacts, chat={"start": "x"})
    assert chat["reason"]["code"] == "grooming"
    assert chat["missing"] == ["chat.end", "chat.ip_per_line", "chat.context"]


def test_a_referral_refuses_a_short_retention_and_unknown_reasons() -> None:
    case = a_case()
    with pytest.raises(ReportError, match="90 days"):
        uk.referral(case, retain_until=case.incident_time + timedelta(days=89))
    with pytest.raises(ReportError, match="reason"):
        uk.referral(case, reason="spam")


def test_iwf_reports_one_per_public_url() -> None:
    case = a_case()
    private = replace(case.files[1], publicly_available=False)
    case = replace(case, files=(case.files[0], private))
    reports = uk.iwf_reports(case)
    assert [(r["url"], r["kind"]) for r in reports] == [
        ("https://origin.example/media/0.png", "image"),
        ("https://origin.example/@bad/1", "page"),
    ]
    assert all(r["anonymous"] and r["reporter_email"] is None for r in reports)
    assert set(reports[0]) == {
        "format", "url", "kind", "description", "where_on_page", "how_found", "detected_at",
        "anonymous", "reporter_email",
    }  # fmt: skip
    named = uk.iwf_reports(case, reporter_email="abuse@instance.example")
    assert named[0]["anonymous"] is False
