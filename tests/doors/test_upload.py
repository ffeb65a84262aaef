"""The upload door, end to end: pict-rs's validation hook and the upload APIs of each
server family, in front of a real instance on loopback, with a bank in PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.banks import BankStore
from relay.evidence import EvidenceKey
from relay.media.hashes import hash_media
from tests.conftest import Received, Running, start_server, wait_for

PDQ = Path(__file__).resolve().parent.parent / "fixtures" / "pdq"
BRIDGE = (PDQ / "bridge-mods" / "aaa-orig.jpg").read_bytes()
BRIDGE_EDIT = (PDQ / "bridge-mods" / "blur-a-little.jpg").read_bytes()
PEN = (PDQ / "misc" / "pen-and-coaster.png").read_bytes()
BROKEN = PEN[:300]  # a PNG cut short: sniffed as an image, never decoded
TOKEN = "Bearer good-token"
MISSKEY_INAPPROPRIATE = "bec5bd69-fba3-43c9-b4fb-2894b66ad5d2"


@dataclass
class Instance:
    """The instance behind Sluice: records every request, knows one token."""

    requests: list[Received] = field(default_factory=list)
    base: str = ""

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Received(request.method, request.raw_path, dict(request.headers), body)
        )
        if request.path == "/api/v1/accounts/verify_credentials":
            if request.headers.get("Authorization") != TOKEN:
                return web.json_response({"error": "The access token is invalid"}, status=401)
            return web.json_response(
                {"id": "109", "username": "alice", "acct": "alice", "url": f"{self.base}/@alice"}
            )
        return web.json_response({"id": "1", "type": "image"})


@pytest.fixture
async def instance() -> AsyncIterator[Instance]:
    recorder = Instance()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    server = await start_server(app)
    recorder.base = str(server.make_url("")).rstrip("/")
    yield recorder
    await server.close()


@pytest.fixture
def evidence_key(tmp_path: Path) -> Path:
    path = tmp_path / "evidence.key"
    EvidenceKey.generate(path)
    return path


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
def start(sluice_factory: Any, instance: Instance, evidence_key: Path) -> Start:
    """A Sluice in front of ``instance`` whose bank lists the bridge photo (category
    test, quarantined) and the pen photo's edit-free twin nowhere."""

    async def run(**sections: Any) -> Running:
        sections.setdefault("evidence", {"key_file": str(evidence_key)})
        sluice = await sluice_factory(
            upstream={"url": instance.base, "timeout_seconds": 5.0},
            bank=[{"name": "test-known", "category": "test"}],
            rule=[{"match": "category:test", "action": "quarantine"}],
            **sections,
        )
        store = BankStore(sluice.parts.pool)
        await store.ensure("test-known", category="test")
        hashes = hash_media(BRIDGE)
        await store.add(
            "test-known",
            [("pdq", hashes.pdq[0].hash, "bridge photo"), ("md5", hashes.md5, "bridge photo")],
        )
        await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)
        return sluice

    return run


