"""Who is acting through the admin door: a person's account, or the shared token.

The shared ``[admin]`` token stays for scripts; it acts as an admin and is recorded
in the audit log as ``shared-token``, since it names nobody.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.people.accounts import SHARED_TOKEN, Account

__all__ = ["Principal"]


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    account_id: int | None = None  # None: the shared token

    @classmethod
    def shared(cls) -> Principal:
        return cls(SHARED_TOKEN, "admin")

    @classmethod
    def of(cls, account: Account) -> Principal:
        return cls(account.name, account.role, account.id)

    @property
    def is_person(self) -> bool:
        """True for an account's token: it says who acts, the request body cannot."""
        return self.account_id is not None
