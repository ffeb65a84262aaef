"""A CyberTipline report (NCMEC) drafted from a confirmed case, and the API to send it.

US providers must report apparent CSAM to NCMEC (18 U.S.C. 2258A). The draft is the
``<report>`` XML of NCMEC's schema and one ``<fileDetails>`` per file; NCMEC refuses
elements out of the XSD's sequence (responseCode 4100), so every element is written
from an ordered list of names (the ``*_ORDER`` tuples, the XSD's sequences as
Boostport/ncmec-go generated them) and never by hand.

``fileViewedByEsp`` says whether a person at the provider looked at the file; in the
US that decides whether law enforcement may open it without a warrant (US v. Wilson,
9th Cir. 2021), so it is true only when the reveal log shows a moderator viewed it,
never because a hash matched.

Nothing here runs by itself: ``CyberTipline.send`` runs when an admin presses submit
on a reviewed draft, against NCMEC's test environment (``TEST_URL``) first.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from relay.reports.errors import ReportError, SubmissionError

__all__ = [
    "CSAM",
    "FILE_DETAILS_ORDER",
    "INCIDENT_SUMMARY_ORDER",
    "INCIDENT_TYPES",
    "IP_CAPTURE_EVENT_ORDER",
    "IP_EVENTS",
    "PERSON_ORDER",
    "PERSON_OR_USER_REPORTED_ORDER",
    "PRODUCTION_URL",
    "REPORTER_ORDER",
    "REPORT_ORDER",
    "TEST_URL",
    "WEB_PAGE_INCIDENT_ORDER",
    "Case",
    "CyberTipline",
    "File",
    "IpEvent",
    "ReportedUser",
    "Reporter",
    "Submitted",
    "file_details_xml",
    "report_xml",
    "xml_time",
]

PRODUCTION_URL = "https://report.cybertip.org/ispws"
TEST_URL = "https://exttest.cybertip.org/ispws"

# The XSD's sequences (names only; which ones Sluice fills is below).
REPORT_ORDER = (
    "batchedReport", "incidentSummary", "internetDetails", "lawEnforcement", "reporter",
    "personOrUserReported", "intendedRecipient", "victim", "additionalInfo",
)  # fmt: skip
INCIDENT_SUMMARY_ORDER = (
    "incidentType", "platform", "escalateToHighPriority", "reportAnnotations",
    "incidentDateTime", "incidentDateTimeDescription",
)  # fmt: skip
WEB_PAGE_INCIDENT_ORDER = ("url", "additionalInfo")
REPORTER_ORDER = (
    "reportingPerson", "contactPerson", "companyTemplate", "termsOfService", "legalURL",
)  # fmt: skip
PERSON_ORDER = ("firstName", "lastName", "phone", "email", "address", "age", "dateOfBirth")
PERSON_OR_USER_REPORTED_ORDER = (
    "personOrUserReportedPerson", "vehicleDescription", "espIdentifier", "espService",
    "compromisedAccount", "screenName", "displayName", "profileUrl", "profileBio",
    "ipCaptureEvent", "deviceId", "thirdPartyUserReported", "priorCTReports",
    "groupIdentifier", "accountTemporarilyDisabled", "accountPermanentlyDisabled",
    "estimatedLocation", "allEmailsReported", "associatedAccount", "additionalInfo",
)  # fmt: skip
IP_CAPTURE_EVENT_ORDER = ("ipAddress", "eventName", "dateTime", "possibleProxy", "port")
FILE_DETAILS_ORDER = (
    "reportId", "fileId", "fileName", "originalFileName", "uploadedToEspTimestamp",
    "locationOfFile", "fileViewedByEsp", "exifViewedByEsp", "publiclyAvailable",
    "fileRelevance", "fileAnnotations", "industryClassification", "originalFileHash",
    "ipCaptureEvent", "deviceId", "details", "additionalInfo",
)  # fmt: skip

INCIDENT_TYPES = frozenset(
    {
        "Child Pornography (possession, manufacture, and distribution)",
        "Child Sex Trafficking",
        "Child Sex Tourism",
        "Child Sexual Molestation",
        "Misleading Domain Name",
        "Misleading Words or Digital Images on the Internet",
        "Online Enticement of Children for Sexual Acts",
        "Unsolicited Obscene Material Sent to a Child",
    }
)
CSAM = "Child Pornography (possession, manufacture, and distribution)"
IP_EVENTS = frozenset({"Login", "Registration", "Purchase", "Upload", "Other", "Unknown"})

#: Longest values the XSD takes.
_MAX_FILE_NAME = 2056
_MAX_URL = 2083
#: An answer larger than this is not NCMEC's.
_MAX_ANSWER = 1 << 16


@dataclass(frozen=True)
class IpEvent:
    """An address the reported user was seen at (the door's ``remote`` for an upload)."""

    address: str
    at: datetime
    event: str = "Upload"
    port: int | None = None
    possible_proxy: bool | None = None

    def __post_init__(self) -> None:
        if self.event not in IP_EVENTS:
            raise ReportError(f"ipCaptureEvent eventName must be one of {sorted(IP_EVENTS)}")


@dataclass(frozen=True)
class Reporter:
    """The instance that reports, and the person at it whom NCMEC may contact."""

    first_name: str
    last_name: str
    email: str
    instance_name: str
    instance_url: str
    phone: str | None = None
    #: Text NCMEC adds to every report of ours: how to serve legal process, retention.
    company_template: str | None = None
    terms_of_service: str | None = None


@dataclass(frozen=True)
class ReportedUser:
    """The account that posted the material: ``esp_identifier`` is its actor id.
    ``third_party``: an account of another server (most of what a relay sees), which
    the instance knows only by what federation told it."""

    esp_identifier: str
    screen_name: str | None = None
    profile_url: tuple[str, ...] = ()
    display_name: str | None = None
    ip_events: tuple[IpEvent, ...] = ()
    third_party: bool = True


@dataclass(frozen=True)
class File:
    """One reported file. ``viewed_by_esp`` comes from the reveal log only
    (``Case.viewed``): a hash match is not a person looking."""

    original_name: str
    location: str
    sha256: str
    md5: str
    publicly_available: bool
    viewed_by_esp: bool = False
    uploaded_at: datetime | None = None
    ip_event: IpEvent | None = None

    def __post_init__(self) -> None:
        if len(self.original_name) > _MAX_FILE_NAME:
            raise ReportError(f"originalFileName is longer than {_MAX_FILE_NAME} characters")
        if len(self.location) > _MAX_URL:
            raise ReportError(f"locationOfFile is longer than {_MAX_URL} characters")


@dataclass(frozen=True)
class Case:
    """A confirmed case, as much as a CyberTipline report needs."""

    incident_time: datetime
    summary: str
    reporter: Reporter
    reported_user: ReportedUser
    files: tuple[File, ...]
    #: The pages the material was on (the post's URL): ``webPageIncident``.
    urls: tuple[str, ...] = ()
    incident_type: str = CSAM
    #: The software the post came through ("Mastodon"), when known.
    platform: str | None = None
    #: Only when a child is at immediate risk, and why: NCMEC escalates the report.
    escalate: str | None = None
    additional_info: str | None = None

    def __post_init__(self) -> None:
        if self.incident_type not in INCIDENT_TYPES:
            raise ReportError("incidentType is not one of NCMEC's incident types")
        if not self.files:
            raise ReportError("a report needs at least one file")

    def viewed(self, revealed: Collection[str]) -> Case:
        """The case with ``fileViewedByEsp`` set from the reveal log: ``revealed`` holds
        the SHA-256 of each file a person revealed; every other file is unviewed."""
        return replace(
            self,
            files=tuple(replace(f, viewed_by_esp=f.sha256 in revealed) for f in self.files),
        )


# --- the XML ----------------------------------------------------------------------------


def report_xml(case: Case) -> bytes:
    """The ``<report>`` for ``/submit``."""
    report = ET.Element("report")
    reporter = case.reporter
    user = case.reported_user
    _sequence(
        report,
        REPORT_ORDER,
        {
            "incidentSummary": [
                _children(
                    "incidentSummary",
                    INCIDENT_SUMMARY_ORDER,
                    {
                        "incidentType": case.incident_type,
                        "platform": case.platform,
                        "escalateToHighPriority": case.escalate,
                        "incidentDateTime": xml_time(case.incident_time),
                        "incidentDateTimeDescription": case.summary,
                    },
                )
            ],
            "internetDetails": [
                _wrap(
                    "internetDetails",
                    _children("webPageIncident", WEB_PAGE_INCIDENT_ORDER, {"url": list(case.urls)}),
                )
            ]
            if case.urls
            else None,
            "reporter": [
                _children(
                    "reporter",
                    REPORTER_ORDER,
                    {
                        "reportingPerson": _children(
                            "reportingPerson",
                            PERSON_ORDER,
                            {
                                "firstName": reporter.first_name,
                                "lastName": reporter.last_name,
                                "phone": reporter.phone,
                                "email": reporter.email,
                            },
                        ),
                        "companyTemplate": reporter.company_template,
                        "termsOfService": reporter.terms_of_service,
                        "legalURL": reporter.instance_url,
                    },
                )
            ],
            "personOrUserReported": [
                _children(
                    "personOrUserReported",
                    PERSON_OR_USER_REPORTED_ORDER,
                    {
                        "espIdentifier": user.esp_identifier,
                        "espService": reporter.instance_name,
                        "screenName": user.screen_name,
                        "displayName": user.display_name,
                        "profileUrl": list(user.profile_url),
                        "ipCaptureEvent": [_ip_event(e) for e in user.ip_events],
                        "thirdPartyUserReported": user.third_party,
                    },
                )
            ],
            "additionalInfo": case.additional_info,
        },
    )
    return _bytes(report)


def file_details_xml(report_id: int, file_id: str, file: File) -> bytes:
    """The ``<fileDetails>`` for ``/fileinfo`` of a file uploaded as ``file_id``."""
    details = _children(
        "fileDetails",
        FILE_DETAILS_ORDER,
        {
            "reportId": str(report_id),
            "fileId": file_id,
            "fileName": _upload_name(file),
            "originalFileName": file.original_name,
            "uploadedToEspTimestamp": xml_time(file.uploaded_at) if file.uploaded_at else None,
            "locationOfFile": file.location,
            # Only true from the reveal log; exifViewedByEsp stays out (Sluice shows no
            # EXIF, and NCMEC wants fileViewedByEsp true whenever it is true).
            "fileViewedByEsp": file.viewed_by_esp,
            "publiclyAvailable": file.publicly_available,
            "originalFileHash": [
                _text("originalFileHash", file.md5, hashType="MD5"),
                _text("originalFileHash", file.sha256, hashType="SHA256"),
            ],
            "ipCaptureEvent": _ip_event(file.ip_event) if file.ip_event else None,
        },
    )
    return _bytes(details)


def _upload_name(file: File) -> str:
    """The name the file is uploaded under: its SHA-256 and the original's extension,
    so nothing of a user's naming reaches a log on the way."""
    suffix = file.original_name.rpartition(".")[2] if "." in file.original_name else "bin"
    return f"{file.sha256}.{suffix[:8]}"


def _ip_event(event: IpEvent) -> ET.Element:
    return _children(
        "ipCaptureEvent",
        IP_CAPTURE_EVENT_ORDER,
        {
            "ipAddress": event.address,
            "eventName": event.event,
            "dateTime": xml_time(event.at),
            "possibleProxy": event.possible_proxy,
            "port": None if event.port is None else str(event.port),
        },
    )


_Value = str | bool | ET.Element | Sequence[str | ET.Element] | None


def _children(tag: str, order: Sequence[str], values: Mapping[str, _Value]) -> ET.Element:
    element = ET.Element(tag)
    _sequence(element, order, values)
    return element


def _sequence(parent: ET.Element, order: Sequence[str], values: Mapping[str, _Value]) -> None:
    """Append ``values`` to ``parent`` in the XSD's ``order``; None and [] are left out."""
    unknown = set(values) - set(order)
    if unknown:
        raise ReportError(f"{parent.tag} has no element {sorted(unknown)[0]}")
    for name in order:
        value = values.get(name)
        items: Sequence[str | bool | ET.Element | None] = (
            value if isinstance(value, list | tuple) else [value]  # type: ignore[list-item]
        )
        for item in items:
            if item is None:
                continue
            if isinstance(item, ET.Element):
                if item.tag != name:
                    raise ReportError(f"{parent.tag}/{name} was given a {item.tag}")
                parent.append(item)
            elif isinstance(item, bool):
                ET.SubElement(parent, name).text = "true" if item else "false"
            else:
                ET.SubElement(parent, name).text = item


def _wrap(tag: str, child: ET.Element) -> ET.Element:
    element = ET.Element(tag)
    element.append(child)
    return element


def _text(tag: str, text: str, **attributes: str) -> ET.Element:
    element = ET.Element(tag, attributes)
    element.text = text
    return element


def xml_time(at: datetime) -> str:
    """An aware time as xs:dateTime in UTC (``2026-12-03T12:00:00Z``)."""
    if at.tzinfo is None:
        raise ReportError("times must carry their time zone")
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _bytes(element: ET.Element) -> bytes:
    return ET.tostring(element, encoding="utf-8", xml_declaration=True)


# --- the API ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    """A finished report: NCMEC's id for it and for each file, in the case's order."""

    report_id: int
    file_ids: tuple[str, ...] = field(default=())


class CyberTipline:
    """NCMEC's Reporting API (ISPWS) with the provider's HTTP Basic credentials.

    ``send`` opens a report (``/submit``), uploads each file (``/upload``), describes
    it (``/fileinfo``) and closes it (``/finish``); a failure after the report was
    opened retracts it (``/retract``), so NCMEC never keeps half a report. The bytes
    are the evidence's, in memory only.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if ":" in username:
            raise ReportError("an NCMEC username cannot contain ':' (HTTP Basic)")
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"
        self._session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, case: Case, contents: Mapping[str, bytes]) -> Submitted:
        """Report ``case``; ``contents`` maps each file's SHA-256 to its bytes."""
        for file in case.files:
            data = contents.get(file.sha256)
            if data is None or hashlib.sha256(data).hexdigest() != file.sha256:
                raise ReportError(f"the bytes of file {file.sha256[:12]}… are missing")
        session = self._session or aiohttp.ClientSession()
        try:
            report_id = await self.submit(report_xml(case), session=session)
            try:
                file_ids = []
                for file in case.files:
                    file_id = await self.upload(
                        report_id, _upload_name(file), contents[file.sha256], session=session
                    )
                    await self.fileinfo(file_details_xml(report_id, file_id, file), session=session)
                    file_ids.append(file_id)
                done = await self.finish(report_id, session=session)
                return Submitted(done.report_id, done.file_ids or tuple(file_ids))
            except Exception:
                # Failing that, NCMEC deletes an unfinished report itself after 24 hours.
                with contextlib.suppress(SubmissionError):
                    await self.retract(report_id, session=session)
                raise
        finally:
            if self._session is None:
                await session.close()

    async def submit(self, report: bytes, *, session: aiohttp.ClientSession) -> int:
        """Open a report; NCMEC's report id."""
        answer = await self._post(session, "/submit", data=report, xml=True)
        return _report_id(answer)

    async def upload(
        self, report_id: int, name: str, data: bytes, *, session: aiohttp.ClientSession
    ) -> str:
        """Upload one file to report ``report_id``; its file id. NCMEC's MD5 of what it
        received must be the file's."""
        form = aiohttp.FormData()
        form.add_field("id", str(report_id))
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        answer = await self._post(session, "/upload", data=form)
        file_id = answer.findtext("fileId")
        if not file_id:
            raise SubmissionError("NCMEC's answer to /upload names no fileId")
        if (answer.findtext("hash") or "").lower() != hashlib.md5(data).hexdigest():
            raise SubmissionError("NCMEC received a file whose MD5 differs from ours")
        return file_id

    async def fileinfo(self, details: bytes, *, session: aiohttp.ClientSession) -> None:
        await self._post(session, "/fileinfo", data=details, xml=True)

    async def finish(self, report_id: int, *, session: aiohttp.ClientSession) -> Submitted:
        answer = await self._post(session, "/finish", data={"id": str(report_id)})
        files = tuple(e.text or "" for e in answer.iter("fileId"))
        return Submitted(_report_id(answer), files)

    async def retract(self, report_id: int, *, session: aiohttp.ClientSession) -> None:
        """Withdraw a report that is not finished."""
        await self._post(session, "/retract", data={"id": str(report_id)})

    async def _post(
        self, session: aiohttp.ClientSession, path: str, *, data: Any, xml: bool = False
    ) -> ET.Element:
        headers = {"Authorization": self._authorization}
        if xml:
            headers["Content-Type"] = "text/xml; charset=utf-8"
        try:
            async with session.post(
                self.base_url + path,
                data=data,
                headers=headers,
                timeout=self.timeout,
            ) as response:
                body = await response.content.read(_MAX_ANSWER + 1)
                status = response.status
        except aiohttp.ClientError as exc:
            raise SubmissionError(f"NCMEC cannot be reached ({path}): {exc}") from exc
        if status != 200:
            raise SubmissionError(f"NCMEC answered {path} with HTTP {status}", status=status)
        if len(body) > _MAX_ANSWER:
            raise SubmissionError(f"NCMEC's answer to {path} is too large", status=status)
        try:
            answer = ET.fromstring(body)
        except ET.ParseError:
            raise SubmissionError(f"NCMEC's answer to {path} is not XML", status=status) from None
        code = answer.findtext("responseCode")
        if code != "0":
            reason = answer.findtext("responseDescription") or "no description"
            raise SubmissionError(
                f"NCMEC refused {path}: responseCode {code}: {reason}", status=status, code=code
            )
        return answer


def _report_id(answer: ET.Element) -> int:
    text = answer.findtext("reportId") or ""
    if not text.isdigit():
        raise SubmissionError("NCMEC's answer names no reportId")
    return int(text)
