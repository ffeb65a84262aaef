"""The outbound door: Sluice as the instance's forward proxy on ``[outbound] listen``.

Three kinds of request arrive:

- ``CONNECT host:port`` for a host in ``[outbound] tunnel``: the destination is
  resolved, every address judged by the ``[network]`` rules, the checked address
  connected to, and bytes spliced both ways untouched (for clients that cannot trust
  Sluice's CA: Lemmy 0.19 and pict-rs compile their roots in).
- ``CONNECT`` for any other host: intercepted. Sluice answers 200, speaks TLS to the
  instance with a certificate its CA minted for that host, reads the HTTP/1.1
  requests inside (aiohttp's server parser, keep-alive included), and hands each to
  one ``Handler`` with the https URL it was meant for.
- A plain-HTTP proxy request (``GET http://host/path HTTP/1.1``): handed over the same.

The default handler, ``Forwarder``, sends the request on unchanged (headers, body,
framing, bytes of the request-target: deliveries are signed over them) and streams
the answer back; it verifies remote certificates against the system store
(``SSL_CERT_FILE`` honoured) and connects only to addresses ``[network]`` allows,
through relay.network's GuardedResolver. Instances stop checking private addresses
themselves once they go through a proxy (facts/doors.md §2), so this is where it
happens. A checking handler wraps or replaces ``Forwarder``.

aiohttp's web server cannot answer CONNECT (aio-libs/aiohttp#3257), so a small
asyncio protocol reads each connection's first request head and decides; TLS is
``loop.start_tls`` on that same transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import yarl
from aiohttp import web
from multidict import CIMultiDict

from relay.envelope import HOP_BY_HOP
from relay.errors import BlockedAddress
from relay.network import GuardedResolver, NetworkPolicy
from relay.outbound.ca import CaError, CertificateAuthority

__all__ = ["Answer", "ForwardProxy", "Forwarder", "Handler", "end_to_end", "stream", "tunnelled"]

log = logging.getLogger(__name__)

#: What the proxy hands each intercepted or plain-HTTP request to, with the URL the
#: instance meant; it answers (forwarding, refusing, or serving a checked copy).
Handler = Callable[[web.BaseRequest, yarl.URL], Awaitable[web.StreamResponse]]
#: What ``Forwarder.exchange`` hands the origin's response to, to answer the instance.
Answer = Callable[[web.BaseRequest, aiohttp.ClientResponse], Awaitable[web.StreamResponse]]

_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# RFC 9110 §7.6.1 hop-by-hop fields (relay.envelope's), Expect answered here; the
# length passes on with the body it measures, as the proxy streams it unchanged.
_HOP_BY_HOP = (HOP_BY_HOP - {"content-length"}) | {"expect"}


def tunnelled(host: str, tunnel: Iterable[str]) -> bool:
    """Is ``host`` passed through untouched? Entries are names, or ``*.name`` for below."""
    host = host.rstrip(".").lower()
    for entry in tunnel:
        entry = entry.rstrip(".").lower()
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


def _plain(status: int, text: str) -> bytes:
    """A whole HTTP/1.1 answer, written before any TLS or HTTP machinery is set up."""
    body = (text.rstrip("\n") + "\n").encode("utf-8", "replace")
    reason = {
        400: "Bad Request",
        403: "Forbidden",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _authority(target: str) -> tuple[str, int]:
    """host and port of a CONNECT target; ValueError saying what is wrong."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"CONNECT needs host:port, not {target!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # brackets hold an IPv6 address and nothing else
    elif ":" in host:
        raise ValueError(f"an IPv6 address in CONNECT needs brackets: {target!r}")
    return host, port


def _origin(host: str, port: int) -> yarl.URL:
    return yarl.URL.build(scheme="https", host=host, port=port, encoded=False)


def _refusal(exc: BlockedAddress) -> web.Response:
    return web.Response(status=403, text=f"Sluice refused this destination: {exc}\n")


class Forwarder:
    """The default handler: send the request on as it came and stream the answer back."""

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        cafile: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        limit: int = 256,
        limit_per_host: int = 16,
    ) -> None:
        self._policy = policy
        self._cafile = cafile
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # The system store (SSL_CERT_FILE and SSL_CERT_DIR honoured), plus cafile.
            tls = ssl.create_default_context()
            if self._cafile:
                tls.load_verify_locations(cafile=self._cafile)
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._policy),
                ssl=tls,
                limit=self._limit,
                limit_per_host=self._limit_per_host,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self._connect_timeout,
                    sock_read=self._read_timeout,
                ),
                # Bytes as the origin sent them; the instance decodes what it asked for.
                auto_decompress=False,
                # Nothing the instance did not send is added, nothing it sent is dropped.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, request: web.BaseRequest, url: yarl.URL) -> web.StreamResponse:
        return await self.exchange(request, url, stream)

    async def exchange(
        self,
        request: web.BaseRequest,
        url: yarl.URL,
        answer: Answer,
        *,
        leave_out: Iterable[str] = (),
    ) -> web.StreamResponse:
        """Send the request on as it came (less the fields named in ``leave_out``);
        ``answer`` turns the origin's response into the instance's (``stream``: as it
        came). Refusals and failures to reach the origin are answered here (403, 502,
        504)."""
        try:
            self._policy.check_url(url)
        except BlockedAddress as exc:
            return _refusal(exc)
        headers = _forwardable(request.headers)
        for name in leave_out:
            headers.popall(name, None)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        data: Any = request.content if request.body_exists else None
        try:
            async with self._client().request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                # A proxy passes compressed bodies and redirects on, as they came.
            ) as upstream:
                return await answer(request, upstream)
        except BlockedAddress as exc:  # from GuardedResolver: a name led somewhere refused
            return _refusal(exc)
        except aiohttp.ClientConnectorCertificateError as exc:
            return _bad_gateway(
                url, f"its TLS certificate is not trusted ({exc.certificate_error})"
            )
        except (aiohttp.ServerTimeoutError, TimeoutError):
            return web.Response(status=504, text=f"{url.host}: no answer in time\n")
        except aiohttp.ClientConnectorError as exc:
            return _bad_gateway(url, f"cannot connect: {exc.os_error.strerror or exc.os_error}")
        except aiohttp.ClientError as exc:
            return _bad_gateway(url, type(exc).__name__)


