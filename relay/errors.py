"""Sluice's exceptions.

    SluiceError
    ├── ConfigError            the TOML file is wrong (file, line, key)
    ├── SignatureError         a request's signature cannot be accepted
    │   ├── KeyFetchError      the signer's key could not be fetched
    │   └── RateLimited        too many signature checks asked of us; retry later
    ├── FetchError             a remote document or media could not be fetched
    │   └── BlockedAddress     the URL points at a refused address or scheme
    ├── DecodeError            fetched bytes are not what they claim to be
    │   └── ReceiptError       a moderation receipt is malformed (names the field)
    ├── PolicyError            the policy cannot decide
    └── StoreUnavailable       PostgreSQL cannot be reached or cannot take writes now

Lower libraries' errors (aiohttp, asyncpg, cryptography) are translated where
they enter, with ``raise ... from exc``, so callers catch only these.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BlockedAddress",
    "ConfigError",
    "ConfigProblem",
    "DecodeError",
    "FetchError",
    "KeyFetchError",
    "PolicyError",
    "RateLimited",
    "ReceiptError",
    "SignatureError",
    "SluiceError",
    "StoreUnavailable",
]


class SluiceError(Exception):
    """Base class for every error Sluice raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a configuration file, located for the admin."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}"


class ConfigError(SluiceError):
    """The configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SignatureError(SluiceError):
    """A request's signature is missing, malformed, stale or does not verify."""


class KeyFetchError(SignatureError):
    """The signer's public key could not be fetched.

    ``gone`` is true when the origin answered 404 or 410: the actor was deleted,
    which matters for a Delete of that actor (answered 202 and dropped).
    """

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


class RateLimited(SignatureError):
    """Too much to check for this sender right now (object signatures, unknown keys).

    ``retry_after`` is whole seconds, for a 429 answer's Retry-After header.
    """

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FetchError(SluiceError):
    """A remote document or media file could not be fetched.

    ``status`` is the HTTP status when the origin answered, else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BlockedAddress(FetchError):
    """The URL's scheme, host or resolved address is refused by ``[network]``."""


class DecodeError(SluiceError):
    """Fetched bytes could not be decoded (broken JSON, image, bomb)."""


class ReceiptError(DecodeError):
    """A moderation receipt is not what FEP-bc20 says; the message names the field.

    The message may go back to the peer that sent the receipt, so it names the field
    and the problem, never our internals.
    """


class PolicyError(SluiceError):
    """The policy could not reach a decision."""


class StoreUnavailable(SluiceError):
    """PostgreSQL cannot be reached or cannot take the write now; nothing was stored.

    Transient by nature (a restart, a failover, every connection taken): the inbound
    door answers 503 with Retry-After, and the sender retries as it would any
    overloaded server. The message is for the log, never for the sender.
    """
