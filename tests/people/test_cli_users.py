"""``sluice user`` as an admin runs it: the first admin from the terminal or stdin,
tokens printed once, listed and revoked, each step in the audit log."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from relay.people import ROLES, Accounts, ApiTokens, AuditLog

SLUICE = str(Path(sys.executable).parent / "sluice")
PASSWORD = "correct horse battery"


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([SLUICE, *args], input=stdin, capture_output=True, text=True, timeout=60)


def on_terminal(args: list[str], typed: list[tuple[str, str]]) -> tuple[int, str, str]:
    """Run ``sluice`` with a pseudo-terminal as stdin; for each (prompt, line), wait for
    the prompt on stderr, then type the line. (exit status, stdout, stderr)"""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [SLUICE, *args],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no controlling terminal: getpass uses stdin, the pty
    )
    os.close(slave)
    assert process.stderr is not None and process.stdout is not None
    seen = b""
    try:
        for prompt, line in typed:
            deadline = time.monotonic() + 30
            while prompt.encode() not in seen:
                assert time.monotonic() < deadline, f"no prompt {prompt!r}: {seen!r}"
                ready, _, _ = select.select([process.stderr], [], [], 1)
                if ready:
                    chunk = os.read(process.stderr.fileno(), 4096)
                    assert chunk, f"stderr closed before {prompt!r}: {seen!r}"
                    seen += chunk
            seen = seen.split(prompt.encode(), 1)[1]
            os.write(master, line.encode() + b"\n")
        out, err = process.communicate(timeout=60)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return process.returncode, out.decode(), seen.decode() + err.decode()


async def test_the_first_admin_comes_from_stdin_and_a_token_is_printed_once(
    make_config: Any, migrated_pool: asyncpg.Pool
) -> None:
    config = make_config()
    added = run(
        "user", "add", "alice", "--role", "admin", "--config", config.source, stdin=PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout) == {"name": "alice", "role": "admin"}
    assert PASSWORD not in added.stdout + added.stderr
    found = await Accounts(migrated_pool).authenticate("alice", PASSWORD, address="local")
    assert found is not None and found.role == "admin"

    for args, stdin, problem in (
        (["add", "alice", "--role", "admin"], PASSWORD, "an account named 'alice' exists already"),
        (["add", "bob", "--role", "moderator"], "short", "the password is too short"),
        (["add", "bob", "--role", "moderator"], "", "no password on stdin"),
        (["password", "nobody"], PASSWORD, "no account named 'nobody'"),
        (["token", "nobody"], "", "no account named 'nobody'"),
    ):
        refused = run("user", *args, "--config", config.source, stdin=stdin + "\n")
        assert (refused.returncode, refused.stdout) == (1, ""), args
        assert problem in refused.stderr, (args, refused.stderr)
    wrong_role = run("user", "add", "bob", "--role", "root", "--config", config.source)
    assert wrong_role.returncode == 2 and "invalid choice: 'root'" in wrong_role.stderr
    assert ROLES == ("admin", "moderator")  # the CLI's choices

    first = run("user", "token", "alice", "--label", "laptop", "--config", config.source)
    second = run("user", "token", "alice", "--config", config.source)
    assert first.returncode == second.returncode == 0, first.stderr
    [secret] = first.stdout.split()
    [other] = second.stdout.split()
    assert secret.startswith("sluice_") and secret != other
    assert "shown only now" in first.stderr and secret not in first.stderr
    tokens = ApiTokens(migrated_pool)
    account = await tokens.resolve(secret)
    assert account is not None and account.name == "alice"

    [listed] = [
        json.loads(line)
        for line in run("user", "list", "--config", config.source).stdout.splitlines()
    ]
    [newest, oldest] = await tokens.of("alice")
    assert listed["name"] == "alice" and listed["role"] == "admin" and not listed["disabled"]
    assert listed["tokens"] == [newest.id, oldest.id]

    revoked = run("user", "revoke", "alice", "--token", str(oldest.id), "--config", config.source)
    assert json.loads(revoked.stdout) == {"name": "alice", "revoked": 1}
    assert await tokens.resolve(secret) is None and await tokens.resolve(other) is not None
    disabled = run("user", "disable", "alice", "--config", config.source)
    assert json.loads(disabled.stdout) == {"name": "alice", "disabled": True}
    assert await tokens.resolve(other) is None

    entries = await AuditLog(migrated_pool).entries()
    assert [e["action"] for e in reversed(entries)] == [
        "account.add",
        "token.issue",
        "token.issue",
        "token.revoke",
        "account.disable",
    ]
    assert all(e["who"].startswith("cli") for e in entries)
    assert entries[1]["detail"] == {"account": "alice", "token": oldest.id, "revoked": 1}


async def test_on_a_terminal_the_password_is_asked_twice_without_echo(
    make_config: Any, migrated_pool: asyncpg.Pool
) -> None:
    config = make_config()
    args = ["user", "add", "mo", "--role", "moderator", "--config", config.source]
    status, out, err = on_terminal(
        args, [("password for mo: ", PASSWORD), ("the same again: ", PASSWORD + "x")]
    )
    assert (status, out) == (1, ""), err
    assert "the two passwords differ" in err
    assert await Accounts(migrated_pool).get("mo") is None

    status, out, err = on_terminal(
        args, [("password for mo: ", PASSWORD), ("the same again: ", PASSWORD)]
    )
    assert status == 0, err
    assert json.loads(out) == {"name": "mo", "role": "moderator"}
    assert PASSWORD not in out + err
    found = await Accounts(migrated_pool).authenticate("mo", PASSWORD, address="local")
    assert found is not None and found.role == "moderator"
