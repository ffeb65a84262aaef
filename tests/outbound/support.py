"""What the outbound door's tests share: the origin, the CONNECT client, the reading."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from typing import Any

from aiohttp import web

from relay.network import NetworkPolicy
from relay.outbound.ca import CertificateAuthority

LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8", "::1/128"], allow_http=True)
BODY = os.urandom(300_000)
SEEN = web.AppKey("seen", list)


async def origin_app() -> web.Application:
    seen: list[dict[str, Any]] = []

    async def media(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="image/png")

    async def inbox(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(
            {
                "target": request.raw_path,
                "headers": dict(request.headers),
                "body": body,
                "chunked": "Transfer-Encoding" in request.headers,
            }
        )
        return web.Response(status=202, text=hashlib.sha256(body).hexdigest())

    app = web.Application()
    app[SEEN] = seen
    app.router.add_get("/media/cat.png", media)
    app.router.add_post("/users/bob/inbox", inbox)
    return app


async def connect(
    proxy_port: int, authority: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """CONNECT through the proxy; the reader, writer and the proxy's answer head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head


def trusting(ca: CertificateAuthority) -> ssl.SSLContext:
    """A client context whose only trust anchor is ``ca``."""
    return ssl.create_default_context(cafile=ca.cert_path)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return lines[0].encode(), headers, body
