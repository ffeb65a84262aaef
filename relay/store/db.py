"""Open the database: the configured one, or an embedded PostgreSQL under data_dir."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import json
import os
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeAlias, TypeVar

import asyncpg
import asyncpg.pool
import structlog

from relay.errors import SluiceError, StoreUnavailable

if TYPE_CHECKING:
    from pgserver import PostgresServer

__all__ = [
    "Connection",
    "Database",
    "EmbeddedPostgres",
    "connect",
    "embedded_socket_problem",
    "migrate",
    "translated",
    "translating",
]

log = structlog.get_logger(__name__)

#: A connection as the store holds one: taken from a pool (asyncpg hands out a proxy)
#: or opened alone.
Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# What "the database is not there right now" looks like from asyncpg: the network
# (OSError, TimeoutError), a lost connection (08), a server shutting down, starting up
# or cancelling us (57), out of connections, memory or disk (53), a database that is
# refusing connections (55), a read-only standby after a failover (25006), asyncpg
# losing track of a connection cut under it mid-query (InternalClientError, seen when a
# backend is terminated), and the pool closing under us. A syntax error or a broken
# constraint is a bug, and stays one.
_UNAVAILABLE = (
    OSError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raise StoreUnavailable for a database that cannot be reached or written now, so
    that callers above the store handle one error, not asyncpg's many."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"database unavailable: {type(exc).__name__}: {exc}") from exc
    except asyncpg.InterfaceError as exc:
        if isinstance(exc, ValueError):  # arguments or configuration: our bug
            raise
        # "pool is closing", "connection is closed": the pool went away under us.
        raise StoreUnavailable(f"database unavailable: {exc}") from exc


def translating(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """``method`` (a coroutine function) run within ``translated``: a store's public
    methods raise StoreUnavailable, never asyncpg's errors of a database gone."""

    @functools.wraps(method)
    async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with translated():
            return await method(*args, **kwargs)

    return run


# Any constant works; it serialises migrations between processes sharing a database.
_MIGRATION_LOCK = 0x51_1C_E0_01

#: How long a stop waits for the pool's connections to come back before cutting them.
_CLOSE_SECONDS = 10.0

#: The socket pgserver's PostgreSQL listens on (no -p: the default port) in its -k dir.
_SOCKET_NAME = ".s.PGSQL.5432"
#: A Unix socket path fits in sun_path with its final NUL: 108 bytes on Linux, 104 on
#: macOS and the BSDs (PostgreSQL refuses a longer one).
_SOCKET_PATH_MAX = (108 if sys.platform.startswith("linux") else 104) - 1


def embedded_socket_problem(data_dir: Path) -> str | None:
    """Why the embedded PostgreSQL must not start under ``data_dir``, or None.

    Its server trusts every local connection (pgserver runs ``initdb --auth=trust``),
    which is safe only while its socket stays in the 0700 data directory. When that
    path is too long for a socket, pgserver moves the socket to
    ``$XDG_RUNTIME_DIR/python_PostgresServer/<hash>`` or ``/tmp/runtime-<uid>/…``
    (made 0777 as root, its parents opened to all): any local user would be superuser.
    """
    pgdata = (data_dir / "postgres").expanduser().resolve()  # as pgserver resolves it
    socket = pgdata / _SOCKET_NAME
    size = len(os.fsencode(socket))
    if size <= _SOCKET_PATH_MAX:
        return None
    room = _SOCKET_PATH_MAX - len(f"/postgres/{_SOCKET_NAME}")
    return (
        f"the embedded PostgreSQL's socket would be {socket} ({size} bytes), longer than "
        f"the {_SOCKET_PATH_MAX} bytes a Unix socket path may have; it would then be put "
        "in a directory other local users can reach, and that server lets anyone who "
        f"reaches it in as superuser. Use a [storage] data_dir of at most {room} bytes "
        "(as an absolute path, symbolic links resolved), or set [database] url "
        "(or SLUICE_DATABASE_URL) to a PostgreSQL you run"
    )


