"""KeyCache: the key document shapes servers publish, caching, sharing, rotation, gone keys."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from relay.errors import DecodeError, KeyFetchError, RateLimited, SignatureError
from relay.network import JsonDocument
from relay.signature import KeyCache, PublicKey
from relay.signature.keys import parse_key_document, verify_with_key
from relay.signature.proof import b58encode
from tests.conftest import public_pem as pem
from tests.conftest import wait_for
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
    """GoToSocial's key id is a path (…/main-key) serving a stub with publicKey.

    Its actor answers only signed fetches (401 to ours), so the stub's shape vouches.
    """
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
    origin = Origin({key_id: doc, "https://gts.example/users/bob": 401})
    key = await KeyCache(origin.fetch_json).resolve(key_id)
    assert origin.fetches == [key_id, "https://gts.example/users/bob"]
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


async def test_made_up_key_ids_do_not_push_confirmed_keys_out(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """Failures are remembered apart: a sender cycling keyIds that 404 evicts only those."""
    doc = actor(rsa_key)
    doc["id"] = "https://a.example/users/a"
    doc["publicKey"] = {**doc["publicKey"], "id": f"{doc['id']}#k", "owner": doc["id"]}
    origin = Origin({doc["id"]: doc})  # everything else answers 404
    cache = KeyCache(origin.fetch_json, max_entries=2)
    await cache.resolve("https://a.example/users/a#k")
    for n in range(5):
        with pytest.raises(KeyFetchError):
            await cache.resolve(f"https://a.example/made-up/{n}#k")
    origin.fetches.clear()
    await cache.resolve("https://a.example/users/a#k")
    assert origin.fetches == []
    # The latest failures are still remembered; the oldest made way.
    with pytest.raises(KeyFetchError):
        await cache.resolve("https://a.example/made-up/4#k")
    assert origin.fetches == []


@pytest.mark.parametrize(("status", "gone"), [(410, True), (404, True), (500, False)])
async def test_fetch_failures(status: int, gone: bool) -> None:
    cache = KeyCache(Origin({ALICE: status}).fetch_json)
    with pytest.raises(KeyFetchError) as caught:
        await cache.resolve(MAIN_KEY)
    assert caught.value.gone is gone
    assert str(caught.value) == f"could not fetch key {MAIN_KEY} (HTTP {status})"


async def test_failures_are_retried_after_failure_ttl(rsa_key: rsa.RSAPrivateKey) -> None:
    origin, clock = Origin({ALICE: 503}), Clock()
    cache = KeyCache(origin.fetch_json, failure_ttl=300, clock=clock)
    with pytest.raises(KeyFetchError):
        await cache.resolve(MAIN_KEY)
    origin.docs[ALICE] = actor(rsa_key)
    clock.now += 301
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


# --- confirming the owner: a document's claim is not enough -----------------------------------

BOB = "https://b.example/users/bob"
UPLOAD = "https://b.example/files/upload-123.json"


def bob(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    doc = actor(key)
    doc["id"] = BOB
    doc["publicKey"] = {"id": f"{BOB}#main-key", "owner": BOB, "publicKeyPem": pem(key)}
    return doc


@pytest.mark.parametrize(
    "upload",
    [
        # A bare key document naming bob as its owner.
        lambda key: {"id": UPLOAD, "owner": BOB, "publicKeyPem": pem(key)},
        # A whole actor document claiming to be bob.
        lambda key: {
            "id": BOB,
            "type": "Person",
            "publicKey": {"id": UPLOAD, "owner": BOB, "publicKeyPem": pem(key)},
        },
        # A stub reusing bob's real key id for another key.
        lambda key: {
            "id": BOB,
            "publicKey": {"id": f"{BOB}#main-key", "owner": BOB, "publicKeyPem": pem(key)},
        },
    ],
    ids=["key-document", "actor-document", "reused-key-id"],
)
async def test_an_uploaded_file_cannot_speak_for_its_hosts_actor(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, upload: Any
) -> None:
    """Finding 1 (a): any JSON file served from bob's host could claim bob's key."""
    origin = Origin({BOB: bob(rsa_key), UPLOAD: upload(rsa_key2)})
    with pytest.raises(KeyFetchError, match=r"is not confirmed by its owner .*/bob"):
        await KeyCache(origin.fetch_json).resolve(UPLOAD)
    assert origin.fetches == [UPLOAD, BOB]


async def test_an_uploaded_stub_is_refused_even_where_the_owner_needs_signed_fetches(
    rsa_key2: rsa.RSAPrivateKey,
) -> None:
    """The GoToSocial allowance is for the server's own key path, not for any file."""
    stub = {
        "id": BOB,
        "publicKey": {"id": UPLOAD, "owner": BOB, "publicKeyPem": pem(rsa_key2)},
    }
    origin = Origin({UPLOAD: stub, BOB: 401})
    with pytest.raises(KeyFetchError, match=r"could not be fetched \(HTTP 401\)"):
        await KeyCache(origin.fetch_json).resolve(UPLOAD)


