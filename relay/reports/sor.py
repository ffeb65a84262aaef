"""DSA statements of reasons (Article 17), in the Transparency Database API's own fields.

A receipt already speaks the database's words (``relay.receipt.to_statement_of_reasons``);
a decision that issued none (a review, a reject, a decision on the instance's own terms)
is written here from a ``Decision``, with the same enum keys. ``check`` applies the
database's validation rules (``StatementStoreRequest.php``) before anything is sent, so
a refusal names our field instead of coming back as a 422 later. Nothing is submitted
automatically: ``TransparencyDatabase.submit`` runs when an admin asks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import aiohttp

from relay.receipt import (
    _EEA,
    _EU,
    AUTOMATED_DECISIONS,
    CATEGORIES,
    DECISION_GROUNDS,
    ILLEGAL,
    KEYWORDS,
    LEGAL_GROUNDS,
    Receipt,
    dsa_for,
    to_statement_of_reasons,
)
from relay.reports.errors import ReportError, SubmissionError

__all__ = [
    "CONTENT_TYPES",
    "DECISION_ACCOUNT",
    "DECISION_VISIBILITY",
    "PRODUCTION_URL",
    "SOURCE_TYPES",
    "Decision",
    "TransparencyDatabase",
    "check",
    "content_type_for",
    "from_receipt",
    "puid_for",
    "statement",
]

#: The database's base URL; onboarding (through the Digital Services Coordinator) starts
#: in a sandbox whose URL comes with the sandbox token: pass it as ``base_url``.
PRODUCTION_URL = "https://transparency.dsa.ec.europa.eu"

DECISION_VISIBILITY = frozenset(
    "DECISION_VISIBILITY_" + name
    for name in [
        "CONTENT_REMOVED",
        "CONTENT_DISABLED",
        "CONTENT_DEMOTED",
        "CONTENT_AGE_RESTRICTED",
        "CONTENT_INTERACTION_RESTRICTED",
        "CONTENT_LABELLED",
        "OTHER",
    ]
)
DECISION_ACCOUNT = frozenset({"DECISION_ACCOUNT_SUSPENDED", "DECISION_ACCOUNT_TERMINATED"})
CONTENT_TYPES = frozenset(
    "CONTENT_TYPE_" + name
    for name in ["APP", "AUDIO", "IMAGE", "PRODUCT", "SYNTHETIC_MEDIA", "TEXT", "VIDEO", "OTHER"]
)
SOURCE_TYPES = frozenset(
    {"SOURCE_ARTICLE_16", "SOURCE_TRUSTED_FLAGGER", "SOURCE_TYPE_OTHER_NOTIFICATION",
     "SOURCE_VOLUNTARY"}
)  # fmt: skip

_PUID = re.compile(r"[a-zA-Z0-9_-]+")
_MEDIA_KINDS = {
    "image": "CONTENT_TYPE_IMAGE",
    "video": "CONTENT_TYPE_VIDEO",
    "audio": "CONTENT_TYPE_AUDIO",
    "text": "CONTENT_TYPE_TEXT",
}


def content_type_for(kinds: Iterable[str]) -> tuple[str, ...]:
    """The statement's ``content_type`` for media kinds or MIME types (``image/png``)."""
    found = {_MEDIA_KINDS.get(kind.split("/", 1)[0], "CONTENT_TYPE_OTHER") for kind in kinds}
    return tuple(sorted(found)) or ("CONTENT_TYPE_OTHER",)


def puid_for(identifier: str) -> str:
    """A platform-unique id the database accepts (``[a-zA-Z0-9-_]+``, at most 500): the
    identifier itself when it qualifies, its SHA-256 otherwise (an activity's URL does
    not), so the same decision always gets the same puid and a resubmission is a
    duplicate the database refuses, not a second statement."""
    if _PUID.fullmatch(identifier) and len(identifier) <= 500:
        return identifier
    return hashlib.sha256(identifier.encode()).hexdigest()


