"""RFC 9421 HTTP Message Signatures, as Mastodon 4.5+ and Fedify send them."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms
from multidict import CIMultiDict, CIMultiDictProxy

from relay.errors import SignatureError
from relay.signature import (
    KeyCache,
    Verified,
    rfc9421,
    sign_cavage,
    sign_rfc9421,
    verify_request,
)
from tests.signature_support import (
    ALICE,
    BODY,
    INBOX,
    KEY_ID,
    Keys,
    Origin,
    actor_doc,
    ed_key_fixture,  # noqa: F401
    one_key,
    rsa_key2_fixture,  # noqa: F401
    rsa_key_fixture,  # noqa: F401
)

NOW = 1_700_000_000


async def verify(
    headers: Mapping[str, str], keys: Keys | KeyCache, body: bytes = BODY, **kw: Any
) -> Verified:
    kw.setdefault("now", NOW)
    return await verify_request("POST", "/inbox", headers, body, keys, **kw)


def signed(key: Any, body: bytes = BODY, url: str = INBOX, **kw: Any) -> dict[str, str]:
    kw.setdefault("created", NOW)
    return sign_rfc9421("POST", url, body, key, KEY_ID, **kw)


class _Message:
    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method, self.url, self.headers = method, url, headers


def library_signed(
    key: Any,
    covered: tuple[str, ...],
    *,
    algorithm: Any = algorithms.RSA_V1_5_SHA256,
    include_alg: bool = True,
    body: bytes | None = BODY,
    url: str = INBOX,
) -> dict[str, str]:
    """Sign with the library directly, for shapes sign_rfc9421 does not produce."""
    headers = {"Host": "relay.example"}
    signer = HTTPMessageSigner(
        signature_algorithm=algorithm,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={KEY_ID: key}),
    )
    signer.sign(
        _Message("POST", url, headers),
        key_id=KEY_ID,
        created=datetime.fromtimestamp(NOW, UTC),
        label="sig1",
        include_alg=include_alg,
        covered_component_ids=covered,
        body=body,
    )
    return headers


# --- accepted ---------------------------------------------------------------------------------


async def test_round_trip_rsa(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, headers={"Content-Type": "application/activity+json"})
    assert set(headers) == {
        "Host",
        "Date",
        "Content-Type",
        "Content-Digest",
        "Signature-Input",
        "Signature",
    }
    assert 'alg="rsa-v1_5-sha256"' in headers["Signature-Input"]
    keys = one_key(rsa_key.public_key())
    result = await verify(headers, keys)
    assert result == Verified(scheme="rfc9421", key_id=KEY_ID, signer=ALICE, created=NOW)
    assert keys.calls == [(KEY_ID, False)]


async def test_round_trip_ed25519(ed_key: ed25519.Ed25519PrivateKey) -> None:
    headers = signed(ed_key)
    assert 'alg="ed25519"' in headers["Signature-Input"]
    assert (await verify(headers, one_key(ed_key.public_key()))).signer == ALICE


async def test_aiohttp_headers(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = CIMultiDictProxy(CIMultiDict({k.lower(): v for k, v in signed(rsa_key).items()}))
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


async def test_signature_input_wins_over_cavage(rsa_key: rsa.RSAPrivateKey) -> None:
    assert (await verify(signed(rsa_key), one_key(rsa_key.public_key()))).scheme == "rfc9421"


@pytest.mark.parametrize(
    ("key_fixture", "algorithm"),
    [("rsa_key", algorithms.RSA_V1_5_SHA256), ("ed_key", algorithms.ED25519)],
)
async def test_alg_absent_is_inferred_from_the_key(
    request: pytest.FixtureRequest, key_fixture: str, algorithm: Any
) -> None:
    key = request.getfixturevalue(key_fixture)
    headers = library_signed(
        key, ("@method", "@target-uri"), algorithm=algorithm, include_alg=False
    )
    assert "alg=" not in headers["Signature-Input"]
    assert (await verify(headers, one_key(key.public_key()))).signer == ALICE


async def test_rsa_pss_sha512(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = library_signed(
        rsa_key, ("@method", "@authority", "@path"), algorithm=algorithms.RSA_PSS_SHA512
    )
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


async def test_signed_as_http_behind_the_proxy(rsa_key: rsa.RSAPrivateKey) -> None:
    """A sender that signed http://…: the second @target-uri we try."""
    headers = signed(rsa_key, url="http://relay.example/inbox")
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


