"""KeyCache: the key document shapes servers publish, caching, sharing, rotation, gone keys."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from relay.errors import KeyFetchError, SignatureError
from relay.signature import KeyCache, PublicKey
from relay.signature.keys import parse_key_document, verify_with_key
from relay.signature.proof import b58encode
from tests.conftest import public_pem as pem
from tests.signature_support import (
    ALICE,
    KEY_ID,
    Origin,
    ed_key_fixture,  # noqa: F401
    rsa_key2_fixture,  # noqa: F401
    rsa_key_fixture,  # noqa: F401
)

MAIN_KEY = KEY_ID


def multibase(key: ed25519.Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "z" + b58encode(b"\xed\x01" + raw)


def actor(key: rsa.RSAPrivateKey, **extra: Any) -> dict[str, Any]:
    """An actor document as Mastodon serves it."""
    return {
        "@context": ["https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"],
        "id": ALICE,
        "type": "Person",
        "inbox": f"{ALICE}/inbox",
        "publicKey": {"id": MAIN_KEY, "owner": ALICE, "publicKeyPem": pem(key)},
        **extra,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def public_numbers(key: PublicKey) -> object:
    assert isinstance(key.key, rsa.RSAPublicKey)
    return key.key.public_numbers()


# --- document shapes --------------------------------------------------------------------------


async def test_actor_document_fetched_without_fragment(rsa_key: rsa.RSAPrivateKey) -> None:
    origin = Origin({ALICE: actor(rsa_key)})
    key = await KeyCache(origin.fetch_json).resolve(MAIN_KEY)
    assert origin.fetches == [ALICE]
    assert key.id == MAIN_KEY
    assert key.owner == ALICE
    assert public_numbers(key) == rsa_key.public_key().public_numbers()


def test_public_key_list_picks_matching_id(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    doc = actor(rsa_key)
    doc["publicKey"] = [
        {"id": f"{ALICE}#other", "owner": ALICE, "publicKeyPem": pem(rsa_key2)},
        {"id": MAIN_KEY, "owner": ALICE, "publicKeyPem": pem(rsa_key)},
    ]
    key = parse_key_document(doc, MAIN_KEY)
    assert public_numbers(key) == rsa_key.public_key().public_numbers()


def test_single_key_is_taken_even_if_its_id_differs(rsa_key: rsa.RSAPrivateKey) -> None:
    key = parse_key_document(actor(rsa_key), f"{ALICE}#some-other-name")
    assert key.owner == ALICE


def test_mastodon_key_document(rsa_key: rsa.RSAPrivateKey) -> None:
    """Mastodon answers a #main-key fetch with the key alone when asked for it."""
    doc = {
        "@context": "https://w3id.org/security/v1",
        "id": MAIN_KEY,
        "type": "Key",
        "owner": ALICE,
        "publicKeyPem": pem(rsa_key),
    }
    assert parse_key_document(doc, MAIN_KEY).owner == ALICE


async def test_gotosocial_key_document(rsa_key: rsa.RSAPrivateKey) -> None:
    """GoToSocial's key id is a path (…/main-key) serving a stub with publicKey."""
    key_id = "https://gts.example/users/bob/main-key"
    doc = {
        "@context": ["https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"],
        "id": "https://gts.example/users/bob",
        "type": "Person",
        "publicKey": {
            "id": key_id,
            "owner": "https://gts.example/users/bob",
            "publicKeyPem": pem(rsa_key),
        },
    }
    origin = Origin({key_id: doc})
    key = await KeyCache(origin.fetch_json).resolve(key_id)
    assert origin.fetches == [key_id]
    assert key.owner == "https://gts.example/users/bob"


