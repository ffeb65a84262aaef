"""Statements of reasons: valid against a JSON Schema written from the Transparency
Database's own validation rules, and submitted to a stand-in of its API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay import receipt as r
from relay.reports import sor
from relay.reports.errors import ReportError, SubmissionError
from tests.conftest import start_server

SCHEMA_FILE = Path(__file__).with_name("sor.schema.json")
TOKEN = "dsc-issued-token"


def schema() -> dict[str, Any]:
    """The schema file with its enum lists taken from relay.receipt (one list, not two)."""
    document: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    defs = document["$defs"]
    defs["category"]["enum"] = sorted(r.CATEGORIES)
    defs["keyword"]["enum"] = sorted(r.KEYWORDS)
    defs["decision_ground"]["enum"] = sorted(r.DECISION_GROUNDS)
    defs["automated_decision"]["enum"] = sorted(r.AUTOMATED_DECISIONS)
    jsonschema.Draft202012Validator.check_schema(document)
    return document


VALIDATOR = jsonschema.Draft202012Validator(
    schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def problems(statement: dict[str, Any]) -> list[str]:
    return sorted(e.message for e in VALIDATOR.iter_errors(statement))


def csam_decision(**more: Any) -> sor.Decision:
    return sor.Decision.for_category(
        "csam",
        puid="https://origin.example/activities/1",
        facts="Removed a post whose image matched a list of known material.",
        content_date=date(2026, 12, 1),
        application_date=date(2026, 12, 3),
        automated_detection=True,
        human=True,
        jurisdictions=("EU", "GB"),
        **more,
    )


def test_a_confirmed_csam_decision_is_a_valid_statement() -> None:
    statement = sor.statement(csam_decision())
    assert problems(statement) == []
    assert statement["category"] == "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"
    assert statement["category_specification"] == ["KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL"]
    assert statement["decision_ground"] == "DECISION_GROUND_ILLEGAL_CONTENT"
    assert statement["illegal_content_legal_ground"] == r.LEGAL_GROUNDS["csam"]
    assert statement["automated_detection"] == "Yes"
    # A moderator confirmed what a bank found.
    assert statement["automated_decision"] == "AUTOMATED_DECISION_PARTIALLY"
    assert statement["content_date"] == "2026-12-01"
    assert statement["application_date"] == "2026-12-03"
    assert statement["source_type"] == "SOURCE_VOLUNTARY"
    # GB is no EU/EEA state: the scope is the Union's 27.
    assert len(statement["territorial_scope"]) == 27
    assert "GB" not in statement["territorial_scope"]
    assert len(statement["puid"]) == 64  # the URL is no puid: its SHA-256 is
    assert statement["puid"] == sor.statement(csam_decision())["puid"]


def test_decisions_of_every_kind_are_valid() -> None:
    unwanted = sor.Decision.for_category(
        "my-own-list",
        puid="row-17",
        facts="Rejected by the instance's rules.",
        content_date=date(2026, 1, 2),
        application_date=date(2026, 1, 2),
        automated_detection=True,
        human=False,
        content_type=sor.content_type_for(["video/mp4", "image/png"]),
        decision_account="DECISION_ACCOUNT_SUSPENDED",
    )
    statement = sor.statement(unwanted)
    assert problems(statement) == []
    assert statement["puid"] == "row-17"
    assert statement["decision_ground"] == "DECISION_GROUND_INCOMPATIBLE_CONTENT"
    assert statement["incompatible_content_ground"] == "The instance's terms of service"
    assert statement["automated_decision"] == "AUTOMATED_DECISION_FULLY"
    assert statement["content_type"] == ["CONTENT_TYPE_IMAGE", "CONTENT_TYPE_VIDEO"]
    assert "category_specification" not in statement
    assert "territorial_scope" not in statement

    by_hand = sor.statement(
        sor.Decision.for_category(
            "ncii",
            puid="row-18",
            facts="A moderator removed it on a notice.",
            content_date=date(2026, 1, 2),
            application_date=date(2026, 1, 3),
            automated_detection=False,
            human=True,
            content_type=sor.content_type_for(["application/pdf"]),
            source_type="SOURCE_ARTICLE_16",
            source_identity="A user of the instance",
        )
    )
    assert problems(by_hand) == []
    assert by_hand["automated_decision"] == "AUTOMATED_DECISION_NOT_AUTOMATED"
    assert by_hand["content_type_other"]
    assert by_hand["source_identity"] == "A user of the instance"


def test_a_receipt_becomes_a_valid_statement() -> None:
    from tests.test_receipt import receipt

    statement = sor.from_receipt(receipt(), content_type=["CONTENT_TYPE_IMAGE"])
    assert problems(statement) == []
    assert statement["content_type"] == ["CONTENT_TYPE_IMAGE"]
    assert "content_type_other" not in statement
    assert statement["territorial_scope"] == sorted(r._EU)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"category": "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"}, "category"),
        ({"automated_detection": True}, "automated_detection"),
        ({"automated_decision": "AUTOMATED_DECISION_NO"}, "automated_decision"),
        ({"puid": "has spaces"}, "puid"),
        ({"content_date": "1999-12-31"}, "content_date"),
        ({"application_date": "2019-12-31"}, "application_date"),
        ({"application_date": "03/12/2026"}, "application_date"),
        ({"territorial_scope": ["GB"]}, "territorial_scope"),
        ({"category_specification": ["KEYWORD_OTHER"]}, "category_specification_other"),
        ({"decision_visibility": None}, "decision_visibility"),
        ({"illegal_content_legal_ground": None}, "illegal_content_legal_ground"),
        ({"decision_facts": "x" * 5001}, "decision_facts"),
        ({"content_type": ["CONTENT_TYPE_OTHER"]}, "content_type_other"),
    ],
)
def test_the_schema_and_check_refuse_what_the_database_refuses(
    change: dict[str, Any], field: str
) -> None:
    statement = sor.statement(csam_decision())
    for key, value in change.items():
        if value is None:
            del statement[key]
        else:
            statement[key] = value
    assert problems(statement) != []
    with pytest.raises(ReportError, match=field if field != "decision_visibility" else "one of"):
        sor.check(statement)


class StandIn:
    """The Transparency Database's API as its documentation describes it: bearer
    token, JSON in and out, 201 with uuid and permalink, 422 with errors (a duplicate
    puid names the existing statement)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.puids: dict[str, str] = {}
        self.server: TestServer | None = None

    async def statements(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"message": "Unauthenticated."}, status=401)
        assert request.headers["Accept"] == "application/json"
        assert request.content_type == "application/json"
        body = await request.json()
        self.received.append(body)
        errors: dict[str, list[str]] = {}
        for n, statement in enumerate(body["statements"]):
            for error in VALIDATOR.iter_errors(statement):
                errors.setdefault(f"statements.{n}", []).append(error.message)
            if statement["puid"] in self.puids:
                errors.setdefault(f"statements.{n}.puid", []).append(
                    "The identifier given is not unique within this platform."
                )
        if errors:
            return web.json_response({"message": "invalid", "errors": errors}, status=422)
        out = []
        for statement in body["statements"]:
            uuid = f"uuid-{len(self.puids) + 1}"
            self.puids[statement["puid"]] = uuid
            out.append({**statement, "uuid": uuid, "permalink": f"/statement/{uuid}"})
        return web.json_response({"statements": out}, status=201)


