"""CyberTipline drafts: NCMEC's element order, fileViewedByEsp from the reveal log only,
and the Reporting API's sequence against a stand-in written from its documentation
(review.md §2: /submit, /upload, /fileinfo, /finish, /retract)."""

from __future__ import annotations

import base64
import hashlib
import io
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from relay.reports import ncmec
from relay.reports.errors import ReportError, SubmissionError
from tests.conftest import start_server

# The sequences as the facts sheet gives them (review.md §2.2, §2.3), written out here
# independently of the module's tuples.
REPORT = [
    "batchedReport", "incidentSummary", "internetDetails", "lawEnforcement", "reporter",
    "personOrUserReported", "intendedRecipient", "victim", "additionalInfo",
]  # fmt: skip
INCIDENT_SUMMARY = [
    "incidentType", "platform", "escalateToHighPriority", "reportAnnotations",
    "incidentDateTime", "incidentDateTimeDescription",
]  # fmt: skip
REPORTER = ["reportingPerson", "contactPerson", "companyTemplate", "termsOfService", "legalURL"]
PERSON = ["firstName", "lastName", "phone", "email", "address"]
REPORTED = [
    "personOrUserReportedPerson", "vehicleDescription", "espIdentifier", "espService",
    "compromisedAccount", "screenName", "displayName", "profileUrl", "profileBio",
    "ipCaptureEvent", "deviceId", "thirdPartyUserReported", "priorCTReports",
    "groupIdentifier", "accountTemporarilyDisabled", "accountPermanentlyDisabled",
    "estimatedLocation", "allEmailsReported", "associatedAccount", "additionalInfo",
]  # fmt: skip
IP_EVENT = ["ipAddress", "eventName", "dateTime", "possibleProxy", "port"]
FILE_DETAILS = [
    "reportId", "fileId", "fileName", "originalFileName", "uploadedToEspTimestamp",
    "locationOfFile", "fileViewedByEsp", "exifViewedByEsp", "publiclyAvailable",
    "fileRelevance", "fileAnnotations", "industryClassification", "originalFileHash",
    "ipCaptureEvent", "deviceId", "details", "additionalInfo",
]  # fmt: skip
USERNAME, PASSWORD = "esp-user", "esp-secret"


