"""draft-cavage-12 HTTP signatures, as Mastodon sends them."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Mapping
from email.utils import formatdate
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from multidict import CIMultiDict, CIMultiDictProxy

from relay.errors import FetchError, KeyFetchError, SignatureError
from relay.signature import KeyCache, Verified, sign_cavage, verify_request
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

NOW = 1_700_000_000.0


async def verify(headers: Mapping[str, str], keys: Keys, body: bytes = BODY, **kw: Any) -> Verified:
    kw.setdefault("now", NOW)
    return await verify_request("POST", "/inbox", headers, body, keys, **kw)


def signed(key: Any, body: bytes = BODY, **kw: Any) -> dict[str, str]:
    kw.setdefault("now", NOW)
    return sign_cavage("POST", INBOX, body, key, KEY_ID, **kw)


def with_signature_param(headers: dict[str, str], name: str, value: str) -> dict[str, str]:
    """Rewrite one parameter of the Signature header (keeping the signature value)."""
    params = dict(p.split("=", 1) for p in headers["Signature"].split(","))
    params[name] = f'"{value}"'
    return {**headers, "Signature": ",".join(f"{k}={v}" for k, v in params.items())}


# --- accepted ---------------------------------------------------------------------------------


async def test_round_trip_rsa_sha256(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, headers={"Content-Type": "application/activity+json"})
    assert set(headers) == {"Host", "Date", "Digest", "Signature", "Content-Type"}
    assert 'headers="(request-target) host date digest content-type"' in headers["Signature"]
    keys = one_key(rsa_key.public_key())
    result = await verify(headers, keys)
    assert result == Verified(scheme="cavage", key_id=KEY_ID, signer=ALICE, created=NOW)
    assert keys.calls == [(KEY_ID, False)]


@pytest.mark.parametrize("algorithm", ["hs2019", "rsa-sha256"])
async def test_rsa_algorithms(rsa_key: rsa.RSAPrivateKey, algorithm: str) -> None:
    headers = signed(rsa_key, algorithm=algorithm)
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


@pytest.mark.parametrize("algorithm", ["hs2019", "ed25519"])
async def test_ed25519_algorithms(ed_key: ed25519.Ed25519PrivateKey, algorithm: str) -> None:
    headers = signed(ed_key, algorithm=algorithm)
    assert (await verify(headers, one_key(ed_key.public_key()))).key_id == KEY_ID


async def test_aiohttp_headers(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = CIMultiDictProxy(CIMultiDict({k.lower(): v for k, v in signed(rsa_key).items()}))
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


async def test_plain_dict_with_odd_case(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = {k.upper(): v for k, v in signed(rsa_key).items()}
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


async def test_authorization_signature_form(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key)
    headers["Authorization"] = "Signature " + headers.pop("Signature")
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


@pytest.mark.parametrize(
    "signature_input",
    [
        "junk((",  # no structured dictionary
        'sig1=("@method" "@target-uri");created=1700000000;keyid="https://x.example/k"',
        "",
    ],
)
@pytest.mark.parametrize("where", ["Signature", "Authorization"])
async def test_a_stray_signature_input_does_not_sink_a_good_signature(
    rsa_key: rsa.RSAPrivateKey, signature_input: str, where: str
) -> None:
    """Signature-Input names no signature that Signature carries: this is cavage."""
    headers = signed(rsa_key)
    if where == "Authorization":
        headers["Authorization"] = "Signature " + headers.pop("Signature")
    headers["Signature-Input"] = signature_input
    result = await verify(headers, one_key(rsa_key.public_key()))
    assert (result.scheme, result.signer) == ("cavage", ALICE)


async def test_a_stray_signature_input_next_to_a_bad_signature_still_fails(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    headers = {**signed(rsa_key2), "Signature-Input": "junk(("}
    with pytest.raises(SignatureError, match=f"^signature does not verify with key {KEY_ID}$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_hand_built_mastodon_request(rsa_key: rsa.RSAPrivateKey) -> None:
    """Cross-check against the signing string spelled out, not produced by sign_cavage."""
    date = "Tue, 14 Nov 2023 22:13:20 GMT"  # NOW
    digest = "SHA-256=" + base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    signing_string = (
        "(request-target): post /inbox?shared=1\n"
        "host: relay.example\n"
        f"date: {date}\n"
        f"digest: {digest}\n"
        "content-type: application/activity+json"
    )
    value = rsa_key.sign(signing_string.encode(), padding.PKCS1v15(), hashes.SHA256())
    headers = {
        "Host": "relay.example",
        "Date": date,
        "Digest": digest,
        "Content-Type": "application/activity+json",
        "Signature": (
            f'keyId="{KEY_ID}", algorithm="rsa-sha256", '
            'headers="(request-target) host date digest content-type", '
            f'signature="{base64.b64encode(value).decode()}"'
        ),
    }
    result = await verify_request(
        "POST", "/inbox?shared=1", headers, BODY, one_key(rsa_key.public_key()), now=NOW
    )
    assert result.created == NOW


async def test_draft_cavage_12_appendix_c2_vector() -> None:
    """The draft's own Basic Test (C.2), with its published 1024-bit test key."""
    public = serialization.load_pem_public_key(
        b"-----BEGIN PUBLIC KEY-----\n"
        b"MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDCFENGw33yGihy92pDjZQhl0C3\n"
        b"6rPJj+CvfSC8+q28hxA161QFNUd13wuCTUcq0Qd2qsBe/2hFyc2DCJJg0h1L78+6\n"
        b"Z4UMR7EOcpfdUE9Hf3m/hs+FUR45uBJeDK1HSFHD8bHKD6kv8FPGfJTotc+2xjJw\n"
        b"oYi+1hqp1fIekaxsyQIDAQAB\n"
        b"-----END PUBLIC KEY-----\n"
    )
    headers = {
        "Host": "example.com",
        "Date": "Sun, 05 Jan 2014 21:31:40 GMT",
        "Signature": (
            'keyId="Test",algorithm="rsa-sha256",headers="(request-target) host date",'
            'signature="qdx+H7PHHDZgy4y/Ahn9Tny9V3GP6YgBPyUXMmoxWtLbHpUnXS2mg2+SbrQDMCJypxBLSPQR'
            "2aAjn7ndmw2iicw3HMbe8VfEdKFYRqzic+efkb3nndiv/x1xSHDJWeSWkx3ButlYSuBskLu6kd9Fswtemr3"
            'lgdDEmn04swr2Os0="'
        ),
    }
    keys = one_key(public, key_id="Test", owner="https://example.com/actor")
    when = 1388957500.0  # the Date above
    result = await verify_request(
        "POST", "/foo?param=value&pet=dog", headers, b"", keys, now=when + 60
    )
    assert result == Verified("cavage", "Test", "https://example.com/actor", when)
    with pytest.raises(SignatureError, match=r"does not verify"):
        await verify_request("POST", "/foo?param=value&pet=cat", headers, b"", keys, now=when)


