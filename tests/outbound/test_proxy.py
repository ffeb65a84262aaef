"""The outbound door's forward proxy, on loopback with real TLS on both sides.

Two CAs: Sluice's (what the instance is told to trust) and a test CA standing for the
public roots (what the origin's certificate chains to, given to Sluice's client as
``cafile``). A client that trusts only Sluice's CA can then talk to the origin only
through an interception, and one that trusts only the test CA only through a tunnel.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import yarl
from aiohttp import web
from cryptography import x509

from relay.network import NetworkPolicy
from relay.outbound.ca import CertificateAuthority
from relay.outbound.proxy import ForwardProxy, tunnelled
from tests.outbound.support import (
    BODY,
    LOOPBACK,
    SEEN,
    connect,
    origin_app,
    read_response,
    trusting,
)


async def test_an_intercepted_https_get_returns_the_origins_bytes_under_a_minted_certificate(
    proxy_factory: Callable[..., Awaitable[int]],
    origin: tuple[int, web.Application],
    sluice_ca: CertificateAuthority,
) -> None:
    port, _ = origin
    proxy_port = await proxy_factory()
    reader, writer, head = await connect(proxy_port, f"localhost:{port}")
    assert head.startswith(b"HTTP/1.1 200")
    await writer.start_tls(trusting(sluice_ca), server_hostname="localhost")
    seen = x509.load_der_x509_certificate(
        writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    )
    assert seen.issuer == sluice_ca.certificate.subject

    # Two requests on one connection: keep-alive inside the tunnel.
    for _ in range(2):
        writer.write(b"GET /media/cat.png HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 200")
        assert headers["content-type"] == "image/png"
        assert body == BODY
    writer.close()


async def test_a_post_goes_on_unchanged_through_an_aiohttp_client(
    proxy_factory: Callable[..., Awaitable[int]],
    origin: tuple[int, web.Application],
    sluice_ca: CertificateAuthority,
) -> None:
    """Headers, body, framing and the request-target's bytes: a signature covers them."""
    port, app = origin
    proxy_port = await proxy_factory()
    activity = b'{"type": "Create", "id": "https://social.example/1"}'
    headers = {
        "Content-Type": "application/activity+json",
        "Signature": 'keyId="https://social.example/actor#main-key",signature="abc"',
        "Digest": "SHA-256=" + hashlib.sha256(activity).hexdigest(),
        "User-Agent": "Mastodon/4.5",
    }
    # The client adds nothing of its own, so whatever else arrives the proxy added.
    async with (
        aiohttp.ClientSession(skip_auto_headers=("Accept", "Accept-Encoding")) as client,
        client.post(
            yarl.URL(f"https://localhost:{port}/users/bob/inbox?x=%7Eb", encoded=True),
            data=activity,
            headers=headers,
            proxy=f"http://127.0.0.1:{proxy_port}",
            ssl=trusting(sluice_ca),
        ) as response,
    ):
        assert response.status == 202
        assert await response.text() == hashlib.sha256(activity).hexdigest()
    [got] = app[SEEN]
    assert got["body"] == activity
    assert got["target"] == "/users/bob/inbox?x=%7Eb"
    assert not got["chunked"]
    for name, value in headers.items():
        assert got["headers"][name] == value
    assert "Accept-Encoding" not in got["headers"]
    assert "Accept" not in got["headers"]


async def test_a_tunnelled_host_is_not_intercepted(
    proxy_factory: Callable[..., Awaitable[int]],
    origin: tuple[int, web.Application],
    public_ca: CertificateAuthority,
    sluice_ca: CertificateAuthority,
) -> None:
    port, _ = origin
    proxy_port = await proxy_factory(tunnel=["localhost"])
    reader, writer, head = await connect(proxy_port, f"localhost:{port}")
    assert head.startswith(b"HTTP/1.1 200")
    # The origin's own certificate, from the test CA: Sluice's CA alone would refuse it.
    await writer.start_tls(trusting(public_ca), server_hostname="localhost")
    seen = x509.load_der_x509_certificate(
        writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    )
    assert seen.issuer == public_ca.certificate.subject
    assert seen.issuer != sluice_ca.certificate.subject
    writer.write(b"GET /media/cat.png HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200")
    assert body == BODY
    writer.close()


def test_tunnel_entries_match_names_and_subdomains() -> None:
    assert tunnelled("Lemmy.Example.", ["lemmy.example"])
    assert tunnelled("a.b.lemmy.example", ["*.lemmy.example"])
    assert not tunnelled("lemmy.example", ["*.lemmy.example"])
    assert not tunnelled("evil-lemmy.example", ["*.lemmy.example", "lemmy.example"])


