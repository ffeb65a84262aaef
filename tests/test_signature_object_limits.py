"""What an object signature may cost us: size limits, a time budget, a rate per signer.

Canonicalising JSON-LD (for RsaSignature2017) is dear and runs before the signature can
be checked, so anyone with two actors can ask for it. These tests hold real keys and
real documents; the slow document is a real one too, a handful of symmetric blank nodes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from PIL import Image, ImageDraw

from relay import errors
from relay.errors import SignatureError
from relay.media.hashes import hash_media
from relay.signature import PublicKey, sign_ld, sign_proof, verify_object
from tests.conftest import wait_for
from tests.signature_support import (
    ALICE,
    KEY_ID,
    Keys,
    ed_key_fixture,  # noqa: F401
    rsa_key_fixture,  # noqa: F401
)

ED_KEY_ID = f"{ALICE}#ed25519-key"
FIXTURES = Path(__file__).parent / "fixtures"
T = TypeVar("T")

ACTIVITY: dict[str, Any] = {
    "@context": ["https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"],
    "id": f"{ALICE}/statuses/2/activity",
    "type": "Create",
    "actor": ALICE,
    "to": ["https://www.w3.org/ns/activitystreams#Public"],
    "object": {
        "id": f"{ALICE}/statuses/2",
        "type": "Note",
        "attributedTo": ALICE,
        "content": "<p>hello</p>",
    },
}


@pytest.fixture
def keys(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> Keys:
    return Keys(
        PublicKey(KEY_ID, ALICE, rsa_key.public_key()),
        PublicKey(ED_KEY_ID, ALICE, ed_key.public_key()),
    )


def symmetric_blank_nodes(count: int) -> dict[str, Any]:
    """`count` blank nodes, each linked to every other: a few hundred bytes that URDNA2015
    must try in every order (7 nodes: seconds; 8: about a minute). Its RsaSignature2017
    is well formed, though it cannot verify: canonicalising comes first."""
    nodes = [
        {"@id": f"_:b{i}", "p": [f"_:b{j}" for j in range(count) if j != i]} for i in range(count)
    ]
    return {
        "@context": {"p": {"@id": "https://example.org/p", "@type": "@id"}},
        "@graph": nodes,
        "signature": {
            "type": "RsaSignature2017",
            "creator": KEY_ID,
            "created": "2024-01-01T00:00:00Z",
            "signatureValue": base64.b64encode(bytes(256)).decode(),
        },
    }


def with_one_default_thread(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run `scenario` on a loop of its own whose default executor has a single thread,
    as if every other default-executor thread were taken."""
    loop = asyncio.new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def png() -> bytes:
    image = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(image).ellipse((40, 40, 216, 216), fill="navy")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


# --- size limits, before any canonicalisation -----------------------------------------------


async def test_an_oversized_object_is_refused_before_canonicalising(
    rsa_key: rsa.RSAPrivateKey, keys: Keys
) -> None:
    big = {**ACTIVITY, "object": {**ACTIVITY["object"], "content": "x" * 70_000}}
    signed = sign_ld(big, rsa_key, KEY_ID)  # genuinely signed: only its size is wrong
    with pytest.raises(SignatureError, match=r"^object is \d+ bytes, more than the 65536 "):
        await verify_object(signed, ALICE, keys)

    from relay.signature.objects import ObjectVerifier

    verifier = ObjectVerifier()
    try:
        with pytest.raises(SignatureError, match=r"more than the 65536 allowed to check its Rsa"):
            await verifier.verify(signed, ALICE, keys)
        assert verifier.canonicaliser.runs == 0
        assert verifier.canonicaliser.pids == []  # no worker was even started
        assert keys.calls == []  # nor a key fetched
    finally:
        verifier.close()


async def test_a_node_heavy_object_is_refused_before_canonicalising(
    rsa_key: rsa.RSAPrivateKey, keys: Keys
) -> None:
    tagged = {**ACTIVITY, "object": {**ACTIVITY["object"], "tag": ["#a"] * 2500}}  # 12 kB
    signed = sign_ld(tagged, rsa_key, KEY_ID)
    with pytest.raises(SignatureError, match=r"^object has more than 2000 JSON values, too many"):
        await verify_object(signed, ALICE, keys)

    from relay.signature.objects import ObjectVerifier

    verifier = ObjectVerifier(max_nodes=10)
    try:
        with pytest.raises(SignatureError, match="more than 10 JSON values"):
            await verifier.verify(sign_ld(ACTIVITY, rsa_key, KEY_ID), ALICE, keys, signer=ALICE)
        assert verifier.canonicaliser.runs == 0
    finally:
        verifier.close()