def test_owner_other_than_actor_document_is_taken_from_the_key(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    doc = actor(rsa_key)
    doc["publicKey"]["owner"] = "https://a.example/instance-actor"
    assert parse_key_document(doc, MAIN_KEY).owner == "https://a.example/instance-actor"


def test_public_key_without_owner_belongs_to_the_document(rsa_key: rsa.RSAPrivateKey) -> None:
    doc = actor(rsa_key)
    del doc["publicKey"]["owner"]
    assert parse_key_document(doc, MAIN_KEY).owner == ALICE


def test_owner_on_another_host_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    doc = actor(rsa_key)
    doc["publicKey"]["owner"] = "https://victim.example/users/bob"
    with pytest.raises(KeyFetchError, match="claims an owner on another host"):
        parse_key_document(doc, MAIN_KEY)


def test_fep_521a_assertion_method_multikey(
    rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    ed_id = f"{ALICE}#ed25519-key"
    doc = actor(
        rsa_key,
        assertionMethod=[
            {
                "id": ed_id,
                "type": "Multikey",
                "controller": ALICE,
                "publicKeyMultibase": multibase(ed_key),
            }
        ],
    )
    ed = parse_key_document(doc, ed_id)
    assert isinstance(ed.key, ed25519.Ed25519PublicKey)
    assert ed.key == ed_key.public_key()
    assert ed.owner == ALICE
    # The RSA key in the same document is still found by its own id.
    assert isinstance(parse_key_document(doc, MAIN_KEY).key, rsa.RSAPublicKey)


def test_bare_multikey_document(ed_key: ed25519.Ed25519PrivateKey) -> None:
    key_id = "https://f.example/users/carol#ed25519"
    doc = {
        "@context": "https://w3id.org/security/multikey/v1",
        "id": key_id,
        "type": "Multikey",
        "controller": "https://f.example/users/carol",
        "publicKeyMultibase": multibase(ed_key),
    }
    key = parse_key_document(doc, key_id)
    assert key.owner == "https://f.example/users/carol"
    assert key.key == ed_key.public_key()


def test_rsa_multikey(rsa_key: rsa.RSAPrivateKey) -> None:
    der = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    doc = {"id": MAIN_KEY, "controller": ALICE, "publicKeyMultibase": "z" + b58encode(
        b"\x85\x24" + der
    )}  # fmt: skip
    assert public_numbers(parse_key_document(doc, MAIN_KEY)) == (
        rsa_key.public_key().public_numbers()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"publicKey": None}, "no key"),
        ({"publicKey": "https://a.example/users/alice#main-key"}, "no key"),
        ({"publicKey": {"id": MAIN_KEY, "publicKeyPem": "not a pem"}}, "cannot be read"),
        ({"publicKey": {"id": MAIN_KEY, "publicKeyMultibase": "zzz"}}, "cannot be read"),
    ],
)
def test_unusable_documents(
    rsa_key: rsa.RSAPrivateKey, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(KeyFetchError, match=message):
        parse_key_document({**actor(rsa_key), **change}, MAIN_KEY)


def test_key_document_without_owner(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(KeyFetchError, match="names no owner"):
        parse_key_document({"id": MAIN_KEY, "publicKeyPem": pem(rsa_key)}, MAIN_KEY)


# --- caching ----------------------------------------------------------------------------------


async def test_cached_until_ttl(rsa_key: rsa.RSAPrivateKey) -> None:
    origin, clock = Origin({ALICE: actor(rsa_key)}), Clock()
    cache = KeyCache(origin.fetch_json, ttl=60, clock=clock)
    first = await cache.resolve(MAIN_KEY)
    clock.now += 59
    assert await cache.resolve(MAIN_KEY) is first
    assert len(origin.fetches) == 1
    clock.now += 2
    await cache.resolve(MAIN_KEY)
    assert len(origin.fetches) == 2


async def test_concurrent_resolves_share_one_fetch(rsa_key: rsa.RSAPrivateKey) -> None:
    origin = Origin({ALICE: actor(rsa_key)})
    cache = KeyCache(origin.fetch_json)
    keys = await asyncio.gather(*(cache.resolve(MAIN_KEY) for _ in range(20)))
    assert origin.fetches == [ALICE]
    assert all(k is keys[0] for k in keys)


async def test_concurrent_failures_share_one_fetch() -> None:
    origin = Origin({ALICE: 500})
    cache = KeyCache(origin.fetch_json)
    results = await asyncio.gather(
        *(cache.resolve(MAIN_KEY) for _ in range(5)), return_exceptions=True
    )
    assert origin.fetches == [ALICE]
    assert all(isinstance(r, KeyFetchError) and not r.gone for r in results)


async def test_a_cancelled_waiter_does_not_cancel_the_fetch(rsa_key: rsa.RSAPrivateKey) -> None:
    origin = Origin({ALICE: actor(rsa_key)})
    cache = KeyCache(origin.fetch_json)
    impatient = asyncio.ensure_future(cache.resolve(MAIN_KEY))
    patient = asyncio.ensure_future(cache.resolve(MAIN_KEY))
    await asyncio.sleep(0)
    impatient.cancel()
    assert (await patient).owner == ALICE
    assert origin.fetches == [ALICE]


async def test_refresh_bypasses_the_cache(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    origin = Origin({ALICE: actor(rsa_key)})
    cache = KeyCache(origin.fetch_json)
    await cache.resolve(MAIN_KEY)
    origin.docs[ALICE] = actor(rsa_key2)  # the actor rotated its key
    assert public_numbers(await cache.resolve(MAIN_KEY)) == rsa_key.public_key().public_numbers()
    fresh = await cache.resolve(MAIN_KEY, refresh=True)
    assert public_numbers(fresh) == rsa_key2.public_key().public_numbers()
    assert await cache.resolve(MAIN_KEY) is fresh
    assert len(origin.fetches) == 2


async def test_max_entries_evicts_least_recently_used(rsa_key: rsa.RSAPrivateKey) -> None:
    docs = {}
    for name in ("a", "b", "c"):
        doc = actor(rsa_key)
        doc["id"] = f"https://a.example/users/{name}"
        doc["publicKey"] = {**doc["publicKey"], "id": f"{doc['id']}#k", "owner": doc["id"]}
        docs[doc["id"]] = doc
    origin = Origin(docs)
    cache = KeyCache(origin.fetch_json, max_entries=2)
    for name in ("a", "b"):
        await cache.resolve(f"https://a.example/users/{name}#k")
    await cache.resolve("https://a.example/users/a#k")  # a is now the most recent
    await cache.resolve("https://a.example/users/c#k")  # evicts b
    origin.fetches.clear()
    await cache.resolve("https://a.example/users/a#k")
    assert origin.fetches == []
    await cache.resolve("https://a.example/users/b#k")
    assert origin.fetches == ["https://a.example/users/b"]


@pytest.mark.parametrize(("status", "gone"), [(410, True), (404, True), (500, False)])
async def test_fetch_failures(status: int, gone: bool) -> None:
    cache = KeyCache(Origin({ALICE: status}).fetch_json)
    with pytest.raises(KeyFetchError) as caught:
        await cache.resolve(MAIN_KEY)
    assert caught.value.gone is gone
    assert str(caught.value) == f"could not fetch key {MAIN_KEY} (HTTP {status})"


async def test_failures_are_not_cached(rsa_key: rsa.RSAPrivateKey) -> None:
    origin = Origin({ALICE: 503})
    cache = KeyCache(origin.fetch_json)
    with pytest.raises(KeyFetchError):
        await cache.resolve(MAIN_KEY)
    origin.docs[ALICE] = actor(rsa_key)
    assert (await cache.resolve(MAIN_KEY)).owner == ALICE


async def test_non_object_document() -> None:
    async def fetch_json(url: str) -> Any:
        return ["not", "an", "object"]

    with pytest.raises(KeyFetchError, match="not a JSON object"):
        await KeyCache(fetch_json).resolve(MAIN_KEY)


# --- verify_with_key: the rotation retry ------------------------------------------------------


async def test_retry_reports_a_gone_actor(rsa_key: rsa.RSAPrivateKey) -> None:
    origin = Origin({ALICE: actor(rsa_key)})
    cache = KeyCache(origin.fetch_json)
    await cache.resolve(MAIN_KEY)  # cached before the actor was deleted
    origin.docs[ALICE] = 410
    with pytest.raises(KeyFetchError) as caught:
        await verify_with_key(cache, MAIN_KEY, lambda key: "bad signature")
    assert caught.value.gone


async def test_retry_keeps_the_reason_when_the_origin_is_down(rsa_key: rsa.RSAPrivateKey) -> None:
    origin = Origin({ALICE: actor(rsa_key)})
    cache = KeyCache(origin.fetch_json)
    await cache.resolve(MAIN_KEY)
    origin.docs[ALICE] = 503
    with pytest.raises(SignatureError) as caught:
        await verify_with_key(cache, MAIN_KEY, lambda key: "bad signature")
    assert str(caught.value) == "bad signature"
    assert not isinstance(caught.value, KeyFetchError)


async def test_retry_skipped_when_the_key_did_not_change(rsa_key: rsa.RSAPrivateKey) -> None:
    origin = Origin({ALICE: actor(rsa_key)})
    checked: list[PublicKey] = []

    def check(key: PublicKey) -> str:
        checked.append(key)
        return "bad signature"

    with pytest.raises(SignatureError, match=r"^bad signature$"):
        await verify_with_key(KeyCache(origin.fetch_json), MAIN_KEY, check)
    assert len(checked) == 1
    assert origin.fetches == [ALICE, ALICE]
