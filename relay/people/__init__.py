"""People: accounts with roles, their API tokens, and the audit log of what they did."""

from relay.people.access import Principal
from relay.people.accounts import (
    ROLES,
    SHARED_TOKEN,
    Account,
    Accounts,
    PeopleError,
    TooManyAttempts,
)
from relay.people.audit import AuditLog
from relay.people.tokens import ApiTokens, IssuedToken, TokenInfo

__all__ = [
    "ROLES",
    "SHARED_TOKEN",
    "Account",
    "Accounts",
    "ApiTokens",
    "AuditLog",
    "IssuedToken",
    "PeopleError",
    "Principal",
    "TokenInfo",
    "TooManyAttempts",
]