@dataclass(frozen=True)
class Decision:
    """One moderation decision, in the statement's terms.

    ``human``: a moderator decided (``automated_decision`` NOT_AUTOMATED, or PARTIALLY
    when a machine's match led to it); ``automated_detection``: a bank or checker found
    it. ``jurisdictions``: ISO codes or "EU"; only EU/EEA states reach
    ``territorial_scope``.
    """

    puid: str
    category: str
    decision_ground: str
    legal_ground: str
    explanation: str
    facts: str
    content_date: date
    application_date: date
    automated_detection: bool
    automated_decision: str
    keywords: tuple[str, ...] = ()
    content_type: tuple[str, ...] = ("CONTENT_TYPE_IMAGE",)
    content_type_other: str | None = None
    jurisdictions: tuple[str, ...] = ()
    source_type: str = "SOURCE_VOLUNTARY"
    source_identity: str | None = None
    decision_visibility: tuple[str, ...] = ("DECISION_VISIBILITY_CONTENT_REMOVED",)
    decision_account: str | None = None
    decision_ground_reference_url: str | None = None
    content_language: str | None = None

    @classmethod
    def for_category(
        cls,
        bank_category: str,
        *,
        puid: str,
        facts: str,
        content_date: date,
        application_date: date,
        automated_detection: bool,
        human: bool,
        legal_ground: str | None = None,
        **more: Any,
    ) -> Decision:
        """A decision about one of Sluice's bank categories (csam, ncii, terrorism,
        unwanted, an admin's own): the DSA category, keywords and ground as receipts
        state them (``relay.receipt.dsa_for``)."""
        category, keywords, ground = dsa_for(bank_category)
        if human:
            automated = (
                "AUTOMATED_DECISION_PARTIALLY"
                if automated_detection
                else "AUTOMATED_DECISION_NOT_AUTOMATED"
            )
        else:
            automated = "AUTOMATED_DECISION_FULLY"
        return cls(
            puid=puid,
            category=category,
            keywords=keywords,
            decision_ground=ground,
            legal_ground=legal_ground
            or LEGAL_GROUNDS.get(bank_category, LEGAL_GROUNDS["unwanted"]),
            explanation=more.pop(
                "explanation",
                "Matched against a list of known material"
                if automated_detection
                else "Judged by a moderator",
            ),
            facts=facts,
            content_date=content_date,
            application_date=application_date,
            automated_detection=automated_detection,
            automated_decision=automated,
            **more,
        )


def statement(decision: Decision) -> dict[str, Any]:
    """The decision as the database's JSON (checked: ``ReportError`` names a bad field)."""
    out: dict[str, Any] = {
        "decision_visibility": list(decision.decision_visibility),
        "decision_ground": decision.decision_ground,
        "decision_facts": _clip(decision.facts, 5000),
        "content_type": list(decision.content_type),
        "content_date": decision.content_date.isoformat(),
        "application_date": decision.application_date.isoformat(),
        "category": decision.category,
        "automated_detection": "Yes" if decision.automated_detection else "No",
        "automated_decision": decision.automated_decision,
        "source_type": decision.source_type,
        "puid": puid_for(decision.puid),
    }
    if not decision.decision_visibility:
        del out["decision_visibility"]
    if decision.decision_account:
        out["decision_account"] = decision.decision_account
    if "CONTENT_TYPE_OTHER" in decision.content_type:
        out["content_type_other"] = _clip(
            decision.content_type_other or "Media attached to a fediverse post", 500
        )
    if decision.keywords:
        out["category_specification"] = list(decision.keywords)
    if decision.decision_ground == ILLEGAL:
        out["illegal_content_legal_ground"] = _clip(decision.legal_ground, 500)
        out["illegal_content_explanation"] = _clip(decision.explanation, 2000)
    else:
        out["incompatible_content_ground"] = _clip(decision.legal_ground, 500)
        out["incompatible_content_explanation"] = _clip(decision.explanation, 2000)
    scope = _scope(decision.jurisdictions)
    if scope:
        out["territorial_scope"] = scope
    if decision.source_identity and decision.source_type != "SOURCE_VOLUNTARY":
        out["source_identity"] = _clip(decision.source_identity, 500)
    if decision.decision_ground_reference_url:
        out["decision_ground_reference_url"] = decision.decision_ground_reference_url
    if decision.content_language:
        out["content_language"] = decision.content_language.upper()
    check(out)
    return out


def from_receipt(receipt: Receipt, **fields: Any) -> dict[str, Any]:
    """A receipt's statement (``to_statement_of_reasons``) with ``fields`` replacing or
    adding the database's fields it cannot know (``content_type`` from the media kinds,
    ``decision_account`` when the account was acted on), checked."""
    out = to_statement_of_reasons(receipt)
    out.update(fields)
    if "CONTENT_TYPE_OTHER" not in out["content_type"]:
        out.pop("content_type_other", None)
    check(out)
    return out


