"""Peers' receipts, considered by the honour effect against real key servers and a real
database: honoured into the peer's own bank, or recorded with why not (refused by
peer, by automation, forged, signed by another host's key, replayed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from relay.actor import Actor
from relay.actor.routes import actor_routes
from relay.banks import BankStore
from relay.effects.honour import Honour, carried_receipt, consider
from relay.network import NetworkPolicy, client_session, fetch_json_document
from relay.signature import KeyCache
from relay.store.receipts import ReceiptStore
from relay.trust import TrustRule
from tests.conftest import free_port, start_server
from tests.receipt_support import peer_receipt

PEN = Path(__file__).resolve().parent / "fixtures" / "pdq" / "misc" / "pen-and-coaster.png"
LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)


@pytest.fixture
async def peers(tmp_path: Path) -> AsyncIterator[dict[str, Actor]]:
    """Two peers' Sluice actors on hosts of their own: localhost and 127.0.0.1."""
    found: dict[str, Actor] = {}
    servers = []
    for host in ("localhost", "127.0.0.1"):
        port = free_port()
        actor = Actor.load(f"http://{host}:{port}", key_dir=tmp_path / host)
        assert actor is not None
        app = web.Application()
        app.add_routes(actor_routes(actor))
        servers.append(await start_server(app, port))
        found[host] = actor
    yield found
    for server in servers:
        await server.close()


@pytest.fixture
async def keys() -> AsyncIterator[KeyCache]:
    async with client_session(LOOPBACK) as session:

        async def fetch(url: str) -> Any:
            return await fetch_json_document(session, LOOPBACK, url)

        yield KeyCache(fetch)


def _receipt(peer: Actor, number: int) -> dict[str, Any]:
    return peer_receipt(peer, number, "https://elsewhere.example/notes/1", PEN.read_bytes())


async def _consider(honour: Honour, receipt: dict[str, Any]) -> None:
    [pending] = consider(receipt, via=None)
    await honour.run({**pending.payload, "key": pending.key})


async def _decision(pool: asyncpg.Pool, receipt: dict[str, Any]) -> tuple[bool, str]:
    row = await pool.fetchrow(
        "SELECT honoured, reason FROM received_receipt WHERE id = $1", receipt["id"]
    )
    assert row is not None, receipt["id"]
    return row["honoured"], row["reason"]


async def _bank_sizes(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT b.name, count(e.*) AS n FROM bank b LEFT JOIN bank_entry e ON e.bank_id = b.id "
        "GROUP BY b.name"
    )
    return {row["name"]: row["n"] for row in rows}


def _honour(pool: asyncpg.Pool, keys: KeyCache, *rules: TrustRule) -> Honour:
    return Honour(rules, keys, ReceiptStore(pool), BankStore(pool))


async def test_an_honoured_receipt_fills_the_peers_own_bank_once(
    migrated_pool: asyncpg.Pool, keys: KeyCache, peers: dict[str, Actor]
) -> None:
    peer = peers["localhost"]
    honour = _honour(migrated_pool, keys, TrustRule("localhost", automated=True))
    receipt = peer.sign_object(_receipt(peer, 1))
    await _consider(honour, receipt)
    honoured, reason = await _decision(migrated_pool, receipt)
    assert honoured, reason
    assert reason.endswith("3 new hashes in receipts:localhost:unwanted")
    assert await _bank_sizes(migrated_pool) == {"receipts:localhost:unwanted": 3}
    # Replayed, even after the admin stopped trusting the peer: considered once only.
    await _consider(_honour(migrated_pool, keys), receipt)
    assert await _decision(migrated_pool, receipt) == (honoured, reason)


async def test_refusals_are_recorded_with_why_and_bank_nothing(
    migrated_pool: asyncpg.Pool, keys: KeyCache, peers: dict[str, Actor]
) -> None:
    peer, other = peers["localhost"], peers["127.0.0.1"]
    only_other = _honour(migrated_pool, keys, TrustRule("elsewhere.example", automated=True))
    by_peer = peer.sign_object(_receipt(peer, 1))
    await _consider(only_other, by_peer)
    assert await _decision(migrated_pool, by_peer) == (
        False,
        "no [[trust]] entry covers localhost",
    )
    humans_only = _honour(migrated_pool, keys, TrustRule("localhost"))
    automated = peer.sign_object(_receipt(peer, 2))
    await _consider(humans_only, automated)
    assert await _decision(migrated_pool, automated) == (
        False,
        "a fully automated decision is not enough from localhost",
    )
    trusting = _honour(migrated_pool, keys, TrustRule("*", automated=True))
    forged = peer.sign_object(_receipt(peer, 3))
    forged["contentHash"] = forged["contentHash"][1:]  # one hash dropped after signing
    await _consider(trusting, forged)
    honoured, reason = await _decision(migrated_pool, forged)
    assert not honoured and reason.startswith("not verified: proof does not verify")
    # The other host's key on a receipt in this peer's name: refused before any fetch.
    borrowed = {**_receipt(peer, 4)}
    signed = other.sign_object(borrowed)
    await _consider(trusting, signed)
    honoured, reason = await _decision(migrated_pool, signed)
    assert not honoured and "not verified" in reason and "host" in reason, reason
    assert await _bank_sizes(migrated_pool) == {}


async def test_a_peer_writes_only_into_its_own_bank(
    migrated_pool: asyncpg.Pool, keys: KeyCache, peers: dict[str, Actor]
) -> None:
    banks = BankStore(migrated_pool)
    await banks.ensure("test-known", category="unwanted")
    await banks.ensure("receipts:localhost:unwanted", category="unwanted")
    other = peers["127.0.0.1"]
    receipt = _receipt(other, 1)
    receipt["bank"] = "test-known"  # nothing in a receipt names a bank: ignored
    signed = other.sign_object(receipt)
    await _consider(_honour(migrated_pool, keys, TrustRule("*", automated=True)), signed)
    honoured, reason = await _decision(migrated_pool, signed)
    assert honoured, reason
    assert await _bank_sizes(migrated_pool) == {
        "test-known": 0,
        "receipts:localhost:unwanted": 0,
        "receipts:127.0.0.1:unwanted": 3,
    }


def test_only_a_delete_or_flag_carries_a_receipt() -> None:
    receipt = {"id": "https://peer.example/receipts/1"}
    assert carried_receipt({"type": "Flag", "moderationReceipt": receipt}) == receipt
    assert carried_receipt({"type": "Create", "moderationReceipt": receipt}) is None
    assert carried_receipt({"type": "Delete", "moderationReceipt": "no"}) is None
    [pending] = consider(receipt, via="https://peer.example/actor")
    assert pending.key == "honour:https://peer.example/receipts/1"
    assert consider({"id": ""}, via=None) == []