def multipart(*fields: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser sends it: (name, filename, bytes) each."""
    boundary = f"----sluice{uuid.uuid4().hex}"
    out = b""
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


async def send(
    sluice: Running,
    method: str,
    path: str,
    body: bytes,
    content_type: str,
    **headers: str,
) -> tuple[int, Any]:
    async with sluice.session.request(
        method, sluice.url + path, data=body, headers={"Content-Type": content_type, **headers}
    ) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


def no_hash_in(answer: Any) -> None:
    """What a refused uploader reads names no hash value."""
    said = json.dumps(answer)
    for value in (
        hash_media(BRIDGE).md5,
        hash_media(BRIDGE).sha256,
        hash_media(BRIDGE).pdq[0].hash,
    ):
        assert value not in said


# -- pict-rs's hook -------------------------------------------------------------


async def test_pictrs_hook_accepts_a_clean_image_and_refuses_a_known_one(start: Start) -> None:
    sluice = await start()
    status, _ = await send(sluice, "POST", "/_sluice/validate", PEN, "image/png")
    assert 200 <= status < 300
    # pict-rs re-encodes what it stores: the edit is caught by its perceptual hash.
    status, answer = await send(sluice, "POST", "/_sluice/validate", BRIDGE_EDIT, "image/jpeg")
    assert not 200 <= status < 300
    assert isinstance(answer["error"], str) and "cannot be uploaded" in answer["error"]
    no_hash_in(answer)


async def test_a_file_uploaded_again_is_not_decoded_again(start: Start) -> None:
    """pict-rs asks about each file it ingests, also the remote images Lemmy proxies,
    which the hold has mostly checked already: known by SHA-256, not decoded twice."""
    sluice = await start()
    upload = sluice.parts.upload
    assert upload is not None
    before = upload.hasher.decoded
    for _ in range(2):
        status, _ = await send(sluice, "POST", "/_sluice/validate", PEN, "image/png")
        assert 200 <= status < 300
        status, _ = await send(sluice, "POST", "/_sluice/validate", BRIDGE_EDIT, "image/jpeg")
        assert not 200 <= status < 300
    assert upload.hasher.decoded == before + 2


async def test_pictrs_hook_undecidable_file_follows_on_error(start: Start) -> None:
    closed = await start()
    status, answer = await send(closed, "POST", "/_sluice/validate", BROKEN, "image/png")
    assert not 200 <= status < 300
    assert "could not be read" in answer["error"]
    opened = await start(upload={"on_error": "accept"})
    status, _ = await send(opened, "POST", "/_sluice/validate", BROKEN, "image/png")
    assert 200 <= status < 300
    # Failing open never waves a known file through: its exact hash still matches.
    status, _ = await send(opened, "POST", "/_sluice/validate", BRIDGE, "image/jpeg")
    assert not 200 <= status < 300


async def test_pictrs_hook_refuses_what_is_too_large_to_check(start: Start) -> None:
    sluice = await start(upload={"max_bytes": 1000})
    status, answer = await send(sluice, "POST", "/_sluice/validate", PEN, "image/png")
    assert status == 413
    assert "larger than the 1000 bytes" in answer["error"]


# -- the upload APIs -------------------------------------------------------------


async def test_mastodon_upload_of_a_known_image_never_reaches_the_instance(
    start: Start, instance: Instance
) -> None:
    sluice = await start()
    body, content_type = multipart(("description", None, b"a bridge"), ("file", "b.jpg", BRIDGE))
    status, answer = await send(sluice, "POST", "/api/v2/media", body, content_type)
    assert status == 422
    assert set(answer) == {"error"} and "cannot be uploaded" in answer["error"]
    no_hash_in(answer)
    assert instance.at("/api/v2/media") == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v2/media/"),
        ("POST", "/api/v2/media.json"),
        ("POST", "/API/V1/Media"),
        ("PUT", "/api/v1/accounts/update_credentials"),
        ("PATCH", "/api/v1/accounts/update_credentials.json"),
        ("POST", "/api/v1/media.xml/"),
        ("PUT", "/api/v1/media/109347"),
    ],
)
async def test_every_spelling_of_an_upload_api_is_checked(
    start: Start, instance: Instance, method: str, path: str
) -> None:
    """The servers route these to their upload actions too (nginx's snippets send them
    here): none may pass unchecked."""
    sluice = await start()
    body, content_type = multipart(("file", "b.jpg", BRIDGE), ("avatar", "b.jpg", BRIDGE))
    status, answer = await send(sluice, method, path, body, content_type)
    assert status == 422 and "cannot be uploaded" in answer["error"]
    assert instance.requests == []


async def test_mastodon_clean_upload_reaches_the_instance_byte_identical(
    start: Start, instance: Instance
) -> None:
    sluice = await start()
    body, content_type = multipart(("file", "pen.png", PEN), ("focus", None, b"0.1,-0.2"))
    status, answer = await send(
        sluice, "POST", "/api/v1/media", body, content_type, Authorization=TOKEN
    )
    assert status == 200 and answer == {"id": "1", "type": "image"}
    [arrived] = instance.at("/api/v1/media")
    assert arrived.body == body
    assert arrived.headers["Content-Type"] == content_type
    assert arrived.headers["Authorization"] == TOKEN  # the instance still authenticates
    assert arrived.headers["Content-Length"] == str(len(body))


async def test_avatar_of_a_known_image_is_refused(start: Start, instance: Instance) -> None:
    sluice = await start()
    body, content_type = multipart(
        ("display_name", None, b"Alice"), ("avatar", "me.jpg", BRIDGE_EDIT)
    )
    path = "/api/v1/accounts/update_credentials"
    status, answer = await send(sluice, "PATCH", path, body, content_type)
    assert status == 422 and "cannot be uploaded" in answer["error"]
    assert instance.at(path) == []
    # Without a file, the profile update goes through untouched.
    body, content_type = multipart(("display_name", None, b"Alice"))
    assert (await send(sluice, "PATCH", path, body, content_type))[0] == 200
    assert instance.at(path)[0].body == body


async def test_misskey_and_lemmy_refusals_in_their_own_shapes(
    start: Start, instance: Instance
) -> None:
    sluice = await start()
    body, content_type = multipart(("i", None, b"secret"), ("file", "b.jpg", BRIDGE))
    status, answer = await send(sluice, "POST", "/api/drive/files/create", body, content_type)
    assert status == 400
    error = answer["error"]
    assert error["code"] == "INAPPROPRIATE"
    assert error["id"] == MISSKEY_INAPPROPRIATE
    assert error["kind"] == "client" and error["message"]
    no_hash_in(answer)

    body, content_type = multipart(("images[]", "b.jpg", BRIDGE))
    status, answer = await send(sluice, "POST", "/pictrs/image", body, content_type)
    assert status == 400
    assert answer["code"] == "failed-external-validation" and answer["msg"]
    status, answer = await send(sluice, "POST", "/api/v4/image", body, content_type)
    assert status == 400
    assert answer["error"] == "pictrs_invalid_image_upload" and answer["message"]
    assert [r.path for r in instance.requests] == []


async def test_upload_too_large_is_refused_before_it_is_read(
    start: Start, instance: Instance
) -> None:
    sluice = await start(upload={"max_bytes": 4096})
    body, content_type = multipart(("file", "pen.png", PEN))
    status, answer = await send(sluice, "POST", "/api/v2/media", body, content_type)
    assert status == 413 and "larger than the 4096 bytes" in answer["error"]
    status, answer = await send(sluice, "POST", "/api/drive/files/create", body, content_type)
    assert status == 413 and answer["error"]["code"] == "MAX_FILE_SIZE_EXCEEDED"
    assert instance.requests == []


async def test_review_refuses_an_upload_and_says_why(
    sluice_factory: Any, instance: Instance
) -> None:
    sluice = await sluice_factory(
        upstream={"url": instance.base},
        bank=[{"name": "maybe", "category": "unwanted"}],
        rule=[{"match": "maybe", "action": "review"}],
    )
    store = BankStore(sluice.parts.pool)
    await store.ensure("maybe", category="unwanted")
    await store.add("maybe", [("sha256", hash_media(PEN).sha256, "pen")])
    await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)
    body, content_type = multipart(("file", "pen.png", PEN))
    status, answer = await send(sluice, "POST", "/api/v2/media", body, content_type)
    assert status == 422 and "moderator" in answer["error"]
    assert instance.at("/api/v2/media") == []


# -- who uploaded, evidence, effects -------------------------------------------------


async def test_refused_upload_keeps_evidence_with_the_uploader_and_notifies(
    start: Start, instance: Instance, webhook: Any
) -> None:
    sluice = await start(notify={"webhooks": [webhook.url]})
    body, content_type = multipart(("file", "b.jpg", BRIDGE))
    for _ in range(2):
        status, _ = await send(
            sluice, "POST", "/api/v2/media", body, content_type, Authorization=TOKEN
        )
        assert status == 422
    # The account came from the instance, once: the token's answer is remembered.
    assert len(instance.at("/api/v1/accounts/verify_credentials")) == 1
    assert instance.at("/api/v2/media") == []

    ids = [r["id"] for r in await sluice.parts.pool.fetch("SELECT id FROM evidence ORDER BY id")]
    assert len(ids) == 2
    evidence = sluice.parts.flow.evidence
    assert evidence is not None
    record, media = await evidence.read(ids[0], who="test", why="upload evidence")
    assert media == [BRIDGE]
    facts = record.facts
    assert facts["account"] == {"id": "109", "acct": "alice", "url": f"{instance.base}/@alice"}
    assert facts["remote"] == "127.0.0.1"
    assert facts["upload"]["path"] == "/api/v2/media"
    assert facts["verdict"]["action"] == "quarantine"
    lowered = {k.lower() for k in facts["headers"]}
    assert "authorization" not in lowered and "cookie" not in lowered
    assert any(s["kind"] == "match" for s in facts["signals"])

    # The verdict's notify effect went through the outbox to the admin's webhook.
    await wait_for(lambda: len(webhook.requests) >= 2, timeout=10)
    told = webhook.requests[0].json()
    assert told["event"] == "upload" and told["disposition"] == "quarantine"
    assert told["evidence_id"] in ids
    assert told["upload"]["account"]["acct"] == "alice"
    assert "good-token" not in webhook.requests[0].body.decode()


async def test_unknown_token_is_no_reason_to_refuse(start: Start, instance: Instance) -> None:
    sluice = await start()
    body, content_type = multipart(("file", "pen.png", PEN))
    status, _ = await send(
        sluice, "POST", "/api/v2/media", body, content_type, Authorization="Bearer wrong"
    )
    assert status == 200
    assert instance.at("/api/v2/media")[0].body == body


async def test_every_decision_is_on_the_admin_api_without_hashes(
    start: Start, instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "uploads-admin")
    sluice = await start()
    known, known_type = multipart(("file", "b.jpg", BRIDGE))
    clean, clean_type = multipart(("file", "pen.png", PEN))
    assert (await send(sluice, "POST", "/api/v2/media", known, known_type))[0] == 422
    assert (await send(sluice, "POST", "/api/v2/media", clean, clean_type))[0] == 200
    headers = {"Authorization": "Bearer uploads-admin"}
    async with sluice.session.get(
        sluice.admin_url + "/_sluice/api/uploads", headers=headers
    ) as response:
        assert response.status == 200
        text = await response.text()
    listed = json.loads(text)["uploads"]
    assert [(u["path"], u["outcome"], u["family"]) for u in listed] == [
        ("/api/v2/media", "deliver", "mastodon"),
        ("/api/v2/media", "quarantine", "mastodon"),
    ]
    refused = listed[1]
    assert refused["rule"] == "rule[0] category:test -> quarantine"
    assert refused["evidence_id"] is not None and refused["bytes"] == len(known)
    assert {"kind": "match", "source": "test-known", "detail": {}} in refused["signals"]
    no_hash_in(text)
    async with sluice.session.get(
        sluice.admin_url + "/_sluice/api/uploads?outcome=quarantine", headers=headers
    ) as response:
        assert [u["outcome"] for u in (await response.json())["uploads"]] == ["quarantine"]
