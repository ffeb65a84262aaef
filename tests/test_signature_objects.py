"""Signatures inside objects: RsaSignature2017, FEP-8b32 eddsa-jcs-2022; JCS, base58, JSON-LD."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from relay.errors import SignatureError
from relay.jsonld import UnknownContext, document_loader, normalize
from relay.signature import KeyCache, PublicKey, sign_ld, sign_proof, verify_object
from relay.signature.proof import b58decode, b58encode, canonical_json
from tests.conftest import public_pem
from tests.signature_support import (
    ALICE,
    KEY_ID,
    Keys,
    ed_key_fixture,  # noqa: F401
    rsa_key2_fixture,  # noqa: F401
    rsa_key_fixture,  # noqa: F401
)

RSA_KEY_ID = KEY_ID
ED_KEY_ID = f"{ALICE}#ed25519-key"

ACTIVITY: dict[str, Any] = {
    "@context": [
        "https://www.w3.org/ns/activitystreams",
        "https://w3id.org/security/v1",
        {"toot": "http://joinmastodon.org/ns#", "sensitive": "as:sensitive"},
    ],
    "id": f"{ALICE}/statuses/1/activity",
    "type": "Create",
    "actor": ALICE,
    "to": ["https://www.w3.org/ns/activitystreams#Public"],
    "object": {
        "id": f"{ALICE}/statuses/1",
        "type": "Note",
        "attributedTo": ALICE,
        "content": "<p>Grüße, ünïcödé 🌍</p>",
        "sensitive": False,
        "published": "2024-01-01T00:00:00Z",
    },
}


@pytest.fixture
def keys(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> Keys:
    return Keys(
        PublicKey(RSA_KEY_ID, ALICE, rsa_key.public_key()),
        PublicKey(ED_KEY_ID, ALICE, ed_key.public_key()),
    )


# --- RsaSignature2017 -------------------------------------------------------------------------


async def test_ld_round_trip(rsa_key: rsa.RSAPrivateKey, keys: Keys) -> None:
    signed = sign_ld(ACTIVITY, rsa_key, RSA_KEY_ID)
    assert set(signed["signature"]) == {"type", "creator", "created", "signatureValue"}
    assert signed["signature"]["type"] == "RsaSignature2017"
    assert "signature" not in ACTIVITY
    assert await verify_object(signed, ALICE, keys) == "RsaSignature2017"


async def test_ld_survives_json_round_trip_and_key_order(
    rsa_key: rsa.RSAPrivateKey, keys: Keys
) -> None:
    """What is signed is the RDF graph, not the JSON text."""
    signed = sign_ld(ACTIVITY, rsa_key, RSA_KEY_ID)
    reordered = json.loads(json.dumps(dict(reversed(list(signed.items())))))
    assert await verify_object(reordered, ALICE, keys) == "RsaSignature2017"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["object"].update(content="<p>something else</p>"),
        lambda d: d.update(to=["https://a.example/users/alice/followers"]),
        lambda d: d["signature"].update(created="2020-01-01T00:00:00Z"),
    ],
)
async def test_ld_tampered(rsa_key: rsa.RSAPrivateKey, keys: Keys, tamper: Any) -> None:
    signed = copy.deepcopy(sign_ld(ACTIVITY, rsa_key, RSA_KEY_ID))
    tamper(signed)
    with pytest.raises(SignatureError, match=f"^signature does not verify with key {RSA_KEY_ID}$"):
        await verify_object(signed, ALICE, keys)


async def test_ld_undefined_terms_are_not_signed(rsa_key: rsa.RSAPrivateKey, keys: Keys) -> None:
    """As in Mastodon: terms without a JSON-LD definition drop out of the signed graph."""
    signed = sign_ld(ACTIVITY, rsa_key, RSA_KEY_ID)
    assert await verify_object({**signed, "undefinedTerm": "x"}, ALICE, keys)


async def test_ld_key_of_someone_else(rsa_key: rsa.RSAPrivateKey, keys: Keys) -> None:
    signed = sign_ld(ACTIVITY, rsa_key, RSA_KEY_ID)
    with pytest.raises(
        SignatureError, match=rf"^key {RSA_KEY_ID} belongs to {ALICE}, not to https://b\.example/"
    ):
        await verify_object(signed, "https://b.example/users/bob", keys)


async def test_ld_with_an_ed25519_key(rsa_key: rsa.RSAPrivateKey, keys: Keys) -> None:
    signed = sign_ld(ACTIVITY, rsa_key, ED_KEY_ID)
    with pytest.raises(SignatureError, match=f"^key {ED_KEY_ID} is not an RSA key$"):
        await verify_object(signed, ALICE, keys)


async def test_ld_unknown_context_is_refused_not_fetched(
    rsa_key: rsa.RSAPrivateKey, keys: Keys
) -> None:
    document = {**ACTIVITY, "@context": [*ACTIVITY["@context"], "https://evil.example/ctx"]}
    signed = {**document, "signature": sign_ld(ACTIVITY, rsa_key, RSA_KEY_ID)["signature"]}
    with pytest.raises(
        SignatureError, match=r"^object uses an unknown JSON-LD context https://evil\.example/ctx$"
    ):
        await verify_object(signed, ALICE, keys)


async def test_ld_bad_signature_value(rsa_key: rsa.RSAPrivateKey, keys: Keys) -> None:
    signed = copy.deepcopy(sign_ld(ACTIVITY, rsa_key, RSA_KEY_ID))
    signed["signature"]["signatureValue"] = "not base64!"
    with pytest.raises(SignatureError, match=r"^signatureValue is not valid base64$"):
        await verify_object(signed, ALICE, keys)


async def test_ld_rotated_key(rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    def actor(key: rsa.RSAPrivateKey) -> dict[str, Any]:
        return {"id": ALICE, "publicKey": {"id": RSA_KEY_ID, "publicKeyPem": public_pem(key)}}

    docs = {ALICE: actor(rsa_key)}

    async def fetch_json(url: str) -> dict:
        return docs[url]

    cache = KeyCache(fetch_json)
    await verify_object(sign_ld(ACTIVITY, rsa_key, RSA_KEY_ID), ALICE, cache)
    docs[ALICE] = actor(rsa_key2)
    assert await verify_object(sign_ld(ACTIVITY, rsa_key2, RSA_KEY_ID), ALICE, cache)


MASTODON_SIGNED = (
    Path(__file__).parent / "fixtures/signatures/mastodon-create-rsasignature2017.json"
)


async def test_ld_as_mastodon_signed_it() -> None:
    """A Create signed by a real Mastodon server verifies with its author's real key."""
    vector = json.loads(MASTODON_SIGNED.read_text())
    key = serialization.load_pem_public_key(vector["publicKeyPem"].encode())
    keys = Keys(PublicKey(vector["keyId"], vector["owner"], key))
    activity = vector["activity"]
    assert await verify_object(activity, vector["owner"], keys) == "RsaSignature2017"
    tampered = copy.deepcopy(activity)
    tampered["object"]["content"] = "<p>Test!</p>"
    with pytest.raises(SignatureError, match=r"^signature does not verify with key "):
        await verify_object(tampered, vector["owner"], keys)