def picture(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(out, "PNG")
    return out.getvalue()


PICTURES = [picture("red"), picture("blue")]


def a_file(data: bytes, n: int) -> ncmec.File:
    return ncmec.File(
        original_name=f"holiday-{n}.png",
        location=f"https://origin.example/media/{n}.png",
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
        publicly_available=True,
        uploaded_at=datetime(2026, 12, 3, 11, 59, tzinfo=UTC),
    )


def a_case() -> ncmec.Case:
    seen = datetime(2026, 12, 3, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    return ncmec.Case(
        incident_time=seen,
        summary="A post federated to the instance carried an image that matched a list.",
        reporter=ncmec.Reporter(
            first_name="Ada",
            last_name="Admin",
            email="abuse@instance.example",
            instance_name="instance.example",
            instance_url="https://instance.example/about",
        ),
        reported_user=ncmec.ReportedUser(
            esp_identifier="https://origin.example/users/bad",
            screen_name="bad@origin.example",
            profile_url=("https://origin.example/@bad",),
            ip_events=(ncmec.IpEvent("192.0.2.7", seen, "Upload", port=44321),),
        ),
        files=tuple(a_file(data, n) for n, data in enumerate(PICTURES)),
        urls=("https://origin.example/@bad/1",),
        platform="Mastodon",
    )


def names(element: ET.Element) -> list[str]:
    return [child.tag for child in element]


def in_order(found: list[str], sequence: list[str]) -> bool:
    """Each name is in the sequence, and they come in its order (repeats allowed)."""
    positions = [sequence.index(name) for name in found]
    return positions == sorted(positions)


def test_the_report_follows_the_schemas_sequences() -> None:
    report = ET.fromstring(ncmec.report_xml(a_case()))
    assert report.tag == "report"
    assert names(report) == ["incidentSummary", "internetDetails", "reporter",
                             "personOrUserReported"]  # fmt: skip
    assert in_order(names(report), REPORT)
    summary = report.find("incidentSummary")
    assert summary is not None
    assert names(summary) == ["incidentType", "platform", "incidentDateTime",
                              "incidentDateTimeDescription"]  # fmt: skip
    assert in_order(names(summary), INCIDENT_SUMMARY)
    assert summary.findtext("incidentType") == (
        "Child Pornography (possession, manufacture, and distribution)"
    )
    assert summary.findtext("incidentDateTime") == "2026-12-03T12:00:00Z"
    assert report.findtext("internetDetails/webPageIncident/url") == (
        "https://origin.example/@bad/1"
    )
    reporter = report.find("reporter")
    assert reporter is not None
    assert names(reporter) == ["reportingPerson", "legalURL"]
    person = reporter.find("reportingPerson")
    assert person is not None
    assert names(person) == ["firstName", "lastName", "email"]
    assert in_order(names(person), PERSON)
    assert person.findtext("email") == "abuse@instance.example"
    user = report.find("personOrUserReported")
    assert user is not None
    assert names(user) == ["espIdentifier", "espService", "screenName", "profileUrl",
                           "ipCaptureEvent", "thirdPartyUserReported"]  # fmt: skip
    assert in_order(names(user), REPORTED)
    assert user.findtext("screenName") == "bad@origin.example"
    assert user.findtext("thirdPartyUserReported") == "true"
    event = user.find("ipCaptureEvent")
    assert event is not None
    assert names(event) == ["ipAddress", "eventName", "dateTime", "port"]
    assert in_order(names(event), IP_EVENT)
    assert (event.findtext("ipAddress"), event.findtext("port")) == ("192.0.2.7", "44321")


def test_file_viewed_by_esp_only_from_the_reveal_log() -> None:
    case = a_case()
    first, second = case.files
    # A hash match alone: nobody looked.
    assert ET.fromstring(ncmec.file_details_xml(7, "f1", first)).findtext("fileViewedByEsp") == (
        "false"
    )
    viewed = case.viewed({second.sha256})
    assert [f.viewed_by_esp for f in viewed.files] == [False, True]
    details = ET.fromstring(ncmec.file_details_xml(7, "f2", viewed.files[1]))
    assert details.tag == "fileDetails"
    assert names(details) == ["reportId", "fileId", "fileName", "originalFileName",
                              "uploadedToEspTimestamp", "locationOfFile", "fileViewedByEsp",
                              "publiclyAvailable", "originalFileHash",
                              "originalFileHash"]  # fmt: skip
    assert in_order(names(details), FILE_DETAILS)
    assert details.findtext("fileViewedByEsp") == "true"
    assert details.find("exifViewedByEsp") is None
    assert details.findtext("originalFileName") == "holiday-1.png"
    assert details.findtext("fileName") == f"{second.sha256}.png"
    hashes = {e.get("hashType"): e.text for e in details.iter("originalFileHash")}
    assert hashes == {"MD5": second.md5, "SHA256": second.sha256}


def test_a_draft_refuses_what_ncmec_refuses() -> None:
    case = a_case()
    with pytest.raises(ReportError, match="incidentType"):
        ncmec.Case(**{**case.__dict__, "incident_type": "Spam"})
    with pytest.raises(ReportError, match="eventName"):
        ncmec.IpEvent("192.0.2.1", case.incident_time, "Posting")
    with pytest.raises(ReportError, match="time zone"):
        ncmec.report_xml(ncmec.Case(**{**case.__dict__, "incident_time": datetime(2026, 1, 1)}))
    with pytest.raises(ReportError, match="at least one file"):
        ncmec.Case(**{**case.__dict__, "files": ()})


class StandIn:
    """NCMEC's ISPWS as its documentation (via Boostport/ncmec-go and Coop) describes it:
    Basic auth; /submit takes <report> XML and answers <reportResponse> with reportId;
    /upload takes multipart id and file and answers fileId and the file's MD5; /fileinfo
    takes <fileDetails>; /finish and /retract take form field id; responseCode 0 is
    success, 5001 an unknown report, 5102 one already finished."""

    def __init__(self, *, refuse_fileinfo: bool = False) -> None:
        self.calls: list[str] = []
        self.reports: dict[int, dict[str, Any]] = {}
        self.refuse_fileinfo = refuse_fileinfo
        self.server: TestServer | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.basic_auth])
        for path, handler in (("/ispws/submit", self.submit), ("/ispws/upload", self.upload),
                              ("/ispws/fileinfo", self.fileinfo), ("/ispws/finish", self.finish),
                              ("/ispws/retract", self.retract)):  # fmt: skip
            app.router.add_post(path, handler)
        return app

    @web.middleware
    async def basic_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        expected = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.Response(status=401)
        self.calls.append(request.path.removeprefix("/ispws/"))
        return await handler(request)

    @staticmethod
    def answer(tag: str = "reportResponse", **fields: Any) -> web.Response:
        root = ET.Element(tag)
        for name, value in {"responseCode": 0, **fields}.items():
            for one in value if isinstance(value, list) else [value]:
                ET.SubElement(root, name).text = str(one)
        return web.Response(body=ET.tostring(root), content_type="text/xml")

    def open_report(self, form_id: str) -> dict[str, Any] | None:
        report = self.reports.get(int(form_id))
        return report if report is not None and not report["done"] else None

    async def submit(self, request: web.Request) -> web.Response:
        assert request.content_type == "text/xml"
        report = ET.fromstring(await request.read())
        assert report.tag == "report"
        report_id = 1000 + len(self.reports)
        self.reports[report_id] = {"xml": report, "files": {}, "details": [], "done": False}
        return self.answer(reportId=report_id)

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        report = self.open_report(str(form["id"]))
        if report is None:
            return self.answer(responseCode=5001, responseDescription="no such report")
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        data = upload.file.read()
        file_id = f"file-{len(report['files']) + 1}"
        report["files"][file_id] = (upload.filename, data)
        return self.answer(fileId=file_id, hash=hashlib.md5(data).hexdigest())

    async def fileinfo(self, request: web.Request) -> web.Response:
        assert request.content_type == "text/xml"
        details = ET.fromstring(await request.read())
        report = self.open_report(details.findtext("reportId") or "0")
        if report is None or details.findtext("fileId") not in report["files"]:
            return self.answer(responseCode=5001, responseDescription="no such report")
        if self.refuse_fileinfo:
            return self.answer(responseCode=4100, responseDescription="validation failed")
        report["details"].append(details)
        return self.answer()

    async def finish(self, request: web.Request) -> web.Response:
        form = await request.post()
        report = self.reports.get(int(str(form["id"])))
        if report is None:
            return self.answer("reportDoneResponse", responseCode=5001)
        if report["done"]:
            return self.answer("reportDoneResponse", responseCode=5102)
        report["done"] = True
        return self.answer("reportDoneResponse", reportId=form["id"], fileId=list(report["files"]))

    async def retract(self, request: web.Request) -> web.Response:
        form = await request.post()
        report = self.open_report(str(form["id"]))
        if report is None:
            return self.answer(responseCode=5102, responseDescription="already finished")
        del self.reports[int(str(form["id"]))]
        return self.answer()


