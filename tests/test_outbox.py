"""The durable outbox (issue 12, point 4): effects enqueued once per key, in the caller's
transaction, run at least once with retries, dead-lettered, listed and replayed; one
effect per schedule slot across processes; a runner killed mid-effect loses nothing.
Against real PostgreSQL and real loopback webhooks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from yarl import URL

from relay.effects import EffectFailed
from relay.effects.notify import Notify
from relay.errors import StoreUnavailable
from relay.outbox import Outbox, Pending
from tests.conftest import wait_for
from tests.webhook_support import Webhook

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def outboxes(migrated_pool: asyncpg.Pool) -> AsyncIterator[list[Outbox]]:
    """Outboxes a test starts; stopped at its end."""
    made: list[Outbox] = []
    yield made
    for outbox in made:
        await outbox.stop(grace=1.0)


def quick(pool: asyncpg.Pool, made: list[Outbox], **options: Any) -> Outbox:
    settings: dict[str, Any] = {
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "poll_interval": 0.05,
        "lease": 5.0,
    }
    outbox = Outbox(pool, **(settings | options))
    made.append(outbox)
    return outbox


def note(webhook: Webhook, key: str = "verdict:1:notify:0") -> Pending:
    return Pending("notify", key, {"url": webhook.url, "message": {"event": "verdict"}})


async def state_of(pool: asyncpg.Pool, key: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT state, attempts, last_error FROM effect WHERE key = $1", key)
    assert row is not None
    return row


async def test_delivered_once_with_its_key(
    migrated_pool: asyncpg.Pool, outboxes: list[Outbox], webhook: Webhook, session: Any
) -> None:
    outbox = quick(migrated_pool, outboxes)
    outbox.register("notify", Notify(session))
    assert await outbox.enqueue([note(webhook)]) == 1
    assert await outbox.enqueue([note(webhook)]) == 0  # the same key: nothing added
    await outbox.start()
    await wait_for(lambda: _done(outbox))
    await asyncio.sleep(0.3)  # room for a second POST, were there one
    assert len(webhook.requests) == 1
    sent = webhook.requests[0]
    assert sent.method == "POST"
    assert sent.json() == {"event": "verdict"}
    assert sent.headers["Idempotency-Key"] == "verdict:1:notify:0"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["User-Agent"].startswith("Sluice/")
    row = await state_of(migrated_pool, "verdict:1:notify:0")
    assert (row["state"], row["attempts"]) == ("done", 1)


async def _done(outbox: Outbox) -> bool:
    counts = await outbox.counts()
    return counts["done"] > 0 and counts["pending"] == 0


async def test_enqueued_in_a_rolled_back_transaction_is_nothing(
    migrated_pool: asyncpg.Pool, outboxes: list[Outbox], webhook: Webhook
) -> None:
    outbox = quick(migrated_pool, outboxes)

    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned):
        async with migrated_pool.acquire() as conn, conn.transaction():
            assert await outbox.enqueue([note(webhook)], conn) == 1
            raise Abandoned
    assert await outbox.counts() == {"pending": 0, "done": 0, "dead": 0}
    async with migrated_pool.acquire() as conn, conn.transaction():
        await outbox.enqueue([note(webhook)], conn)
    assert (await outbox.counts())["pending"] == 1


async def test_retried_until_the_webhook_answers(
    migrated_pool: asyncpg.Pool, outboxes: list[Outbox], webhook: Webhook, session: Any
) -> None:
    webhook.script = [503, 503]
    outbox = quick(migrated_pool, outboxes)
    outbox.register("notify", Notify(session))
    await outbox.enqueue([note(webhook)])
    await outbox.start()
    await wait_for(lambda: _done(outbox))
    assert len(webhook.requests) == 3
    assert {r.headers["Idempotency-Key"] for r in webhook.requests} == {"verdict:1:notify:0"}
    row = await state_of(migrated_pool, "verdict:1:notify:0")
    assert (row["state"], row["attempts"], row["last_error"]) == ("done", 3, None)


@pytest.mark.parametrize(("status", "said"), [(400, "400 Bad Request"), (302, "302 Found")])
async def test_refused_is_a_dead_letter_at_once(
    migrated_pool: asyncpg.Pool,
    outboxes: list[Outbox],
    webhook: Webhook,
    session: Any,
    status: int,
    said: str,
) -> None:
    webhook.status = status
    outbox = quick(migrated_pool, outboxes)
    outbox.register("notify", Notify(session))
    await outbox.enqueue([note(webhook)])
    await outbox.start()
    await wait_for(lambda: _count(outbox, "dead"))
    [dead] = await outbox.list("dead")
    assert dead["attempts"] == 1
    assert said in dead["last_error"]
    assert dead["key"] == "verdict:1:notify:0"
    assert len(webhook.requests) == 1  # a redirect is not followed


async def _count(outbox: Outbox, state: str) -> int:
    return (await outbox.counts())[state]


async def _counted(outbox: Outbox, **want: int) -> bool:
    """The effects in each state, but for the periodic jobs a running Sluice adds."""
    counts = await outbox.counts()
    jobs = await outbox.pool.fetch(
        "SELECT state, count(*) AS n FROM effect WHERE key LIKE 'schedule:%' GROUP BY state"
    )
    for job in jobs:
        counts[job["state"]] -= job["n"]
    return all(counts[state] == n for state, n in want.items())


async def test_dead_after_max_attempts_then_replayed(
    migrated_pool: asyncpg.Pool, outboxes: list[Outbox], webhook: Webhook, session: Any
) -> None:
    webhook.status = 500
    outbox = quick(migrated_pool, outboxes, max_attempts=3)
    outbox.register("notify", Notify(session))
    await outbox.enqueue([note(webhook), note(webhook, "verdict:2:notify:0")])
    await outbox.start()
    await wait_for(lambda: _counted(outbox, dead=2))
    assert len(webhook.requests) == 6
    dead = await outbox.list("dead")
    assert {d["attempts"] for d in dead} == {3}
    assert all("500" in d["last_error"] for d in dead)
    assert await outbox.list("done") == []

    webhook.status = 200
    first = min(d["id"] for d in dead)
    assert await outbox.replay([first]) == 1
    await wait_for(lambda: _counted(outbox, done=1, dead=1))
    assert await outbox.replay([first]) == 0  # done, not dead
    assert await outbox.replay(None) == 1
    await wait_for(lambda: _counted(outbox, done=2))
    assert await outbox.counts() == {"pending": 0, "done": 2, "dead": 0}
    assert len(webhook.requests) == 8
    with pytest.raises(ValueError, match="state must be one of"):
        await outbox.list("gone")


async def test_any_exception_is_retried_and_permanent_failure_is_not(
    migrated_pool: asyncpg.Pool, outboxes: list[Outbox]
) -> None:
    seen: list[dict[str, Any]] = []

    class Flaky:
        name = "flaky"
        irreversible = False

        async def run(self, payload: dict[str, Any]) -> None:
            seen.append(payload)
            if payload["n"] == 1 and len([p for p in seen if p["n"] == 1]) == 1:
                raise RuntimeError("once")
            if payload["n"] == 2:
                raise EffectFailed("no such thing", permanent=True)

    outbox = quick(migrated_pool, outboxes)
    outbox.register("flaky", Flaky())
    await outbox.enqueue([Pending("flaky", "a", {"n": 1}), Pending("flaky", "b", {"n": 2})])
    # A kind nobody here can run stays pending: another process may know it.
    await outbox.enqueue([Pending("unknown", "c", {})])
    await outbox.start()
    await wait_for(lambda: _settled(outbox))
    assert (await state_of(migrated_pool, "a"))["attempts"] == 2
    assert (await state_of(migrated_pool, "b"))["last_error"] == "no such thing"
    assert (await state_of(migrated_pool, "c"))["state"] == "pending"
    assert {p["key"] for p in seen} == {"a", "b"}  # the key reaches the handler


async def test_a_deferred_effect_waits_without_spending_its_attempts(
    migrated_pool: asyncpg.Pool, outboxes: list[Outbox]
) -> None:
    """An effect not even tried (a host's circuit open) comes back when it is told, and
    never becomes a dead letter by being put off."""
    tries: list[float] = []

    class Busy:
        name = "busy"
        irreversible = False

        async def run(self, payload: dict[str, Any]) -> None:
            tries.append(asyncio.get_running_loop().time())
            if len(tries) <= 4:
                raise EffectFailed("host resting", deferred=0.05)

    outbox = quick(migrated_pool, outboxes, max_attempts=2)
    outbox.register("busy", Busy())
    await outbox.enqueue([Pending("busy", "d", {})])
    await outbox.start()
    await wait_for(lambda: _counted(outbox, done=1), timeout=10)
    assert len(tries) == 5  # four put off, then done: max_attempts (2) never reached
    assert (await state_of(migrated_pool, "d"))["attempts"] == 1


async def _settled(outbox: Outbox) -> bool:
    counts = await outbox.counts()
    return counts == {"pending": 1, "done": 1, "dead": 1}


async def test_one_effect_per_schedule_slot_across_processes(
    migrated_pool: asyncpg.Pool, outboxes: list[Outbox]
) -> None:
    runs: list[str] = []

    class Tick:
        name = "tick"
        irreversible = False

        async def run(self, payload: dict[str, Any]) -> None:
            runs.append(payload["key"])

    for _ in range(2):
        outbox = quick(migrated_pool, outboxes, poll_interval=0.02)
        outbox.register("tick", Tick())
        outbox.schedule("sweep", 0.25, "tick", {"what": "sweep"})
        await outbox.start()
    await wait_for(lambda: len(set(runs)) >= 4, timeout=10)
    for outbox in outboxes:
        await outbox.stop(grace=1.0)
    keys = [r["key"] for r in await migrated_pool.fetch("SELECT key FROM effect ORDER BY key")]
    assert all(k.startswith("schedule:sweep:") for k in keys)
    assert len(keys) == len(set(keys))
    assert sorted(runs) == sorted(set(runs))  # each slot ran once, by one of the two
    slots = sorted(int(k.rsplit(":", 1)[1]) for k in keys)
    assert slots == list(range(slots[0], slots[0] + len(slots)))  # one per slot, none skipped


_KILLED_RUNNER = """
import asyncio, sys
import aiohttp, asyncpg
from relay.effects.notify import Notify
from relay.outbox import Outbox

async def main() -> None:
    pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
    async with aiohttp.ClientSession() as session:
        outbox = Outbox(pool, lease=1.0, poll_interval=0.05)
        outbox.register("notify", Notify(session, timeout=600))
        await outbox.start()
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_runner_killed_mid_effect_hands_it_on_with_the_same_key(
    database_url: str,
    migrated_pool: asyncpg.Pool,
    outboxes: list[Outbox],
    webhook: Webhook,
    session: Any,
) -> None:
    webhook.hang = True
    first = quick(migrated_pool, outboxes)
    await first.enqueue([note(webhook)])  # enqueued here, nothing registered to run it
    runner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_RUNNER), database_url],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    try:
        await wait_for(lambda: webhook.requests, timeout=30)
        os.kill(runner.pid, signal.SIGKILL)
    finally:
        runner.kill()
        runner.wait()
    row = await state_of(migrated_pool, "verdict:1:notify:0")
    assert (row["state"], row["attempts"]) == ("pending", 1)
    webhook.hang = False
    second = quick(migrated_pool, outboxes)
    second.register("notify", Notify(session))
    await second.start()
    await wait_for(lambda: _done(second), timeout=15)
    assert len(webhook.requests) == 2
    keys = [r.headers["Idempotency-Key"] for r in webhook.requests]
    assert keys == ["verdict:1:notify:0", "verdict:1:notify:0"]
    assert (await state_of(migrated_pool, "verdict:1:notify:0"))["attempts"] == 2


