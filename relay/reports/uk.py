"""UK drafts: a CSEA referral with the interim code's Appendix 6 data, and IWF URL reports.

Since 7 April 2026 UK providers must report detected CSEA content to the National Crime
Agency (Online Safety Act 2023 s.66; SI 2026/268), through its portal or API; a
provider outside the UK reports only UK-linked content, and content already reported to
NCMEC need not be reported again. The Home Office interim code (Appendix 6) lists what
a referral should carry; the draft names every one of its fields, null or empty when
Sluice does not hold it, and lists the required ones it lacks in ``missing``, so the
admin sees at once what to add from the instance. It carries no image: "companies
should not send indecent images of children as part of their referral"; the authority
asks for them, and the evidence keeps them.

Material reachable on the public web goes to the IWF as URL reports (the IWF needs only
the URL), one per URL. Nothing here is sent: the admin files the drafts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from relay.reports.errors import ReportError
from relay.reports.ncmec import Case, IpEvent, xml_time

__all__ = [
    "IWF_FORMAT",
    "MINIMUM_RETENTION",
    "REASONS",
    "UK_FORMAT",
    "Contacts",
    "iwf_reports",
    "referral",
]

UK_FORMAT = "sluice-uk-csea-referral/1"
IWF_FORMAT = "sluice-iwf-url-report/1"

#: Appendix 6 §1: when a report is needed.
REASONS = {
    "csam": "child sexual abuse material created, stored and/or shared using the service",
    "grooming": "suspected grooming behaviour or the livestreaming of child sexual abuse",
    "coercion": "suspected coercion or blackmail involving children",
}
#: Appendix 6 §4 and Principle 12: material relating to a report is kept at least this long.
MINIMUM_RETENTION = timedelta(days=90)
#: Appendix 6 §2 asks for at least three recent login addresses.
_LOGINS_WANTED = 3


@dataclass(frozen=True)
class Contacts:
    """What the instance (not the relay) may know of the account: Appendix 6's
    account data. A remote account's are usually unknown to both."""

    email_addresses: tuple[str, ...] = ()
    mobile_numbers: tuple[str, ...] = ()
    linked_email_addresses: tuple[str, ...] = ()
    login_ip_events: tuple[IpEvent, ...] = ()
    mobile_ip_events: tuple[IpEvent, ...] = ()
    device_ids: tuple[str, ...] = ()
    billing_addresses: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()