@pytest.fixture
async def database() -> AsyncIterator[StandIn]:
    stand_in = StandIn()
    app = web.Application()
    app.router.add_post("/api/v1/statements", stand_in.statements)
    stand_in.server = await start_server(app)
    yield stand_in
    await stand_in.server.close()


async def test_submit_posts_the_batch_with_the_token(database: StandIn) -> None:
    assert database.server is not None
    base = str(database.server.make_url("/"))
    api = sor.TransparencyDatabase(TOKEN, base_url=base)
    statement = sor.statement(csam_decision())
    answer = await api.submit(statement)
    assert database.received == [{"statements": [statement]}]
    assert answer["statements"][0]["uuid"] == "uuid-1"
    assert answer["statements"][0]["puid"] == statement["puid"]

    with pytest.raises(SubmissionError, match=r"422.*not unique") as refused:
        await api.submit([statement])
    assert refused.value.status == 422

    with pytest.raises(SubmissionError, match="401") as wrong:
        await sor.TransparencyDatabase("wrong", base_url=base).submit(statement)
    assert wrong.value.status == 401

    # A statement the database would refuse is not sent at all.
    with pytest.raises(ReportError, match="category"):
        await api.submit({**statement, "category": "STATEMENT_CATEGORY_NONE"})
    assert len(database.received) == 2
