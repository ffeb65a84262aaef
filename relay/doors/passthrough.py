"""Everything that is not an inbox POST goes to the instance unchanged, streamed.

An admin may route all traffic through Sluice instead of writing nginx rules;
then pages, API calls and media must pass as if Sluice were not there.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from relay.envelope import HOP_BY_HOP

__all__ = ["Passthrough"]

_CHUNK = 64 * 1024


class Passthrough:
    def __init__(self, upstream_url: str, *, timeout: float = 300.0) -> None:
        self.base = upstream_url.rstrip("/")
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        if request.remote and not any(k.lower() == "x-forwarded-for" for k, _ in headers):
            headers.append(("X-Forwarded-For", request.remote))
        body = request.content if request.body_exists else None
        try:
            async with self.session.request(
                request.method,
                self.base + request.path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        response.headers.add(name, value)
                if upstream.headers.get("Content-Length") is not None:
                    response.content_length = int(upstream.headers["Content-Length"])
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.json_response(
                {"error": f"upstream unreachable: {exc or type(exc).__name__}"}, status=502
            )

    async def close(self) -> None:
        await self.session.close()