def referral(
    case: Case,
    *,
    reason: str = "csam",
    contacts: Contacts | None = None,
    authority: str = "National Crime Agency",
    uk_linked: bool | None = None,
    ncmec_report_id: int | None = None,
    evidence_id: int | None = None,
    retain_until: datetime | None = None,
    chat: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Appendix 6 referral for ``case`` as a JSON document.

    ``uk_linked``: whether the content has a UK link (None: not assessed); a provider
    outside the UK reports only UK-linked content. ``ncmec_report_id``: a CyberTipline
    report already made about it (the NCA need not be told again). ``chat``: for a
    chat-based report, ``{"start", "end", "ip_per_line", "context"}``.
    """
    if reason not in REASONS:
        raise ReportError(f"reason must be one of {sorted(REASONS)}")
    contacts = contacts or Contacts()
    user = case.reported_user
    events = [*user.ip_events, *(f.ip_event for f in case.files if f.ip_event)]
    upload_events = [_ip(e) for e in events if e.event == "Upload"]
    logins = [_ip(e) for e in (*user.ip_events, *contacts.login_ip_events) if e.event == "Login"]
    seen = (*events, *contacts.login_ip_events, *contacts.mobile_ip_events)
    ports = sorted({e.port for e in seen if e.port is not None})
    floor = case.incident_time + MINIMUM_RETENTION
    if retain_until is not None and retain_until < floor:
        raise ReportError("retain_until is sooner than the 90 days Appendix 6 asks for")
    document: dict[str, Any] = {
        "format": UK_FORMAT,
        "route": {
            "authority": authority,
            "basis": "Online Safety Act 2023 s.66; SI 2026/268 (in force 7 April 2026); "
            "Home Office interim code of practice on online CSEA, Appendix 6",
            "uk_linked": uk_linked,
            "already_reported_to_ncmec": ncmec_report_id is not None,
            "ncmec_report_id": ncmec_report_id,
            "images_attached": False,
        },
        "provider": {
            "name": case.reporter.instance_name,
            "url": case.reporter.instance_url,
            "contact_name": f"{case.reporter.first_name} {case.reporter.last_name}",
            "contact_email": case.reporter.email,
            "contact_phone": case.reporter.phone,
        },
        "reason": {"code": reason, "description": REASONS[reason]},
        "incident": {
            "detected_at": xml_time(case.incident_time),
            "summary": case.summary,
            "urls": list(case.urls),
            "platform": case.platform,
        },
        "subject": {
            "account": user.esp_identifier,
            "screen_name": user.screen_name,
            "display_name": user.display_name,
            "profile_urls": list(user.profile_url),
            "account_of_another_service": user.third_party,
            # Appendix 6 §2, all referrals.
            "email_addresses": list(contacts.email_addresses),
            "mobile_numbers": list(contacts.mobile_numbers),
            "linked_email_addresses": list(contacts.linked_email_addresses),
            "mobile_ip_details": [_ip(e) for e in contacts.mobile_ip_events],
            "port_numbers": ports,
            # Appendix 6 §2, images.
            "upload_ip_addresses": upload_events,
            "login_ip_addresses": logins,
        },
        "content": [
            {
                "original_name": f.original_name,
                "location": f.location,
                "sha256": f.sha256,
                "md5": f.md5,
                "uploaded_at": xml_time(f.uploaded_at) if f.uploaded_at else None,
                "publicly_available": f.publicly_available,
                "viewed_by_provider": f.viewed_by_esp,
            }
            for f in case.files
        ],
        # Appendix 6 §2, chat-based reports: the offending period, an address per line,
        # and context.
        "chat": None
        if chat is None
        else {k: chat.get(k) for k in ("start", "end", "ip_per_line", "context")},
        # Appendix 6 §2, additional data (if available).
        "additional": {
            "billing_addresses": list(contacts.billing_addresses),
            "credit_card_details": None,  # an instance holds none
            "cookies": list(contacts.cookies),
            "device_ids": list(contacts.device_ids),
            "recipients": [],
        },
        # Appendix 6 §4.
        "retention": {
            "evidence_id": evidence_id,
            "retain_until": xml_time(retain_until or floor),
            "minimum_days": MINIMUM_RETENTION.days,
        },
    }
    document["missing"] = _missing(document, reason, len(logins))
    return document


def _missing(document: dict[str, Any], reason: str, logins: int) -> list[str]:
    """The required Appendix 6 fields the draft lacks, by their path in the document."""
    subject = document["subject"]
    missing = []
    if not subject["email_addresses"] and not subject["mobile_numbers"]:
        missing.append("subject.email_addresses|subject.mobile_numbers")
    for name in ("linked_email_addresses", "mobile_ip_details", "port_numbers"):
        if not subject[name]:
            missing.append(f"subject.{name}")
    if reason == "csam":
        if not subject["upload_ip_addresses"]:
            missing.append("subject.upload_ip_addresses")
        if logins < _LOGINS_WANTED:
            missing.append("subject.login_ip_addresses")
    chat = document["chat"]
    if chat is not None:
        missing += [f"chat.{k}" for k in ("start", "end", "ip_per_line", "context") if not chat[k]]
    return missing


def iwf_reports(
    case: Case, *, reporter_email: str | None = None, extra_urls: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """One IWF URL report per public web address of the material: each publicly
    available file and the pages it was on. ``reporter_email``: None reports
    anonymously (the IWF allows it)."""
    urls: dict[str, str] = {}
    for f in case.files:
        if f.publicly_available and _web(f.location):
            urls.setdefault(f.location, "image")
    for url in (*case.urls, *extra_urls):
        if _web(url):
            urls.setdefault(url, "page")
    return [
        {
            "format": IWF_FORMAT,
            "url": url,
            "kind": kind,
            "description": "A file at this address matched child sexual abuse material"
            if kind == "image"
            else "This page shows child sexual abuse material",
            "where_on_page": None,
            "how_found": f"Federated to {case.reporter.instance_name} (fediverse)",
            "detected_at": xml_time(case.incident_time),
            "anonymous": reporter_email is None,
            "reporter_email": reporter_email,
        }
        for url, kind in urls.items()
    ]


def _web(url: str) -> bool:
    return url.startswith(("https://", "http://"))


def _ip(event: IpEvent) -> dict[str, Any]:
    return {
        "address": event.address,
        "port": event.port,
        "event": event.event,
        "at": xml_time(event.at),
        "possible_proxy": event.possible_proxy,
    }