# --- FEP-8b32 eddsa-jcs-2022 ------------------------------------------------------------------


async def test_proof_round_trip(ed_key: ed25519.Ed25519PrivateKey, keys: Keys) -> None:
    signed = sign_proof(ACTIVITY, ed_key, ED_KEY_ID)
    proof = signed["proof"]
    assert proof["type"] == "DataIntegrityProof"
    assert proof["cryptosuite"] == "eddsa-jcs-2022"
    assert proof["proofPurpose"] == "assertionMethod"
    assert proof["proofValue"].startswith("z")
    assert await verify_object(signed, ALICE, keys) == "eddsa-jcs-2022"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["object"].update(content="<p>something else</p>"),
        lambda d: d["@context"].append("https://w3id.org/security/data-integrity/v1"),
        lambda d: d["proof"].update(created="2020-01-01T00:00:00Z"),
    ],
)
async def test_proof_tampered(ed_key: ed25519.Ed25519PrivateKey, keys: Keys, tamper: Any) -> None:
    signed = copy.deepcopy(sign_proof(ACTIVITY, ed_key, ED_KEY_ID))
    tamper(signed)
    with pytest.raises(SignatureError, match=f"^proof does not verify with key {ED_KEY_ID}$"):
        await verify_object(signed, ALICE, keys)
    assert keys.calls[-1] == (ED_KEY_ID, True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "Ed25519Signature2020"}, "proof type is not DataIntegrityProof"),
        ({"proofPurpose": "authentication"}, "proof purpose is not assertionMethod"),
        ({"proofValue": "uAAAA"}, "proofValue is not multibase base58btc"),
        ({"proofValue": "z0OIl"}, "proofValue is not multibase base58btc"),
        ({"verificationMethod": None}, "proof has no verificationMethod"),
        ({"expires": "2001-01-01T00:00:00Z"}, "proof has expired"),
    ],
)
async def test_proof_refused(
    ed_key: ed25519.Ed25519PrivateKey, keys: Keys, change: dict[str, Any], message: str
) -> None:
    signed = sign_proof(ACTIVITY, ed_key, ED_KEY_ID)
    signed["proof"] = {**signed["proof"], **change}
    with pytest.raises(SignatureError, match=f"^{message}$"):
        await verify_object(signed, ALICE, keys)


