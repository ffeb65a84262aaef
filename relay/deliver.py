"""Delivery to the instance behind Sluice: the exact bytes and the signed headers.

The instance verifies the sender's signature itself, so nothing the signature
covers may change: same path, same body, same Host, Date, Digest/Content-Digest,
Signature/Signature-Input. ``Upstream`` is the seam (one method, like httpx's
transports) so tests and other deliverers can stand in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

__all__ = ["Delivery", "HttpUpstream", "Upstream", "is_retryable"]


@dataclass(frozen=True, slots=True)
class Delivery:
    status: int | None  # None: no HTTP answer (connection refused, timeout…)
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def is_retryable(delivery: Delivery) -> bool:
    """5xx, no answer, 408 and 429 are worth another try; other 4xx are final."""
    return delivery.status is None or delivery.status >= 500 or delivery.status in (408, 429)


class Upstream:
    async def deliver(
        self, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Delivery:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class HttpUpstream(Upstream):
    def __init__(self, url: str, *, timeout: float = 30.0, concurrency: int = 32) -> None:
        self.base = url.rstrip("/")
        connector = aiohttp.TCPConnector(limit=concurrency, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout),
            auto_decompress=False,
            # The sender's headers go as they came: no User-Agent or Accept of ours.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def deliver(
        self, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Delivery:
        started = time.perf_counter()
        try:
            async with self.session.post(
                URL(self.base + target, encoded=True),
                data=body,
                headers=list(headers),
                allow_redirects=False,
            ) as response:
                status = response.status
                error = None
                body = await response.read()
                if status >= 300:
                    # The sender's Accept-Encoding went along: the page may be compressed.
                    snippet = body[:200].decode("utf-8", errors="replace")
                    error = f"upstream answered {status}: {snippet}"
        except TimeoutError:
            return Delivery(None, "upstream timed out", time.perf_counter() - started)
        except aiohttp.ClientError as exc:
            return Delivery(None, f"upstream unreachable: {exc}", time.perf_counter() - started)
        except Exception as exc:  # never let a delivery fault strand the row
            return Delivery(None, f"delivery failed: {exc!r}", time.perf_counter() - started)
        return Delivery(status, error, time.perf_counter() - started)

    async def close(self) -> None:
        await self.session.close()
