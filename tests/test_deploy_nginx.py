"""The nginx snippets in deploy/nginx/, run through the real nginx binary.

For each server software the test starts nginx with a small site file of its own that

* defines ``upstream sluice`` and ``upstream instance`` pointing at two aiohttp servers on
  loopback (one stands for Sluice, one for the instance; both record what reaches them),
* ``include``s the real snippet file from deploy/nginx/ unchanged, inside the ``server`` block,
* ends with ``location / { proxy_pass http://instance; }``, standing for the admin's own config.

That is the whole substitution mechanism: the snippets only name ``upstream sluice``, and the
site file (here the test's, in production the admin's) says where that is.

It then checks that inbox POSTs reach Sluice byte for byte (path, signed headers, body), that
everything else reaches the instance, and that nginx itself answers 413 above 1 MiB.

The example site files (deploy/nginx/*.example.conf) pass ``nginx -t`` with a throwaway
self-signed certificate, and are also served over TLS with each of their upstreams pointed at a
recording server, to check what they promise (e.g. Lemmy's GET /inbox still reaches lemmy-ui).

No nginx installed: the tests skip, unless SLUICE_REQUIRE_ALL=1 (CI), where they fail.
``run_nginx`` and ``nginx_test_config`` live in tests/nginx.py, shared with the end-to-end
interoperability test.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.nginx import _free_port, find_nginx, nginx_test_config, run_nginx

REPO = Path(__file__).resolve().parent.parent
NGINX_DIR = REPO / "deploy" / "nginx"
SOFTWARES = ("mastodon", "lemmy", "gotosocial", "misskey")
MIB = 1024 * 1024
HOST = "example.social"


# --------------------------------------------------------------------------------------------
# Stand-ins for Sluice and the instance


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Backend:
    name: str
    port: int = 0
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append(Seen(request.method, request.raw_path, headers, body))
        return web.Response(status=202 if self.name == "sluice" else 200, text=self.name)


@contextlib.asynccontextmanager
async def recording_backend(name: str) -> AsyncIterator[Backend]:
    backend = Backend(name)
    app = web.Application(client_max_size=16 * MIB)
    app.router.add_route("*", "/{tail:.*}", backend.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    backend.port = runner.addresses[0][1]
    try:
        yield backend
    finally:
        await runner.cleanup()


@dataclass
class Setup:
    software: str
    port: int
    sluice: Backend
    instance: Backend

    def url(self, path: str) -> URL:
        # encoded=True: send the path exactly as written (no normalisation by the client)
        return URL(f"http://127.0.0.1:{self.port}{path}", encoded=True)


def site_conf_for(software: str, sluice_port: int, instance_port: int) -> str:
    """The test's site file: its own upstreams, the real snippet, a catch-all for the instance."""
    snippet = NGINX_DIR / f"sluice-{software}.conf"
    return f"""
upstream sluice {{ server 127.0.0.1:{sluice_port}; keepalive 4; }}
upstream instance {{ server 127.0.0.1:{instance_port}; }}
server {{
    listen @LISTEN@;
    server_name {HOST};
    # like the stock Mastodon/Misskey files: media uploads need a large server-wide limit
    client_max_body_size 99m;
    include {snippet};
    location / {{
        proxy_set_header Host $host;
        proxy_pass http://instance;
    }}
}}
"""


@pytest.fixture(params=SOFTWARES)
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    software = request.param
    async with recording_backend("sluice") as sluice, recording_backend("instance") as instance:
        conf = site_conf_for(software, sluice.port, instance.port)
        with run_nginx(tmp_path / "nginx", conf) as port:
            yield Setup(software, port, sluice, instance)


# --------------------------------------------------------------------------------------------
# What goes where

INBOX_PATHS = {
    "mastodon": [
        "/inbox",
        "/users/alice/inbox",
        "/actor/inbox",
        "/ap/users/109332/inbox",
        # spellings Rails also routes to the inbox: they must not bypass Sluice
        "/users/alice/inbox/",
        "/users/alice/inbox.json",
        "/inbox?x=1&y=%C3%A9",
        "/users/al%69ce/inbox",
        "/Users/alice/INBOX",
    ],
    "lemmy": [
        "/inbox",
        "/u/alice/inbox",
        "/c/cooking/inbox",
        "/site_inbox",
        "/u/alice/inbox/",
        "/c/caf%C3%A9/inbox?x=1",
    ],
    "gotosocial": [
        "/users/alice/inbox",
        "/users/example.social/inbox",
        "/users/alice/inbox/",
        "/users/al%69ce/inbox?x=1",
    ],
    "misskey": [
        "/inbox",
        "/users/9hv3y6bk8x/inbox",
        "/users/9hv3y6bk8x/inbox/",
        "/inbox?x=1",
    ],
}