async def test_a_key_served_from_another_origin_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """Finding 1 (b): an open redirect on bob's host ends on the attacker's."""
    redirect = "https://b.example/redirect?to=https://evil.example/k.json"

    async def fetch(url: str) -> JsonDocument:
        assert url == redirect
        return JsonDocument(
            "https://evil.example/k.json",
            {"id": redirect, "owner": BOB, "publicKeyPem": pem(rsa_key)},
        )

    with pytest.raises(KeyFetchError, match=r"was served from another origin"):
        await KeyCache(fetch).resolve(redirect)


async def test_a_same_origin_redirect_to_a_file_is_not_the_actor(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    redirect = "https://b.example/redirect?to=/files/upload-123.json"
    docs = {BOB: bob(rsa_key)}

    async def fetch(url: str) -> JsonDocument:
        if url == redirect:  # the file claims bob's identity and the redirect's key id
            claim = {"id": BOB, "publicKey": {"id": redirect, "publicKeyPem": pem(rsa_key2)}}
            return JsonDocument(UPLOAD, claim)
        return JsonDocument(url, docs[url])

    with pytest.raises(KeyFetchError, match=r"the owner does not list it"):
        await KeyCache(fetch).resolve(redirect)


async def test_a_key_document_elsewhere_is_confirmed_by_its_owner(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    key_id = "https://b.example/keys/1"
    owner = bob(rsa_key)
    owner["publicKey"] = {"id": key_id, "owner": BOB, "publicKeyPem": pem(rsa_key)}
    origin = Origin({key_id: {"id": key_id, "owner": BOB, "publicKeyPem": pem(rsa_key)}})
    origin.docs[BOB] = owner
    key = await KeyCache(origin.fetch_json).resolve(key_id)
    assert (key.id, key.owner) == (key_id, BOB)
    assert origin.fetches == [key_id, BOB]


async def test_an_owner_may_list_the_key_by_reference(ed_key: ed25519.Ed25519PrivateKey) -> None:
    key_id = "https://b.example/keys/ed"
    multikey = {"id": key_id, "controller": BOB, "publicKeyMultibase": multibase(ed_key)}
    owner = {"id": BOB, "type": "Person", "assertionMethod": [key_id]}
    origin = Origin({key_id: multikey, BOB: owner})
    assert (await KeyCache(origin.fetch_json).resolve(key_id)).owner == BOB


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ("other-key", "the owner lists another key under its id"),
        ("other-owner", "the owner lists it for someone else"),
        ("not-listed", "the owner does not list it"),
        ("moved", "the owner's document has another id"),
    ],
)
async def test_an_owner_that_does_not_agree(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, listing: str, message: str
) -> None:
    key_id = "https://b.example/keys/1"
    entry = {"id": key_id, "owner": BOB, "publicKeyPem": pem(rsa_key2)}
    owner = bob(rsa_key)
    if listing == "other-key":
        owner["publicKey"] = {**entry, "publicKeyPem": pem(rsa_key)}
    elif listing == "other-owner":
        owner["publicKey"] = {**entry, "owner": "https://b.example/users/carol"}
    elif listing == "moved":
        owner["id"] = "https://b.example/users/bob2"
        owner["publicKey"] = entry
    origin = Origin({key_id: entry, BOB: owner})
    with pytest.raises(KeyFetchError, match=message):
        await KeyCache(origin.fetch_json).resolve(key_id)