async def stream(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse, prefix: bytes = b""
) -> web.StreamResponse:
    """The origin's answer as it came (less hop-by-hop fields), ``prefix`` being the
    first bytes of its body already read."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in end_to_end(upstream.headers):
        response.headers.add(name, value)
    await response.prepare(request)
    if prefix:
        await response.write(prefix)
    async for chunk in upstream.content.iter_any():  # as read: no re-joining into chunks
        await response.write(chunk)
    await response.write_eof()
    return response


def end_to_end(headers: Any) -> list[tuple[str, str]]:
    """An answer's fields less the hop-by-hop ones."""
    return [(name, value) for name, value in headers.items() if name.lower() not in _HOP_BY_HOP]


def _bad_gateway(url: yarl.URL, why: str) -> web.Response:
    return web.Response(status=502, text=f"{url.host}: {why}\n")


def _forwardable(headers: Any) -> CIMultiDict[str]:
    """The request's fields less hop-by-hop ones (and those ``Connection`` names)."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    return CIMultiDict(
        (name, value)
        for name, value in headers.items()
        if name.lower() not in _HOP_BY_HOP and name.lower() not in named
    )


class _OneConnection(web.Server):
    """aiohttp's low-level server for one client connection, saying when it is gone."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        if not self.gone.done():
            self.gone.set_result(None)