class EmbeddedPostgres:
    """PostgreSQL run by ``pgserver`` on a Unix socket under ``data_dir/postgres``.

    As root, pgserver runs the server as a ``pgserver`` system user. The server
    outlives a crashed Sluice (it is a daemon), and the next start reuses it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: PostgresServer | None = None

    def start(self) -> str:
        # Before pgserver runs at all: it would move the socket (and open directories).
        if problem := embedded_socket_problem(self.pgdata.parent):
            raise SluiceError(problem)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (services, containers);
            # pgserver then keeps its lock file under /tmp, which is fine.
            warnings.simplefilter("ignore")
            # imported late: it is heavy and unused with a configured URL
            from pgserver import get_server

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._forget_dead_handles()
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        return self._server.get_uri()

    def _forget_dead_handles(self) -> None:
        """pgserver stops the server when its last user exits, counting users by pid in
        a file; a Sluice killed with -9 stays in that list forever, and the server would
        then never be stopped. Drop pids that no longer run."""
        handles = self.pgdata / ".handle_pids.json"
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if _running(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


async def _close_all(pools: list[asyncpg.Pool], embedded: EmbeddedPostgres | None) -> None:
    for pool in pools:
        await pool.close()
    if embedded is not None:
        embedded.stop()


async def _keep(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset round trip on every release: Sluice leaves no session state
    behind (its settings are per pool, its locks per transaction)."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply numbered SQL migrations not yet applied; safe with several processes."""
    scripts = sorted(
        (
            p
            for p in importlib.resources.files("relay.store.migrations").iterdir()
            if p.name.endswith(".sql")
        ),
        key=lambda p: p.name,
    )
    applied: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migration")}
        for script in scripts:
            if script.name in done:
                continue
            await conn.execute(script.read_text())
            await conn.execute("INSERT INTO schema_migration (name) VALUES ($1)", script.name)
            applied.append(script.name)
        from relay.store.kinds import store_kinds  # here: it imports this module

        await store_kinds(conn)  # the hash kinds registered now (migration 0009)
    if applied:
        log.info("migrations_applied", migrations=applied)
    return applied


@dataclass
class Database:
    """Two pools on one database.

    ``pool`` commits synchronously: the inbound door answers 202 only after the
    activity is on disk. ``lazy`` skips the WAL flush for the state changes that
    follow (verdicts, deliveries): a Sluice crash loses none of them, and a
    PostgreSQL crash at worst makes an activity be delivered again (at least
    once), which keeps delivery off the fsync path.
    """

    pool: asyncpg.Pool
    lazy: asyncpg.Pool
    embedded: EmbeddedPostgres | None

    async def close(self) -> None:
        for pool in (self.lazy, self.pool):
            try:
                # A connection never given back (a task cut short) must not hold the
                # stop forever: after a while, the pool's connections are cut.
                await asyncio.wait_for(pool.close(), _CLOSE_SECONDS)
            except TimeoutError:
                log.warning("pool_close_timed_out", seconds=_CLOSE_SECONDS)
                pool.terminate()
        if self.embedded is not None:
            self.embedded.stop()


async def connect(url: str, data_dir: Path, *, pool_size: int = 10) -> Database:
    """Open the pools (starting embedded PostgreSQL when ``url`` is empty) and migrate."""
    embedded = None
    if not url:
        embedded = EmbeddedPostgres(data_dir)
        url = await asyncio.to_thread(embedded.start)
    pools: list[asyncpg.Pool] = []
    try:
        pools.append(await asyncpg.create_pool(url, min_size=2, max_size=pool_size, reset=_keep))
        pools.append(
            await asyncpg.create_pool(
                url,
                min_size=2,
                max_size=pool_size,
                reset=_keep,
                server_settings={"synchronous_commit": "off"},
            )
        )
        await migrate(pools[0])
    except (OSError, asyncpg.PostgresError) as exc:
        await _close_all(pools, embedded)
        raise SluiceError(f"cannot connect to PostgreSQL: {exc}") from exc
    except BaseException:
        await _close_all(pools, embedded)
        raise
    pool, lazy = pools
    return Database(pool, lazy, embedded)