async def test_query_is_part_of_the_target(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, url="https://relay.example/inbox?shared=1")
    keys = one_key(rsa_key.public_key())
    result = await verify_request("POST", "/inbox?shared=1", headers, BODY, keys, now=NOW)
    assert result.signer == ALICE
    with pytest.raises(SignatureError, match=r"does not verify"):
        await verify_request("POST", "/inbox?shared=2", headers, BODY, keys, now=NOW)


async def test_sha512_content_digest(rsa_key: rsa.RSAPrivateKey) -> None:
    digest = base64.b64encode(hashlib.sha512(BODY).digest()).decode()
    headers = signed(rsa_key, headers={"Content-Digest": f"sha-512=:{digest}:"})
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


def test_unknown_digest_algorithms_are_ignored() -> None:
    """RFC 9530 lets a sender add algorithms we do not know; one we know must be there."""
    digest = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    rfc9421._check_content_digest(f"unixsum=:AAAA:, sha-256=:{digest}:", BODY)
    with pytest.raises(SignatureError, match=r"^Content-Digest does not match the body$"):
        rfc9421._check_content_digest(f"unixsum=:AAAA:, sha-256=:{digest}:", b"other")


async def test_several_signatures_first_is_used(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key)
    headers["Signature-Input"] += ', other=("@method");created=1;keyid="https://x.example/k"'
    headers["Signature"] += ", other=:AAAA:"
    assert (await verify(headers, one_key(rsa_key.public_key()))).key_id == KEY_ID


async def test_rfc9421_appendix_b26_ed25519_vector() -> None:
    """RFC 9421 B.2.6, with the RFC's test-key-ed25519 (B.1.4)."""
    public = ed25519.Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs=")
    )
    keys = one_key(public, key_id="test-key-ed25519", owner="https://example.com/actor")
    headers = {
        "Host": "example.com",
        "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
        "Content-Type": "application/json",
        "Content-Length": "18",
        "Signature-Input": (
            'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
            ';created=1618884473;keyid="test-key-ed25519"'
        ),
        "Signature": (
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQ"
            "v5lIp5WPpBKRCw==:"
        ),
    }
    created = 1618884473
    # B.2.6 does not cover the body, so verify the signature over a request without one.
    # Nor does it cover the query of its `/foo?param=Value&Pet=dog`, which Sluice refuses
    # (below), so the signature is verified on the target without it: same signature base.
    result = await verify_request("POST", "/foo", headers, b"", keys, now=created + 5)
    assert result == Verified("rfc9421", "test-key-ed25519", "https://example.com/actor", created)
    with pytest.raises(SignatureError, match=r"does not cover `@query` or `@target-uri`$"):
        await verify_request(
            "POST", "/foo?param=Value&Pet=dog", headers, b"", keys, now=created + 5
        )
    # With the body, Sluice insists the digest be signed.
    with pytest.raises(SignatureError, match=r"^signature does not cover `content-digest`$"):
        await verify_request("POST", "/foo", headers, b'{"hello": "world"}', keys, now=created + 5)
    with pytest.raises(SignatureError, match=r"does not verify"):
        await verify_request("POST", "/bar", headers, b"", keys, now=created + 5)


# --- refused ----------------------------------------------------------------------------------


