"""Everything that is not an inbox POST goes to the instance unchanged, streamed.

An admin may route all traffic through Sluice instead of writing nginx rules;
then pages, API calls and media must pass as if Sluice were not there.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from relay.envelope import HOP_BY_HOP

__all__ = ["Passthrough"]

_CHUNK = 64 * 1024


def _end_to_end(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Headers without the hop-by-hop ones, including those the Connection header names."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])  # type: ignore[attr-defined]
        for token in value.split(",")
    }
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

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = _end_to_end(request.headers)
        # Append, never trust: a client talking to Sluice directly must not choose the
        # address the instance rate-limits by.
        forwarded = request.headers.get("X-Forwarded-For")
        if request.remote:
            headers = [(k, v) for k, v in headers if k.lower() != "x-forwarded-for"]
            chain = f"{forwarded}, {request.remote}" if forwarded else request.remote
            headers.append(("X-Forwarded-For", chain))
        if request.content_length is not None:  # keep it: some servers refuse chunked uploads
            headers.append(("Content-Length", str(request.content_length)))
        body = request.content if request.body_exists else None
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
            return web.json_response(
                {"error": f"upstream unreachable: {exc or type(exc).__name__}"}, status=502
            )

    async def close(self) -> None:
        await self.session.close()