async def test_a_private_destination_is_refused(
    proxy_factory: Callable[..., Awaitable[int]],
    origin: tuple[int, web.Application],
    sluice_ca: CertificateAuthority,
) -> None:
    port, app = origin
    proxy_port = await proxy_factory(NetworkPolicy())
    tunnel_port = await proxy_factory(NetworkPolicy(), tunnel=["localhost"])

    # A literal private address: refused at CONNECT, before any TLS.
    _, writer, head = await connect(proxy_port, f"127.0.0.1:{port}")
    assert head.startswith(b"HTTP/1.1 403")
    writer.close()

    # A name that resolves to loopback, intercepted: refused inside, as an HTTP 403.
    reader, writer, head = await connect(proxy_port, f"localhost:{port}")
    assert head.startswith(b"HTTP/1.1 200")
    await writer.start_tls(trusting(sluice_ca), server_hostname="localhost")
    writer.write(b"GET /media/cat.png HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 403")
    assert b"loopback" in body
    writer.close()

    # Tunnelled: judged after resolution, refused before the tunnel opens.
    reader, writer, head = await connect(tunnel_port, f"localhost:{port}")
    assert head.startswith(b"HTTP/1.1 403")
    assert b"loopback" in await reader.read()
    writer.close()

    # Plain HTTP to loopback.
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            f"http://127.0.0.1:{port}/media/cat.png", proxy=f"http://127.0.0.1:{proxy_port}"
        ) as response,
    ):
        assert response.status == 403
    assert app[SEEN] == []


async def test_plain_http_is_proxied(proxy_factory: Callable[..., Awaitable[int]]) -> None:
    app = await origin_app()
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    proxy_port = await proxy_factory()
    strict_port = await proxy_factory(NetworkPolicy.from_strings(["127.0.0.0/8"], False))
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                async with client.get(
                    f"http://127.0.0.1:{port}/media/cat.png",
                    proxy=f"http://127.0.0.1:{proxy_port}",
                ) as response:
                    assert response.status == 200
                    assert await response.read() == BODY
            # Not a proxy request at all: said so.
            async with client.get(f"http://127.0.0.1:{proxy_port}/media/cat.png") as response:
                assert response.status == 400
                assert "forward proxy" in await response.text()
            # http refused when [network] does not allow it.
            async with client.get(
                f"http://127.0.0.1:{port}/media/cat.png", proxy=f"http://127.0.0.1:{strict_port}"
            ) as response:
                assert response.status == 403
                assert "allow_http" in await response.text()
    finally:
        await runner.cleanup()


async def test_an_origin_whose_certificate_the_system_store_refuses_gets_502(
    sluice_ca: CertificateAuthority, origin: tuple[int, web.Application]
) -> None:
    """Without the test CA as cafile, only the system roots count: the origin is refused."""
    port, app = origin
    proxy = ForwardProxy(sluice_ca, LOOPBACK)
    _, proxy_port = await proxy.start("127.0.0.1", 0)
    try:
        reader, writer, head = await connect(proxy_port, f"localhost:{port}")
        assert head.startswith(b"HTTP/1.1 200")
        await writer.start_tls(trusting(sluice_ca), server_hostname="localhost")
        writer.write(b"GET /media/cat.png HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 502")
        assert b"certificate is not trusted" in body
        writer.close()
    finally:
        await proxy.close()
    assert app[SEEN] == []


async def test_a_client_that_does_not_trust_sluices_ca_cannot_be_intercepted_silently(
    proxy_factory: Callable[..., Awaitable[int]],
    origin: tuple[int, web.Application],
    public_ca: CertificateAuthority,
) -> None:
    """Interception shows: a client trusting only the public roots refuses the minted cert."""
    port, app = origin
    proxy_port = await proxy_factory()
    _, writer, head = await connect(proxy_port, f"localhost:{port}")
    assert head.startswith(b"HTTP/1.1 200")
    with pytest.raises(ssl.SSLCertVerificationError):
        await writer.start_tls(trusting(public_ca), server_hostname="localhost")
    writer.close()
    assert app[SEEN] == []


async def test_an_idle_tunnel_is_closed(
    proxy_factory: Callable[..., Awaitable[int]], origin: tuple[int, web.Application]
) -> None:
    port, _ = origin
    proxy_port = await proxy_factory(tunnel=["localhost"], idle_timeout=0.2)
    reader, writer, head = await connect(proxy_port, f"localhost:{port}")
    assert head.startswith(b"HTTP/1.1 200")
    # Nothing sent: Sluice ends the tunnel (the bound is generous; this is no timing claim).
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
