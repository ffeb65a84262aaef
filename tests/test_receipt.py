"""Moderation receipts: built, signed, checked field by field, and read back.

The proof is checked here by an independent eddsa-jcs-2022 written in the test (RFC 8785
from the rfc8785 package, Ed25519 from cryptography, vc-di-eddsa 3.3's hashing), so a
shared mistake in relay.signature.proof cannot pass unnoticed.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from relay import receipt as r
from relay.errors import DecodeError, ReceiptError, SignatureError
from relay.signature.proof import b58decode

BASE = "https://sluice.example"
KEY_ID = f"{BASE}/actor#ed25519-key"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PDQ = "f" * 16 + "0" * 48
MD5 = "9e107d9d372bb6826bd81d3542a419d6"
SHA256 = "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592"


def receipt(**changes: Any) -> r.Receipt:
    category, keywords, ground = r.dsa_for("csam")
    fields: dict[str, Any] = {
        "id": f"{BASE}/receipts/01",
        "actor": f"{BASE}/actor",
        "object": ("https://origin.example/notes/1", "https://origin.example/users/bad"),
        "published": "2026-12-03T12:00:00Z",
        "jurisdiction": ("EU", "DE"),
        "category": category,
        "category_specification": keywords,
        "decision_ground": ground,
        "legal_ground": r.LEGAL_GROUNDS["csam"],
        "automated_detection": True,
        "automated_decision": "AUTOMATED_DECISION_PARTIALLY",
        "content_hash": tuple(
            r.ContentHash(**h) for h in r.content_hashes({"pdq": PDQ, "md5": MD5, "sha256": SHA256})
        ),
        "should_propagate": True,
        "context": r.context_url(BASE),
        "appeal": f"{BASE}/appeal",
    }
    fields.update(changes)
    return r.Receipt(**fields)


def signed(**changes: Any) -> dict[str, Any]:
    return r.sign_receipt(receipt(**changes).to_json(), KEY, KEY_ID, created="2026-12-03T12:00:01Z")


def independent_verify(document: dict[str, Any], public_key: Ed25519PublicKey) -> None:
    """vc-di-eddsa 3.3: sha256(JCS(proof options + @context)) || sha256(JCS(unsecured))."""
    proof = dict(document["proof"])
    value = proof.pop("proofValue")
    assert value.startswith("z")
    options = {**proof, "@context": document["@context"]}
    unsecured = {k: v for k, v in document.items() if k != "proof"}
    message = (
        hashlib.sha256(rfc8785.dumps(options)).digest()
        + hashlib.sha256(rfc8785.dumps(unsecured)).digest()
    )
    public_key.verify(b58decode(value[1:]), message)


def test_to_json_names_the_contract_fields() -> None:
    document = receipt().to_json()
    assert document["@context"] == [
        "https://www.w3.org/ns/activitystreams",
        "https://sluice.example/ns/receipt/v1",
        "https://w3id.org/security/data-integrity/v1",
    ]
    assert document["type"] == "ModerationReceipt"
    assert document["object"] == [
        "https://origin.example/notes/1",
        "https://origin.example/users/bad",
    ]
    assert document["category"] == "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"
    assert document["categorySpecification"] == ["KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL"]
    assert document["decisionGround"] == "DECISION_GROUND_ILLEGAL_CONTENT"
    assert document["automatedDetection"] is True
    assert document["automatedDecision"] == "AUTOMATED_DECISION_PARTIALLY"
    assert document["contentHash"] == [
        {"algorithm": "pdq", "value": PDQ},
        {"algorithm": "md5", "value": MD5},
        {"algorithm": "sha256", "value": SHA256},
    ]
    assert document["shouldPropagate"] is True
    assert document["appeal"] == f"{BASE}/appeal"
    assert "proof" not in document
    assert "appeal" not in receipt(appeal=None).to_json()


def test_signed_receipt_verifies_independently_and_reads_back() -> None:
    document = signed()
    proof = document["proof"]
    assert proof["type"] == "DataIntegrityProof"
    assert proof["cryptosuite"] == "eddsa-jcs-2022"
    assert proof["proofPurpose"] == "assertionMethod"
    assert proof["verificationMethod"] == KEY_ID
    independent_verify(document, KEY.public_key())
    r.verify_receipt_proof(document, KEY.public_key(), verification_method=KEY_ID)
    back = r.parse_receipt(document)
    assert back == receipt()
    assert back.proof == proof


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", f"{BASE}/receipts/02"),
        ("object", ["https://origin.example/notes/2"]),
        ("published", "2026-12-03T12:00:02Z"),
        ("jurisdiction", ["FR"]),
        ("category", "STATEMENT_CATEGORY_CYBER_VIOLENCE"),
        ("automatedDetection", False),
        ("shouldPropagate", False),
        ("contentHash", [{"algorithm": "md5", "value": "0" * 32}]),
        ("@context", ["https://www.w3.org/ns/activitystreams", f"{BASE}/ns/receipt/v2"]),
    ],
)
def test_one_changed_field_fails_both_verifiers(field: str, value: Any) -> None:
    document = signed()
    document[field] = value
    with pytest.raises(InvalidSignature):
        independent_verify(document, KEY.public_key())
    with pytest.raises(SignatureError, match="does not verify"):
        r.verify_receipt_proof(document, KEY.public_key())


def test_one_changed_byte_fails() -> None:
    document = signed()
    document["legalGround"] = document["legalGround"].replace("5", "6")
    with pytest.raises(InvalidSignature):
        independent_verify(document, KEY.public_key())
    with pytest.raises(SignatureError):
        r.verify_receipt_proof(document, KEY.public_key())
    document = signed()
    document["proof"]["created"] = "2026-12-03T12:00:02Z"
    with pytest.raises(SignatureError):
        r.verify_receipt_proof(document, KEY.public_key())


def test_another_key_or_method_fails() -> None:
    document = signed()
    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    with pytest.raises(SignatureError, match="does not verify"):
        r.verify_receipt_proof(document, other.public_key())
    with pytest.raises(SignatureError, match="not by"):
        r.verify_receipt_proof(
            document, KEY.public_key(), verification_method=f"{BASE}/actor#main-key"
        )
    del document["proof"]
    with pytest.raises(SignatureError, match="no eddsa-jcs-2022 proof"):
        r.verify_receipt_proof(document, KEY.public_key())


def test_malformed_receipt_is_never_signed() -> None:
    document = receipt().to_json()
    document["category"] = "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"
    with pytest.raises(ReceiptError, match="category"):
        r.sign_receipt(document, KEY, KEY_ID)


def _bad(**fields: Any) -> dict[str, Any]:
    document = copy.deepcopy(signed())
    for name, value in fields.items():
        if value is _DROP:
            del document[name]
        else:
            document[name] = value
    return document


_DROP = object()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"@context": ["https://www.w3.org/ns/activitystreams"]}, "@context"),
        ({"@context": [f"{BASE}/ns/receipt/v1"]}, "@context"),
        ({"type": "Note"}, "type"),
        ({"id": "not a url"}, "id"),
        ({"id": "https://elsewhere.example/receipts/1"}, "id"),
        ({"actor": _DROP}, "actor"),
        ({"actor": "ftp://sluice.example/actor"}, "actor"),
        ({"object": []}, "object"),
        ({"object": [f"https://origin.example/n/{i}" for i in range(65)]}, "object"),
        ({"object": [17]}, "object"),
        ({"published": "2026-12-03 12:00:00"}, "published"),
        ({"published": "2026-12-03T12:00:00+01:00"}, "published"),
        ({"published": "2026-13-03T12:00:00Z"}, "published"),
        ({"jurisdiction": ["XX"]}, "jurisdiction"),
        ({"jurisdiction": ["de"]}, "jurisdiction"),
        ({"jurisdiction": []}, "jurisdiction"),
        ({"jurisdiction": ["DE"] * 17}, "jurisdiction"),
        ({"category": "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE"}, "category"),
        ({"category": _DROP}, "category"),
        ({"categorySpecification": ["KEYWORD_NOPE"]}, "categorySpecification"),
        ({"decisionGround": "DECISION_GROUND_BECAUSE"}, "decisionGround"),
        ({"legalGround": ""}, "legalGround"),
        ({"legalGround": "x" * 4097}, "legalGround"),
        ({"automatedDetection": "Yes"}, "automatedDetection"),
        ({"automatedDecision": "AUTOMATED_DECISION_YES"}, "automatedDecision"),
        ({"contentHash": [{"algorithm": "sha1", "value": "0" * 40}]}, "contentHash"),
        ({"contentHash": [{"algorithm": "md5", "value": MD5.upper()}]}, "contentHash"),
        ({"contentHash": [{"algorithm": "pdq", "value": MD5}]}, "contentHash"),
        ({"contentHash": [{"algorithm": "sha256", "value": "g" * 64}]}, "contentHash"),
        ({"contentHash": [{"algorithm": "md5", "value": MD5, "x": 1}]}, "contentHash"),
        ({"contentHash": [{"algorithm": "md5", "value": MD5}] * 65}, "contentHash"),
        ({"shouldPropagate": _DROP}, "shouldPropagate"),
        ({"shouldPropagate": 1}, "shouldPropagate"),
        ({"appeal": "mailto:appeals@sluice.example"}, "appeal"),
        ({"proof": _DROP}, "proof"),
        ({"proof": "z123"}, "proof"),
    ],
)
def test_parse_refuses_each_malformed_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ReceiptError) as refused:
        r.parse_receipt(_bad(**fields))
    assert str(refused.value).startswith(named), str(refused.value)
    assert isinstance(refused.value, DecodeError)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"cryptosuite": "rsa-signature-2018"}, "cryptosuite"),
        ({"proofPurpose": "authentication"}, "purpose"),
        ({"type": "Ed25519Signature2020"}, "DataIntegrityProof"),
        ({"proofValue": "uABC"}, "multibase"),
        ({"verificationMethod": "https://evil.example/actor#ed25519-key"}, "actor's host"),
    ],
)
def test_parse_refuses_a_bad_proof(change: dict[str, str], problem: str) -> None:
    document = signed()
    document["proof"].update(change)
    with pytest.raises(ReceiptError, match=f"^proof: .*{problem}"):
        r.parse_receipt(document)


def test_parse_takes_a_single_value_as_a_list_and_the_fep_context() -> None:
    document = signed()
    document["object"] = "https://origin.example/notes/1"
    document["jurisdiction"] = "EU"
    document["@context"] = ["https://www.w3.org/ns/activitystreams", r.CONTEXT_URL]
    back = r.parse_receipt(document)
    assert back.object == ("https://origin.example/notes/1",)
    assert back.jurisdiction == ("EU",)
    assert back.context == "https://w3id.org/fep/bc20"
    unsigned = receipt().to_json()
    assert r.parse_receipt(unsigned, signed=False).proof is None


def test_content_hashes_keep_the_receipt_kinds_only() -> None:
    hashes = {"sha256": SHA256.upper(), "dhash": "00", "md5": MD5, "pdq": PDQ}
    assert r.content_hashes(hashes) == [
        {"algorithm": "pdq", "value": PDQ},
        {"algorithm": "md5", "value": MD5},
        {"algorithm": "sha256", "value": SHA256},
    ]
    assert r.content_hashes(hashes, kinds=("md5", "sha256")) == [
        {"algorithm": "md5", "value": MD5},
        {"algorithm": "sha256", "value": SHA256},
    ]
    with pytest.raises(ReceiptError, match="contentHash"):
        r.content_hashes({"md5": "abc"})


@pytest.mark.parametrize("category", ["csam", "ncii", "terrorism", "unwanted"])
def test_dsa_for_and_category_for_round_trip(category: str) -> None:
    dsa_category, keywords, ground = r.dsa_for(category)
    assert dsa_category in r.CATEGORIES
    assert set(keywords) <= r.KEYWORDS
    assert ground in r.DECISION_GROUNDS
    assert r.category_for(dsa_category, keywords) == category


def test_dsa_mapping_values() -> None:
    assert r.dsa_for("csam") == (
        "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
        ("KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL",),
        "DECISION_GROUND_ILLEGAL_CONTENT",
    )
    assert r.dsa_for("ncii") == (
        "STATEMENT_CATEGORY_CYBER_VIOLENCE",
        ("KEYWORD_NON_CONSENSUAL_IMAGE_SHARING",),
        "DECISION_GROUND_ILLEGAL_CONTENT",
    )
    assert r.dsa_for("terrorism")[:2] == (
        "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY",
        ("KEYWORD_TERRORIST_CONTENT",),
    )
    assert r.dsa_for("spam-of-my-own") == (
        "STATEMENT_CATEGORY_OTHER_VIOLATION_TC",
        (),
        "DECISION_GROUND_INCOMPATIBLE_CONTENT",
    )
    # Protection of minors without the CSAM keyword (an age restriction) is not csam.
    assert (
        r.category_for(
            "STATEMENT_CATEGORY_PROTECTION_OF_MINORS", ["KEYWORD_AGE_SPECIFIC_RESTRICTIONS"]
        )
        is None
    )
    assert (
        r.category_for(
            "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
            ["KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL_DEEPFAKE"],
        )
        == "csam"
    )
    assert r.category_for("STATEMENT_CATEGORY_SCAMS_AND_FRAUD", ["KEYWORD_PHISHING"]) is None


def test_enum_lists_are_the_dsa_ones() -> None:
    assert len(r.CATEGORIES) == 16
    assert len(r.KEYWORDS) == 69
    assert "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE" not in r.CATEGORIES
    assert len(r.JURISDICTIONS) == 250  # 249 ISO 3166-1 codes and EU
    assert {"DE", "GR", "US", "EU"} <= r.JURISDICTIONS
    assert "EL" not in r.JURISDICTIONS and "UK" not in r.JURISDICTIONS


def test_statement_of_reasons() -> None:
    statement = r.to_statement_of_reasons(receipt())
    assert statement["category"] == "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"
    assert statement["category_specification"] == ["KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL"]
    assert statement["decision_ground"] == "DECISION_GROUND_ILLEGAL_CONTENT"
    assert statement["illegal_content_legal_ground"] == r.LEGAL_GROUNDS["csam"]
    assert "incompatible_content_ground" not in statement
    assert statement["automated_detection"] == "Yes"
    assert statement["automated_decision"] == "AUTOMATED_DECISION_PARTIALLY"
    assert statement["decision_visibility"] == ["DECISION_VISIBILITY_CONTENT_REMOVED"]
    assert statement["content_type"] == ["CONTENT_TYPE_IMAGE"]
    assert statement["content_date"] == statement["application_date"] == "2026-12-03"
    assert statement["source_type"] == "SOURCE_VOLUNTARY"
    assert len(statement["territorial_scope"]) == 27  # EU, and DE within it
    assert "NO" not in statement["territorial_scope"]
    assert statement["puid"] == hashlib.sha256(b"https://sluice.example/receipts/01").hexdigest()

    category, keywords, ground = r.dsa_for("unwanted")
    other = r.to_statement_of_reasons(
        receipt(
            category=category,
            category_specification=keywords,
            decision_ground=ground,
            legal_ground="Rule 3: no spam",
            automated_detection=False,
            jurisdiction=("US", "NO"),
            content_hash=(r.ContentHash("md5", MD5),),
        )
    )
    assert other["incompatible_content_ground"] == "Rule 3: no spam"
    assert "illegal_content_legal_ground" not in other
    assert "category_specification" not in other
    assert other["automated_detection"] == "No"
    assert other["territorial_scope"] == ["NO"]
    assert other["content_type"] == ["CONTENT_TYPE_OTHER"]
    assert other["content_type_other"]


def test_timestamp_is_utc_seconds_with_z() -> None:
    from datetime import datetime, timedelta, timezone

    when = datetime(2026, 12, 3, 13, 0, 5, 999, tzinfo=timezone(timedelta(hours=1)))
    assert r.timestamp(when) == "2026-12-03T12:00:05Z"
    assert r.parse_receipt(
        receipt(published=r.timestamp()).to_json(), signed=False
    ).published.endswith("Z")