@pytest.mark.parametrize(
    ("canonical", "accepted"),
    [("https://b.example/author/bob/", True), ("https://elsewhere.example/bob", False)],
)
async def test_an_actor_redirected_to_its_canonical_path(
    rsa_key: rsa.RSAPrivateKey, canonical: str, accepted: bool
) -> None:
    """Some servers redirect an actor's id to a canonical page that serves it (same id)."""
    actor_id = "https://b.example/?author=1"
    key_id = f"{actor_id}#main-key"
    doc = {
        "id": actor_id,
        "type": "Person",
        "publicKey": {"id": key_id, "owner": actor_id, "publicKeyPem": pem(rsa_key)},
    }
    fetches: list[str] = []

    async def fetch(url: str) -> JsonDocument:
        fetches.append(url)
        return JsonDocument(canonical, doc)  # every fetch of the id ends there

    if accepted:
        assert (await KeyCache(fetch).resolve(key_id)).owner == actor_id
        assert fetches == [actor_id, actor_id]  # not at its id: the owner is asked again
    else:
        with pytest.raises(KeyFetchError, match="was served from another origin"):
            await KeyCache(fetch).resolve(key_id)


async def test_gotosocial_stub_agrees_with_the_actor_when_it_can_be_fetched(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    key_id = f"{BOB}/main-key"
    stub = {"id": BOB, "publicKey": {"id": key_id, "owner": BOB, "publicKeyPem": pem(rsa_key)}}
    full = {**bob(rsa_key), "publicKey": stub["publicKey"]}
    origin = Origin({key_id: stub, BOB: full})
    assert (await KeyCache(origin.fetch_json).resolve(key_id)).owner == BOB
    # The same stub shape with another key than the actor's is refused.
    origin.docs[key_id] = {
        **stub,
        "publicKey": {**stub["publicKey"], "publicKeyPem": pem(rsa_key2)},
    }
    with pytest.raises(KeyFetchError, match="the owner lists another key under its id"):
        await KeyCache(origin.fetch_json).resolve(key_id)


async def test_owner_on_another_origin_of_the_same_host_is_refused(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    key_id = "https://b.example/keys/1"
    owner = "https://b.example:8443/users/bob"
    origin = Origin({key_id: {"id": key_id, "owner": owner, "publicKeyPem": pem(rsa_key)}})
    with pytest.raises(KeyFetchError, match="the owner is on another origin"):
        await KeyCache(origin.fetch_json).resolve(key_id)
    assert origin.fetches == [key_id]


async def test_a_document_that_is_not_json_is_a_key_failure() -> None:
    async def fetch(url: str) -> Any:
        raise DecodeError(f"{url}: not valid JSON")

    with pytest.raises(KeyFetchError, match=r"could not fetch key .* \(not a JSON object\)"):
        await KeyCache(fetch).resolve(MAIN_KEY)


# --- fetching sparingly (finding 7) -----------------------------------------------------------


async def test_a_gone_key_is_fetched_once_and_stays_gone_from_the_cache() -> None:
    origin, clock = Origin({ALICE: 410}), Clock()
    cache = KeyCache(origin.fetch_json, failure_ttl=300, clock=clock)
    for _ in range(10):
        with pytest.raises(KeyFetchError) as caught:
            await cache.resolve(MAIN_KEY)
        assert caught.value.gone
    assert origin.fetches == [ALICE]
    clock.now += 301
    with pytest.raises(KeyFetchError):
        await cache.resolve(MAIN_KEY)
    assert origin.fetches == [ALICE, ALICE]


async def test_a_document_that_does_not_confirm_is_cached_as_a_failure(
    rsa_key2: rsa.RSAPrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    origin = Origin(
        {BOB: bob(rsa_key), UPLOAD: {"id": UPLOAD, "owner": BOB, "publicKeyPem": pem(rsa_key2)}}
    )
    cache = KeyCache(origin.fetch_json)
    for _ in range(5):
        with pytest.raises(KeyFetchError, match="not confirmed") as caught:
            await cache.resolve(UPLOAD)
        assert not caught.value.gone
    assert origin.fetches == [UPLOAD, BOB]


async def test_bad_signatures_refetch_a_cached_key_once(rsa_key: rsa.RSAPrivateKey) -> None:
    origin, clock = Origin({ALICE: actor(rsa_key)}), Clock()
    cache = KeyCache(origin.fetch_json, refresh_interval=300, clock=clock)
    await cache.resolve(MAIN_KEY)
    attempts = [verify_with_key(cache, MAIN_KEY, lambda key: "bad signature") for _ in range(20)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert all(isinstance(r, SignatureError) for r in results)
    for _ in range(20):
        with pytest.raises(SignatureError, match=r"^bad signature$"):
            await verify_with_key(cache, MAIN_KEY, lambda key: "bad signature")
    assert origin.fetches == [ALICE, ALICE]
    clock.now += 301  # a while later, one more look is allowed
    with pytest.raises(SignatureError):
        await verify_with_key(cache, MAIN_KEY, lambda key: "bad signature")
    assert origin.fetches == [ALICE, ALICE, ALICE]


async def test_a_quiet_refresh_still_serves_a_gone_verdict_it_learnt(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """A refresh that finds the actor gone replaces the key: a Delete then gets 202."""
    origin = Origin({ALICE: actor(rsa_key)})
    cache = KeyCache(origin.fetch_json)
    await cache.resolve(MAIN_KEY)
    origin.docs[ALICE] = 410
    with pytest.raises(KeyFetchError) as caught:
        await verify_with_key(cache, MAIN_KEY, lambda key: "bad signature")
    assert caught.value.gone
    with pytest.raises(KeyFetchError) as caught:
        await cache.resolve(MAIN_KEY)
    assert caught.value.gone
    assert origin.fetches == [ALICE, ALICE]


class Stalled(Origin):
    """An origin whose answers wait until the test releases them."""

    def __init__(self, docs: dict[str, Any]) -> None:
        super().__init__(docs)
        self.release = asyncio.Event()
        self.running = 0
        self.most = 0

    async def fetch_json(self, url: str) -> dict:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
            return await super().fetch_json(url)
        finally:
            self.running -= 1


def actors_on(host: str, key: rsa.RSAPrivateKey, count: int) -> dict[str, Any]:
    docs = {}
    for n in range(count):
        doc = actor(key)
        doc["id"] = f"https://{host}/users/u{n}"
        doc["publicKey"] = {**doc["publicKey"], "id": f"{doc['id']}#k", "owner": doc["id"]}
        docs[doc["id"]] = doc
    return docs


async def test_at_most_per_host_fetches_run_at_once(rsa_key: rsa.RSAPrivateKey) -> None:
    docs = actors_on("a.example", rsa_key, 6) | actors_on("b.example", rsa_key, 1)
    origin = Stalled(docs)
    cache = KeyCache(origin.fetch_json, per_host=2)
    waiting = [asyncio.ensure_future(cache.resolve(f"{url}#k")) for url in docs]
    await wait_for(lambda: origin.running == 3)  # two of a.example, one of b.example
    origin.release.set()
    keys = await asyncio.gather(*waiting)
    assert [k.owner for k in keys] == list(docs)
    assert origin.most == 3


async def test_a_key_fetch_ends_within_the_timeout_and_is_cached_as_failed() -> None:
    origin = Stalled({})
    cache = KeyCache(origin.fetch_json, timeout=0.2)
    with pytest.raises(KeyFetchError, match=r"no answer within 0\.2 s") as caught:
        await asyncio.wait_for(cache.resolve(MAIN_KEY), timeout=10)
    assert not caught.value.gone
    with pytest.raises(KeyFetchError, match=r"no answer within 0\.2 s"):
        await cache.resolve(MAIN_KEY)
    assert origin.fetches == [] and origin.most == 1  # answered from the cache


async def test_waiting_for_a_busy_host_is_not_remembered(rsa_key: rsa.RSAPrivateKey) -> None:
    """Our own queue is no news about the key: a genuine key behind slow ones is not
    cached as failed, and each confirmation that starts gets its whole timeout."""
    docs = actors_on("a.example", rsa_key, 3)
    origin = Stalled(docs)
    cache = KeyCache(origin.fetch_json, per_host=1, timeout=0.5)
    first, second, third = (f"{url}#k" for url in docs)
    holding = asyncio.ensure_future(cache.resolve(first))
    await wait_for(lambda: origin.running == 1)
    queued = asyncio.ensure_future(cache.resolve(second))  # gets its turn when first ends
    behind = asyncio.ensure_future(cache.resolve(third))  # would get it when second ends
    with pytest.raises(RateLimited, match=r"too many fetches from its host"):
        await behind
    for waiting in (holding, queued):
        with pytest.raises(KeyFetchError, match=r"no answer within 0\.5 s"):
            await waiting
    origin.release.set()
    assert (await cache.resolve(third)).owner == third.partition("#")[0]


async def test_a_client_waits_on_a_limited_number_of_unknown_keys(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    docs = {}
    for host in ("a.example", "b.example", "c.example", "d.example"):
        docs |= actors_on(host, rsa_key, 2)
    origin = Stalled(docs)
    cache = KeyCache(origin.fetch_json, per_client=3, per_host=8)
    ids = [f"{url}#k" for url in docs]
    pushy = cache.for_client("192.0.2.7")
    waiting = [asyncio.ensure_future(pushy.resolve(key_id)) for key_id in ids[:3]]
    # The same key again joins its fetch and costs nothing more.
    waiting.append(asyncio.ensure_future(pushy.resolve(ids[0])))
    await wait_for(lambda: origin.running == 3)
    with pytest.raises(RateLimited, match=r"too many unknown keys .* \(limit 3\)") as caught:
        await pushy.resolve(ids[3])
    assert caught.value.retry_after >= 1  # a 429: the sender retries
    # Another client, and the door without a client, are not held back by this one.
    other = asyncio.ensure_future(cache.for_client("192.0.2.8").resolve(ids[4]))
    unnamed = asyncio.ensure_future(cache.for_client(None).resolve(ids[5]))
    await wait_for(lambda: origin.running == 5)
    origin.release.set()
    await asyncio.gather(*waiting, other, unnamed)
    # Cached keys cost nothing, and the client's room is back.
    assert (await pushy.resolve(ids[3])).owner == ids[3].partition("#")[0]
    assert all([await pushy.resolve(key_id) for key_id in ids[:3]])


async def test_one_ipv6_site_counts_as_one_client(rsa_key: rsa.RSAPrivateKey) -> None:
    docs = actors_on("a.example", rsa_key, 2)
    origin = Stalled(docs)
    cache = KeyCache(origin.fetch_json, per_client=1)
    first, second = (f"{url}#k" for url in docs)
    waiting = asyncio.ensure_future(cache.for_client("2001:db8:1:2::1").resolve(first))
    await wait_for(lambda: origin.running == 1)
    with pytest.raises(RateLimited, match="too many unknown keys"):
        await cache.for_client("2001:db8:1:2:ffff::9").resolve(second)
    origin.release.set()
    await waiting