async def test_a_database_gone_is_store_unavailable(
    pg_cluster: str, database_url: str, migrated_pool: asyncpg.Pool
) -> None:
    outbox = Outbox(migrated_pool)
    name = URL(database_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_cluster)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        with pytest.raises(StoreUnavailable):
            await outbox.enqueue([Pending("notify", "k", {})])
        with pytest.raises(StoreUnavailable):
            await outbox.list("dead")
        with pytest.raises(StoreUnavailable):
            await outbox.replay(None)
        with pytest.raises(StoreUnavailable):
            await outbox.counts()
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    await wait_for(lambda: _enqueued(outbox))  # the pool reconnects once it is back


async def _enqueued(outbox: Outbox) -> bool:
    try:
        return await outbox.enqueue([Pending("notify", "k", {})]) == 1
    except StoreUnavailable:
        return False


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    command = str(Path(sys.executable).parent / "sluice")
    return subprocess.run([command, *args], capture_output=True, text=True, timeout=60)


async def test_sluice_effects_list_and_replay(
    make_config: Any, migrated_pool: asyncpg.Pool
) -> None:
    config = make_config()
    outbox = Outbox(migrated_pool)
    await outbox.enqueue(
        [Pending("notify", f"v:{n}", {"url": "http://h.example/"}) for n in (1, 2, 3)]
    )
    await migrated_pool.execute(
        "UPDATE effect SET state = 'dead', attempts = 10, last_error = 'webhook answered 400' "
        "WHERE key <> 'v:3'"
    )
    listed = sluice("effects", "list", "--config", config.source, "--state", "dead")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["key"] for e in entries] == ["v:2", "v:1"]
    assert {e["last_error"] for e in entries} == {"webhook answered 400"}
    everything = sluice("effects", "list", "--config", config.source, "--limit", "1")
    assert [json.loads(line)["key"] for line in everything.stdout.splitlines()] == ["v:3"]

    first = str(entries[1]["id"])
    replayed = sluice("effects", "replay", "--config", config.source, first)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"replayed": 1}
    assert (await state_of(migrated_pool, "v:1"))["attempts"] == 0
    replayed = sluice("effects", "replay", "--config", config.source, "--all")
    assert json.loads(replayed.stdout) == {"replayed": 1}
    assert await outbox.counts() == {"pending": 3, "done": 0, "dead": 0}

    for wrong in ([], ["--all", "1"], ["one"]):
        refused = sluice("effects", "replay", "--config", config.source, *wrong)
        assert refused.returncode == 2
    refused = sluice("effects", "list", "--config", config.source, "--state", "gone")
    assert refused.returncode == 2


