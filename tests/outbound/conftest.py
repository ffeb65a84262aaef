"""Fixtures of the outbound door's tests: two CAs, an HTTPS origin, proxies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.network import NetworkPolicy
from relay.outbound.ca import CertificateAuthority, create_ca
from relay.outbound.proxy import ForwardProxy
from tests.outbound.support import LOOPBACK, origin_app


@pytest.fixture
def sluice_ca(tmp_path: Path) -> CertificateAuthority:
    create_ca(tmp_path / "sluice", label="social.example")
    return CertificateAuthority.load(tmp_path / "sluice")


@pytest.fixture
def public_ca(tmp_path: Path) -> CertificateAuthority:
    """Stands for the public roots: it signs the origin's certificate."""
    create_ca(tmp_path / "public", label="a public root")
    return CertificateAuthority.load(tmp_path / "public")


@pytest.fixture
async def origin(public_ca: CertificateAuthority) -> AsyncIterator[tuple[int, web.Application]]:
    """An HTTPS origin on 127.0.0.1 whose certificate names localhost, from the test CA."""
    app = await origin_app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=public_ca.context("localhost"))
    await site.start()
    port = runner.addresses[0][1]
    yield port, app
    await runner.cleanup()


@pytest.fixture
async def proxy_factory(
    sluice_ca: CertificateAuthority, public_ca: CertificateAuthority
) -> AsyncIterator[Callable[..., Awaitable[int]]]:
    proxies: list[ForwardProxy] = []

    async def start(policy: NetworkPolicy = LOOPBACK, **kwargs: Any) -> int:
        proxy = ForwardProxy(sluice_ca, policy, cafile=str(public_ca.cert_path), **kwargs)
        proxies.append(proxy)
        _, port = await proxy.start("127.0.0.1", 0)
        return port

    yield start
    for proxy in proxies:
        await proxy.close()
