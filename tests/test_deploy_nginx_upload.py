"""The upload routes of the nginx snippets (deploy/nginx/sluice-*.conf), through real nginx.

First with recording stand-ins for Sluice and the instance (what goes where, byte for byte,
and the upload's own body limit), then with a real Sluice behind nginx, its bank listing a
photo: a known upload is refused in its family's shape and never reaches the instance, a
clean one reaches it byte-identical.

No nginx installed: the tests skip, unless SLUICE_REQUIRE_ALL=1, where they fail.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.doors.test_upload import (  # noqa: F401 (fixtures)
    BRIDGE,
    MISSKEY_INAPPROPRIATE,
    PEN,
    TOKEN,
    Instance,
    Start,
    evidence_key,
    instance,
    multipart,
    start,
)
from tests.nginx import run_nginx
from tests.test_deploy_nginx import (  # noqa: F401 (fixture)
    HOST,
    MIB,
    SOFTWARES,
    Setup,
    setup,
    site_conf_for,
)

UPLOADS = {
    "mastodon": [
        ("POST", "/api/v1/media"),
        ("POST", "/api/v2/media"),
        ("PATCH", "/api/v1/accounts/update_credentials"),
        # spellings Rails routes to the same actions: nginx must not let them slip past
        ("POST", "/api/v2/media/"),
        ("POST", "/api/v2/media.json"),
        ("POST", "/api/v2/media?x=1"),
        # Rails routes PUT to update_credentials too; PUT /api/v1/media/<id> takes a thumbnail
        ("PUT", "/api/v1/accounts/update_credentials"),
        ("PUT", "/api/v1/media/1234"),
    ],
    "gotosocial": [
        ("POST", "/api/v1/media"),
        ("POST", "/api/v2/media"),
        ("PATCH", "/api/v1/accounts/update_credentials"),
    ],
    "misskey": [("POST", "/api/drive/files/create")],
    "lemmy": [("POST", "/pictrs/image"), ("POST", "/api/v4/image")],
}

# The same paths with other methods, and their neighbours: the instance's, untouched.
NOT_UPLOADS = [
    ("GET", "/api/v1/media/1234"),
    ("PUT", "/api/v1/media/1234"),
    ("GET", "/api/v2/media"),
    ("GET", "/api/v1/accounts/verify_credentials"),
    ("GET", "/api/v1/accounts/update_credentials"),
    ("POST", "/api/drive/files"),
    ("POST", "/api/drive/files/create/extra"),
    ("GET", "/pictrs/image/abc.png"),
    ("DELETE", "/pictrs/image/delete/token/abc.png"),
    ("GET", "/api/v4/image/abc.png"),
]


async def test_uploads_reach_sluice_unchanged(setup: Setup) -> None:  # noqa: F811
    body, content_type = multipart(("description", None, b"caf\xc3\xa9"), ("file", "p.png", PEN))
    headers = {
        "Host": HOST,
        "Content-Type": content_type,
        "Authorization": TOKEN,
        "Cookie": "jwt=abc",
    }
    async with aiohttp.ClientSession() as http:
        for method, path in UPLOADS[setup.software]:
            async with http.request(method, setup.url(path), data=body, headers=headers) as r:
                assert (r.status, await r.text()) == (202, "sluice"), (method, path)
            seen = setup.sluice.seen[-1]
            assert (seen.method, seen.raw_path, seen.body) == (method, path, body)
            assert seen.headers["content-type"] == content_type  # the boundary with it
            assert seen.headers["authorization"] == TOKEN
            assert seen.headers["cookie"] == "jwt=abc"
            assert seen.headers["host"] == HOST
            assert seen.headers["x-real-ip"] == "127.0.0.1"
    assert len(setup.sluice.seen) == len(UPLOADS[setup.software])
    assert setup.instance.seen == []


async def test_other_requests_on_upload_paths_reach_the_instance(setup: Setup) -> None:  # noqa: F811
    async with aiohttp.ClientSession() as http:
        for method, path in NOT_UPLOADS:
            if (method, path) in UPLOADS[setup.software]:
                continue  # an upload there (Mastodon's thumbnail PUT)
            data = b"{}" if method in ("POST", "PUT") else None
            headers = {"Host": HOST}
            async with http.request(method, setup.url(path), data=data, headers=headers) as r:
                assert r.status == 200, (method, path, r.status)
            assert (setup.instance.seen[-1].method, setup.instance.seen[-1].raw_path) == (
                method,
                path,
            )
        for method in ("GET", "POST"):
            url = setup.url("/.sluice-upload")
            async with http.request(method, url, data=b"{}", headers={"Host": HOST}) as r:
                assert r.status == 404
    assert setup.sluice.seen == []


async def test_upload_limit_is_its_own(setup: Setup) -> None:  # noqa: F811
    """Uploads are not held to the inboxes' 1 MiB; nginx stops only what is beyond 100 MiB."""
    method, path = UPLOADS[setup.software][0]
    host = {"Host": HOST, "Content-Type": "application/octet-stream"}
    async with aiohttp.ClientSession() as http:
        big = b"z" * (8 * MIB)  # the stand-in takes 16 MiB; the real Sluice's 413 is below
        async with http.request(method, setup.url(path), data=io.BytesIO(big), headers=host) as r:
            assert r.status == 202
        assert setup.sluice.seen[-1].body == big
        huge = io.BytesIO(b"z" * (100 * MIB + 1))
        async with http.request(method, setup.url(path), data=huge, headers=host) as r:
            assert r.status == 413
            assert "nginx" in await r.text()
    assert len(setup.sluice.seen) == 1