def test_real_activities_pass_the_limits_with_room_to_spare() -> None:
    from relay.signature.linked_data import MAX_BYTES, MAX_NODES, check_size

    activities = Path(__file__).parent / "media/activities"
    documents = [json.loads(p.read_text()) for p in activities.glob("*.json")]
    mastodon = FIXTURES / "signatures/mastodon-create-rsasignature2017.json"
    documents.append(json.loads(mastodon.read_text())["activity"])
    assert len(documents) > 20
    for document in documents:
        check_size(document, max_bytes=MAX_BYTES // 8, max_nodes=MAX_NODES // 8)


# --- the time budget -------------------------------------------------------------------------


async def test_a_canonicalisation_past_its_budget_is_abandoned_and_its_worker_killed(
    rsa_key: rsa.RSAPrivateKey, keys: Keys
) -> None:
    from relay.signature.objects import ObjectVerifier

    verifier = ObjectVerifier(budget_seconds=0.2)
    try:
        assert await verifier.verify(sign_ld(ACTIVITY, rsa_key, KEY_ID), ALICE, keys)
        [worker] = verifier.canonicaliser.pids
        with pytest.raises(
            SignatureError, match=r"^JSON-LD canonicalisation of the object took longer than 0.2 s$"
        ):
            await verifier.verify(symmetric_blank_nodes(7), ALICE, keys)
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)  # gone, and reaped: it burns nothing any more
        assert verifier.canonicaliser.timeouts == 1
        assert worker not in verifier.canonicaliser.pids
        # Its successor takes the next document.
        assert await verifier.verify(sign_ld(ACTIVITY, rsa_key, KEY_ID), ALICE, keys)
    finally:
        verifier.close()


def test_canonicalisation_does_not_need_the_default_executor(
    rsa_key: rsa.RSAPrivateKey, keys: Keys
) -> None:
    signed = sign_ld(ACTIVITY, rsa_key, KEY_ID)
    release = threading.Event()

    async def scenario() -> str:
        taken = asyncio.ensure_future(asyncio.to_thread(release.wait))  # the only thread
        try:
            return await asyncio.wait_for(verify_object(signed, ALICE, keys), 30)
        finally:
            release.set()
            await taken

    assert with_one_default_thread(scenario) == "RsaSignature2017"


def test_media_hashing_goes_on_while_a_slow_canonicalisation_runs(keys: Keys) -> None:
    picture = png()

    async def scenario() -> tuple[bool, BaseException | str]:
        slow = asyncio.ensure_future(verify_object(symmetric_blank_nodes(7), ALICE, keys))
        try:
            await asyncio.sleep(0)  # it has started, and asked for its canonicalisation
            hashes = await asyncio.to_thread(hash_media, picture)
            assert hashes.pdq
            return not slow.done(), (await asyncio.gather(slow, return_exceptions=True))[0]
        finally:
            await asyncio.gather(slow, return_exceptions=True)

    media_went_first, slow_outcome = with_one_default_thread(scenario)
    assert media_went_first
    assert isinstance(slow_outcome, SignatureError)
    assert str(slow_outcome) == "JSON-LD canonicalisation of the object took longer than 2 s"


async def test_when_every_worker_is_busy_and_the_queue_full_callers_are_told_to_retry(
    rsa_key: rsa.RSAPrivateKey, keys: Keys
) -> None:
    from relay.signature.objects import ObjectVerifier

    verifier = ObjectVerifier(workers=1, max_waiting=0, budget_seconds=60)
    slow = asyncio.ensure_future(verifier.verify(symmetric_blank_nodes(8), ALICE, keys))
    try:
        await wait_for(lambda: verifier.canonicaliser.pids)
        [worker] = verifier.canonicaliser.pids
        busy = r"^too many linked-data signatures to check right now$"
        with pytest.raises(errors.RateLimited, match=busy) as refused:
            await verifier.verify(sign_ld(ACTIVITY, rsa_key, KEY_ID), ALICE, keys)
        assert refused.value.retry_after == 60
        assert not slow.done()
    finally:
        verifier.close()
    with pytest.raises(SignatureError, match=r"^linked-data signatures cannot be checked now$"):
        await slow
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


async def test_json_ld_errors_found_by_a_worker_are_reported(
    rsa_key: rsa.RSAPrivateKey, keys: Keys
) -> None:
    signed = sign_ld(ACTIVITY, rsa_key, KEY_ID)
    with pytest.raises(SignatureError, match=r"^object is not valid JSON-LD$"):
        await verify_object({**signed, "@context": 42}, ALICE, keys)


