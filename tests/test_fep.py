"""FEP-bc20 (fep/bc20/): its vectors, examples and context agree with relay.receipt.

The FEP is what other implementers read; these tests keep it from drifting away from
what Sluice sends.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyld import jsonld as pyld

from relay import receipt as r
from relay.jsonld import UnknownContext, document_loader
from relay.signature.proof import b58encode

FEP = Path(__file__).resolve().parent.parent / "fep" / "bc20"
TITLE = "Moderation Receipts"


def load(name: str) -> Any:
    return json.loads((FEP / name).read_text(encoding="utf-8"))


VECTORS = load("test-vectors.json")
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["privateKeySeedHex"]))


def test_fep_id_is_the_title_hash_and_front_matter_is_complete() -> None:
    assert hashlib.sha256(TITLE.encode()).hexdigest()[:4] == "bc20"
    text = (FEP / "fep-bc20.md").read_text(encoding="utf-8")
    front = text.split("---\n")[1]
    keys = dict(line.split(": ", 1) for line in front.strip().splitlines())
    assert keys["slug"] == '"bc20"'
    assert keys["status"] == "DRAFT"
    assert keys["dateReceived"] == "2026-12-03"
    assert {"authors", "trackingIssue", "discussionsTo"} <= set(keys)
    assert f"# FEP-bc20: {TITLE}\n" in text
    summary = text.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
    assert 20 < len(summary.split()) < 200
    for section in (
        "Motivation",
        "Requirements",
        "Examples",
        "Security and privacy considerations",
        "Implementations",
        "References",
        "Copyright",
    ):
        assert f"\n## {section}\n" in text, section
    assert "CC0" in text
    # Every field of the contract is named in the FEP.
    for term in r.context_document()["@context"]:
        if not term.startswith("@") and term != "mr":
            assert f"`{term}`" in text, term


def test_vectors_reproduce() -> None:
    unsigned = VECTORS["unsignedReceipt"]
    public = KEY.public_key().public_bytes_raw()
    assert public.hex() == VECTORS["publicKeyHex"]
    assert "z" + b58encode(b"\xed\x01" + public) == VECTORS["publicKeyMultibase"]
    config = VECTORS["proofConfiguration"]
    assert rfc8785.dumps(unsigned).decode() == VECTORS["canonicalDocument"]
    assert (
        hashlib.sha256(rfc8785.dumps(config)).hexdigest()
        == VECTORS["canonicalProofConfigurationSha256"]
    )
    assert hashlib.sha256(rfc8785.dumps(unsigned)).hexdigest() == VECTORS["canonicalDocumentSha256"]
    hash_data = (
        hashlib.sha256(rfc8785.dumps(config)).digest()
        + hashlib.sha256(rfc8785.dumps(unsigned)).digest()
    )
    assert hash_data.hex() == VECTORS["hashDataHex"]
    assert "z" + b58encode(KEY.sign(hash_data)) == VECTORS["proofValue"]
    # relay.receipt signs the same receipt to the same bytes.
    signed = r.sign_receipt(
        unsigned, KEY, VECTORS["verificationMethod"], created=VECTORS["created"]
    )
    assert signed == VECTORS["signedReceipt"]
    assert signed["proof"]["proofValue"] == VECTORS["proofValue"]
    # And the receipt is what relay.receipt builds from its fields.
    assert r.parse_receipt(signed, signed=False).to_json() == signed


@pytest.mark.parametrize("name", ["receipt.json", "flag.json", "delete.json"])
def test_examples_parse_and_verify(name: str) -> None:
    example = load(f"examples/{name}")
    receipt = example if name == "receipt.json" else example["moderationReceipt"]
    parsed = r.parse_receipt(receipt)
    assert parsed.actor == "https://sluice.example/actor"
    r.verify_receipt_proof(
        receipt, KEY.public_key(), verification_method=VECTORS["verificationMethod"]
    )
    assert receipt == VECTORS["signedReceipt"]
    if name != "receipt.json":
        assert example["actor"] == parsed.actor
        objects = example["object"] if isinstance(example["object"], list) else [example["object"]]
        assert set(objects) <= set(parsed.object)
    if name == "flag.json":
        # What stock servers read: the account and the post, the reason in content and summary.
        assert example["object"][0] == "https://origin.example/users/alice"
        assert example["content"] and example["summary"]
        assert len(example["content"]) <= 5000


def test_context_in_fep_is_the_shipped_one() -> None:
    assert load("context.jsonld") == r.context_document()
    assert document_loader(r.CONTEXT_URL)["document"] == load("context.jsonld")


def test_context_defines_every_term_a_receipt_uses() -> None:
    signed = VECTORS["signedReceipt"]
    expanded = pyld.expand(signed, {"documentLoader": r.document_loader})
    assert len(expanded) == 1
    node = expanded[0]
    ours = {
        k
        for k in signed
        if k not in ("@context", "id", "type", "actor", "object", "published", "proof")
    }
    for term in ours:
        assert r.NAMESPACE + term in node, term
    assert node["@type"] == [r.NAMESPACE + "ModerationReceipt"]
    assert "https://www.w3.org/ns/activitystreams#actor" in node
    assert "https://w3id.org/security#proof" in node
    hashes = node[r.NAMESPACE + "contentHash"]
    assert {h[r.NAMESPACE + "algorithm"][0]["@value"] for h in hashes} == {"sha256", "md5"}
    assert all(r.NAMESPACE + "hashValue" in h for h in hashes)
    # Nothing dropped: every key of the document came through as an IRI.
    assert len(node) == len(signed) - 1  # less @context


def test_flag_expands_with_its_receipt_offline() -> None:
    flag = load("examples/flag.json")
    node = pyld.expand(flag, {"documentLoader": r.document_loader})[0]
    carried = node[r.NAMESPACE + "moderationReceipt"][0]
    assert carried["@id"] == flag["moderationReceipt"]["id"]


def test_loader_never_fetches_other_contexts() -> None:
    assert r.document_loader("https://peer.example/ns/receipt/v1")["document"] == load(
        "context.jsonld"
    )
    with pytest.raises(UnknownContext):
        r.document_loader("https://peer.example/ns/other")
    with pytest.raises(UnknownContext):
        r.document_loader("http://peer.example/ns/receipt/v1")


def test_examples_are_the_only_files_and_all_json() -> None:
    names = sorted(p.name for p in (FEP / "examples").iterdir())
    assert names == ["delete.json", "flag.json", "receipt.json"]
    for path in FEP.rglob("*.json*"):
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path
