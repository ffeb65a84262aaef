"""Delivery to the instance behind Sluice: the exact bytes and the signed headers.

The instance verifies the sender's signature itself, so nothing the signature
covers may change: same path, same body, same Host, Date, Digest/Content-Digest,
Signature/Signature-Input. ``Upstream`` is the seam (one method, like httpx's
transports) so tests and other deliverers can stand in. ``RemoteUpstream`` sends the
instance's own deliveries (taken in by the outbound door) on to remote inboxes, the
same way: the remote verifies the instance's signature.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from relay.errors import BlockedAddress
from relay.network import GuardedResolver, NetworkPolicy

__all__ = ["Delivery", "HttpUpstream", "RemoteUpstream", "Upstream", "is_retryable"]


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


class RemoteUpstream(Upstream):
    """Posts to the full URL it is given (a remote inbox), reaching only addresses the
    ``[network]`` rules allow (checked after resolution, as the forward proxy does) and
    verifying certificates against the system store plus ``cafile``. No redirect is
    followed: the signature covers the path it was made for."""

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        cafile: str | None = None,
        connect_timeout: float = 10.0,
        timeout: float = 30.0,
        limit: int = 64,
        limit_per_host: int = 4,
    ) -> None:
        self.policy = policy
        self._cafile = cafile
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made in the running loop, on first use
            tls = ssl.create_default_context()
            if self._cafile:
                tls.load_verify_locations(cafile=self._cafile)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    resolver=GuardedResolver(self.policy),
                    ssl=tls,
                    limit=self._limit,
                    limit_per_host=self._limit_per_host,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=self._timeout, sock_connect=self._connect_timeout
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def deliver(
        self, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Delivery:
        started = time.perf_counter()
        url = URL(target, encoded=True)
        try:
            self.policy.check_url(url)
            async with self._client().post(
                url, data=body, headers=list(headers), allow_redirects=False
            ) as response:
                status = response.status
                error = None
                if status >= 300:
                    snippet = (await response.content.read(200)).decode("utf-8", "replace")
                    error = f"{url.host} answered {status}: {snippet}"
                else:  # a little, so the connection may serve the next delivery
                    await response.content.read(65_536)
        except BlockedAddress as exc:  # final: no retry reaches it
            return Delivery(403, f"Sluice refused this destination: {exc}", _since(started))
        except TimeoutError:
            return Delivery(None, f"{url.host} timed out", _since(started))
        except aiohttp.ClientError as exc:
            return Delivery(None, f"{url.host} unreachable: {exc}", _since(started))
        except Exception as exc:  # never let a delivery fault strand the row
            return Delivery(None, f"delivery failed: {exc!r}", _since(started))
        return Delivery(status, error, _since(started))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _since(started: float) -> float:
    return time.perf_counter() - started
