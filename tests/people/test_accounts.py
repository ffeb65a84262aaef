"""Accounts, passwords, API tokens and the audit log, on a real PostgreSQL."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import pytest

from relay.people import Accounts, ApiTokens, AuditLog, PeopleError, TooManyAttempts

PASSWORD = "correct horse battery"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_password_is_kept_as_an_argon2id_hash_and_checked(
    migrated_pool: asyncpg.Pool,
) -> None:
    accounts = Accounts(migrated_pool)
    alice = await accounts.add("alice", "admin", PASSWORD)
    assert (alice.name, alice.role, alice.is_admin) == ("alice", "admin", True)
    stored = await migrated_pool.fetchval("SELECT password_hash FROM account WHERE name = 'alice'")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored

    found = await accounts.authenticate("alice", PASSWORD, address="192.0.2.1")
    assert found is not None and found.id == alice.id
    assert await accounts.authenticate("alice", PASSWORD + "!", address="192.0.2.1") is None
    assert await accounts.authenticate("nobody", PASSWORD, address="192.0.2.1") is None

    await accounts.set_password("alice", "another long password")
    assert await accounts.authenticate("alice", PASSWORD, address="192.0.2.1") is None
    assert await accounts.authenticate("alice", "another long password", address="192.0.2.1")

    await accounts.set_disabled("alice", True)
    assert (
        await accounts.authenticate("alice", "another long password", address="192.0.2.9") is None
    )


async def test_bad_names_roles_passwords_and_duplicates_are_refused(
    migrated_pool: asyncpg.Pool,
) -> None:
    accounts = Accounts(migrated_pool)
    await accounts.add("bob", "moderator", PASSWORD)
    with pytest.raises(PeopleError, match="exists already"):
        await accounts.add("bob", "admin", PASSWORD)
    with pytest.raises(PeopleError, match="role must be one of admin, moderator"):
        await accounts.add("carol", "root", PASSWORD)
    with pytest.raises(PeopleError, match="too short"):
        await accounts.add("carol", "admin", "short")
    for name in ("", "shared-token", "a b", "-x", "x" * 65, "cli:me"):
        with pytest.raises(PeopleError, match="not allowed"):
            await accounts.add(name, "admin", PASSWORD)
    assert [a.name for a in await accounts.every()] == ["bob"]
    with pytest.raises(PeopleError, match="no account named 'carol'"):
        await accounts.set_password("carol", PASSWORD)


async def test_logins_are_limited_per_name_and_per_address(migrated_pool: asyncpg.Pool) -> None:
    clock = Clock()
    accounts = Accounts(
        migrated_pool, logins_per_name_per_minute=3, logins_per_address_per_minute=5, clock=clock
    )
    await accounts.add("dora", "moderator", PASSWORD)
    for _ in range(3):
        assert await accounts.authenticate("dora", "guess", address="198.51.100.1") is None
    # The name's bucket is empty: even the right password, from anywhere, waits.
    with pytest.raises(TooManyAttempts) as throttled:
        await accounts.authenticate("dora", PASSWORD, address="198.51.100.2")
    assert 0 < throttled.value.retry_after <= 20
    # The first address has two attempts left for other names, then it waits too.
    for name in ("erin", "frank"):
        assert await accounts.authenticate(name, "guess", address="198.51.100.1") is None
    with pytest.raises(TooManyAttempts):
        await accounts.authenticate("gina", "guess", address="198.51.100.1")
    # A minute on, the buckets are full again.
    clock.now += 60
    found = await accounts.authenticate("dora", PASSWORD, address="198.51.100.1")
    assert found is not None and found.name == "dora"


async def test_a_token_is_shown_once_kept_hashed_and_revocable(
    migrated_pool: asyncpg.Pool,
) -> None:
    accounts, tokens = Accounts(migrated_pool), ApiTokens(migrated_pool)
    await accounts.add("alice", "moderator", PASSWORD)
    first = await tokens.issue("alice", "laptop")
    second = await tokens.issue("alice")
    assert first.secret.startswith("sluice_") and first.secret != second.secret
    stored = {r["digest"] for r in await migrated_pool.fetch("SELECT digest FROM api_token")}
    assert stored == {hashlib.sha256(t.secret.encode()).digest() for t in (first, second)}

    account = await tokens.resolve(first.secret)
    assert account is not None and (account.name, account.role) == ("alice", "moderator")
    assert await tokens.resolve(first.secret + "x") is None
    assert await tokens.resolve("not-a-token") is None
    [newest, oldest] = await tokens.of("alice")
    assert (newest.id, oldest.id, oldest.label) == (second.id, first.id, "laptop")
    assert oldest.last_used_at is not None and newest.last_used_at is None

    assert await tokens.revoke("alice", first.id) == 1
    assert await tokens.resolve(first.secret) is None
    assert await tokens.resolve(second.secret) is not None
    await accounts.set_disabled("alice", True)
    assert await tokens.resolve(second.secret) is None  # a disabled account's tokens stop
    assert await tokens.revoke("alice") == 1
    with pytest.raises(PeopleError, match="no account named 'zed'"):
        await tokens.issue("zed")


async def test_the_audit_log_keeps_who_what_when_and_why(migrated_pool: asyncpg.Pool) -> None:
    audit = AuditLog(migrated_pool)
    first = await audit.record("alice", "release", why="a false positive", detail={"row": 7})
    async with migrated_pool.acquire() as connection, connection.transaction():
        await audit.record("shared-token", "replay", detail={"ids": [1, 2]}, connection=connection)
    entries: list[dict[str, Any]] = await audit.entries()
    assert [(e["who"], e["action"], e["why"], e["detail"]) for e in entries] == [
        ("shared-token", "replay", None, {"ids": [1, 2]}),
        ("alice", "release", "a false positive", {"row": 7}),
    ]
    assert entries[1]["id"] == first and entries[1]["at"] is not None
    assert [e["action"] for e in await audit.entries(who="alice")] == ["release"]
    assert [e["who"] for e in await audit.entries(action="replay")] == ["shared-token"]
