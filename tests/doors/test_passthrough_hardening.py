"""The passthrough does not let a client strip what the instance relies on, smuggle a
method past the inbox check, or learn where the instance lives."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest
from structlog.testing import capture_logs
from yarl import URL

from tests.conftest import Running, Upstream

KEPT = {
    "Host": "social.example",
    "Authorization": "Bearer token-1",
    "Cookie": "session=abc",
    "Date": "Tue, 14 Nov 2023 22:13:20 GMT",
    "Signature": 'keyId="https://a.example/users/alice#main-key",signature="c2ln"',
    "Signature-Input": 'sig1=("@method");created=1700000000;keyid="k"',
    "Digest": "SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    "Content-Digest": "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
    "Content-Type": "application/json",
}


async def raw_request(sluice: Running, lines: list[str], body: bytes = b"") -> bytes:
    """One HTTP/1.1 request written as given, so that no client library tidies its
    Connection header; returns the status line."""
    url = URL(sluice.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_connection_cannot_strip_host_or_security_headers(
    sluice: Running, upstream: Upstream, method: str
) -> None:
    named = ", ".join(["close", *KEPT, "X-Forwarded-Proto", "X-Hop"])
    body = b"{}" if method == "PUT" else b""
    lines = [
        f"{method} /api/v1/x HTTP/1.1",
        *(f"{name}: {value}" for name, value in KEPT.items()),
        f"Connection: {named}",
        "X-Forwarded-Proto: https",
        "X-Hop: only for the next hop",
        *([f"Content-Length: {len(body)}"] if body else []),
    ]
    status = await raw_request(sluice, lines, body)
    assert status.startswith(b"HTTP/1.1 202"), status
    [got] = upstream.requests
    assert (got.method, got.path, got.body) == (method, "/api/v1/x", body)
    for name, value in KEPT.items():
        assert got.headers.get(name) == value, name
    # Naming a header in Connection still makes it hop-by-hop when it is not one of those.
    assert "X-Hop" not in got.headers
    assert "X-Forwarded-Proto" not in got.headers


@pytest.mark.parametrize("method", ["PUT", "GET", "POST"])
async def test_method_overrides_are_not_passed_on(
    sluice: Running, upstream: Upstream, method: str
) -> None:
    overrides = {"X-HTTP-Method-Override": "POST", "X-HTTP-Method": "POST"}
    overrides["X-Method-Override"] = "DELETE"
    async with sluice.session.request(
        method,
        sluice.url + "/api/v1/statuses/1",
        data=b"x=1" if method != "GET" else None,
        headers={**overrides, "X-Other": "kept"},
    ) as response:
        assert response.status == 202
    [got] = upstream.requests
    assert got.method == method
    assert got.headers["X-Other"] == "kept"
    for name in overrides:
        assert name not in got.headers


def _websocket_handshake() -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }


@pytest.mark.parametrize("websocket", [False, True])
async def test_502_reveals_neither_the_upstream_address_nor_the_error(
    sluice_factory: Any, make_config: Any, websocket: bool
) -> None:
    sluice = await sluice_factory(make_config(upstream={"url": "http://127.0.0.1:9"}))
    headers = _websocket_handshake() if websocket else {}
    with capture_logs() as logs:
        async with sluice.session.get(
            sluice.url + "/api/v1/streaming?access_token=secret", headers=headers
        ) as response:
            assert response.status == 502
            text = await response.text()
    assert (await response.json()) == {"error": "upstream unreachable: connection failed"}
    for leak in ("127.0.0.1", ":9", "Cannot connect", "Connect call failed", "errno"):
        assert leak not in text
    # The operator still learns what went wrong; the query (a token here) is not logged.
    [logged] = [e for e in logs if e["event"] == "upstream_unreachable"]
    assert "127.0.0.1:9" in logged["error"]
    assert logged["path"] == "/api/v1/streaming"
    assert "secret" not in str(logged)