class _Head(asyncio.Protocol):
    """Reads a connection's first request head, then hands the transport to the proxy."""

    def __init__(self, proxy: ForwardProxy) -> None:
        self._proxy = proxy
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._proxy._admit(transport):
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._proxy._head_timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self._proxy._max_head_bytes:
                self._finish(_plain(431, "the request head is too large"))
            return
        if end > self._proxy._max_head_bytes:
            self._finish(_plain(431, "the request head is too large"))
            return
        self._transport.pause_reading()
        if self._timer is not None:
            self._timer.cancel()
        head, rest = bytes(self._buffer[: end + 4]), bytes(self._buffer[end + 4 :])
        self._task = asyncio.get_running_loop().create_task(
            self._proxy._serve(self._transport, head, rest)
        )
        self._proxy._track(self._task)

    def _finish(self, answer: bytes) -> None:
        assert self._transport is not None
        self._transport.write(answer)
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._proxy._release(self._transport)


class _Pipe(asyncio.Protocol):
    """One direction of a tunnel: what arrives here is written to ``peer``."""

    def __init__(
        self, peer: asyncio.Transport | None, gone: asyncio.Future[None], seen: list[float]
    ) -> None:
        self.peer = peer
        self._gone = gone
        self._seen = seen  # when bytes last passed either way, shared by both directions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._seen[0] = asyncio.get_running_loop().time()
        if self.peer is not None:
            self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
        return True  # keep the other direction open until it ends too

    # Flow control: our transport's buffer is full, so stop reading what fills it.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()
        if not self._gone.done():
            self._gone.set_result(None)


