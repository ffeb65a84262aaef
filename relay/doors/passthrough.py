"""Everything that is not an inbox POST goes to the instance unchanged, streamed.

An admin may route all traffic through Sluice instead of writing nginx rules;
then pages, API calls, media and WebSockets (Mastodon's and Misskey's streaming)
must pass as if Sluice were not there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from relay.envelope import HOP_BY_HOP, METHOD_OVERRIDES

__all__ = ["Passthrough", "forwarded"]

log = structlog.get_logger(__name__)

_CHUNK = 64 * 1024
#: Headers a ``Connection`` token may not remove: what the request is for and who
#: sends it, and what a signature covers. A client naming ``Host`` there would
#: otherwise make the instance see Sluice's own upstream address as the host.
#: (Content-Length is always recomputed from the body.)
_KEPT = frozenset(
    {
        "host",
        "authorization",
        "cookie",
        "signature",
        "signature-input",
        "digest",
        "content-digest",
        "date",
        "content-type",
    }
)
# Negotiated by each hop on its own (aiohttp sends its own key and version upstream,
# and answers the client with its own accept); the subprotocol is passed on apart.
_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


def _end_to_end(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Headers without the hop-by-hop ones, including those the Connection header names
    (but never one of ``_KEPT``)."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])  # type: ignore[attr-defined]
        for token in value.split(",")
    } - _KEPT
    return [
        (k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named
    ]


class Passthrough:
    def __init__(self, upstream_url: str, *, timeout: float = 300.0) -> None:
        self.base = upstream_url.rstrip("/")
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        self._sockets: set[web.WebSocketResponse] = set()

    def routes(self) -> list[web.RouteDef]:
        # Mounted last: what no other door took.
        return [web.route("*", "/{tail:.*}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and "websocket" in request.headers.get("Upgrade", "").lower():
            return await self._websocket(request)
        headers = forwarded(request)
        if request.content_length is not None:  # keep it: some servers refuse chunked uploads
            headers.append(("Content-Length", str(request.content_length)))
        return await self.send(request, headers, request.content if request.body_exists else None)

    async def send(
        self,
        request: web.Request,
        headers: list[tuple[str, str]],
        body: bytes | aiohttp.StreamReader | None,
    ) -> web.StreamResponse:
        """``request`` to the instance with ``headers`` and ``body`` (the body as
        received, or bytes a door already read), its answer streamed back as it comes."""
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(
                request.method,
                URL(self.base + request.raw_path, encoded=True),  # byte for byte
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in _end_to_end(upstream.headers):
                    response.headers.add(name, value)
                if upstream.headers.get("Content-Length") is not None:
                    response.content_length = int(upstream.headers["Content-Length"])
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            if response is not None and response.prepared:
                # Part of the answer is out: a second one would corrupt the stream.
                # Raising makes aiohttp drop the connection, so the client sees the cut.
                raise
            return _unreachable(request, exc)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """Open the same WebSocket to the instance, then pass messages both ways until
        either side closes; its close code reaches the other side."""
        headers = [(k, v) for k, v in forwarded(request) if k.lower() not in _HANDSHAKE]
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        try:
            upstream = await self.session.ws_connect(
                URL(self.base + request.raw_path, encoded=True),
                headers=headers,
                protocols=[p.strip() for p in offered.split(",") if p.strip()],
                max_msg_size=0,  # the instance's limits apply, not ours
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The instance said no (401 without a token, 404...): say the same.
            return web.json_response(
                {"error": f"upstream refused the WebSocket: {exc.status} {exc.message}"},
                status=exc.status if exc.status >= 400 else 502,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _unreachable(request, exc)
        async with upstream:
            client = web.WebSocketResponse(
                protocols=(upstream.protocol,) if upstream.protocol else (), max_msg_size=0
            )
            await client.prepare(request)
            self._sockets.add(client)
            pumps = [
                asyncio.create_task(_pump(upstream, client)),
                asyncio.create_task(_pump(client, upstream)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._sockets.discard(client)
                for pump in pumps:
                    pump.cancel()
                for pump in pumps:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
                code = upstream.close_code or client.close_code or aiohttp.WSCloseCode.OK
                await client.close(code=code)
                await upstream.close(code=client.close_code or code)
        return client

    async def going_away(self) -> None:
        """Close the WebSockets passing through (1001, going away), so that a stop does
        not wait on streaming clients; they reconnect to the next Sluice."""
        for client in list(self._sockets):
            await client.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"Sluice stopping")

    async def close(self) -> None:
        await self.session.close()


def _unreachable(request: web.Request, exc: BaseException) -> web.Response:
    """502 that names no address and no error text (they reach any client); the log has them."""
    reason = "timed out" if isinstance(exc, TimeoutError) else "connection failed"
    log.warning(
        "upstream_unreachable",
        method=request.method,
        path=request.path,
        error=str(exc) or type(exc).__name__,
    )
    return web.json_response({"error": f"upstream unreachable: {reason}"}, status=502)


def forwarded(request: web.Request) -> list[tuple[str, str]]:
    """The request's end-to-end headers, less method overrides, with the client's
    address appended to X-Forwarded-For: appended, never trusted, so that a client
    talking to Sluice directly does not choose the address the instance rate-limits by."""
    headers = [(k, v) for k, v in _end_to_end(request.headers) if k.lower() not in METHOD_OVERRIDES]
    forwarded = request.headers.get("X-Forwarded-For")
    if request.remote:
        headers = [(k, v) for k, v in headers if k.lower() != "x-forwarded-for"]
        chain = f"{forwarded}, {request.remote}" if forwarded else request.remote
        headers.append(("X-Forwarded-For", chain))
    return headers


_Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: _Socket, sink: _Socket) -> None:
    """Text and binary messages from ``source`` to ``sink``, until ``source`` closes.
    Pings and pongs stay with the hop they belong to (aiohttp answers them)."""
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:  # ERROR; CLOSE and CLOSED end the iteration
            return
