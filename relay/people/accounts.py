"""Accounts: the people who may use the admin door, their roles and passwords.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory
profile); hashing and verifying take tens of milliseconds of CPU, so they run in a
thread, and ``authenticate`` charges a token bucket per name and per address *before*
verifying: a guesser is slowed, and cannot make Sluice burn CPU on argon2 at will.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from relay.errors import SluiceError
from relay.rate import TokenBuckets
from relay.store.db import translating

if TYPE_CHECKING:
    from relay.config.sluice import AdminConfig

__all__ = [
    "ROLES",
    "SHARED_TOKEN",
    "Account",
    "Accounts",
    "PeopleError",
    "TooManyAttempts",
    "check_name",
]

#: What a role may do: a moderator reviews, releases and lists evidence; an admin
#: everything (relay.doors.admin decides per route).
ROLES = ("admin", "moderator")

#: Who acted, in the audit log, when the shared ``[admin]`` token was used.
SHARED_TOKEN = "shared-token"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PeopleError(SluiceError):
    """An account or token cannot be made or used as asked (the message says why)."""


class TooManyAttempts(PeopleError):
    """Too many logins for this name or from this address; retry after ``retry_after``."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many login attempts, retry in {retry_after:.0f} seconds")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str
    disabled: bool
    created_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def check_name(name: str) -> str:
    """``name`` if it can be an account's name; PeopleError otherwise."""
    if not _NAME.fullmatch(name) or name == SHARED_TOKEN:
        raise PeopleError(
            f"account name {name!r} is not allowed: 1 to 64 letters, digits, '.', '_' or "
            f"'-', starting with a letter or digit, and not {SHARED_TOKEN!r}"
        )
    return name


def _account(row: asyncpg.Record) -> Account:
    return Account(row["id"], row["name"], row["role"], row["disabled"], row["created_at"])


_COLUMNS = "id, name, role, disabled, created_at"


class Accounts:
    """Accounts in PostgreSQL; ``authenticate`` for the login form of the review UI."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        hasher: PasswordHasher | None = None,
        min_password_length: int = 12,
        logins_per_name_per_minute: float = 5,
        logins_per_address_per_minute: float = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.hasher = hasher or PasswordHasher()
        self.min_password_length = min_password_length
        self._per_name = TokenBuckets(logins_per_name_per_minute, clock=clock)
        self._per_address = TokenBuckets(logins_per_address_per_minute, clock=clock)
        self._dummy: str | None = None  # a hash verified for unknown names (even timing)

    @classmethod
    def configured(cls, pool: asyncpg.Pool, admin: AdminConfig) -> Accounts:
        """Accounts with ``[admin]``'s password length and login limits."""
        return cls(
            pool,
            min_password_length=admin.min_password_length,
            logins_per_name_per_minute=admin.logins_per_name_per_minute,
            logins_per_address_per_minute=admin.logins_per_address_per_minute,
        )

    def _check_password(self, password: str) -> None:
        if len(password) < self.min_password_length:
            raise PeopleError(
                f"the password is too short: at least {self.min_password_length} characters"
            )

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    @translating
    async def add(self, name: str, role: str, password: str) -> Account:
        """A new account; PeopleError for a bad name, role or password, or a name taken."""
        check_name(name)
        if role not in ROLES:
            raise PeopleError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        self._check_password(password)
        digest = await self._hash(password)
        try:
            row = await self.pool.fetchrow(
                f"INSERT INTO account (name, role, password_hash) VALUES ($1, $2, $3) "
                f"RETURNING {_COLUMNS}",
                name,
                role,
                digest,
            )
        except asyncpg.UniqueViolationError:
            raise PeopleError(f"an account named {name!r} exists already") from None
        assert row is not None
        return _account(row)

    @translating
    async def set_password(self, name: str, password: str) -> None:
        self._check_password(password)
        digest = await self._hash(password)
        done = await self.pool.execute(
            "UPDATE account SET password_hash = $2 WHERE name = $1", name, digest
        )
        if done.endswith(" 0"):
            raise PeopleError(f"no account named {name!r}")

    @translating
    async def set_disabled(self, name: str, disabled: bool) -> None:
        """A disabled account can neither log in nor use its tokens."""
        done = await self.pool.execute(
            "UPDATE account SET disabled = $2 WHERE name = $1", name, disabled
        )
        if done.endswith(" 0"):
            raise PeopleError(f"no account named {name!r}")

    @translating
    async def get(self, name: str) -> Account | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM account WHERE name = $1", name)
        return None if row is None else _account(row)

    @translating
    async def every(self) -> list[Account]:
        """Every account, by name."""
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM account ORDER BY name")
        return [_account(row) for row in rows]

    async def authenticate(self, name: str, password: str, *, address: str) -> Account | None:
        """The account whose name and password these are, or None (wrong, unknown or
        disabled: the caller cannot tell which). Each attempt costs a token of the
        name's bucket and of the address's; an empty one raises TooManyAttempts
        before any password is looked at."""
        for buckets, key in ((self._per_address, address), (self._per_name, name)):
            wait = buckets.take(key)
            if wait > 0:
                raise TooManyAttempts(wait)
        row = await self._credentials(name)
        if row is None:
            # As long as a real check: the answer's timing does not tell who exists.
            await asyncio.to_thread(self._verify, self._dummy_hash(), password)
            return None
        if not await asyncio.to_thread(self._verify, row["password_hash"], password):
            return None
        if row["disabled"]:
            return None
        if self.hasher.check_needs_rehash(row["password_hash"]):
            await self._rehash(row["id"], password)
        return _account(row)

    @translating
    async def _credentials(self, name: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT {_COLUMNS}, password_hash FROM account WHERE name = $1", name
        )

    @translating
    async def _rehash(self, account_id: int, password: str) -> None:
        digest = await self._hash(password)
        await self.pool.execute(
            "UPDATE account SET password_hash = $2 WHERE id = $1", account_id, digest
        )

    def _verify(self, digest: str, password: str) -> bool:
        try:
            return self.hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self.hasher.hash("not anyone's password")
        return self._dummy