async def test_proof_key_of_someone_else(ed_key: ed25519.Ed25519PrivateKey, keys: Keys) -> None:
    signed = sign_proof(ACTIVITY, ed_key, ED_KEY_ID)
    with pytest.raises(SignatureError, match="belongs to"):
        await verify_object(signed, "https://b.example/users/bob", keys)


async def test_proof_with_an_rsa_key(ed_key: ed25519.Ed25519PrivateKey, keys: Keys) -> None:
    signed = sign_proof(ACTIVITY, ed_key, RSA_KEY_ID)
    with pytest.raises(SignatureError, match=f"^key {RSA_KEY_ID} is not an Ed25519 key$"):
        await verify_object(signed, ALICE, keys)


async def test_proof_set_and_preference(
    ed_key: ed25519.Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey, keys: Keys
) -> None:
    signed = sign_proof(sign_ld(ACTIVITY, rsa_key, RSA_KEY_ID), ed_key, ED_KEY_ID)
    assert await verify_object(signed, ALICE, keys) == "eddsa-jcs-2022"
    other = {"type": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022", "proofValue": "z1"}
    signed["proof"] = [other, signed["proof"]]
    assert await verify_object(signed, ALICE, keys) == "eddsa-jcs-2022"
    # No usable proof: the RsaSignature2017 is used (it covers the proof it was signed with).
    ld_only = sign_ld({**ACTIVITY, "proof": [other]}, rsa_key, RSA_KEY_ID)
    assert await verify_object(ld_only, ALICE, keys) == "RsaSignature2017"


async def test_unsigned_object(keys: Keys) -> None:
    with pytest.raises(SignatureError, match=r"^object carries no RsaSignature2017 signature"):
        await verify_object(ACTIVITY, ALICE, keys)


# The W3C vc-di-eddsa test vector for eddsa-jcs-2022 (section "Representation:
# eddsa-jcs-2022"): its key pair, credential, proof options and resulting proofValue.
SPEC_SECRET = "z3u2en7t5LR2WtQH5PfFqMqwVHBeXouLzo6haApm8XHqvjxq"
SPEC_PUBLIC = "z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2"
SPEC_METHOD = f"did:key:{SPEC_PUBLIC}#{SPEC_PUBLIC}"
SPEC_CREDENTIAL = {
    "@context": [
        "https://www.w3.org/ns/credentials/v2",
        "https://www.w3.org/ns/credentials/examples/v2",
    ],
    "id": "urn:uuid:58172aac-d8ba-11ed-83dd-0b3aef56cc33",
    "type": ["VerifiableCredential", "AlumniCredential"],
    "name": "Alumni Credential",
    "description": "A minimum viable example of an Alumni Credential.",
    "issuer": "https://vc.example/issuers/5678",
    "validFrom": "2023-01-01T00:00:00Z",
    "credentialSubject": {"id": "did:example:abcdefgh", "alumniOf": "The School of Examples"},
}
SPEC_DOCUMENT_HASH = "59b7cb6251b8991add1ce0bc83107e3db9dbbab5bd2c28f687db1a03abc92f19"
SPEC_PROOF_VALUE = (
    "z2HnFSSPPBzR36zdDgK8PbEHeXbR56YF24jwMpt3R1eHXQzJDMWS93FCzpvJpwTWd3GAVFuUfjoJdcnTMuVor51aX"
)


async def test_vc_di_eddsa_jcs_2022_vector() -> None:
    secret = b58decode(SPEC_SECRET[1:])
    assert secret[:2] == b"\x80\x26"  # multicodec ed25519-priv
    private = ed25519.Ed25519PrivateKey.from_private_bytes(secret[2:])
    raw_public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert "z" + b58encode(b"\xed\x01" + raw_public) == SPEC_PUBLIC
    assert hashlib.sha256(canonical_json(SPEC_CREDENTIAL)).hexdigest() == SPEC_DOCUMENT_HASH

    signed = sign_proof(SPEC_CREDENTIAL, private, SPEC_METHOD, created="2023-02-24T23:36:38Z")
    assert signed["proof"]["proofValue"] == SPEC_PROOF_VALUE

    # As published, the proof repeats the document's @context; verification is the same.
    published = {**signed, "proof": {**signed["proof"], "@context": SPEC_CREDENTIAL["@context"]}}
    controller = f"did:key:{SPEC_PUBLIC}"
    keys = Keys(PublicKey(SPEC_METHOD, controller, private.public_key()))
    assert await verify_object(published, controller, keys) == "eddsa-jcs-2022"


# --- JCS (RFC 8785) and base58btc -------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "text"),
    [  # RFC 8785 appendix B, and integers
        (0.0, "0"),
        (-0.0, "0"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740992.0, "9007199254740992"),
        (295147905179352830000.0, "295147905179352830000"),
        (9.999999999999997e22, "9.999999999999997e+22"),
        (1e23, "1e+23"),
        (999999999999999900000.0, "999999999999999900000"),
        (1e21, "1e+21"),
        (333333333.3333333, "333333333.3333333"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (4.5, "4.5"),
        (-1.5, "-1.5"),
        (42, "42"),
        (-7, "-7"),
        (2**68, "295147905179352830000"),
    ],
)
def test_jcs_numbers(number: float, text: str) -> None:
    assert canonical_json(number) == text.encode()


def test_jcs_rfc8785_example() -> None:
    """RFC 8785 section 3.2.4."""
    source = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(json.loads(source)).decode() == expected


def test_jcs_sorts_by_utf16_code_units() -> None:
    """RFC 8785 section 3.2.3: a supplementary character sorts before U+FB33."""
    names = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    keys = list(json.loads(canonical_json(dict.fromkeys(names, 0))))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1: "x"}, {"s": {1, 2}}, "\ud800"])