async def test_repeated_headers_are_joined(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, headers={"X-Trace": "a, b"})
    raw = CIMultiDict((k, v) for k, v in headers.items() if k != "X-Trace")
    raw.add("X-Trace", "a")
    raw.add("X-Trace", " b ")
    assert (await verify(CIMultiDictProxy(raw), one_key(rsa_key.public_key()))).signer == ALICE


async def test_sha512_and_several_digests(rsa_key: rsa.RSAPrivateKey) -> None:
    digest = (
        "sha-512=" + base64.b64encode(hashlib.sha512(BODY).digest()).decode() + ","
        "MD5=ignored, SHA-256=" + base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    )
    headers = signed(rsa_key, headers={"Digest": digest})
    assert (await verify(headers, one_key(rsa_key.public_key()))).signer == ALICE


async def test_created_and_expires_pseudo_headers(ed_key: ed25519.Ed25519PrivateKey) -> None:
    created, expires = int(NOW) - 10, int(NOW) + 300
    digest = "SHA-256=" + base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    signing_string = (
        f"(request-target): post /inbox\n(created): {created}\n(expires): {expires}\n"
        f"host: relay.example\ndigest: {digest}"
    )
    value = base64.b64encode(ed_key.sign(signing_string.encode())).decode()
    headers = {
        "Host": "relay.example",
        "Digest": digest,
        "Signature": (
            f'keyId="{KEY_ID}",algorithm="hs2019",created={created},expires={expires},'
            f'headers="(request-target) (created) (expires) host digest",signature="{value}"'
        ),
    }
    keys = one_key(ed_key.public_key())
    assert (await verify(headers, keys)).created == created
    with pytest.raises(SignatureError, match=r"signature expired 1\.7 minutes ago"):
        await verify(headers, keys, now=expires + 100)


