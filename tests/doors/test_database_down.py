"""The inbound door while PostgreSQL cannot be reached (issue 12, defect 3): a 503 with
Retry-After, as an overloaded server answers, and nothing of the database's own words."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from yarl import URL

from tests.conftest import Fediverse, Running, Upstream, wait_for


async def _post(sluice: Running, fediverse: Fediverse, activity: dict[str, Any]) -> Any:
    carol = fediverse.actor("carol")
    body = json.dumps(activity).encode()
    headers = carol.sign("https://social.example/inbox", body)
    async with sluice.session.post(sluice.url + "/inbox", data=body, headers=headers) as response:
        text = await response.text()
        return response.status, response.headers.get("Retry-After"), text and json.loads(text)


def _assert_unavailable(answer: Any) -> None:
    status, retry_after, body = answer
    assert status == 503, body
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    assert body == {"error": "database unavailable, retry later"}


@pytest.fixture
async def cluster_admin(pg_cluster: str) -> AsyncIterator[asyncpg.Connection]:
    admin = await asyncpg.connect(pg_cluster)
    yield admin
    await admin.close()


async def test_a_database_that_refuses_connections_answers_503_and_a_retry_succeeds(
    sluice_factory: Any,
    fediverse: Fediverse,
    upstream: Upstream,
    database_url: str,
    cluster_admin: asyncpg.Connection,
) -> None:
    sluice = await sluice_factory()
    name = URL(database_url).path.lstrip("/")
    carol = fediverse.actor("carol")
    first = carol.activity()

    # Every connection Sluice holds is cut, and no new one is let in: PostgreSQL is gone
    # as far as Sluice can tell, while the test keeps its own way in.
    await cluster_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await cluster_admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        _assert_unavailable(await _post(sluice, fediverse, first))
        _assert_unavailable(await _post(sluice, fediverse, first))  # and it stays so
    finally:
        await cluster_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    # The sender retries the same activity once the database is back: nothing was lost.
    status, _, _ = await _post(sluice, fediverse, first)
    assert status == 202
    [got] = await wait_for(upstream.inbox_posts)
    assert got.json()["id"] == first["id"]
    # The two refusals are counted apart from malformed requests.
    assert sluice.parts.metrics.received.labels("unavailable")._value.get() == 2


class _Cable:
    """A TCP hop between Sluice and PostgreSQL that a test can pull out."""

    def __init__(self, target: str) -> None:
        self.target = target  # PostgreSQL's Unix socket
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def plug(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self.links |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def pull(self) -> None:
        """Stop listening (new connections are refused) and cut every open one."""
        assert self.server is not None
        self.server.close()
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()
        await self.server.wait_closed()


async def test_a_database_the_network_cannot_reach_answers_503(
    sluice_factory: Any, make_config: Any, fediverse: Fediverse, database_url: str
) -> None:
    url = URL(database_url)
    socket_dir = url.query["host"]
    cable = _Cable(f"{socket_dir}/.s.PGSQL.{url.port or 5432}")
    port = await cable.plug()
    tcp = url.with_host("127.0.0.1").with_port(port).with_query({})
    sluice = await sluice_factory(make_config(database={"url": str(tcp)}))
    carol = fediverse.actor("carol")
    assert (await _post(sluice, fediverse, carol.activity()))[0] == 202

    await cable.pull()
    answer = await _post(sluice, fediverse, carol.activity())
    _assert_unavailable(answer)