async def serve(stand_in: StandIn) -> AsyncIterator[StandIn]:
    stand_in.server = await start_server(stand_in.app())
    yield stand_in
    await stand_in.server.close()


@pytest.fixture
async def cybertip() -> AsyncIterator[StandIn]:
    async for one in serve(StandIn()):
        yield one


@pytest.fixture
async def refusing_cybertip() -> AsyncIterator[StandIn]:
    async for one in serve(StandIn(refuse_fileinfo=True)):
        yield one


def api(stand_in: StandIn, password: str = PASSWORD) -> ncmec.CyberTipline:
    assert stand_in.server is not None
    return ncmec.CyberTipline(str(stand_in.server.make_url("/ispws")), USERNAME, password)


def contents() -> dict[str, bytes]:
    return {hashlib.sha256(p).hexdigest(): p for p in PICTURES}


async def test_send_submits_uploads_describes_and_finishes(cybertip: StandIn) -> None:
    case = a_case().viewed({hashlib.sha256(PICTURES[0]).hexdigest()})
    done = await api(cybertip).send(case, contents())
    assert done == ncmec.Submitted(1000, ("file-1", "file-2"))
    assert cybertip.calls == ["submit", "upload", "fileinfo", "upload", "fileinfo", "finish"]
    report = cybertip.reports[1000]
    assert report["done"]
    assert ET.tostring(report["xml"]) == ET.tostring(ET.fromstring(ncmec.report_xml(case)))
    # Each file arrived byte for byte, under its hash's name, and was described.
    assert [data for _, data in report["files"].values()] == PICTURES
    assert [name for name, _ in report["files"].values()] == [f"{f.sha256}.png" for f in case.files]
    assert [(d.findtext("fileId"), d.findtext("fileViewedByEsp")) for d in report["details"]] == [
        ("file-1", "true"),
        ("file-2", "false"),
    ]
    assert {d.findtext("reportId") for d in report["details"]} == {"1000"}


async def test_a_refused_file_retracts_the_report(refusing_cybertip: StandIn) -> None:
    with pytest.raises(SubmissionError, match="responseCode 4100") as refused:
        await api(refusing_cybertip).send(a_case(), contents())
    assert refused.value.code == "4100"
    assert refusing_cybertip.calls == ["submit", "upload", "fileinfo", "retract"]
    assert refusing_cybertip.reports == {}


async def test_wrong_credentials_and_missing_bytes_send_nothing(cybertip: StandIn) -> None:
    with pytest.raises(SubmissionError, match="HTTP 401") as refused:
        await api(cybertip, password="wrong").send(a_case(), contents())
    assert refused.value.status == 401
    with pytest.raises(ReportError, match="missing"):
        await api(cybertip).send(a_case(), {hashlib.sha256(PICTURES[0]).hexdigest(): PICTURES[0]})
    assert cybertip.calls == []
    assert cybertip.reports == {}