OTHER_PATHS = [
    "/api/v1/statuses",
    "/users/alice",
    "/users/alice/outbox",
    "/users/alice/inbox/extra",
    "/users/alice/inboxes",
    "/.well-known/webfinger?resource=acct:alice@example.social",
    "/u/alice",
    "/c/cooking/outbox",
    "/notinbox",
]


def activity_body() -> bytes:
    # Non-ASCII, odd spacing and a trailing newline: any re-encoding would show.
    return (
        b'{"@context":"https://www.w3.org/ns/activitystreams",  "type":"Create",\n'
        b' "actor":"https://remote.example/users/bob","object":{"type":"Note",'
        b'"content":"caf\xc3\xa9 \xe2\x9c\x93 <p>hi</p>"}}\n'
    )


def signed_headers(body: bytes, path: str) -> dict[str, str]:
    sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
    target = f"post {path}"
    return {
        "Host": HOST,
        "Date": formatdate(usegmt=True),
        "Content-Type": 'application/ld+json; profile="https://www.w3.org/ns/activitystreams"',
        "Digest": f"SHA-256={sha}",
        "Content-Digest": f"sha-256=:{sha}:",
        "Signature": (
            'keyId="https://remote.example/users/bob#main-key",algorithm="rsa-sha256",'
            'headers="(request-target) host date digest",signature="'
            + base64.b64encode(target.encode()).decode()
            + '"'
        ),
        "Signature-Input": (
            'sig1=("@method" "@target-uri" "content-digest");'
            'keyid="https://remote.example/users/bob#main-key";created=1700000000'
        ),
    }


# Headers the HTTP signatures (draft-cavage and RFC 9421) cover: they must arrive untouched.
SIGNED = ["host", "date", "content-type", "digest", "content-digest"]
SIGNED += ["signature", "signature-input"]


async def test_inbox_posts_reach_sluice_unchanged(setup: Setup):
    software = setup.software
    body = activity_body()
    async with aiohttp.ClientSession() as http:
        for path in INBOX_PATHS[software]:
            headers = signed_headers(body, path)
            async with http.post(setup.url(path), data=body, headers=headers) as resp:
                assert resp.status == 202, (path, resp.status, await resp.text())
                assert await resp.text() == "sluice"
            seen = setup.sluice.seen[-1]
            assert seen.method == "POST"
            assert seen.raw_path == path  # path and query byte for byte: "(request-target)"
            assert seen.body == body
            for name in SIGNED:
                assert seen.headers.get(name) == headers[name.title()], (path, name)
            assert seen.headers["content-length"] == str(len(body))
            assert seen.headers["x-forwarded-for"] == "127.0.0.1"
            assert seen.headers["x-real-ip"] == "127.0.0.1"
            assert seen.headers["x-forwarded-proto"] == "http"
        # Host goes on exactly as sent (the signature covers it), even in an unusual spelling.
        headers = signed_headers(body, "/x") | {"Host": "Example.Social:443"}
        async with http.post(setup.url(INBOX_PATHS[software][0]), data=body, headers=headers) as r:
            assert r.status == 202
        assert setup.sluice.seen[-1].headers["host"] == "Example.Social:443"
    assert len(setup.sluice.seen) == len(INBOX_PATHS[software]) + 1
    assert setup.instance.seen == []


async def test_chunked_inbox_post_reaches_sluice(setup: Setup):
    """A body sent chunked (no Content-Length) arrives whole, with the same bytes."""
    software = setup.software
    path = INBOX_PATHS[software][0]
    body = activity_body()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 40):
            yield body[i : i + 40]

    async with aiohttp.ClientSession() as http:
        headers = signed_headers(body, path)
        async with http.post(setup.url(path), data=chunks(), headers=headers) as resp:
            assert resp.status == 202
    [seen] = setup.sluice.seen
    assert seen.body == body
    assert seen.headers["digest"] == headers["Digest"]


