"""Start-up: check-config checks what serve checks; a start that fails halfway closes
everything it opened; every command reports a bad configuration, never a traceback."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from relay.app import build_app
from relay.config import Config
from relay.evidence import EvidenceError, EvidenceKey
from tests.conftest import wait_for

SLUICE = str(Path(sys.executable).parent / "sluice")


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=60)


def line_of(path: str, key: str) -> int:
    """The 1-based line of ``key = …`` in the file at ``path``."""
    lines = Path(path).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.startswith(f"{key} = "))


# -- check-config checks what serve checks ---------------------------------------


def _bad_keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Key files serve refuses, and what the refusal says."""
    short = tmp_path / "short.key"
    short.write_text("0123456789\n")
    printable = tmp_path / "password.key"
    printable.write_bytes(b"k" * 32)  # 32 bytes, but a password, not a key
    directory = tmp_path / "keys"
    directory.mkdir()
    return {
        "missing": (tmp_path / "absent.key", "cannot read evidence key file"),
        "unreadable": (directory, "Is a directory"),
        "wrong size": (short, "found 10 characters of text"),
        "printable": (printable, "found 32 characters of text"),
    }


@pytest.mark.parametrize("case", ["missing", "unreadable", "wrong size", "printable"])
def test_check_config_and_serve_refuse_the_same_evidence_key(
    make_config: Callable[..., Config], tmp_path: Path, case: str
) -> None:
    key, says = _bad_keys(tmp_path)[case]
    with pytest.raises(EvidenceError, match=says):  # as serve's start loads it
        EvidenceKey.load(key)
    config = make_config(evidence={"key_file": str(key)})
    line = line_of(config.source, "key_file")

    checked = sluice("check-config", config.source)
    assert checked.returncode == 1, checked.stdout
    assert checked.stdout == ""
    [problem] = checked.stderr.splitlines()
    assert problem.startswith(f"{config.source}:{line}: evidence.key_file: ")
    assert says in problem

    # serve refuses it with the same located line, before it opens anything.
    served = sluice("serve", "--config", config.source)
    assert served.returncode == 2
    assert problem in served.stderr.splitlines()
    assert "Traceback" not in served.stderr