# --- the rate per signer ---------------------------------------------------------------------


async def test_each_signer_has_its_own_rate(ed_key: ed25519.Ed25519PrivateKey, keys: Keys) -> None:
    from relay.signature.objects import ObjectVerifier

    now = [1000.0]
    verifier = ObjectVerifier(per_signer_per_minute=3, clock=lambda: now[0])
    relay, other = "https://relay.example/actor", "https://other.example/actor"
    signed = sign_proof(ACTIVITY, ed_key, ED_KEY_ID)  # cheap proofs count too
    try:
        for _ in range(3):
            assert await verifier.verify(signed, ALICE, keys, signer=relay) == "eddsa-jcs-2022"
        checked = len(keys.calls)
        refusal = f"^too many signed objects relayed by {re.escape(relay)}; retry in 20 s$"
        with pytest.raises(errors.RateLimited, match=refusal) as refused:
            await verifier.verify(signed, ALICE, keys, signer=relay)
        assert refused.value.retry_after == 20
        assert len(keys.calls) == checked  # refused without doing the work
        assert await verifier.verify(signed, ALICE, keys, signer=other)
        assert await verifier.verify(signed, ALICE, keys)  # no signer, no rate
        now[0] += 20  # one check comes back
        assert await verifier.verify(signed, ALICE, keys, signer=relay)
        with pytest.raises(errors.RateLimited):
            await verifier.verify(signed, ALICE, keys, signer=relay)
    finally:
        verifier.close()


async def test_an_unlimited_signer_is_not_counted(
    ed_key: ed25519.Ed25519PrivateKey, keys: Keys
) -> None:
    from relay.signature.objects import ObjectVerifier

    relay = "https://relay.example/actor"
    verifier = ObjectVerifier(per_signer_per_minute=1, unlimited_signers=[relay])
    signed = sign_proof(ACTIVITY, ed_key, ED_KEY_ID)
    try:
        for _ in range(5):
            assert await verifier.verify(signed, ALICE, keys, signer=relay)
        assert await verifier.verify(signed, ALICE, keys, signer="https://b.example/actor")
        with pytest.raises(errors.RateLimited):
            await verifier.verify(signed, ALICE, keys, signer="https://b.example/actor")
    finally:
        verifier.close()


async def test_verify_object_limits_each_signer(
    rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey, keys: Keys
) -> None:
    relay = f"https://relay.example/{uuid.uuid4().hex}"
    signed = sign_proof(ACTIVITY, ed_key, ED_KEY_ID)
    passed = 0
    with pytest.raises(errors.RateLimited) as refused:
        for _ in range(100):
            await verify_object(signed, ALICE, keys, signer=relay)
            passed += 1
    assert 30 <= passed < 100
    assert refused.value.retry_after in (1, 2)  # 30 a minute: one every 2 s
    ld_signed = sign_ld(ACTIVITY, rsa_key, KEY_ID)
    with pytest.raises(errors.RateLimited):
        await verify_object(ld_signed, ALICE, keys, signer=relay)
    other = f"https://other.example/{uuid.uuid4().hex}"
    assert await verify_object(ld_signed, ALICE, keys, signer=other) == "RsaSignature2017"


async def test_one_host_cannot_keep_the_workers_to_itself(keys: Keys) -> None:
    """Its actors share `per_host` places; another host's object still gets in line."""
    from relay.signature.objects import ObjectVerifier

    verifier = ObjectVerifier(budget_seconds=1.0, workers=1, max_waiting=8, per_host=2)
    slow = symmetric_blank_nodes(7)
    try:
        hogs = [
            asyncio.ensure_future(
                verifier.verify(slow, ALICE, keys, signer=f"https://hog.example/users/{n}")
            )
            for n in range(2)
        ]
        await wait_for(lambda: verifier.canonicaliser.runs == 2)
        with pytest.raises(errors.RateLimited, match=r"from hog\.example being checked"):
            await verifier.verify(slow, ALICE, keys, signer="https://hog.example/users/9")
        assert verifier.canonicaliser.runs == 2  # refused before queueing
        other = asyncio.ensure_future(
            verifier.verify(slow, ALICE, keys, signer="https://other.example/users/1")
        )
        await wait_for(lambda: verifier.canonicaliser.runs == 3)  # in line, not refused
        for outcome in await asyncio.gather(*hogs, other, return_exceptions=True):
            assert isinstance(outcome, SignatureError), outcome  # too slow, all of them
    finally:
        verifier.close()
