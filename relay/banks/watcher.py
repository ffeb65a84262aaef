"""Change propagation: ``BankWatcher`` keeps a process's ``BankIndex`` current. A
notification on ``CHANNEL`` naming a bank applies what changed past the bank's marks,
and a periodic pass does so for every bank, in case a notification was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import asyncpg
import asyncpg.pool
import structlog

from relay.banks.index import BankIndex
from relay.config import BankConfig
from relay.store.db import translating

__all__ = ["CHANNEL", "BankWatcher"]

log = structlog.get_logger(__name__)

#: The LISTEN/NOTIFY channel; its payload is the name of the bank that changed.
CHANNEL = "sluice_bank"
# Changes held outside an index's main part before they are folded in: past this, each
# add rebuilds the pending part, in a worker thread (PDQ: 46 ms at 100k pending).
_COMPACT_MIN = 65_536


class BankWatcher:
    """Keeps ``index`` current in this process: a change committed anywhere is matched
    here within a fraction of a second.

    One pooled connection is held for LISTEN (so it works with the embedded database,
    whose URL only the pool knows). A notification reloads the bank it names, after a
    short debounce that gathers a burst of changes. Notifications sent while the
    connection was down are lost: every reconnect brings every bank up to date past its
    marks, entries counted (``BankIndex.refresh``), and so does a pass every
    ``refresh_seconds`` as a safety net, counting on every ``count_every``-th pass only
    (a count is a scan), for deletes that fire no trigger. All of it runs in one task,
    one step after another, so two reloads of one bank never overlap.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        configs: Sequence[BankConfig] = (),
        *,
        debounce_seconds: float = 0.1,
        refresh_seconds: float = 60.0,
        count_every: int = 10,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        self.pool = pool
        self.configs = tuple(configs)
        self.debounce = debounce_seconds
        self.refresh = refresh_seconds
        self.count_every = count_every
        self.max_backoff = max_backoff_seconds
        self.index = BankIndex()
        self.reloads = 0  # banks reloaded on notification, for tests and metrics
        self.refreshes = 0  # safety-net passes over every bank
        self.reconnects = 0  # connections lost and made again, everything read whole
        self.failures = 0  # reloads or reconnects that failed and were retried
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None
        self._connected = False
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @translating
    async def start(self) -> None:
        """Listen, then load: a change committed in between is announced, not missed."""
        await self._listen()
        try:
            self.index = await BankIndex.load(self.pool, self.configs)
        except BaseException:
            await self._unlisten()
            raise
        self._task = asyncio.create_task(self._run(), name="bank-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._unlisten()

    async def __aenter__(self) -> BankWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # asyncpg calls these two from the event loop.
    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._pending.add(str(payload))  # a bank's name: NOTIFY payloads are text
        self._wake.set()

    def _lost(self, conn: object) -> None:
        self._connected = False
        self._wake.set()

    async def _listen(self) -> None:
        conn = await self.pool.acquire()
        try:
            conn.add_termination_listener(self._lost)
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.remove_termination_listener(self._lost)
            await self.pool.release(conn)
            raise
        self._conn, self._connected = conn, True

    async def _unlisten(self) -> None:
        conn, self._conn, self._connected = self._conn, None, False
        if conn is None:
            return
        try:
            conn.remove_termination_listener(self._lost)
        except asyncpg.InterfaceError:
            return  # it was closed, and asyncpg has handed it back to the pool already
        try:
            # The pool's reset skips UNLISTEN (relay.store.db._keep): do it here.
            await conn.remove_listener(CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()
        await self.pool.release(conn)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.refresh
        while True:
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(next_refresh):
                        await self._wake.wait()
                if self._pending and self._connected:
                    await asyncio.sleep(self.debounce)
                self._wake.clear()
                if not self._connected:
                    await self._reconnect()
                    next_refresh = loop.time() + self.refresh
                    continue
                names, self._pending = self._pending, set()
                for name in sorted(names):
                    self.index = await self.index.reload(self.pool, name)
                    self.reloads += 1
                    log.info("bank_reloaded", bank=name, entries=self.index.counts().get(name))
                if loop.time() >= next_refresh:
                    if self._conn is not None:
                        await self._conn.execute("SELECT 1")  # a silently dead link shows here
                    verify = (self.refreshes + 1) % self.count_every == 0
                    self.index = await self.index.refresh(self.pool, verify=verify)
                    self.refreshes += 1
                    next_refresh = loop.time() + self.refresh
                await self._compact()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever went wrong, keep watching: giving up would freeze the index.
                log.warning("bank_watch_failed", error=f"{type(exc).__name__}: {exc}")
                self.failures += 1
                self._connected = False
                self._wake.set()

    async def _compact(self) -> None:
        """Fold changes into the main tables once there are many (pending changes slow
        queries and adds; compacting takes seconds at 10M, in a thread, while queries
        go on)."""
        for bank in self.index.banks.values():
            for index in bank.indexes.values():
                if index.pending > _COMPACT_MIN:
                    await asyncio.to_thread(index.compact)

    async def _reconnect(self) -> None:
        delay = 0.1
        while True:
            await self._unlisten()
            try:
                await self._listen()
                self._pending.clear()  # the refresh below covers them
                # What notifications were lost is past the marks (or moved changed_at,
                # or the counts): no bank is read whole, nor held twice, for a blip.
                self.index = await self.index.refresh(self.pool, verify=True)
                self.reconnects += 1
            except Exception as exc:
                self.failures += 1
                log.warning(
                    "bank_watch_reconnect_failed", error=f"{type(exc).__name__}: {exc}", retry=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            log.info("bank_watch_reconnected", entries=len(self.index))
            return