def test_jcs_refuses_what_json_cannot_carry(bad: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(bad)


@pytest.mark.parametrize("data", [b"", b"\0", b"\0\0\1\2", b"hello world", bytes(range(256))])
def test_base58_round_trip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


def test_base58_known_value() -> None:
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    assert b58encode(b"\0\0\x01") == "112"
    with pytest.raises(ValueError, match="not a base58btc character"):
        b58decode("0OIl")


# --- offline JSON-LD --------------------------------------------------------------------------


def test_loader_serves_bundled_contexts() -> None:
    remote = document_loader("https://www.w3.org/ns/activitystreams")
    assert "@context" in remote["document"]
    assert remote["documentUrl"] == "https://www.w3.org/ns/activitystreams"
    # Spellings servers use for the same context.
    assert document_loader("http://www.w3.org/ns/activitystreams#")["document"]
    assert document_loader("https://w3id.org/security/v1/")["document"]


def test_loader_hands_out_copies() -> None:
    first = document_loader("https://w3id.org/identity/v1")["document"]
    first["@context"] = "spoiled"
    assert document_loader("https://w3id.org/identity/v1")["document"]["@context"] != "spoiled"


def test_loader_refuses_unknown_urls() -> None:
    with pytest.raises(UnknownContext, match="not bundled") as caught:
        document_loader("https://evil.example/context.jsonld")
    assert caught.value.url == "https://evil.example/context.jsonld"


def test_normalize_offline() -> None:
    quads = normalize({"@context": "https://www.w3.org/ns/activitystreams", "type": "Note"})
    assert quads == "_:c14n0 <http://www.w3.org/1999/02/22-rdf-syntax-ns#type> " \
        "<https://www.w3.org/ns/activitystreams#Note> .\n"  # fmt: skip
    with pytest.raises(UnknownContext):
        normalize({"@context": "https://evil.example/ctx", "type": "Note"})