async def test_get_without_body_needs_no_digest(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = sign_cavage("GET", "https://relay.example/actor", b"", rsa_key, KEY_ID, now=NOW)
    assert "Digest" not in headers
    result = await verify_request(
        "GET", "/actor", headers, b"", one_key(rsa_key.public_key()), now=NOW
    )
    assert result.signer == ALICE


# --- refused ----------------------------------------------------------------------------------


async def test_tampered_body(rsa_key: rsa.RSAPrivateKey) -> None:
    keys = one_key(rsa_key.public_key())
    with pytest.raises(SignatureError, match=r"^Digest does not match the body$"):
        await verify(signed(rsa_key), keys, body=BODY + b" ")
    assert keys.calls == []  # refused before any key fetch


async def test_tampered_digest(rsa_key: rsa.RSAPrivateKey) -> None:
    """A new body with a matching new Digest: the signature no longer covers it."""
    other = b'{"type":"Delete"}'
    headers = signed(rsa_key)
    headers["Digest"] = "SHA-256=" + base64.b64encode(hashlib.sha256(other).digest()).decode()
    with pytest.raises(SignatureError, match=f"^signature does not verify with key {KEY_ID}$"):
        await verify(headers, one_key(rsa_key.public_key()), body=other)


async def test_tampered_header(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, headers={"Content-Type": "application/activity+json"})
    headers["Content-Type"] = "text/html"
    with pytest.raises(SignatureError, match=r"does not verify"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_other_target(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(SignatureError, match=r"does not verify"):
        await verify_request(
            "POST", "/users/x/inbox", signed(rsa_key), BODY, one_key(rsa_key.public_key()), now=NOW
        )


async def test_wrong_key(rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    keys = one_key(rsa_key2.public_key())
    with pytest.raises(SignatureError, match=f"^signature does not verify with key {KEY_ID}$"):
        await verify(signed(rsa_key), keys)
    assert keys.calls == [(KEY_ID, False), (KEY_ID, True)]  # one refresh, in case of rotation


async def test_old_date(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, now=NOW - 13 * 3600)
    with pytest.raises(SignatureError, match=r"^Date is 13 hours old \(limit 12h\)$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_future_date(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, now=NOW + 2 * 3600)
    with pytest.raises(SignatureError, match=r"^Date is 2 hours in the future \(limit 1h\)$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_limits_are_the_callers(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, now=NOW - 600)
    with pytest.raises(SignatureError, match=r"^Date is 10 minutes old \(limit 5m\)$"):
        await verify(headers, one_key(rsa_key.public_key()), max_age=300)


async def test_bad_date(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = {**signed(rsa_key), "Date": "yesterday"}
    with pytest.raises(SignatureError, match=r"Date is missing or not an HTTP date"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_no_signature() -> None:
    with pytest.raises(SignatureError, match=r"^no Signature header$"):
        await verify({"Host": "relay.example", "Authorization": "Bearer x"}, one_key(None))


@pytest.mark.parametrize(
    ("covered", "missing"),
    [
        ("(request-target) host date", "digest"),
        ("host date digest", "(request-target)"),
        ("(request-target) date digest", "host"),
    ],
)
async def test_coverage(rsa_key: rsa.RSAPrivateKey, covered: str, missing: str) -> None:
    headers = with_signature_param(signed(rsa_key), "headers", covered)
    with pytest.raises(SignatureError, match=rf"^signature does not cover `{re.escape(missing)}`$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_default_headers_is_date_only(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key)
    headers["Signature"] = f'keyId="{KEY_ID}",signature="AAAA"'
    with pytest.raises(SignatureError, match=r"^signature does not cover `\(request-target\)`$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_unsupported_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = with_signature_param(signed(rsa_key), "algorithm", "hmac-sha256")
    with pytest.raises(SignatureError, match=r"^unsupported algorithm hmac-sha256$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_algorithm_must_fit_the_key(
    rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    headers = with_signature_param(signed(rsa_key), "algorithm", "ed25519")
    with pytest.raises(SignatureError, match=f"^algorithm ed25519 does not match key {KEY_ID}$"):
        await verify(headers, one_key(rsa_key.public_key()))
    with pytest.raises(SignatureError, match=r"does not match key"):
        await verify(signed(rsa_key), one_key(ed_key.public_key()))


async def test_missing_digest(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key)
    del headers["Digest"]
    with pytest.raises(SignatureError, match=r"^no Digest header$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_digest_without_known_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, headers={"Digest": "MD5=abc"})
    with pytest.raises(SignatureError, match=r"^Digest has no SHA-256 or SHA-512 value$"):
        await verify(headers, one_key(rsa_key.public_key()))


async def test_signed_header_missing(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = signed(rsa_key, headers={"Content-Type": "application/activity+json"})
    del headers["Content-Type"]
    with pytest.raises(SignatureError, match=r"^signed header `content-type` is missing$"):
        await verify(headers, one_key(rsa_key.public_key()))


@pytest.mark.parametrize(
    "value",
    ['keyId="a" junk', 'keyId="a",keyId="b"', 'keyId="unterminated'],
)
async def test_malformed_signature_header(value: str) -> None:
    with pytest.raises(SignatureError, match=r"malformed|repeats"):
        await verify({"Signature": value}, one_key(None))


async def test_unreachable_key_says_gone(rsa_key: rsa.RSAPrivateKey) -> None:
    async def fetch_json(url: str) -> dict:
        raise FetchError("gone", status=410)

    with pytest.raises(KeyFetchError) as caught:
        await verify(signed(rsa_key), KeyCache(fetch_json))
    assert caught.value.gone


# --- key rotation -----------------------------------------------------------------------------


async def test_rotated_key_is_refetched_once(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    origin = Origin({ALICE: actor_doc(rsa_key)})
    keys = KeyCache(origin.fetch_json)
    await verify(signed(rsa_key), keys)
    origin.docs[ALICE] = actor_doc(rsa_key2)  # Alice rotates her key
    await verify(signed(rsa_key2), keys)  # stale cached key fails, refresh succeeds
    assert origin.fetches == [ALICE, ALICE]
    await verify(signed(rsa_key2), keys)
    assert origin.fetches == [ALICE, ALICE]  # the new key is now cached
    with pytest.raises(SignatureError, match=r"does not verify"):
        await verify(signed(rsa_key), keys)  # the old key is refused after one more look
    assert origin.fetches == [ALICE, ALICE, ALICE]


async def test_real_clock_default(rsa_key: rsa.RSAPrivateKey) -> None:
    headers = sign_cavage("POST", INBOX, BODY, rsa_key, KEY_ID)
    result = await verify_request("POST", "/inbox", headers, BODY, one_key(rsa_key.public_key()))
    assert abs(result.created - time.time()) < 5
    assert headers["Date"].endswith("GMT")
    assert formatdate(result.created, usegmt=True) == headers["Date"]
