"""Remote media fetched through the outbound proxy: fetched once, checked against the
banks in PostgreSQL, and served from the checked copy; known material gets 403."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from relay.banks import BankStore
from relay.evidence import EvidenceKey
from relay.media.hashes import hash_media
from relay.outbound.ca import CertificateAuthority, create_ca
from relay.outbound.media import KNOWN, UNCHECKED, is_media
from tests.conftest import Running, wait_for
from tests.outbound.support import connect, read_response, trusting

PDQ = Path(__file__).resolve().parent.parent / "fixtures" / "pdq"
BRIDGE = (PDQ / "bridge-mods" / "aaa-orig.jpg").read_bytes()  # in the bank
PEN = (PDQ / "misc" / "pen-and-coaster.png").read_bytes()  # in no bank
ACTOR = json.dumps(
    {"@context": "https://www.w3.org/ns/activitystreams", "id": "x", "type": "Person"}
).encode()
MAX_BYTES = 2 * len(BRIDGE) + len(PEN)
HITS = web.AppKey("hits", dict)


async def _origin_app() -> web.Application:
    hits: dict[str, int] = {}

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hits[name] = hits.get(name, 0) + 1
        if name == "pen.png":
            return web.Response(body=PEN, content_type="image/png")
        if name == "ranged.png":  # honours a Range and compresses when asked
            body = PEN
            if request.headers.get("Range") == "bytes=0-99":
                body = PEN[:100]
            headers = {"Content-Type": "image/png"}
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body)
                headers["Content-Encoding"] = "gzip"
            status = 206 if len(PEN) > 100 and request.headers.get("Range") else 200
            if status == 206:
                headers["Content-Range"] = f"bytes 0-99/{len(PEN)}"
            return web.Response(status=status, body=body, headers=headers)
        if name == "bridge.jpg":
            return web.Response(body=BRIDGE, content_type="image/jpeg")
        if name == "bridge.html":  # the type lies; the bytes do not
            return web.Response(body=BRIDGE, content_type="text/html")
        if name == "broken.png":  # sniffed as a picture, never decoded
            return web.Response(body=PEN[:300], content_type="image/png")
        if name == "actor":
            return web.Response(body=ACTOR, content_type="application/activity+json")
        if name in ("big.png", "big-chunked.png"):
            data = PEN * (MAX_BYTES // len(PEN) + 2)
            if name == "big.png":
                return web.Response(body=data, content_type="image/png")
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(data), 65536):
                await response.write(data[start : start + 65536])
            await response.write_eof()
            return response
        raise web.HTTPNotFound()

    app = web.Application()
    app[HITS] = hits
    app.router.add_get("/files/{name}", serve)
    return app


@pytest.fixture
async def media_origin(
    public_ca: CertificateAuthority,
) -> AsyncIterator[tuple[int, dict[str, int]]]:
    app = await _origin_app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=public_ca.context("localhost"))
    await site.start()
    yield runner.addresses[0][1], app[HITS]
    await runner.cleanup()


Fetch = Callable[..., Awaitable[tuple[bytes, dict[str, str], bytes]]]


@pytest.fixture
async def proxied(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    public_ca: CertificateAuthority,
    media_origin: tuple[int, dict[str, int]],
    sluice_factory: Callable[..., Awaitable[Running]],
) -> tuple[Running, Fetch]:
    """A Sluice whose proxy checks media against a bank listing the bridge photo
    (quarantined, evidence kept); ``fetch(name)`` GETs the origin's file through it.
    (The origin is set up before Sluice, so Sluice's connection to it closes first.)
    An indirect parameter adds [outbound] keys."""
    create_ca(tmp_path / "data")
    ca = CertificateAuthority.load(tmp_path / "data")
    key = tmp_path / "evidence.key"
    EvidenceKey.generate(key)
    sluice = await sluice_factory(
        network={"allow": ["127.0.0.0/8", "::1/128"]},
        outbound={
            "listen": "127.0.0.1:0",
            "trust_file": str(public_ca.cert_path),
            **getattr(request, "param", {}),
        },
        media={"max_bytes": MAX_BYTES},
        evidence={"key_file": str(key)},
        bank=[{"name": "test-known", "category": "test"}],
        rule=[{"match": "category:test", "action": "quarantine"}],
    )
    store = BankStore(sluice.parts.pool)
    await store.ensure("test-known", category="test")
    hashes = hash_media(BRIDGE)
    await store.add(
        "test-known",
        [("pdq", hashes.pdq[0].hash, "bridge photo"), ("md5", hashes.md5, "bridge photo")],
    )
    await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)
    url = sluice.parts.outbound_url
    assert url is not None
    port = media_origin[0]

    async def fetch(name: str, extra: str = "") -> tuple[bytes, dict[str, str], bytes]:
        reader, writer, head = await connect(int(url.rsplit(":", 1)[1]), f"localhost:{port}")
        assert head.startswith(b"HTTP/1.1 200")
        await writer.start_tls(trusting(ca), server_hostname="localhost")
        writer.write(
            f"GET /files/{name} HTTP/1.1\r\nHost: localhost:{port}\r\n{extra}\r\n".encode()
        )
        try:
            return await read_response(reader)
        finally:
            writer.close()
            await writer.wait_closed()

    return sluice, fetch


def _decoded(sluice: Running) -> int:
    upload = sluice.parts.upload
    assert upload is not None
    return upload.hasher.decoded


async def _evidence(sluice: Running) -> int:
    count: int = await sluice.parts.pool.fetchval("SELECT count(*) FROM evidence")
    return count


async def test_a_clean_image_arrives_byte_identical_after_one_checked_fetch(
    proxied: tuple[Running, Fetch], media_origin: tuple[int, dict[str, int]]
) -> None:
    sluice, fetch = proxied
    before = _decoded(sluice)
    status, headers, body = await fetch("pen.png")
    assert status.startswith(b"HTTP/1.1 200")
    assert body == PEN
    assert headers["content-type"] == "image/png"
    assert headers["content-length"] == str(len(PEN))
    assert _decoded(sluice) == before + 1  # Sluice decoded it: it was checked
    assert media_origin[1]["pen.png"] == 1  # fetched once, by Sluice, for the instance


async def test_a_file_already_checked_is_not_decoded_again_but_matched_again(
    proxied: tuple[Running, Fetch], media_origin: tuple[int, dict[str, int]]
) -> None:
    """The instance fetching what the hold (or an earlier fetch) checked: the hashes are
    known by SHA-256, so no second decode; the banks are asked afresh, so a hash listed
    since then is refused."""
    sluice, fetch = proxied
    before = _decoded(sluice)
    assert (await fetch("pen.png"))[2] == PEN
    assert (await fetch("pen.png"))[2] == PEN
    assert _decoded(sluice) == before + 1
    assert media_origin[1]["pen.png"] == 2  # each fetch is the origin's bytes, checked
    await BankStore(sluice.parts.pool).add("test-known", [("md5", hash_media(PEN).md5, "pen")])
    await wait_for(lambda: len(sluice.parts.banks.index) >= 3, timeout=5)
    status, _, body = await fetch("pen.png")
    assert status.startswith(b"HTTP/1.1 403") and body.decode().strip() == KNOWN
    assert _decoded(sluice) == before + 1


@pytest.mark.parametrize("name", ["bridge.jpg", "bridge.html"])
async def test_a_known_image_gets_403_and_its_bytes_never_reach_the_instance(
    proxied: tuple[Running, Fetch], name: str
) -> None:
    sluice, fetch = proxied
    status, _, body = await fetch(name)
    assert status.startswith(b"HTTP/1.1 403")
    assert body.decode().strip() == KNOWN
    assert BRIDGE[:64] not in body
    # quarantined: the file and its facts are sealed as evidence
    await wait_for(lambda: _evidence(sluice), timeout=5)
    assert await _evidence(sluice) == 1


async def test_an_activitypub_answer_streams_through_untouched(
    proxied: tuple[Running, Fetch],
) -> None:
    sluice, fetch = proxied
    before = _decoded(sluice)
    status, headers, body = await fetch("actor")
    assert status.startswith(b"HTTP/1.1 200")
    assert body == ACTOR
    assert headers["content-type"] == "application/activity+json"
    assert _decoded(sluice) == before


@pytest.mark.parametrize("name", ["big.png", "big-chunked.png"])
async def test_an_over_large_media_answer_is_refused_never_passed_unchecked(
    proxied: tuple[Running, Fetch], name: str
) -> None:
    _, fetch = proxied
    status, _, body = await fetch(name)
    assert status.startswith(b"HTTP/1.1 502")
    assert str(MAX_BYTES) in body.decode()
    assert PEN[:64] not in body


async def test_an_image_that_cannot_be_checked_is_refused_by_default(
    proxied: tuple[Running, Fetch],
) -> None:
    _, fetch = proxied
    status, _, body = await fetch("broken.png")
    assert status.startswith(b"HTTP/1.1 403")
    assert body.decode().strip() == UNCHECKED


def test_media_is_told_by_its_type_or_its_bytes() -> None:
    assert is_media("image/png", b"")
    assert is_media("application/octet-stream; charset=binary", b"")
    assert is_media("text/html", BRIDGE[:512])
    assert not is_media("application/activity+json", ACTOR)
    assert not is_media(None, b"<html>")


@pytest.mark.parametrize("proxied", [{"media_on_error": "accept"}], indirect=True)
async def test_an_admin_can_let_unchecked_media_through(proxied: tuple[Running, Fetch]) -> None:
    """[outbound] media_on_error = "accept" fails open (an admin's explicit choice)."""
    _, fetch = proxied
    status, _, body = await fetch("broken.png")
    assert status.startswith(b"HTTP/1.1 200")
    assert body == PEN[:300]


async def test_a_range_or_compressed_answer_is_asked_for_whole_and_checked(
    proxied: tuple[Running, Fetch],
) -> None:
    """The instance's Range and Accept-Encoding are left out: Sluice checks the whole
    file as it is and serves that (a part, or gzip, could not be decoded and hashed)."""
    _, fetch = proxied
    status, headers, body = await fetch(
        "ranged.png", "Range: bytes=0-99\r\nAccept-Encoding: gzip\r\n"
    )
    assert status.startswith(b"HTTP/1.1 200")
    assert body == PEN
    assert "content-encoding" not in {name.lower() for name in headers}