def check(statement: Mapping[str, Any]) -> None:
    """Refuse what the database's validator refuses, naming the field."""
    for name in ("decision_ground", "decision_facts", "content_type", "content_date",
                 "application_date", "category", "automated_detection",
                 "automated_decision", "source_type", "puid"):  # fmt: skip
        if statement.get(name) in (None, "", []):
            raise ReportError(f"{name} is required")
    decisions = ("decision_visibility", "decision_monetary", "decision_provision",
                 "decision_account")  # fmt: skip
    if not any(statement.get(name) for name in decisions):
        raise ReportError(f"one of {', '.join(decisions)} is required")
    _within("decision_visibility", statement, DECISION_VISIBILITY)
    _within("content_type", statement, CONTENT_TYPES)
    _within("category_specification", statement, KEYWORDS)
    _one("decision_account", statement, DECISION_ACCOUNT)
    _one("decision_ground", statement, DECISION_GROUNDS)
    _one("category", statement, CATEGORIES)
    _one("automated_decision", statement, AUTOMATED_DECISIONS)
    _one("automated_detection", statement, {"Yes", "No"})
    _one("source_type", statement, SOURCE_TYPES)
    _within("territorial_scope", statement, _EEA)
    puid = statement["puid"]
    if not isinstance(puid, str) or not _PUID.fullmatch(puid) or len(puid) > 500:
        raise ReportError("puid must be at most 500 of a-z, A-Z, 0-9, - and _")
    for name, earliest in (("content_date", "2000-01-01"), ("application_date", "2020-01-01")):
        try:
            day = date.fromisoformat(str(statement[name]))
        except ValueError:
            raise ReportError(f"{name} must be a date, YYYY-MM-DD") from None
        if len(str(statement[name])) != 10 or day.isoformat() < earliest:
            raise ReportError(f"{name} must be a date, YYYY-MM-DD, on or after {earliest}")
    if statement["decision_ground"] == ILLEGAL:
        needs = (("illegal_content_legal_ground", 500), ("illegal_content_explanation", 2000))
    else:
        needs = (("incompatible_content_ground", 500), ("incompatible_content_explanation", 2000))
    for name, most in (*needs, ("decision_facts", 5000)):
        text = statement.get(name)
        if not isinstance(text, str) or not text or len(text) > most:
            raise ReportError(f"{name} is required, at most {most} characters")
    for name, enum_key, other in (
        ("decision_visibility", "DECISION_VISIBILITY_OTHER", "decision_visibility_other"),
        ("content_type", "CONTENT_TYPE_OTHER", "content_type_other"),
        ("category_specification", "KEYWORD_OTHER", "category_specification_other"),
    ):
        if enum_key in statement.get(name, ()):
            text = statement.get(other)
            if not isinstance(text, str) or not text or len(text) > 500:
                raise ReportError(f"{other} is required with {enum_key}, at most 500 characters")


def _within(name: str, statement: Mapping[str, Any], allowed: Iterable[str]) -> None:
    values = statement.get(name)
    if values is None:
        return
    if not isinstance(values, list) or not values:
        raise ReportError(f"{name} must be a non-empty list")
    wrong = [v for v in values if v not in set(allowed)]
    if wrong:
        raise ReportError(f"{name}: not one of the database's values: {wrong[0]!r}")


def _one(name: str, statement: Mapping[str, Any], allowed: Iterable[str]) -> None:
    if name in statement and statement[name] not in set(allowed):
        raise ReportError(f"{name}: not one of the database's values: {statement[name]!r}")


def _scope(jurisdictions: Sequence[str]) -> list[str]:
    scope: set[str] = set()
    for place in jurisdictions:
        scope |= _EU if place == "EU" else ({place} & _EEA)
    return sorted(scope)


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


class TransparencyDatabase:
    """The DSA Transparency Database API (``POST /api/v1/statements``, a batch of at
    most 100), with the platform's bearer token from its Digital Services Coordinator.

    Never called automatically. Statements are checked before they go; the answer's
    statements (with ``uuid`` and ``permalink``) are returned. A duplicate ``puid``
    comes back as a 422 naming it: already submitted, not lost.
    """

    MAX_BATCH = 100

    def __init__(
        self,
        token: str,
        *,
        base_url: str = PRODUCTION_URL,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.token = token
        self.base_url = base_url.rstrip("/")
        self._session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def submit(self, statements: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
        """Submit one statement or a batch; the database's JSON answer."""
        batch = [statements] if isinstance(statements, Mapping) else list(statements)
        if not batch or len(batch) > self.MAX_BATCH:
            raise ReportError(f"a batch holds 1 to {self.MAX_BATCH} statements")
        for one in batch:
            check(one)
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        session = self._session or aiohttp.ClientSession()
        try:
            async with session.post(
                f"{self.base_url}/api/v1/statements",
                json={"statements": batch},
                headers=headers,
                timeout=self.timeout,
            ) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
                if response.status != 201:
                    raise SubmissionError(
                        f"the Transparency Database answered {response.status}: {_errors(answer)}",
                        status=response.status,
                    )
                return answer
        except aiohttp.ClientError as exc:
            raise SubmissionError(f"the Transparency Database cannot be reached: {exc}") from exc
        finally:
            if self._session is None:
                await session.close()


def _errors(answer: Any) -> str:
    """The database's reasons: its ``errors`` (per field) before its ``message``."""
    if isinstance(answer, Mapping):
        reason = answer.get("errors") or answer.get("message")
        if reason:
            return str(reason)[:1000]
    return "no reason given"
