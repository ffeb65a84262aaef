"""asyncpg's errors stop at the store (issue 12, point 10): with PostgreSQL gone, every
public method of the activity, bank and evidence stores raises StoreUnavailable, one
error its callers handle, and a running Sluice carries on once the database is back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from yarl import URL

from relay.activity import parse_activity
from relay.banks import BankIndex, BankStore, BankWatcher
from relay.envelope import Envelope
from relay.errors import StoreUnavailable
from relay.store.activities import ActivityStore
from relay.verdict import Disposition, Verdict
from tests.conftest import Fediverse, Upstream, wait_for

ACTOR = "https://remote.example/users/a"
HASH = "ab" * 32  # a sha256 value


class Outage:
    """The test's own way into the cluster, to take one database away and bring it back."""

    def __init__(self, admin: asyncpg.Connection, name: str) -> None:
        self.admin = admin
        self.name = name

    async def begin(self) -> None:
        # No new connection is let in, and every one held is cut: gone, as a client sees it.
        await self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        await self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            self.name,
        )

    async def end(self) -> None:
        await self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


@pytest.fixture
async def outage(pg_cluster: str, database_url: str) -> AsyncIterator[Outage]:
    admin = await asyncpg.connect(pg_cluster)
    try:
        yield Outage(admin, URL(database_url).path.lstrip("/"))
    finally:
        await admin.execute(
            f'ALTER DATABASE "{URL(database_url).path.lstrip("/")}" ALLOW_CONNECTIONS true'
        )
        await admin.close()


def activity_document(n: int) -> bytes:
    return json.dumps(
        {
            "@context": "https://www.w3.org/ns/activitystreams",
            "id": f"{ACTOR}/activities/{n}",
            "type": "Create",
            "actor": ACTOR,
            "object": {"id": f"{ACTOR}/statuses/{n}", "type": "Note", "attributedTo": ACTOR},
        }
    ).encode()


async def each_raises_store_unavailable(calls: dict[str, Callable[[], Awaitable[Any]]]) -> None:
    wrong = {}
    for name, call in calls.items():
        try:
            await call()
        except StoreUnavailable as exc:
            assert "database unavailable" in str(exc)
        except Exception as exc:  # what leaked is the finding
            wrong[name] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        else:
            wrong[name] = "returned"
    assert not wrong, wrong


async def test_the_activity_store_raises_store_unavailable_when_the_database_is_gone(
    migrated_pool: asyncpg.Pool, outage: Outage
) -> None:
    store = ActivityStore(
        migrated_pool,
        owner="w",
        lease_seconds=30,
        dedup_window_seconds=60,
        max_age_seconds=60,
        keep_days=1,
    )
    body = activity_document(1)
    envelope = Envelope("POST", "/inbox", (), body, None, time.time())
    stored = await store.insert(envelope, parse_activity(body), signer=ACTOR, key_id=None)
    assert stored is not None
    held = await migrated_pool.acquire()  # a connection taken before the outage
    await outage.begin()
    verdict = Verdict(Disposition.QUARANTINE, "test")

    async def transaction() -> None:
        async with store.transaction():
            pass

    await each_raises_store_unavailable(
        {
            "insert": lambda: store.insert(
                envelope, parse_activity(body), signer=ACTOR, key_id=None
            ),
            "claim": lambda: store.claim(10),
            "renew_leases": lambda: store.renew_leases([stored.id]),
            "decide": lambda: store.decide(stored.id, verdict),
            "transaction": transaction,
            "quarantine": lambda: store.quarantine(held, stored.id, verdict, 1),
            "delivered": lambda: store.delivered(stored.id, 202),
            "refused": lambda: store.refused(stored.id, 400, "no"),
            "retry": lambda: store.retry(stored.id, 500, "later", 1.0),
            "release": lambda: store.release(stored.id),
            "in_review": lambda: store.in_review(),
            "moderate": lambda: store.moderate(stored.id, "approve", "mod"),
            "release_quarantined": lambda: store.release_quarantined(
                stored.id,
                evidence_id=1,
                body=body,
                headers=[],
                remote=None,
                moderator="mod",
                reason="false positive",
            ),
            "dead_letters": lambda: store.dead_letters(),
            "replay": lambda: store.replay(None),
            "get": lambda: store.get(stored.id),
            "counts": lambda: store.counts(),
            "prune_seen": lambda: store.prune_seen(),
            "prune_finished": lambda: store.prune_finished(),
        }
    )
    await outage.end()
    await migrated_pool.release(held)
    assert (await store.get(stored.id) or {}).get("state") == "received"  # and back


async def test_the_bank_store_and_index_raise_store_unavailable_when_the_database_is_gone(
    migrated_pool: asyncpg.Pool, outage: Outage
) -> None:
    banks = BankStore(migrated_pool)
    await banks.ensure("b", "test")
    await banks.add("b", [("sha256", HASH, None)])
    index = await BankIndex.load(migrated_pool)
    await outage.begin()
    await each_raises_store_unavailable(
        {
            "ensure": lambda: banks.ensure("c", "test"),
            "add": lambda: banks.add("b", [("sha256", "cd" * 32, None)]),
            "add nothing": lambda: banks.add("b", []),
            "remove": lambda: banks.remove("b", [("sha256", HASH)]),
            "delete": lambda: banks.delete("b"),
            "list": lambda: banks.list(),
            "BankIndex.load": lambda: BankIndex.load(migrated_pool),
            "BankIndex.reload": lambda: index.reload(migrated_pool, "b"),
            "BankIndex.refresh": lambda: index.refresh(migrated_pool),
            "BankWatcher.start": lambda: BankWatcher(migrated_pool).start(),
        }
    )


async def test_a_running_sluice_delivers_again_after_a_brief_outage(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream, outage: Outage
) -> None:
    # A short lease: the housekeeper renews every 0.3 s, the poller claims every 0.5 s;
    # both run into the outage.
    sluice = await sluice_factory(delivery={"lease_seconds": 0.9})
    carol = fediverse.actor("carol")
    before = carol.activity()
    status, _ = await sluice.post(carol, before)
    assert status == 202
    await wait_for(upstream.inbox_posts)

    await outage.begin()
    await asyncio.sleep(1.5)
    await outage.end()

    after = carol.activity()
    await wait_for(lambda: sluice_accepts(sluice, carol, after))
    await wait_for(lambda: after["id"] in upstream.ids())
    assert upstream.ids() == [before["id"], after["id"]]
    assert not any(task.done() for task in sluice.parts.flow._workers + sluice.parts.flow._loops)


async def sluice_accepts(sluice: Any, actor: Any, activity: dict[str, Any]) -> bool:
    """The first posts after an outage may still meet a pool's dead connections (503)."""
    status, _ = await sluice.post(actor, activity)
    return bool(status == 202)