async def test_everything_else_reaches_the_instance(setup: Setup):
    software = setup.software
    body = activity_body()
    checks = [("GET", path) for path in INBOX_PATHS[software]]
    checks += [("PUT", INBOX_PATHS[software][0]), ("HEAD", INBOX_PATHS[software][0])]
    checks += [(method, path) for path in OTHER_PATHS for method in ("GET", "POST")]
    async with aiohttp.ClientSession() as http:
        for method, path in checks:
            data = body if method in ("POST", "PUT") else None
            headers = {"Host": HOST, "Accept": "application/activity+json"}
            async with http.request(method, setup.url(path), data=data, headers=headers) as resp:
                assert resp.status == 200, (method, path, resp.status)
            seen = setup.instance.seen[-1]
            assert (seen.method, seen.raw_path) == (method, path)
            assert seen.headers["host"] == HOST
            if data is not None:
                assert seen.body == body
        # The snippet's internal location cannot be reached from outside.
        for method in ("GET", "POST"):
            url = setup.url("/.sluice-inbox")
            async with http.request(method, url, data=b"{}", headers={"Host": HOST}) as resp:
                assert resp.status == 404
    assert setup.sluice.seen == []
    assert len(setup.instance.seen) == len(checks)


async def test_body_limit_is_1_mib_on_inboxes_only(setup: Setup):
    software = setup.software
    path = INBOX_PATHS[software][0]
    host = {"Host": HOST}
    async with aiohttp.ClientSession() as http:
        # (BytesIO: aiohttp warns about large raw-bytes bodies.)
        exactly = b"x" * MIB
        async with http.post(setup.url(path), data=io.BytesIO(exactly), headers=host) as resp:
            assert resp.status == 202
        assert setup.sluice.seen[-1].body == exactly

        too_big = io.BytesIO(b"x" * (MIB + 1))
        async with http.post(setup.url(path), data=too_big, headers=host) as resp:
            assert resp.status == 413
            assert "nginx" in await resp.text()  # nginx's own error page: Sluice never saw it

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"y" * (MIB // 2)

        async with http.post(setup.url(path), data=chunks(), headers=host) as resp:
            assert resp.status == 413
        assert len(setup.sluice.seen) == 1

        # Elsewhere the server's own limit applies, not Sluice's 1 MiB. (Not an upload path:
        # those go to Sluice's upload door, under a limit of their own; see
        # tests/test_deploy_nginx_upload.py.)
        upload = b"z" * (2 * MIB)
        media = setup.url("/api/v1/statuses")
        async with http.post(media, data=io.BytesIO(upload), headers=host) as r:
            assert r.status == 200
        assert setup.instance.seen[-1].body == upload


# --------------------------------------------------------------------------------------------
# nginx -t on the snippets and on the example site files


@pytest.mark.parametrize("software", SOFTWARES)
def test_snippet_passes_nginx_t(software: str, tmp_path: Path):
    conf = f"""
upstream sluice {{ server 127.0.0.1:8080; }}
server {{
    listen 127.0.0.1:{_free_port()};
    include {NGINX_DIR}/sluice-{software}.conf;
    location / {{ return 204; }}
}}
"""
    result = nginx_test_config(tmp_path, conf)
    assert result.returncode == 0, result.stderr


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def render_example(software: str, workdir: Path, https_listen: str) -> str:
    """The example site file, ready to run here; only addresses and paths are changed.

    Certificate paths point to a fresh self-signed certificate, the snippet include to this
    checkout, `listen 443` to ``https_listen``, `listen 80` to a free loopback port (nginx -t
    binds too), and the IPv6 listens are dropped. Upstream addresses are left as they are.
    """
    cert, key = self_signed_cert(workdir)
    text = (NGINX_DIR / f"{software}.example.conf").read_text()
    assert f"include /etc/nginx/sluice/sluice-{software}.conf;" in text
    assert re.search(r"upstream sluice \{\s*server 127\.0\.0\.1:\d+;", text)
    text = text.replace("/etc/nginx/sluice/", f"{NGINX_DIR}/")
    text = re.sub(r"/etc/letsencrypt/live/[^/]+/fullchain\.pem", str(cert), text)
    text = re.sub(r"/etc/letsencrypt/live/[^/]+/privkey\.pem", str(key), text)
    assert "/etc/letsencrypt" not in text
    text = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", text)
    text = text.replace("listen 443 ssl http2;", f"listen {https_listen} ssl http2;")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{_free_port()};")
    listens = re.findall(r"^\s*listen ([^ ;]+)", text, re.MULTILINE)
    assert all(a == "@LISTEN@" or a.startswith("127.0.0.1:") for a in listens), listens
    return text


@pytest.mark.parametrize("software", SOFTWARES)
def test_example_site_passes_nginx_t(software: str, tmp_path: Path):
    find_nginx()
    text = render_example(software, tmp_path, f"127.0.0.1:{_free_port()}")
    result = nginx_test_config(tmp_path / "nginx", text)
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr


# What the example site files promise, checked through the files themselves:
# (method, path, Accept) -> name of the upstream block that must get the request.
EXAMPLE_ROUTES = {
    "mastodon": [
        ("POST", "/users/alice/inbox", "application/activity+json", "sluice"),
        ("POST", "/inbox", "application/activity+json", "sluice"),
        ("GET", "/users/alice/inbox", "application/activity+json", "backend"),
        ("GET", "/users/alice", "application/activity+json", "backend"),
        ("POST", "/api/v1/statuses", "application/json", "backend"),
        ("GET", "/api/v1/streaming", "*/*", "streaming"),
    ],
    "lemmy": [
        ("POST", "/inbox", "application/activity+json", "sluice"),
        ("POST", "/c/cooking/inbox", "application/activity+json", "sluice"),
        ("GET", "/inbox", "text/html", "lemmy-ui"),  # lemmy-ui's notifications page
        ("GET", "/u/alice", "application/activity+json", "lemmy"),
        ("GET", "/u/alice", "text/html", "lemmy-ui"),
        ("POST", "/api/v3/post", "application/json", "lemmy"),
    ],
    "gotosocial": [
        ("POST", "/users/alice/inbox", "application/activity+json", "sluice"),
        ("GET", "/users/alice/inbox", "application/activity+json", "gotosocial"),
        ("POST", "/inbox", "application/activity+json", "gotosocial"),  # no shared inbox
        ("POST", "/api/v1/statuses", "application/json", "gotosocial"),
    ],
    "misskey": [
        ("POST", "/inbox", "application/activity+json", "sluice"),
        ("POST", "/users/9hv3y6bk8x/inbox", "application/activity+json", "sluice"),
        ("GET", "/users/9hv3y6bk8x/inbox", "application/activity+json", "misskey"),
        ("POST", "/api/notes/create", "application/json", "misskey"),
    ],
}


@pytest.mark.parametrize("software", SOFTWARES)
async def test_example_site_routes(software: str, tmp_path: Path):
    """Serve the example site file (TLS included), its upstreams pointed at recording servers."""
    find_nginx()
    text = render_example(software, tmp_path, "@LISTEN@")
    upstreams = re.findall(r"upstream (\S+) \{\s*server (127\.0\.0\.1:\d+)", text)
    assert {name for name, _ in upstreams} >= {"sluice"} | {r[3] for r in EXAMPLE_ROUTES[software]}
    async with contextlib.AsyncExitStack() as stack:
        backends = {}
        ports = {}
        for name, address in upstreams:
            backends[name] = await stack.enter_async_context(recording_backend(name))
            ports[address] = backends[name].port
        # One pass: replacing address by address could rewrite a port substituted a moment ago
        # (127.0.0.1:40005 starts with 127.0.0.1:4000).
        text = re.sub(
            r"server (127\.0\.0\.1:\d+)\b",
            lambda m: f"server 127.0.0.1:{ports[m[1]]}" if m[1] in ports else m[0],
            text,
        )
        with run_nginx(tmp_path / "nginx", text) as port:
            async with aiohttp.ClientSession() as http:
                for method, path, accept, expected in EXAMPLE_ROUTES[software]:
                    url = URL(f"https://127.0.0.1:{port}{path}", encoded=True)
                    headers = {"Host": HOST, "Accept": accept}
                    if method == "POST":
                        headers |= signed_headers(activity_body(), path)
                    data = activity_body() if method == "POST" else None
                    async with http.request(
                        method, url, data=data, headers=headers, ssl=False
                    ) as resp:
                        assert resp.status in (200, 202), (method, path, resp.status)
                    got = [name for name, b in backends.items() if b.seen]
                    assert got == [expected], (method, path, accept)
                    seen = backends[expected].seen.pop()
                    assert seen.raw_path == path
                    if expected == "sluice":
                        assert seen.body == activity_body()
                        assert seen.headers["host"] == HOST
                        assert seen.headers["x-forwarded-proto"] == "https"
                        assert seen.headers["signature"] == headers["Signature"]