async def test_tampered_body(rsa_key: rsa.RSAPrivateKey) -> None:
    keys = one_key(rsa_key.public_key())
    with pytest.raises(SignatureError, match=r"^Content-Digest does not match the body$"):
        await verify(signed(rsa_key), keys, body=BODY + b" ")
    assert keys.calls == []


async def test_tampered_digest(rsa_key: rsa.RSAPrivateKey) -> None:
    other = b'{"type":"Delete"}'
    headers = signed(rsa_key)
    headers["Content-Digest"] = (
        "sha-256=:" + base64.b64encode(hashlib.sha256(other).digest()).decode() + ":"
    )
    with pytest.raises(SignatureError, match=f"^signature does not verify with key {KEY_ID}$"):
        await verify(headers, one_key(rsa_key.public_key()), body=other)


async def test_other_host(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, url="https://elsewhere.example/inbox")
    headers["Host"] = "relay.example"
    with pytest.raises(SignatureError, match=r"does not verify"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_wrong_key(rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    keys = one_key(rsa_key2.public_key())
    with pytest.raises(SignatureError, match=f"^signature does not verify with key {KEY_ID}$"):
        await verify(signed(rsa_key), keys)
    assert keys.calls == [(KEY_ID, False), (KEY_ID, True)]


async def test_algorithm_must_fit_the_key(
    rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    with pytest.raises(
        SignatureError, match=f"^algorithm rsa-v1_5-sha256 does not match key {KEY_ID}$"
    ):
        await verify(signed(rsa_key), one_key(ed_key.public_key()))


async def test_unsupported_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key)
    headers["Signature-Input"] = headers["Signature-Input"].replace(
        "rsa-v1_5-sha256", "hmac-sha256"
    )
    with pytest.raises(SignatureError, match=r"^unsupported algorithm hmac-sha256$"):
        await verify(headers, one_key(rsa_key.public_key()))


@pytest.mark.parametrize(
    ("covered", "message"),
    [
        (("@target-uri",), "signature does not cover `@method`"),
        (("@method", "@path"), "signature does not cover `@target-uri` (or `@authority` and"),
        (("@method", "@authority"), "signature does not cover `@target-uri` (or `@authority` and"),
    ],
)
async def test_coverage(rsa_key: rsa.RSAPrivateKey, covered: tuple[str, ...], message: str) -> None:
    headers = library_signed(rsa_key, covered)
    with pytest.raises(SignatureError, match=r"^" + re.escape(message)):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_a_query_must_be_covered(rsa_key: rsa.RSAPrivateKey) -> None:
    """@path without @query: a proxy could rewrite `?shared=1` and the signature would hold."""
    url = "https://relay.example/inbox?shared=1"
    headers = library_signed(rsa_key, ("@method", "@authority", "@path"), url=url)
    keys = one_key(rsa_key.public_key())
    message = "the target has a query, and the signature does not cover `@query` or `@target-uri`"
    with pytest.raises(SignatureError, match=f"^{re.escape(message)}$"):
        await verify_request("POST", "/inbox?shared=1", headers, BODY, keys, now=NOW)
    assert keys.calls == []  # refused before any key is fetched


@pytest.mark.parametrize(
    "covered",
    [("@authority", "@path", "@query"), ("@authority", "@request-target"), ("@target-uri",)],
)
async def test_a_covered_query_is_accepted(
    rsa_key: rsa.RSAPrivateKey, covered: tuple[str, ...]
) -> None:
    url = "https://relay.example/inbox?shared=1"
    headers = library_signed(rsa_key, ("@method", *covered), url=url)
    keys = one_key(rsa_key.public_key())
    result = await verify_request("POST", "/inbox?shared=1", headers, BODY, keys, now=NOW)
    assert result.signer == ALICE
    with pytest.raises(SignatureError, match=r"does not verify"):
        await verify_request("POST", "/inbox?shared=2", headers, BODY, keys, now=NOW)


async def test_without_a_query_the_path_is_enough(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = library_signed(rsa_key, ("@method", "@authority", "@path"))
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


async def test_a_failing_rfc9421_signature_is_not_retried_as_cavage(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    """A well-formed RFC 9421 signature that fails is the answer, whatever else is there."""
    headers = signed(rsa_key2)  # not Alice's key
    cavage = sign_cavage("POST", INBOX, BODY, rsa_key, KEY_ID, now=NOW)  # a good one
    headers["Authorization"] = "Signature " + cavage["Signature"]
    headers["Digest"] = cavage["Digest"]
    assert headers["Date"] == cavage["Date"]
    keys = one_key(rsa_key.public_key())
    with pytest.raises(SignatureError, match=f"^signature does not verify with key {KEY_ID}$"):
        await verify(headers, keys)
    assert (await verify(cavage, keys)).scheme == "cavage"  # the cavage one alone is good


async def test_digest_must_be_covered(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = library_signed(rsa_key, ("@method", "@target-uri"), body=None)
    headers["Content-Digest"] = (
        "sha-256=:" + base64.b64encode(hashlib.sha256(BODY).digest()).decode() + ":"
    )
    with pytest.raises(SignatureError, match=r"^signature does not cover `content-digest`$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_missing_content_digest(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key)
    del headers["Content-Digest"]
    with pytest.raises(SignatureError, match=r"^no Content-Digest header$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_content_digest_without_known_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = {**signed(rsa_key), "Content-Digest": "md5=:AAAA:"}
    with pytest.raises(SignatureError, match=r"^Content-Digest has no sha-256 or sha-512 value$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_old_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, created=NOW - 13 * 3600)
    with pytest.raises(SignatureError, match=r"^`created` is 13 hours old \(limit 12h\)$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_future_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, created=NOW + 90 * 60)
    with pytest.raises(
        SignatureError, match=r"^`created` is 1\.5 hours in the future \(limit 1h\)$"
    ):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_expired_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, created=NOW - 100, expires=NOW - 10)
    with pytest.raises(SignatureError, match=r"^signature expired 10 seconds ago"):
        await verify(headers, one_key(rsa_key.public_key()))
    headers = signed(rsa_key, created=NOW - 100, expires=NOW + 10)
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


async def test_created_is_required(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key)
    headers["Signature-Input"] = re.sub(r";created=\d+", "", headers["Signature-Input"])
    with pytest.raises(SignatureError, match=r"^signature has no `created` time$"):
        await verify(headers, one_key(rsa_key.public_key()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Signature-Input": "sig1=(@method"}, "malformed Signature-Input"),
        ({"Signature": "other=:AAAA:"}, "no valid signature labelled `sig1`"),
        ({"Signature": "sig1=?1"}, "no valid signature labelled `sig1`"),
        ({"Signature-Input": 'sig1=("@method" "@target-uri");created=1'}, "has no keyid"),
    ],
)
async def test_malformed(rsa_key: rsa.RSAPrivateKey, change: dict[str, str], message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        await verify({**signed(rsa_key), **change}, one_key(rsa_key.public_key()))


async def test_missing_host(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key)
    del headers["Host"]
    with pytest.raises(SignatureError, match=r"^no Host header$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_covered_header_missing(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key)
    del headers["Date"]
    with pytest.raises(SignatureError, match=r'^cannot verify: Covered header field "date"'):
        await verify(headers, one_key(rsa_key.public_key()))


# --- key rotation -----------------------------------------------------------------------------


async def test_rotated_key_is_refetched_once(
    rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    """Rotation even across key types: RSA to Ed25519."""
    origin = Origin({ALICE: actor_doc(rsa_key)})
    keys = KeyCache(origin.fetch_json)
    await verify(signed(rsa_key), keys)
    origin.docs[ALICE] = actor_doc(ed_key)
    assert (await verify(signed(ed_key), keys)).signer == ALICE
    assert origin.fetches == [ALICE, ALICE]