# --------------------------------------------------------------------------------------------
# A real Sluice behind nginx


def site_with_sluice(software: str, sluice_url: str, instance_base: str) -> str:
    sluice_port, instance_port = URL(sluice_url).port, URL(instance_base).port
    assert sluice_port and instance_port
    return site_conf_for(software, sluice_port, instance_port)


@pytest.fixture
def nginx_for(tmp_path: Path, start: Start, instance: Instance):  # noqa: F811
    """``await nginx_for(software)``: nginx with that snippet, in front of a real Sluice."""
    stack: list[Any] = []

    async def run(software: str, **sections: Any) -> int:
        sluice = await start(**sections)
        cm = run_nginx(tmp_path / software, site_with_sluice(software, sluice.url, instance.base))
        stack.append(cm)
        return cm.__enter__()

    yield run
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


async def post(port: int, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
    url = URL(f"http://127.0.0.1:{port}{path}", encoded=True)
    headers = {"Host": HOST, "Content-Type": content_type, "Authorization": TOKEN}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=io.BytesIO(body), headers=headers) as r,
    ):
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def test_mastodon_known_upload_is_refused_and_clean_one_arrives(
    nginx_for: Any,
    instance: Instance,  # noqa: F811
) -> None:
    port = await nginx_for("mastodon")
    body, content_type = multipart(("description", None, b"a bridge"), ("file", "b.jpg", BRIDGE))
    status, answer = await post(port, "/api/v2/media", body, content_type)
    assert status == 422, answer
    assert set(answer) == {"error"} and "cannot be uploaded" in answer["error"]
    assert instance.at("/api/v2/media") == []

    body, content_type = multipart(("file", "pen.png", PEN), ("focus", None, b"0.1,-0.2"))
    status, answer = await post(port, "/api/v2/media", body, content_type)
    assert status == 200, answer
    [arrived] = instance.at("/api/v2/media")
    assert arrived.body == body
    assert arrived.headers["Content-Type"] == content_type
    assert arrived.headers["Authorization"] == TOKEN

    # Above Sluice's max_bytes (40 MiB) it is Sluice that refuses, in the shape apps show.
    big, content_type = multipart(("file", "big.png", PEN + b"\0" * (41 * MIB)))
    status, answer = await post(port, "/api/v2/media", big, content_type)
    assert status == 413, answer
    assert set(answer) == {"error"} and "larger than" in answer["error"]
    assert len(instance.at("/api/v2/media")) == 1


async def test_misskey_and_lemmy_uploads_are_refused_in_their_shape(
    nginx_for: Any,
    instance: Instance,  # noqa: F811
) -> None:
    misskey = await nginx_for("misskey")
    body, content_type = multipart(("file", "b.jpg", BRIDGE), ("name", None, b"b.jpg"))
    status, answer = await post(misskey, "/api/drive/files/create", body, content_type)
    assert status == 400, answer
    assert answer["error"]["code"] == "INAPPROPRIATE"
    assert answer["error"]["id"] == MISSKEY_INAPPROPRIATE

    lemmy = await nginx_for("lemmy")
    body, content_type = multipart(("images[]", "b.jpg", BRIDGE))
    status, answer = await post(lemmy, "/pictrs/image", body, content_type)
    assert status == 400, answer
    assert answer["code"] == "failed-external-validation"
    status, answer = await post(lemmy, "/api/v4/image", body, content_type)
    assert status == 400, answer
    assert answer["error"] == "pictrs_invalid_image_upload"
    assert instance.requests == []


async def test_a_stalled_upload_does_not_hold_sluices_turn(
    nginx_for: Any,
    instance: Instance,  # noqa: F811
) -> None:
    """nginx reads each upload whole before Sluice sees it (proxy_request_buffering on): a
    client that stops halfway ties up nginx, never one of Sluice's [upload] turns."""
    port = await nginx_for("mastodon", upload={"concurrency": 1})
    body, content_type = multipart(("file", "pen.png", PEN))
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            f"POST /api/v2/media HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body[: len(body) // 2])  # and then nothing more
        await writer.drain()
        # The one turn is free: another user's upload goes through meanwhile.
        status, answer = await asyncio.wait_for(post(port, "/api/v2/media", body, content_type), 30)
        assert status == 200, answer
        assert [r.body for r in instance.at("/api/v2/media")] == [body]
    finally:
        writer.close()
