"""``sluice user``: the people who use the admin door, their roles and API tokens.

The first admin is made here (``sluice user add NAME --role admin``): the password is
read from the terminal, or from stdin's first line when stdin is not a terminal
(scripts), never from the command line, where ``ps`` would show it. What is done here
goes to the audit log as ``cli:USER``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from relay.cli.bootstrap import Commands, configured, connected
from relay.errors import SluiceError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["register"]

_Action = Callable[[argparse.Namespace, "asyncpg.Pool"], Awaitable[int]]


def _who() -> str:
    """The local user running the command, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (containers)
        return "cli"


def _password(name: str) -> str:
    """From the terminal (asked twice), or stdin's first line when stdin is no terminal."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("the same again: ") != first:
            raise SluiceError("the two passwords differ; nothing was changed")
        return first
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise SluiceError("no password on stdin (its first line is the password)")
    return line


def _on_database(action: _Action, *, asks_password: bool = False) -> Callable[..., int]:
    """Run ``action(args, pool)`` on the configured database; the password, when the
    command needs one, is read first (before anything opens) into ``args.password``."""

    def run(args: argparse.Namespace) -> int:
        config = configured(args.config, evidence_key=False, log_level="warning")
        if asks_password:
            args.password = _password(args.name)

        args.admin = config.admin

        async def with_pool() -> int:
            async with connected(config) as database:
                return await action(args, database.pool)

        return asyncio.run(with_pool())

    return run


async def _add(args: argparse.Namespace, pool: asyncpg.Pool) -> int:
    from relay.people import Accounts, AuditLog

    account = await Accounts.configured(pool, args.admin).add(args.name, args.role, args.password)
    await AuditLog(pool).record(
        _who(), "account.add", detail={"account": account.name, "role": account.role}
    )
    print(json.dumps({"name": account.name, "role": account.role}))
    return 0


async def _set_password(args: argparse.Namespace, pool: asyncpg.Pool) -> int:
    from relay.people import Accounts, AuditLog

    await Accounts.configured(pool, args.admin).set_password(args.name, args.password)
    await AuditLog(pool).record(_who(), "account.password", detail={"account": args.name})
    print(json.dumps({"name": args.name, "password": "changed"}))
    return 0


def _enabled(disabled: bool) -> _Action:
    async def switch(args: argparse.Namespace, pool: asyncpg.Pool) -> int:
        from relay.people import Accounts, AuditLog

        await Accounts(pool).set_disabled(args.name, disabled)
        action = "account.disable" if disabled else "account.enable"
        await AuditLog(pool).record(_who(), action, detail={"account": args.name})
        print(json.dumps({"name": args.name, "disabled": disabled}))
        return 0

    return switch


async def _token(args: argparse.Namespace, pool: asyncpg.Pool) -> int:
    from relay.people import ApiTokens, AuditLog

    issued = await ApiTokens(pool).issue(args.name, args.label)
    await AuditLog(pool).record(
        _who(), "token.issue", detail={"account": args.name, "token": issued.id}
    )
    print(
        f"token {issued.id} for {args.name}; it is shown only now, keep it somewhere safe "
        f"(`sluice user revoke {args.name} --token {issued.id}` ends it)",
        file=sys.stderr,
    )
    print(issued.secret)
    return 0


async def _revoke(args: argparse.Namespace, pool: asyncpg.Pool) -> int:
    from relay.people import Accounts, ApiTokens, AuditLog

    if await Accounts(pool).get(args.name) is None:
        raise SluiceError(f"no account named {args.name!r}")
    count = await ApiTokens(pool).revoke(args.name, args.token)
    await AuditLog(pool).record(
        _who(),
        "token.revoke",
        detail={"account": args.name, "token": args.token or "all", "revoked": count},
    )
    print(json.dumps({"name": args.name, "revoked": count}))
    return 0


async def _list(args: argparse.Namespace, pool: asyncpg.Pool) -> int:
    from relay.people import Accounts, ApiTokens

    tokens = ApiTokens(pool)
    for account in await Accounts(pool).every():
        live = [t.id for t in await tokens.of(account.name) if t.revoked_at is None]
        print(
            json.dumps(
                {
                    "name": account.name,
                    "role": account.role,
                    "disabled": account.disabled,
                    "created_at": account.created_at.isoformat(),
                    "tokens": live,
                }
            )
        )
    return 0


def register(commands: Commands) -> None:
    """``user add|password|disable|enable|token|revoke|list``."""
    user = commands.add_parser(
        "user", help="people who use the admin door: accounts, roles, API tokens"
    ).add_subparsers(dest="user_command", required=True)

    def command(name: str, help: str, run: Callable[..., int]) -> argparse.ArgumentParser:
        parser = user.add_parser(name, help=help)
        parser.add_argument("--config", "-c", help="TOML configuration file")
        parser.set_defaults(run=run)
        return parser

    add = command(
        "add",
        "make an account (the password from the terminal, or stdin's first line)",
        _on_database(_add, asks_password=True),
    )
    add.add_argument("name")
    # relay.people.ROLES, not imported here: argon2 would load for every command
    add.add_argument("--role", required=True, choices=("admin", "moderator"))
    password = command(
        "password",
        "set an account's password (from the terminal, or stdin's first line)",
        _on_database(_set_password, asks_password=True),
    )
    password.add_argument("name")
    for name, disabled, help in (
        ("disable", True, "stop an account: no login, its tokens refused"),
        ("enable", False, "let a disabled account in again"),
    ):
        command(name, help, _on_database(_enabled(disabled))).add_argument("name")
    token = command("token", "print a new API token for an account, once", _on_database(_token))
    token.add_argument("name")
    token.add_argument("--label", help="what the token is for (a machine, a script)")
    revoke = command("revoke", "revoke an account's API tokens", _on_database(_revoke))
    revoke.add_argument("name")
    revoke.add_argument("--token", type=int, help="only this token (its number); default all")
    command("list", "accounts as JSON lines, with their live tokens' numbers", _on_database(_list))
