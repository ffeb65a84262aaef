"""The actor's document and discovery routes, served over real HTTP, and its signatures
verified by Sluice's own verifier against the key it fetches from those routes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from yarl import URL

import relay
from relay.actor import Actor, load_keys
from relay.network import ACTIVITY_JSON_ACCEPT
from relay.signature import verify_object, verify_request
from relay.signature.proof import b58decode
from tests.actor.support import serve_actor


async def test_the_actor_document(tmp_path: Path) -> None:
    async with serve_actor(tmp_path / "keys", manually_approves_followers=True) as served:
        actor = served.actor
        async with served.session.get(actor.id, headers={"Accept": ACTIVITY_JSON_ACCEPT}) as r:
            assert r.status == 200
            assert r.content_type == "application/activity+json"
            doc = json.loads(await r.read())
    base = actor.base_url
    assert doc["id"] == f"{base}/actor" and doc["type"] == "Service"
    assert doc["preferredUsername"] == "sluice"
    assert doc["inbox"] == f"{base}/inbox" == doc["endpoints"]["sharedInbox"]
    assert doc["outbox"] == f"{base}/outbox"
    assert doc["followers"] == f"{base}/followers"
    assert doc["receipts"] == f"{base}/receipts"
    assert doc["manuallyApprovesFollowers"] is True and doc["discoverable"] is False
    assert doc["publicKey"]["id"] == f"{base}/actor#main-key"
    assert doc["publicKey"]["owner"] == doc["id"]
    assert "BEGIN PUBLIC KEY" in doc["publicKey"]["publicKeyPem"]
    (multikey,) = doc["assertionMethod"]
    assert multikey["id"] == f"{base}/actor#ed25519-key"
    assert multikey["type"] == "Multikey" and multikey["controller"] == doc["id"]
    raw = b58decode(multikey["publicKeyMultibase"][1:])
    assert multikey["publicKeyMultibase"][0] == "z"
    assert raw == b"\xed\x01" + actor.keys.ed25519.public_key().public_bytes_raw()
    contexts = [c for c in doc["@context"] if isinstance(c, str)]
    known = json.loads((Path(relay.__file__).parent / "contexts.json").read_text())
    assert set(contexts) <= set(known)
    assert "https://w3id.org/security/multikey/v1" in contexts


async def test_ld_json_accept_gets_the_document_and_a_browser_gets_text(tmp_path: Path) -> None:
    async with serve_actor(tmp_path) as served:
        ld = 'application/ld+json; profile="https://www.w3.org/ns/activitystreams"'
        async with served.session.get(served.actor.id, headers={"Accept": ld}) as r:
            assert r.status == 200
            assert json.loads(await r.read())["id"] == served.actor.id
        async with served.session.get(served.actor.id, headers={"Accept": "text/html"}) as r:
            assert r.status == 200 and r.content_type == "text/plain"
            assert served.actor.handle in await r.text()


@pytest.mark.parametrize("prefix", ["", "/sluice"])
async def test_webfinger(tmp_path: Path, prefix: str) -> None:
    async with serve_actor(tmp_path, prefix=prefix) as served:
        actor = served.actor
        finger = f"{actor.base_url}/.well-known/webfinger"
        assert URL(finger).path == f"{prefix}/.well-known/webfinger"
        for resource in (f"acct:sluice@{actor.host}", actor.id):
            async with served.session.get(finger, params={"resource": resource}) as r:
                assert r.status == 200, resource
                assert r.content_type == "application/jrd+json"
                body = json.loads(await r.read())
            assert body["subject"] == f"acct:sluice@{actor.host}"
            selfs = [link for link in body["links"] if link["rel"] == "self"]
            assert selfs == [{"rel": "self", "type": "application/activity+json", "href": actor.id}]
        async with served.session.get(finger, params={"resource": "acct:bob@elsewhere"}) as r:
            assert r.status == 404 and r.content_type == "application/json"
        async with served.session.get(finger) as r:
            assert r.status == 400


async def test_nodeinfo(tmp_path: Path) -> None:
    async with serve_actor(tmp_path, prefix="/p") as served:
        base = served.actor.base_url
        async with served.session.get(f"{base}/.well-known/nodeinfo") as r:
            (link,) = json.loads(await r.read())["links"]
        assert link["href"] == f"{base}/nodeinfo/2.1"
        assert link["rel"] == "http://nodeinfo.diaspora.software/ns/schema/2.1"
        async with served.session.get(link["href"]) as r:
            assert r.status == 200
            info = json.loads(await r.read())
        assert info["software"] == {"name": "sluice", "version": relay.__version__}
        assert info["protocols"] == ["activitypub"]
        assert info["openRegistrations"] is False
        assert info["usage"]["users"]["total"] == 0


async def test_a_signed_request_verifies_against_the_key_fetched_from_our_routes(
    tmp_path: Path,
) -> None:
    async with serve_actor(tmp_path, prefix="/sluice") as served:
        actor = served.actor
        url = "https://peer.example/inbox?x=1"
        body = b'{"type":"Flag"}'
        headers = actor.sign_request("POST", url, {"Content-Type": "application/json"}, body)
        assert "Digest" in headers and headers["Host"] == "peer.example"
        verified = await verify_request("POST", "/inbox?x=1", headers, body, served.key_cache())
        assert verified.signer == actor.id and verified.key_id == f"{actor.id}#main-key"

        get = actor.sign_request("GET", url, {"Accept": ACTIVITY_JSON_ACCEPT}, None)
        assert "Digest" not in get
        assert (await verify_request("GET", "/inbox?x=1", get, b"", served.key_cache())).signer

        tampered = await _refused(
            verify_request("POST", "/inbox?x=1", headers, b"{}", served.key_cache())
        )
        assert "digest" in tampered.lower()


async def test_a_signed_object_verifies_against_the_fetched_ed25519_key(tmp_path: Path) -> None:
    async with serve_actor(tmp_path) as served:
        actor = served.actor
        note = {"id": f"{actor.base_url}/receipts/1", "type": "Note", "actor": actor.id}
        signed = actor.sign_object(note)
        assert signed["proof"]["verificationMethod"] == f"{actor.id}#ed25519-key"
        assert await verify_object(signed, actor.id, served.key_cache()) == "eddsa-jcs-2022"
        forged = {**signed, "type": "Delete"}
        assert await _refused(verify_object(forged, actor.id, served.key_cache()))


def test_no_base_url_means_no_actor(tmp_path: Path) -> None:
    assert Actor.load(None, key_dir=tmp_path / "never") is None
    assert not (tmp_path / "never").exists()


def test_base_url_and_host(tmp_path: Path) -> None:
    keys = load_keys(tmp_path)
    actor = Actor("https://Sluice.Example/relay/", keys, name="gate")
    assert actor.id == "https://sluice.example/relay/actor"
    assert actor.prefix == "/relay" and actor.host == "sluice.example"
    assert actor.handle == "gate@sluice.example"
    assert Actor("http://127.0.0.1:8080", keys).host == "127.0.0.1:8080"


async def _refused(check) -> str:  # type: ignore[no-untyped-def]
    from relay.errors import SignatureError

    with pytest.raises(SignatureError) as refused:
        await check
    return str(refused.value)


def test_every_term_of_the_document_is_defined_by_its_contexts(tmp_path: Path) -> None:
    """Expanded with the offline loader, no term falls to a blank node (dropped by
    JSON-LD processors); ``receipts`` is the receipts FEP's."""
    from pyld import jsonld

    from relay.jsonld import document_loader

    doc = Actor("https://s.example/p", load_keys(tmp_path)).document()
    (expanded,) = jsonld.expand(doc, {"documentLoader": document_loader})
    assert not [k for k in expanded if k.startswith("_:")]
    assert "https://w3id.org/security#assertionMethod" in expanded
    assert expanded["https://w3id.org/fep/bc20#receipts"] == [
        {"@id": "https://s.example/p/receipts"}
    ]
