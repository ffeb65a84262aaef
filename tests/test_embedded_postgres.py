"""The embedded PostgreSQL trusts every local connection, so its socket must stay in its
own 0700 data directory; a data_dir too long for that is refused before pgserver runs."""

from __future__ import annotations

import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.errors import SluiceError
from relay.store.db import EmbeddedPostgres, connect, embedded_socket_problem

SOCKET = "/postgres/.s.PGSQL.5432"
LIMIT = 107  # Linux: sun_path holds 108 bytes, the final NUL included


@pytest.fixture
def outside_basetemp() -> Iterator[Path]:
    """A directory outside pytest's basetemp, which another pytest may reset to 0700
    while PostgreSQL (as the `pgserver` user when we are root) runs in it."""
    path = Path(tempfile.mkdtemp(prefix="sluice-test-embedded-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def data_dir_of(tmp_path: Path, socket_bytes: int) -> Path:
    """A data_dir under ``tmp_path`` whose socket path is ``socket_bytes`` long."""
    base = tmp_path.resolve()
    name = "d" * (socket_bytes - len(str(base)) - 1 - len(SOCKET))
    assert len(name) > 0
    return base / name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the limit is Linux's")
def test_the_limit_is_the_socket_path_limit(tmp_path: Path) -> None:
    assert embedded_socket_problem(data_dir_of(tmp_path, LIMIT)) is None
    problem = embedded_socket_problem(data_dir_of(tmp_path, LIMIT + 1))
    assert problem is not None
    assert f"({LIMIT + 1} bytes), longer than the {LIMIT} bytes" in problem
    assert f"data_dir of at most {LIMIT - len(SOCKET)} bytes" in problem
    assert "[database] url" in problem


async def test_a_data_dir_too_long_for_the_socket_is_refused(outside_basetemp: Path) -> None:
    data_dir = data_dir_of(outside_basetemp, 130)
    data_dir.mkdir()
    database = None
    try:
        with pytest.raises(SluiceError, match=r"longer than the \d+ bytes a Unix socket path"):
            database = await connect("", data_dir)
    finally:
        if database is not None:  # the socket went elsewhere: stop that server
            await database.close()
    # Refused before pgserver ran: no server, no data directory, nothing moved.
    assert not (data_dir / "postgres").exists()


def test_a_short_data_dir_keeps_the_socket_in_the_private_data_directory(
    outside_basetemp: Path,
) -> None:
    embedded = EmbeddedPostgres(outside_basetemp)
    try:
        uri = embedded.start()
        assert embedded._server is not None
        socket_dir = embedded._server.get_postmaster_info().socket_dir
        pgdata = (outside_basetemp / "postgres").resolve()
        assert socket_dir == pgdata
        assert re.search(r"host=(.*)$", uri)[1] == str(pgdata)  # type: ignore[index]
        assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
    finally:
        embedded.stop()
