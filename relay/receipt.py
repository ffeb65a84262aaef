"""Moderation receipts (FEP-bc20): what Sluice removed, why, and the hashes to find copies.

A receipt says who decided (``actor``), what was removed (``object``), under which law
or terms (``jurisdiction``, ``decisionGround``, ``legalGround``), in the DSA
Transparency Database's own words (``category``, ``categorySpecification``,
``automatedDecision``), so a receipt exports as a statement of reasons without a lossy
mapping. It is signed with a FEP-8b32 eddsa-jcs-2022 proof by the actor's Ed25519 key:
JCS needs no JSON-LD processing, so a receipt verifies byte for byte anywhere.

A receipt comes from peers we do not control: ``parse_receipt`` bounds and checks every
field before anything reads it, and names the field it refuses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yarl
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from relay import jsonld
from relay.errors import ReceiptError, SignatureError
from relay.signature.proof import (
    CRYPTOSUITE,
    _check_options,
    _hash_input,
    _signature_bytes,
    canonical_json,
    find_proof,
    sign_proof,
)

__all__ = [
    "ALGORITHMS",
    "AS_CONTEXT",
    "AUTOMATED_DECISIONS",
    "CATEGORIES",
    "CONTEXT_PATH",
    "CONTEXT_URL",
    "DATA_INTEGRITY_CONTEXT",
    "DECISION_GROUNDS",
    "ILLEGAL",
    "INCOMPATIBLE",
    "JURISDICTIONS",
    "KEYWORDS",
    "LEGAL_GROUNDS",
    "NAMESPACE",
    "RECEIPT_CATEGORIES",
    "TYPE",
    "ContentHash",
    "Receipt",
    "category_for",
    "content_hashes",
    "context_document",
    "context_url",
    "document_loader",
    "dsa_for",
    "parse_receipt",
    "sign_receipt",
    "timestamp",
    "to_statement_of_reasons",
    "verify_receipt_proof",
]

TYPE = "ModerationReceipt"
AS_CONTEXT = "https://www.w3.org/ns/activitystreams"
DATA_INTEGRITY_CONTEXT = "https://w3id.org/security/data-integrity/v1"
#: Where each Sluice serves the context, under its ``[actor] base_url``.
CONTEXT_PATH = "/ns/receipt/v1"
#: The FEP's own stable URL for the same document (the key in relay/contexts.json).
CONTEXT_URL = "https://w3id.org/fep/bc20"
#: Every term expands under this IRI, whichever URL served the context: receipts from
#: any Sluice (or any other implementation) mean the same.
NAMESPACE = "https://w3id.org/fep/bc20#"


def _words(text: str) -> list[str]:
    return text.split()


# --- the DSA Transparency Database's enum keys, verbatim -------------------------------
# digital-services-act/transparency-database app/Models/Statement.php @69e80a0 (the
# July 2025 "v2" option set: SCOPE_OF_PLATFORM_SERVICE is gone, OTHER_VIOLATION_TC is it).

CATEGORIES = frozenset(
    "STATEMENT_CATEGORY_" + name
    for name in _words(
        "ANIMAL_WELFARE CONSUMER_INFORMATION CYBER_VIOLENCE CYBER_VIOLENCE_AGAINST_WOMEN "
        "DATA_PROTECTION_AND_PRIVACY_VIOLATIONS ILLEGAL_OR_HARMFUL_SPEECH "
        "INTELLECTUAL_PROPERTY_INFRINGEMENTS NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS "
        "NOT_SPECIFIED_NOTICE OTHER_VIOLATION_TC PROTECTION_OF_MINORS "
        "RISK_FOR_PUBLIC_SECURITY SCAMS_AND_FRAUD SELF_HARM UNSAFE_AND_PROHIBITED_PRODUCTS "
        "VIOLENCE"
    )
)

KEYWORDS = frozenset(
    "KEYWORD_" + name
    for name in _words(
        "ADULT_SEXUAL_MATERIAL AGE_SPECIFIC_RESTRICTIONS AGE_SPECIFIC_RESTRICTIONS_MINORS "
        "ANIMAL_HARM BIOMETRIC_DATA_BREACH BULLYING_AGAINST_GIRLS CHILD_SEXUAL_ABUSE_MATERIAL "
        "CHILD_SEXUAL_ABUSE_MATERIAL_DEEPFAKE CONTENT_PROMOTING_EATING_DISORDERS "
        "COORDINATED_HARM COPYRIGHT_INFRINGEMENT CYBER_BULLYING_INTIMIDATION CYBER_HARASSMENT "
        "CYBER_HARASSMENT_AGAINST_WOMEN CYBER_INCITEMENT CYBER_STALKING "
        "CYBER_STALKING_AGAINST_WOMEN DATA_FALSIFICATION DEFAMATION DESIGN_INFRINGEMENT "
        "DISCRIMINATION FEMALE_GENDERED_DISINFORMATION GEOGRAPHIC_INDICATIONS_INFRINGEMENT "
        "GEOGRAPHICAL_REQUIREMENTS GOODS_SERVICES_NOT_PERMITTED "
        "GROOMING_SEXUAL_ENTICEMENT_MINORS HATE_SPEECH HIDDEN_ADVERTISEMENT "
        "HUMAN_EXPLOITATION HUMAN_TRAFFICKING ILLEGAL_ORGANIZATIONS "
        "IMPERSONATION_ACCOUNT_HIJACKING INAUTHENTIC_ACCOUNTS INAUTHENTIC_LISTINGS "
        "INAUTHENTIC_USER_REVIEWS INCITEMENT_AGAINST_WOMEN INCITEMENT_VIOLENCE_HATRED "
        "INSUFFICIENT_INFORMATION_ON_TRADERS LANGUAGE_REQUIREMENTS "
        "MISINFORMATION_DISINFORMATION MISLEADING_INFO_CONSUMER_RIGHTS "
        "MISLEADING_INFO_GOODS_SERVICES MISSING_PROCESSING_GROUND "
        "NON_CONSENSUAL_IMAGE_SHARING NON_CONSENSUAL_IMAGE_SHARING_AGAINST_WOMEN "
        "NON_CONSENSUAL_MATERIAL_DEEPFAKE NON_CONSENSUAL_MATERIAL_DEEPFAKE_AGAINST_WOMEN "
        "NONCOMPLIANCE_PRICING NUDITY PATENT_INFRINGEMENT PHISHING PROHIBITED_PRODUCTS "
        "PYRAMID_SCHEMES RIGHT_TO_BE_FORGOTTEN RISK_ENVIRONMENTAL_DAMAGE RISK_PUBLIC_HEALTH "
        "SELF_MUTILATION STALKING SUICIDE TERRORIST_CONTENT TRADE_SECRET_INFRINGEMENT "
        "TRADEMARK_INFRINGEMENT TRAFFICKING_WOMEN_GIRLS UNLAWFUL_SALE_ANIMALS "
        "UNSAFE_CHALLENGES UNSAFE_PRODUCTS VIOLATION_EU_LAW VIOLATION_NATIONAL_LAW OTHER"
    )
)

ILLEGAL = "DECISION_GROUND_ILLEGAL_CONTENT"
INCOMPATIBLE = "DECISION_GROUND_INCOMPATIBLE_CONTENT"
DECISION_GROUNDS = frozenset({ILLEGAL, INCOMPATIBLE})
AUTOMATED_DECISIONS = frozenset(
    {"AUTOMATED_DECISION_FULLY", "AUTOMATED_DECISION_PARTIALLY", "AUTOMATED_DECISION_NOT_AUTOMATED"}
)

#: ISO 3166-1 alpha-2, the officially assigned codes, and "EU" for the Union's own law.
JURISDICTIONS = frozenset(
    _words(
        "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN "
        "BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ "
        "DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL "
        "GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM "
        "JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME "
        "MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP "
        "NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD "
        "SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO "
        "TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW EU"
    )
)

#: The statement of reasons' territorial_scope takes EU and EEA states only.
_EU = frozenset(
    _words("AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK")
)
_EEA = _EU | {"IS", "LI", "NO"}

#: The hash kinds a receipt carries (relay.hashing's names) and their hex lengths.
ALGORITHMS: Mapping[str, int] = {"pdq": 64, "md5": 32, "sha256": 64}

_MAX_OBJECTS = 64
_MAX_HASHES = 64
_MAX_JURISDICTIONS = 16
_MAX_TEXT_BYTES = 4096
_MAX_RECEIPT_BYTES = 1 << 20

_PUBLISHED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
_HEX = re.compile(r"[0-9a-f]+")

# --- Sluice's bank categories and the DSA's -------------------------------------------

# Why these: the DSA's July 2025 taxonomy files each keyword under one category
# (transparency-database's category parents). CSAM is PROTECTION_OF_MINORS; non-consensual
# intimate images are CYBER_VIOLENCE's NON_CONSENSUAL_IMAGE_SHARING ("excluding content
# depicting minors", which is CSAM's); terrorist content sits under
# RISK_FOR_PUBLIC_SECURITY, not ILLEGAL_OR_HARMFUL_SPEECH (that is hate speech and
# defamation). All three are illegal in the EU (Directive 2011/93/EU, Directive (EU)
# 2024/1385, Regulation (EU) 2021/784). Anything else an admin banks is a matter of the
# instance's own terms: OTHER_VIOLATION_TC, which replaced SCOPE_OF_PLATFORM_SERVICE.
_DSA: Mapping[str, tuple[str, tuple[str, ...], str]] = {
    "csam": (
        "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
        ("KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL",),
        ILLEGAL,
    ),
    "ncii": (
        "STATEMENT_CATEGORY_CYBER_VIOLENCE",
        ("KEYWORD_NON_CONSENSUAL_IMAGE_SHARING",),
        ILLEGAL,
    ),
    "terrorism": (
        "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY",
        ("KEYWORD_TERRORIST_CONTENT",),
        ILLEGAL,
    ),
    "unwanted": ("STATEMENT_CATEGORY_OTHER_VIOLATION_TC", (), INCOMPATIBLE),
}

#: A legal ground to state when the admin configured none, per bank category.
LEGAL_GROUNDS: Mapping[str, str] = {
    "csam": "Directive 2011/93/EU, Article 5 (child sexual abuse material)",
    "ncii": "Directive (EU) 2024/1385, Article 5 (non-consensual sharing of intimate material)",
    "terrorism": "Regulation (EU) 2021/784 (terrorist content online)",
    "unwanted": "The instance's terms of service",
}

# A peer's receipt names the DSA's words; these keywords make it one of our categories.
_FROM_DSA: tuple[tuple[str, frozenset[str], str], ...] = (
    (
        "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
        frozenset(
            {"KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL", "KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL_DEEPFAKE"}
        ),
        "csam",
    ),
    (
        "STATEMENT_CATEGORY_CYBER_VIOLENCE",
        frozenset(
            {"KEYWORD_NON_CONSENSUAL_IMAGE_SHARING", "KEYWORD_NON_CONSENSUAL_MATERIAL_DEEPFAKE"}
        ),
        "ncii",
    ),
    (
        "STATEMENT_CATEGORY_CYBER_VIOLENCE_AGAINST_WOMEN",
        frozenset(
            {
                "KEYWORD_NON_CONSENSUAL_IMAGE_SHARING_AGAINST_WOMEN",
                "KEYWORD_NON_CONSENSUAL_MATERIAL_DEEPFAKE_AGAINST_WOMEN",
            }
        ),
        "ncii",
    ),
    (
        "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY",
        frozenset({"KEYWORD_TERRORIST_CONTENT"}),
        "terrorism",
    ),
)

#: The bank categories an honoured receipt can fill (category_for's answers).
RECEIPT_CATEGORIES = (*dict.fromkeys(ours for _, _, ours in _FROM_DSA), "unwanted")


def dsa_for(category: str) -> tuple[str, tuple[str, ...], str]:
    """The DSA category, keywords and decision ground for one of Sluice's bank categories.

    A category Sluice has no law for (an admin's own name) is a terms-of-service matter.
    """
    return _DSA.get(category, _DSA["unwanted"])


def category_for(dsa_category: str, keywords: Iterable[str]) -> str | None:
    """Sluice's bank category for a receipt's DSA words, or None when none fits.

    Only the keyword makes a receipt CSAM, NCII or terrorism: PROTECTION_OF_MINORS also
    covers age restrictions, which must never fill a csam bank.
    """
    said = set(keywords)
    for category, needs, ours in _FROM_DSA:
        if dsa_category == category and said & needs:
            return ours
    if dsa_category == "STATEMENT_CATEGORY_OTHER_VIOLATION_TC":
        return "unwanted"
    return None


# --- the receipt ----------------------------------------------------------------------


@dataclass(frozen=True)
class ContentHash:
    """A hash peers can look their own copies up by."""

    algorithm: str
    value: str

    def to_json(self) -> dict[str, str]:
        return {"algorithm": self.algorithm, "value": self.value}


@dataclass(frozen=True)
class Receipt:
    """One moderation decision, as FEP-bc20 writes it (attributes are snake_case)."""

    id: str
    actor: str
    object: tuple[str, ...]
    published: str
    jurisdiction: tuple[str, ...]
    category: str
    category_specification: tuple[str, ...]
    decision_ground: str
    legal_ground: str
    automated_detection: bool
    automated_decision: str
    content_hash: tuple[ContentHash, ...]
    should_propagate: bool
    context: str
    appeal: str | None = None
    proof: Mapping[str, Any] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The receipt as JSON (with its proof, when it has one)."""
        document: dict[str, Any] = {
            "@context": [AS_CONTEXT, self.context, DATA_INTEGRITY_CONTEXT],
            "type": TYPE,
            "id": self.id,
            "actor": self.actor,
            "object": list(self.object),
            "published": self.published,
            "jurisdiction": list(self.jurisdiction),
            "category": self.category,
            "categorySpecification": list(self.category_specification),
            "decisionGround": self.decision_ground,
            "legalGround": self.legal_ground,
            "automatedDetection": self.automated_detection,
            "automatedDecision": self.automated_decision,
            "contentHash": [h.to_json() for h in self.content_hash],
            "shouldPropagate": self.should_propagate,
        }
        if self.appeal is not None:
            document["appeal"] = self.appeal
        if self.proof is not None:
            document["proof"] = dict(self.proof)
        return document


def context_url(base_url: str) -> str:
    """The receipt context's URL under Sluice's ``[actor] base_url``."""
    return base_url.rstrip("/") + CONTEXT_PATH


def timestamp(when: datetime | None = None) -> str:
    """ISO 8601 in UTC to the second with "Z", as ``published`` is written."""
    moment = datetime.now(UTC) if when is None else when.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def content_hashes(
    hashes: Mapping[str, str], kinds: Iterable[str] = tuple(ALGORITHMS)
) -> list[dict[str, str]]:
    """A receipt's ``contentHash`` from a file's hashes (relay.hashing names to hex).

    Kinds a receipt does not define are left out, and so are those not in `kinds`: a
    PDQ hash of abuse material is a usable description of it, so a caller may keep it in.
    """
    wanted = set(kinds)
    out = []
    for name in ALGORITHMS:  # a fixed order: the same file, the same receipt
        if name in hashes and name in wanted:
            value = hashes[name].lower()
            _check_hex(name, value, "contentHash")
            out.append({"algorithm": name, "value": value})
    return out


def sign_receipt(
    receipt_json: Mapping[str, Any],
    private_key: Ed25519PrivateKey,
    verification_method: str,
    *,
    created: str | None = None,
) -> dict[str, Any]:
    """The receipt with its eddsa-jcs-2022 proof; a malformed receipt is never signed."""
    parse_receipt(receipt_json, signed=False)
    return sign_proof(receipt_json, private_key, verification_method, created=created)


def verify_receipt_proof(
    document: Mapping[str, Any],
    public_key: Ed25519PublicKey,
    *,
    verification_method: str | None = None,
) -> None:
    """Check the receipt's proof with a key the caller resolved; SignatureError if not.

    Resolving the key (and checking its owner is the receipt's actor, on the actor's
    host) is the caller's: this is the arithmetic, shared with relay.signature.proof.
    """
    proof = find_proof(document)
    if proof is None:
        raise SignatureError(f"receipt has no {CRYPTOSUITE} proof")
    method = _check_options(proof)
    if verification_method is not None and method != verification_method:
        raise SignatureError(f"receipt proof is by {method}, not by {verification_method}")
    signature = _signature_bytes(proof)
    try:
        message = _hash_input(document, proof)
    except ValueError as exc:
        raise SignatureError(f"receipt cannot be canonicalised: {exc}") from None
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError(f"receipt proof does not verify with key {method}") from None


# --- parsing ------------------------------------------------------------------------------


def parse_receipt(document: Any, *, signed: bool = True) -> Receipt:
    """Check every field of a receipt and return it; ReceiptError names the first bad one.

    `signed` asks for a well-formed proof by a key on the actor's own host (the proof's
    arithmetic is verify_receipt_proof's). A single value where the FEP says a list is
    taken as a list of one, as JSON-LD compaction writes it.
    """
    if not isinstance(document, Mapping):
        raise ReceiptError("receipt is not a JSON object")
    try:
        size = len(canonical_json(document))
    except ValueError as exc:
        raise ReceiptError(f"receipt is not JSON: {exc}") from None
    if size > _MAX_RECEIPT_BYTES:
        raise ReceiptError(f"receipt is larger than {_MAX_RECEIPT_BYTES} bytes")
    context = _context(document.get("@context"))
    if document.get("type") != TYPE:
        raise ReceiptError(f"type: must be {TYPE!r}")
    receipt_id = _url(document.get("id"), "id")
    actor = _url(document.get("actor"), "actor")
    host = yarl.URL(actor).host
    if yarl.URL(receipt_id).host != host:
        raise ReceiptError("id: must be on the actor's host")
    objects = tuple(
        _url(o, "object") for o in _list(document.get("object"), "object", _MAX_OBJECTS)
    )
    if not objects:
        raise ReceiptError("object: must name at least one object")
    jurisdiction = tuple(
        _enum(j, "jurisdiction", JURISDICTIONS)
        for j in _list(document.get("jurisdiction"), "jurisdiction", _MAX_JURISDICTIONS)
    )
    if not jurisdiction:
        raise ReceiptError("jurisdiction: must name at least one jurisdiction")
    keywords = tuple(
        _enum(k, "categorySpecification", KEYWORDS)
        for k in _list(
            document.get("categorySpecification", []), "categorySpecification", len(KEYWORDS)
        )
    )
    hashes = tuple(
        _content_hash(h) for h in _list(document.get("contentHash", []), "contentHash", _MAX_HASHES)
    )
    appeal = document.get("appeal")
    proof = document.get("proof")
    if signed or proof is not None:
        proof = _proof(proof, host)
    return Receipt(
        id=receipt_id,
        actor=actor,
        object=objects,
        published=_published(document.get("published")),
        jurisdiction=jurisdiction,
        category=_enum(document.get("category"), "category", CATEGORIES),
        category_specification=keywords,
        decision_ground=_enum(document.get("decisionGround"), "decisionGround", DECISION_GROUNDS),
        legal_ground=_text(document.get("legalGround"), "legalGround"),
        automated_detection=_bool(document.get("automatedDetection"), "automatedDetection"),
        automated_decision=_enum(
            document.get("automatedDecision"), "automatedDecision", AUTOMATED_DECISIONS
        ),
        content_hash=hashes,
        should_propagate=_bool(document.get("shouldPropagate"), "shouldPropagate"),
        context=context,
        appeal=None if appeal is None else _url(appeal, "appeal"),
        proof=proof,
    )


def _context(value: Any) -> str:
    """The receipt context among ``@context``'s entries (ActivityStreams is required)."""
    entries = _list(value, "@context", 8)
    if AS_CONTEXT not in entries:
        raise ReceiptError(f"@context: must include {AS_CONTEXT}")
    for entry in entries:
        if isinstance(entry, str) and _is_receipt_context(entry, plain_http=True):
            return _url(entry, "@context")
    raise ReceiptError(f"@context: must include the receipt context ({CONTEXT_URL})")


def _is_receipt_context(url: str, *, plain_http: bool = False) -> bool:
    """The FEP's context URL, or an actor's copy of it. ``plain_http``: a receipt may name
    an http:// copy (an actor on loopback); the loader never serves one under it."""
    schemes = ("https://", "http://") if plain_http else ("https://",)
    return url == CONTEXT_URL or (url.startswith(schemes) and url.endswith(CONTEXT_PATH))


def _list(value: Any, name: str, most: int) -> list[Any]:
    if value is None:
        raise ReceiptError(f"{name}: is missing")
    items = value if isinstance(value, list) else [value]
    if len(items) > most:
        raise ReceiptError(f"{name}: more than {most} entries")
    return items


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ReceiptError(f"{name}: must be a non-empty string")
    if len(value.encode("utf-8", "surrogatepass")) > _MAX_TEXT_BYTES:
        raise ReceiptError(f"{name}: longer than {_MAX_TEXT_BYTES} bytes")
    return value


def _url(value: Any, name: str) -> str:
    text = _text(value, name)
    try:
        url = yarl.URL(text)
    except ValueError:
        raise ReceiptError(f"{name}: {text[:100]!r} is not a URL") from None
    if url.scheme not in ("https", "http") or not url.host or not url.is_absolute():
        raise ReceiptError(f"{name}: {text[:100]!r} is not an http(s) URL")
    return text


def _enum(value: Any, name: str, allowed: frozenset[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        shown = repr(value)[:100]
        raise ReceiptError(f"{name}: {shown} is not an allowed value")
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ReceiptError(f"{name}: must be true or false")
    return value


def _published(value: Any) -> str:
    text = _text(value, "published")
    if not _PUBLISHED.fullmatch(text):
        raise ReceiptError("published: must be an ISO 8601 UTC date-time ending in Z")
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReceiptError("published: not a real date-time") from None
    return text


def _check_hex(algorithm: str, value: Any, name: str) -> str:
    length = ALGORITHMS[algorithm]
    if not isinstance(value, str) or len(value) != length or not _HEX.fullmatch(value):
        raise ReceiptError(f"{name}: a {algorithm} value must be {length} lowercase hex digits")
    return value


def _content_hash(value: Any) -> ContentHash:
    if not isinstance(value, Mapping) or set(value) != {"algorithm", "value"}:
        raise ReceiptError('contentHash: each entry must be {"algorithm", "value"}')
    algorithm = value["algorithm"]
    if algorithm not in ALGORITHMS:
        raise ReceiptError(
            f"contentHash: algorithm {repr(algorithm)[:40]} is not pdq, md5 or sha256"
        )
    return ContentHash(algorithm, _check_hex(algorithm, value["value"], "contentHash"))


def _proof(value: Any, host: str | None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ReceiptError("proof: is missing or not an object")
    if value.get("cryptosuite") != CRYPTOSUITE:
        raise ReceiptError(f"proof: cryptosuite must be {CRYPTOSUITE}")
    try:
        method = _check_options(value)
        _signature_bytes(value)
    except SignatureError as exc:
        raise ReceiptError(f"proof: {exc}") from None
    if yarl.URL(_url(method, "proof")).host != host:
        raise ReceiptError("proof: verificationMethod must be a key on the actor's host")
    return value


# --- the JSON-LD context ----------------------------------------------------------------


def context_document() -> dict[str, Any]:
    """The receipt's JSON-LD context, as shipped in relay/contexts.json (one source)."""
    document: dict[str, Any] = jsonld.document_loader(CONTEXT_URL)["document"]
    return document


def document_loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """relay.jsonld's offline loader, which also knows any Sluice's receipt context URL."""
    if _is_receipt_context(url):
        return {**jsonld.document_loader(CONTEXT_URL, options), "documentUrl": url}
    return jsonld.document_loader(url, options)


# --- the DSA statement of reasons ---------------------------------------------------------


def to_statement_of_reasons(receipt: Receipt) -> dict[str, Any]:
    """The receipt as a DSA Transparency Database statement of reasons (API v1 fields).

    The dates are the receipt's: Sluice removes what it is given when it arrives, so the
    content's date and the decision's are the same day.
    """
    day = receipt.published[:10]
    explanation = (
        f"Matched by its hashes ({', '.join(sorted({h.algorithm for h in receipt.content_hash}))})"
        if receipt.content_hash
        else "Judged by a moderator"
    )
    statement: dict[str, Any] = {
        "decision_visibility": ["DECISION_VISIBILITY_CONTENT_REMOVED"],
        "decision_ground": receipt.decision_ground,
        "decision_facts": _clip(
            f"Removed {len(receipt.object)} object(s) by moderation receipt {receipt.id}. "
            f"{explanation}.",
            5000,
        ),
        "content_type": [
            "CONTENT_TYPE_IMAGE"
            if any(h.algorithm == "pdq" for h in receipt.content_hash)
            else "CONTENT_TYPE_OTHER"
        ],
        "content_date": day,
        "application_date": day,
        "category": receipt.category,
        "automated_detection": "Yes" if receipt.automated_detection else "No",
        "automated_decision": receipt.automated_decision,
        "source_type": "SOURCE_VOLUNTARY",
        "puid": hashlib.sha256(receipt.id.encode()).hexdigest(),
    }
    if statement["content_type"] == ["CONTENT_TYPE_OTHER"]:
        statement["content_type_other"] = "Media attached to a fediverse post"
    if receipt.category_specification:
        statement["category_specification"] = list(receipt.category_specification)
    if receipt.decision_ground == ILLEGAL:
        statement["illegal_content_legal_ground"] = _clip(receipt.legal_ground, 500)
        statement["illegal_content_explanation"] = _clip(explanation, 2000)
    else:
        statement["incompatible_content_ground"] = _clip(receipt.legal_ground, 500)
        statement["incompatible_content_explanation"] = _clip(explanation, 2000)
    scope: set[str] = set()
    for place in receipt.jurisdiction:
        scope |= _EU if place == "EU" else ({place} & _EEA)
    if scope:
        statement["territorial_scope"] = sorted(scope)
    return statement


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"
