"""The outbound door in a running Sluice: [outbound] listen starts the proxy with the CA."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.app import build_app
from relay.config import Config
from relay.outbound.ca import CaError, CertificateAuthority, create_ca
from tests.conftest import start_server
from tests.outbound.support import BODY, connect, read_response, trusting


async def test_serve_starts_the_proxy_that_intercepts_with_the_instances_ca(
    tmp_path: Path,
    public_ca: CertificateAuthority,
    origin: tuple[int, web.Application],
    sluice_factory: Callable[..., Awaitable[Any]],
) -> None:
    """(The origin is set up first, so that Sluice, holding a keep-alive connection to
    it, is stopped before it.)"""
    create_ca(tmp_path / "data")  # what `sluice ca init` makes under [storage] data_dir
    ca = CertificateAuthority.load(tmp_path / "data")
    running = await sluice_factory(
        network={"allow": ["127.0.0.0/8", "::1/128"]},
        outbound={"listen": "127.0.0.1:0", "trust_file": str(public_ca.cert_path)},
    )
    url = running.parts.outbound_url
    assert url is not None
    port, _ = origin
    reader, writer, head = await connect(int(url.rsplit(":", 1)[1]), f"localhost:{port}")
    assert head.startswith(b"HTTP/1.1 200")
    await writer.start_tls(trusting(ca), server_hostname="localhost")
    writer.write(b"GET /media/cat.png HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200")
    assert body == BODY
    writer.close()
    await writer.wait_closed()


async def test_serve_without_a_ca_says_how_to_make_one(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(outbound={"listen": "127.0.0.1:0"})
    with pytest.raises(CaError, match="sluice ca init"):
        await start_server(build_app(config))


async def test_no_listen_no_proxy(sluice_factory: Callable[..., Awaitable[Any]]) -> None:
    running = await sluice_factory()
    assert running.parts.outbound is None