def test_check_config_accepts_the_key_serve_accepts(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    key = tmp_path / "evidence.key"
    EvidenceKey.generate(key)
    config = make_config(evidence={"key_file": str(key)})
    checked = sluice("check-config", config.source)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"OK: {config.source}\n"


@pytest.mark.parametrize(
    ("server", "admin", "refused"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080", True),
        ("127.0.0.1:8080", "0.0.0.0:8080", True),
        ("0.0.0.0:8080", "127.0.0.1:8080", True),
        ("[::1]:8080", "[::1]:8080", True),
        ("127.0.0.1:8080", "127.0.0.1:9090", False),
        ("127.0.0.1:8080", "127.0.0.1:0", False),
        ("127.0.0.1:8080", "", False),
    ],
)
def test_check_config_refuses_an_admin_listener_on_the_server_port(
    tmp_path: Path, server: str, admin: str, refused: bool
) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text(
        f'[server]\nlisten = "{server}"\nhosts = ["social.example"]\n[admin]\nlisten = "{admin}"\n'
    )
    checked = sluice("check-config", str(path))
    if not refused:
        assert (checked.returncode, checked.stderr) == (0, "")
        return
    assert checked.returncode == 1
    assert checked.stderr == (
        f"{path}:5: admin.listen: `{admin}` takes the port of [server] listen (`{server}`): "
        "give the admin listener a port of its own\n"
    )


def test_check_config_refuses_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a directory")
    path = tmp_path / "sluice.toml"
    path.write_text(f'[server]\nhosts = ["social.example"]\n[storage]\ndata_dir = "{data}"\n')
    checked = sluice("check-config", str(path))
    assert checked.returncode == 1
    assert checked.stderr == f"{path}:4: storage.data_dir: {data} is not a directory\n"


# -- every command: a bad configuration is reported, never a traceback -------------

COMMANDS = [
    ("serve",),
    ("dead-letters",),
    ("dead-letters", "--replay", "all"),
    ("bank", "list"),
    ("bank", "import", "--bank", "b", "--category", "csam", "--type", "md5", "HASHES"),
    ("evidence", "list"),
    ("evidence", "audit", "1"),
    ("evidence", "orphans"),
    ("evidence", "show", "1", "--who", "a", "--why", "b"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_reports_a_bad_config(tmp_path: Path, command: tuple[str, ...]) -> None:
    hashes = tmp_path / "hashes.txt"
    hashes.write_text("d41d8cd98f00b204e9800998ecf8427e\n")
    bad = tmp_path / "bad.toml"
    bad.write_text('[hold]\non_timeout = "shrug"\n')
    args = [str(hashes) if a == "HASHES" else a for a in command]
    result = sluice(*args, "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{bad}:2: hold.on_timeout: must be one of")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""

    missing = tmp_path / "absent.toml"
    result = sluice(*args, "--config", str(missing))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{missing}: (file): cannot read: No such file or directory\n"


def test_dead_letters_without_a_database_says_so(make_config: Callable[..., Config]) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = make_config(database={"url": f"postgresql://sluice@127.0.0.1:{port}/sluice"})
    result = sluice("dead-letters", "--config", config.source)
    assert result.returncode == 1
    assert result.stderr.startswith("cannot connect to PostgreSQL: ")
    assert "Traceback" not in result.stderr


def test_dead_letters_replay_takes_row_ids(make_config: Callable[..., Config]) -> None:
    config = make_config()
    result = sluice("dead-letters", "--config", config.source, "--replay", "7", "seven")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "--replay takes row ids (numbers), or `all`\n"


@pytest.mark.parametrize("taken", ["server", "admin"])
def test_serve_on_a_taken_port_says_so(make_config: Callable[..., Config], taken: str) -> None:
    held = _held_port()
    try:
        config = make_config(**{taken: {"listen": f"127.0.0.1:{held.getsockname()[1]}"}})
        result = sluice("serve", "--config", config.source)
    finally:
        held.close()
    assert result.returncode == 1
    assert "cannot start: " in result.stderr
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


# -- a start that fails halfway closes what it opened -----------------------------


def _held_port() -> socket.socket:
    """A listening socket on loopback: its port is taken while the test holds it."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    return held


async def _connections(pg_cluster: str, database_url: str) -> int:
    name = database_url.split("/")[-1].split("?")[0]
    admin = await asyncpg.connect(pg_cluster)
    try:
        return int(
            await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name)
        )
    finally:
        await admin.close()


def _open_sessions(before: set[int]) -> list[aiohttp.ClientSession]:
    gc.collect()
    return [
        o
        for o in gc.get_objects()
        if isinstance(o, aiohttp.ClientSession) and id(o) not in before and not o.closed
    ]


def _sessions() -> set[int]:
    return {id(o) for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession)}


@pytest.mark.parametrize("failing", ["evidence key", "admin port"])
async def test_a_start_that_fails_late_closes_everything_it_opened(
    make_config: Callable[..., Config],
    pg_cluster: str,
    database_url: str,
    tmp_path: Path,
    failing: str,
) -> None:
    held = _held_port()
    bad_key = tmp_path / "evidence.key"
    bad_key.write_text("too short\n")
    if failing == "evidence key":
        # A key file that is fine when the config is read and broken when serve starts.
        config = make_config(evidence={"key_file": str(bad_key)})
        expected: type[BaseException] = EvidenceError
    else:
        config = make_config(admin={"listen": f"127.0.0.1:{held.getsockname()[1]}"})
        expected = OSError
    before = _sessions()
    server = TestServer(build_app(config))
    try:
        with pytest.raises(expected) as failed:
            await server.start_server()
        # The failed start's frames still hold its parts (kept alive by `failed`):
        # every session it made is closed, not merely dropped.
        assert failed.traceback  # keeps the frames
        assert _open_sessions(before) == []
        # The pools (and the bank watcher's LISTEN connection) are closed.
        await _eventually_zero(lambda: _connections(pg_cluster, database_url))
        # No task is left running: not the bank watcher, not the flow's workers.
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == []
    finally:
        held.close()
        await server.close()


async def _eventually_zero(count: Callable[[], Any]) -> None:
    """Wait for ``count()`` to be 0: a closed connection's backend exits just after."""

    async def zero() -> bool:
        return bool(await count() == 0)

    await wait_for(zero, timeout=10)


@pytest.fixture
def short_data_dir() -> Iterator[Path]:
    """A data_dir outside pytest's basetemp (PostgreSQL runs as `pgserver` when we are
    root), short enough for the embedded server's socket."""
    path = Path(tempfile.mkdtemp(prefix="sluice-test-startup-"))
    yield path
    pid_file = path / "postgres" / "postmaster.pid"
    if pid_file.exists():  # left running by a failed start: stop the server it names
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(120)
async def test_a_failed_start_stops_the_embedded_postgresql(
    make_config: Callable[..., Config], short_data_dir: Path, tmp_path: Path
) -> None:
    bad_key = tmp_path / "evidence.key"
    bad_key.write_text("too short\n")
    config = make_config(
        database={"url": ""},
        storage={"data_dir": str(short_data_dir)},
        evidence={"key_file": str(bad_key)},
    )
    assert config.database.url == ""
    server = TestServer(build_app(config))
    try:
        with pytest.raises(EvidenceError):
            await server.start_server()
        # It did start (the failure came after the database), and it is stopped again.
        assert (short_data_dir / "postgres" / "PG_VERSION").exists()
        assert not (short_data_dir / "postgres" / "postmaster.pid").exists()
    finally:
        await server.close()
