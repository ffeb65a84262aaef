"""Shared fixtures: a real PostgreSQL, real HTTP servers on loopback, real keys.

- ``pg_cluster``: one embedded PostgreSQL (pgserver) for the session; each test
  that asks for ``database_url`` gets a fresh database in it.
- ``upstream``: an aiohttp server standing for the instance, recording what
  arrives and answering with a status the test sets.
- ``fediverse``: an aiohttp server publishing actors and their keys, so Sluice
  fetches real keys over real HTTP; ``Actor.sign`` makes real signatures.
- ``make_config`` writes a real TOML file and loads it the way ``sluice`` does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from yarl import URL

from relay.app import SLUICE, Sluice, build_app
from relay.config import Config, load_config

REQUIRE_ALL = os.environ.get("SLUICE_REQUIRE_ALL") == "1"


def need(tool: str) -> str:
    """Path of an external program; skip without it, fail in CI (SLUICE_REQUIRE_ALL=1)."""
    path = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
    )
    if path is None:
        message = f"{tool} is not installed (apt-get install {tool})"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    return path


async def wait_for(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll until ``predicate`` is truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)


# -- PostgreSQL ----------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[str]:
    # Not under pytest's basetemp: pytest resets its permissions to 0700 when another
    # pytest starts, and PostgreSQL runs as the `pgserver` user when we are root.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    pgdata = Path(tempfile.mkdtemp(prefix="sluice-test-pg-"))
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


_db_counter = itertools.count()


@pytest.fixture
async def database_url(pg_cluster: str) -> AsyncIterator[str]:
    name = f"t{os.getpid()}_{next(_db_counter)}"
    admin = await asyncpg.connect(pg_cluster)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield pg_cluster.replace("/postgres?", f"/{name}?")
    admin = await asyncpg.connect(pg_cluster)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


# -- HTTP servers on loopback ---------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Upstream:
    """The instance behind Sluice: records requests, answers ``status``."""

    server: TestServer | None = None
    status: int = 202
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    refused: int = 0  # requests answered with an error status

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def inbox_posts(self) -> list[Received]:
        return [r for r in self.requests if r.method == "POST"]

    def ids(self) -> list[str]:
        return [r.json().get("id") for r in self.inbox_posts()]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        received = Received(request.method, request.raw_path, dict(request.headers), body)
        if self.status < 300:
            self.requests.append(received)
        else:
            self.refused += 1
        return web.Response(status=self.status, text=f"upstream says {self.status}")


#: ``[outbox]`` for tests that wait on an effect: retries a moment apart, not seconds.
FAST_OUTBOX = {"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2}


def free_port() -> int:
    """A loopback port free now (a server that must know its URL before it starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_server(app: web.Application, port: int | None = None) -> TestServer:
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return server


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    recorder = Upstream()
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    recorder.server = await start_server(app)
    yield recorder
    await recorder.server.close()


_RSA_KEYS: list[rsa.RSAPrivateKey] = []


def rsa_key(index: int) -> rsa.RSAPrivateKey:
    """RSA generation is slow; tests share a few keys."""
    while len(_RSA_KEYS) <= index:
        _RSA_KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _RSA_KEYS[index]


def public_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass
class Actor:
    id: str
    key: rsa.RSAPrivateKey
    fediverse: Fediverse
    profile: dict[str, Any] = field(default_factory=dict)  # e.g. icon, image

    @property
    def key_id(self) -> str:
        return self.id + "#main-key"

    def document(self) -> dict[str, Any]:
        return {
            "@context": [
                "https://www.w3.org/ns/activitystreams",
                "https://w3id.org/security/v1",
            ],
            "id": self.id,
            "type": "Person",
            "preferredUsername": self.id.rsplit("/", 1)[-1],
            "inbox": self.id + "/inbox",
            "publicKey": {
                "id": self.key_id,
                "owner": self.id,
                "publicKeyPem": public_pem(self.key),
            },
            **self.profile,
        }

    def activity(self, kind: str = "Create", obj: Any = None, **extra: Any) -> dict[str, Any]:
        n = next(self.fediverse.counter)
        if obj is None:
            obj = {
                "id": f"{self.id}/statuses/{n}",
                "type": "Note",
                "attributedTo": self.id,
                "content": f"<p>note {n}</p>",
                "to": ["https://www.w3.org/ns/activitystreams#Public"],
            }
        return {
            "@context": "https://www.w3.org/ns/activitystreams",
            "id": f"{self.id}/activities/{n}",
            "type": kind,
            "actor": self.id,
            "object": obj,
            **extra,
        }

    def sign(
        self,
        url: str,
        body: bytes,
        *,
        scheme: str = "cavage",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> dict[str, str]:
        from relay.signature import sign_cavage, sign_rfc9421

        headers = {"Content-Type": "application/activity+json", **(headers or {})}
        sign = sign_cavage if scheme == "cavage" else sign_rfc9421
        return {
            **headers,
            **sign("POST", url, body, self.key, self.key_id, headers=headers, **kwargs),
        }


@dataclass
class Fediverse:
    """Remote servers' actor documents, published on a loopback port."""

    server: TestServer | None = None
    actors: dict[str, Actor] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    fetches: list[str] = field(default_factory=list)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def base(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def actor(self, name: str, key_index: int = 0) -> Actor:
        actor = Actor(f"{self.base}/users/{name}", rsa_key(key_index), self)
        self.actors[actor.id] = actor
        return actor

    async def handle(self, request: web.Request) -> web.Response:
        url = f"{self.base}{request.path}"
        self.fetches.append(url)
        if url in self.gone:
            return web.Response(status=410, text="gone")
        actor = self.actors.get(url)
        if actor is None:
            return web.Response(status=404, text="no such actor")
        return web.json_response(actor.document(), content_type="application/activity+json")


@pytest.fixture
async def fediverse() -> AsyncIterator[Fediverse]:
    fedi = Fediverse()
    app = web.Application()
    app.router.add_get("/{tail:.*}", fedi.handle)
    fedi.server = await start_server(app)
    yield fedi
    await fedi.server.close()


# -- Sluice ----------------------------------------------------------------------


def config_text(
    *,
    listen: str,
    upstream_url: str,
    database_url: str,
    data_dir: Path,
    **sections: dict[str, Any],
) -> str:
    """A TOML file as an admin would write it, loopback allowed for the test peers."""
    base: dict[str, dict[str, Any]] = {
        "server": {"listen": listen},
        "upstream": {"url": upstream_url, "timeout_seconds": 5.0},
        "database": {"url": database_url},
        "storage": {"data_dir": str(data_dir)},
        "network": {"allow": ["127.0.0.0/8"], "allow_http": True},
        "delivery": {"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.5},
        "log": {"level": "warning"},
        "admin": {"listen": "127.0.0.1:0"},  # a free port: tests run several Sluices
    }
    tables: dict[str, list[dict[str, Any]]] = {}
    for name, values in sections.items():
        if isinstance(values, list):  # [[bank]], [[rule]]
            tables[name] = values
        else:
            base.setdefault(name, {}).update(values)
    lines: list[str] = []
    blocks = [(f"[{n}]", v) for n, v in base.items()]
    blocks += [(f"[[{n}]]", item) for n, items in tables.items() for item in items]
    for header, values in blocks:
        lines.append(header)
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


@pytest.fixture
def make_config(tmp_path: Path, database_url: str, upstream: Upstream) -> Callable[..., Config]:
    def make(**sections: dict[str, Any]) -> Config:
        path = tmp_path / f"sluice-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(
            config_text(
                listen="127.0.0.1:8080",  # unused: the tests serve on a port of their own
                upstream_url=upstream.url,
                database_url=database_url,
                data_dir=tmp_path / "data",
                **sections,
            )
        )
        return load_config(path)

    return make


@dataclass
class Running:
    """Sluice serving on loopback, with its parts reachable for assertions."""

    server: TestServer
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def parts(self) -> Sluice:
        return self.server.app[SLUICE]

    @property
    def admin_url(self) -> str:
        """The admin listener: /metrics, /readyz and the admin API live there."""
        assert self.parts.admin_url is not None
        return self.parts.admin_url

    async def post(
        self,
        actor: Actor,
        activity: dict[str, Any] | bytes,
        *,
        path: str = "/inbox",
        host: str = "social.example",
        scheme: str = "cavage",
        **sign_kwargs: Any,
    ) -> tuple[int, str]:
        body = activity if isinstance(activity, bytes) else json.dumps(activity).encode()
        headers = actor.sign(f"https://{host}{path}", body, scheme=scheme, **sign_kwargs)
        url = URL(self.url + path, encoded=True)  # as signed, byte for byte
        async with self.session.post(url, data=body, headers=headers) as response:
            return response.status, await response.text()


async def settled_row(running: Running, ap_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The activity's record once it has left ``queued``: the instance has a delivery
    a moment before Sluice records how it answered."""

    async def moved() -> dict[str, Any] | None:
        record = await running.parts.store.get(ap_id)
        return record if record is not None and record["state"] != "queued" else None

    found: dict[str, Any] = await wait_for(moved, timeout=timeout)
    return found


@pytest.fixture
async def sluice_factory(
    make_config: Callable[..., Config],
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Running] = []

    async def start(
        config: Config | None = None,
        *,
        checks: tuple[Any, ...] = (),
        port: int | None = None,
        **sections: dict[str, Any],
    ) -> Running:
        app = build_app(config or make_config(**sections), checks=checks)
        server = await start_server(app, port)
        running = Running(server, aiohttp.ClientSession())
        started.append(running)
        return running

    yield start
    for running in started:
        await running.session.close()
        await running.server.close()


@pytest.fixture
async def sluice(sluice_factory: Callable[..., Awaitable[Running]]) -> Running:
    return await sluice_factory()


@pytest.fixture
async def migrated_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database with Sluice's schema in place."""
    from relay.store import migrate

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    await migrate(pool)
    yield pool
    await pool.close()


@pytest.fixture
async def webhook() -> AsyncIterator[Any]:
    """An admin's webhook on loopback (tests.webhook_support.Webhook)."""
    from tests.webhook_support import serving  # it imports this module

    async with serving() as hook:
        yield hook


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client