async def test_admin_api_lists_and_replays_effects_behind_the_token(
    sluice_factory: Any, monkeypatch: pytest.MonkeyPatch, webhook: Webhook
) -> None:
    plain = await sluice_factory()
    async with plain.session.get(plain.admin_url + "/_sluice/api/effects") as response:
        assert response.status == 403  # no token configured: the API is off
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "s3cret")
    running = await sluice_factory()
    outbox = running.parts.outbox
    assert outbox is not None
    api = running.admin_url + "/_sluice/api"
    auth = {"Authorization": "Bearer s3cret"}
    async with running.session.get(api + "/effects") as response:
        assert response.status == 401
    async with running.session.post(api + "/effects/replay", json={"all": True}) as response:
        assert response.status == 401

    webhook.status = 400  # the running Sluice's own outbox tries it: dead at once
    await outbox.enqueue([note(webhook)])
    await wait_for(lambda: _counted(outbox, dead=1))
    async with running.session.get(
        api + "/effects", params={"state": "dead", "limit": "5"}, headers=auth
    ) as response:
        assert response.status == 200
        [dead] = (await response.json())["effects"]
    assert dead["key"] == "verdict:1:notify:0"
    assert "400" in dead["last_error"]
    for query in ({"state": "gone"}, {"limit": "many"}):
        async with running.session.get(api + "/effects", params=query, headers=auth) as response:
            assert response.status == 400
    for body in ({"ids": "1"}, {"ids": [True]}, [1]):
        async with running.session.post(
            api + "/effects/replay", json=body, headers=auth
        ) as response:
            assert response.status == 400

    webhook.status = 200
    async with running.session.post(
        api + "/effects/replay", json={"ids": [dead["id"]]}, headers=auth
    ) as response:
        assert await response.json() == {"replayed": 1}
    await wait_for(lambda: _counted(outbox, done=1, dead=0))
    assert [r.headers["Idempotency-Key"] for r in webhook.requests] == ["verdict:1:notify:0"] * 2
    async with running.session.post(
        api + "/effects/replay", json={"all": True}, headers=auth
    ) as response:
        assert await response.json() == {"replayed": 0}
