"""Per-person API tokens: the JSON API's bearer tokens that say who is acting.

A token is shown once, when it is made, and kept only as its SHA-256: a stolen
database does not give working tokens, and 32 random bytes need no slow hash. Tokens
carry a prefix, so the admin door looks up only what could be one, and a token found
in a log or a paste is recognisable as Sluice's.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from relay.people.accounts import Account, PeopleError
from relay.store.db import translating

__all__ = ["PREFIX", "ApiTokens", "IssuedToken", "TokenInfo"]

#: Every per-person token starts with this.
PREFIX = "sluice_"


@dataclass(frozen=True)
class IssuedToken:
    id: int
    account: str
    secret: str  # shown once; not stored


@dataclass(frozen=True)
class TokenInfo:
    id: int
    account: str
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class ApiTokens:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @translating
    async def issue(self, name: str, label: str | None = None) -> IssuedToken:
        """A new token for account ``name``: its secret is in the answer and nowhere else."""
        secret = PREFIX + secrets.token_urlsafe(32)
        token_id = await self.pool.fetchval(
            "INSERT INTO api_token (account_id, digest, label) "
            "SELECT id, $2, $3 FROM account WHERE name = $1 RETURNING id",
            name,
            _digest(secret),
            label,
        )
        if token_id is None:
            raise PeopleError(f"no account named {name!r}")
        return IssuedToken(token_id, name, secret)

    @translating
    async def resolve(self, secret: str) -> Account | None:
        """The account a presented token belongs to; None when it is unknown, revoked,
        or its account is disabled. Marks the token used."""
        if not secret.startswith(PREFIX):
            return None
        row = await self.pool.fetchrow(
            "UPDATE api_token t SET last_used_at = now() FROM account a "
            "WHERE t.digest = $1 AND t.revoked_at IS NULL AND a.id = t.account_id "
            "AND NOT a.disabled "
            "RETURNING a.id, a.name, a.role, a.disabled, a.created_at",
            _digest(secret),
        )
        if row is None:
            return None
        return Account(row["id"], row["name"], row["role"], row["disabled"], row["created_at"])

    @translating
    async def revoke(self, name: str, token_id: int | None = None) -> int:
        """Revoke account ``name``'s token ``token_id``, or all its tokens; how many."""
        done = await self.pool.execute(
            "UPDATE api_token t SET revoked_at = now() FROM account a "
            "WHERE a.name = $1 AND t.account_id = a.id AND t.revoked_at IS NULL "
            "AND ($2::bigint IS NULL OR t.id = $2)",
            name,
            token_id,
        )
        return int(done.rsplit(" ", 1)[1])

    @translating
    async def of(self, name: str) -> list[TokenInfo]:
        """Account ``name``'s tokens, newest first (never their secrets)."""
        rows = await self.pool.fetch(
            "SELECT t.id, a.name, t.label, t.created_at, t.last_used_at, t.revoked_at "
            "FROM api_token t JOIN account a ON a.id = t.account_id WHERE a.name = $1 "
            "ORDER BY t.id DESC",
            name,
        )
        return [
            TokenInfo(
                r["id"], r["name"], r["label"], r["created_at"], r["last_used_at"], r["revoked_at"]
            )
            for r in rows
        ]