class ForwardProxy:
    """The forward proxy: ``start`` it on an address, ``close`` it at shutdown."""

    def __init__(
        self,
        ca: CertificateAuthority,
        policy: NetworkPolicy,
        *,
        tunnel: Iterable[str] = (),
        handler: Handler | None = None,
        cafile: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        idle_timeout: float = 60.0,
        handshake_timeout: float = 10.0,
        max_head_bytes: int = 16_384,
        max_connections: int = 512,
    ) -> None:
        self._ca = ca
        self._policy = policy
        self._tunnel = tuple(tunnel)
        self._forwarder = Forwarder(
            policy, cafile=cafile, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self.handler: Handler = handler or self._forwarder
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._head_timeout = handshake_timeout
        self._max_head_bytes = max_head_bytes
        self._max_connections = max_connections
        self._connections: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def forwarder(self) -> Forwarder:
        """The default handler, for a checking handler to forward through."""
        return self._forwarder

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host``:``port`` (0: any free port); the address bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Head(self), host, port)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._connections):
            transport.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await self._forwarder.close()

    async def __aenter__(self) -> ForwardProxy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connections ----------------------------------------------------------

    def _admit(self, transport: asyncio.Transport) -> bool:
        if len(self._connections) >= self._max_connections:
            transport.write(_plain(503, "too many connections through Sluice; retry later"))
            transport.close()
            return False
        self._connections.add(transport)
        return True

    def _release(self, transport: asyncio.Transport | None) -> None:
        if transport is not None:
            self._connections.discard(transport)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        try:
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, version = line.split(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(f"{version!r} is not HTTP/1.x")
        except ValueError:
            transport.write(_plain(400, "not an HTTP/1.1 request line"))
            transport.close()
            return
        try:
            if method == "CONNECT":
                await self._connect(transport, target, rest)
            else:
                await self._http(transport, head + rest)
        except Exception:
            log.exception("outbound_connection_failed")
            transport.close()
        finally:
            self._connections.discard(transport)

    async def _connect(self, transport: asyncio.Transport, target: str, rest: bytes) -> None:
        try:
            host, port = _authority(target)
            self._policy.check_url(_origin(host, port))
        except ValueError as exc:
            transport.write(_plain(400, str(exc)))
            transport.close()
            return
        except BlockedAddress as exc:
            transport.write(_plain(403, f"Sluice refused this destination: {exc}"))
            transport.close()
            return
        if tunnelled(host, self._tunnel):
            await self._splice(transport, host, port, rest)
        else:
            await self._intercept(transport, host, port, rest)

    async def _splice(self, client: asyncio.Transport, host: str, port: int, rest: bytes) -> None:
        """Tunnel untouched, to an address judged after resolution."""
        try:
            addresses = await GuardedResolver(self._policy).resolve(host, port, socket.AF_UNSPEC)
        except BlockedAddress as exc:
            client.write(_plain(403, f"Sluice refused this destination: {exc}"))
            client.close()
            return
        except OSError as exc:
            client.write(_plain(502, f"cannot resolve {host}: {exc.strerror or exc}"))
            client.close()
            return
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()
        seen = [loop.time()]
        upstream: asyncio.Transport | None = None
        failure = "no address"
        for address in addresses:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    upstream, _ = await loop.create_connection(
                        lambda: _Pipe(client, gone, seen), address["host"], address["port"]
                    )
                break
            except (OSError, TimeoutError) as exc:
                failure = getattr(exc, "strerror", None) or "timed out"
        if upstream is None:
            client.write(_plain(502, f"cannot connect to {host}:{port}: {failure}"))
            client.close()
            return
        client.write(_ESTABLISHED)
        if rest:
            upstream.write(rest)
        back = _Pipe(upstream, gone, seen)
        client.set_protocol(back)
        back.connection_made(client)
        client.resume_reading()
        self._connections.add(upstream)
        try:
            # A tunnel ends when either side closes, or when nothing passed for a while.
            while not gone.done():
                idle = loop.time() - seen[0]
                if idle >= self._idle_timeout:
                    break
                # asyncio.timeout, not wait_for, which can lose a cancellation in 3.11.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_timeout - idle):
                        await asyncio.shield(gone)
        finally:
            self._connections.discard(upstream)
            upstream.close()
            client.close()

    async def _intercept(
        self, client: asyncio.Transport, host: str, port: int, rest: bytes
    ) -> None:
        """Speak TLS to the instance as ``host`` and hand each request inside on."""
        if rest:
            client.write(_plain(400, "data sent before the tunnel was established"))
            client.close()
            return
        try:
            context = self._ca.context(host)
        except CaError as exc:
            client.write(_plain(400, str(exc)))
            client.close()
            return
        origin = _origin(host, port)
        client.write(_ESTABLISHED)
        server = self._server_for(lambda request: self._inside(request, origin))
        protocol = server()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                client,
                protocol,
                context,
                server_side=True,
                ssl_handshake_timeout=self._head_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            # Most often: the instance does not trust Sluice's CA yet.
            log.info("outbound_tls_refused", extra={"host": host, "error": str(exc)})
            client.close()
            return
        if tls is None:
            client.close()
            return
        self._connections.add(tls)
        try:
            protocol.connection_made(tls)
            await server.gone
        finally:
            self._connections.discard(tls)
            await server.shutdown(1.0)
            tls.close()

    async def _inside(self, request: web.BaseRequest, origin: yarl.URL) -> web.StreamResponse:
        target = request.raw_path
        if not target.startswith("/"):
            return web.Response(status=400, text="inside a tunnel, ask for a path\n")
        return await self.handler(request, yarl.URL(f"{origin}{target}", encoded=True))

    async def _http(self, client: asyncio.Transport, received: bytes) -> None:
        """A plain-HTTP proxy request: aiohttp's parser takes the connection over."""
        server = self._server_for(self._plain_request)
        protocol = server()
        client.set_protocol(protocol)
        protocol.connection_made(client)
        protocol.data_received(received)
        client.resume_reading()
        try:
            await server.gone
        finally:
            await server.shutdown(1.0)
            client.close()

    async def _plain_request(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            url = yarl.URL(request.raw_path, encoded=True)
        except ValueError:
            url = yarl.URL()
        if url.scheme != "http" or not url.host:
            return web.Response(
                status=400,
                text="Sluice's outbound door is a forward proxy: ask for http://host/path, "
                "or CONNECT host:port for https\n",
            )
        return await self.handler(request, url)

    def _server_for(self, handler: Any) -> _OneConnection:
        return _OneConnection(
            handler,
            keepalive_timeout=self._idle_timeout,
            # Bodies as the instance sent them: deliveries are signed over their digest.
            auto_decompress=False,
            access_log=None,
            max_line_size=self._max_head_bytes,
            max_field_size=self._max_head_bytes,
        )
