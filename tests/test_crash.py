"""kill -9 in the middle of a burst loses nothing and delivers nothing twice.

Sluice runs as a real process (``python -m relay serve``) on its embedded
PostgreSQL; the upstream is down during the burst and comes up after the restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Fediverse, Upstream, config_text, start_server, wait_for

BURST = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_sluice(config: Path, admin_port: int, log: Path) -> asyncio.subprocess.Process:
    """Start ``sluice serve``; ready once its admin listener answers /readyz."""
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "relay", "serve", "--config", str(config)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"sluice exited: {log.read_text()[-2000:]}")
            try:
                async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout=60, interval=0.1)
    return process


@pytest.mark.timeout(180)
async def test_kill_9_mid_burst_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, fediverse: Fediverse
) -> None:
    port, upstream_port, admin_port = free_port(), free_port(), free_port()
    config = tmp_path / "sluice.toml"
    config.write_text(
        config_text(
            listen=f"127.0.0.1:{port}",
            upstream_url=f"http://127.0.0.1:{upstream_port}",
            database_url="",  # the embedded PostgreSQL, as on a fresh machine
            data_dir=tmp_path / "data",
            delivery={
                "lease_seconds": 1.0,
                "backoff_initial_seconds": 0.1,
                "backoff_max_seconds": 1.0,
            },
            log={"level": "info"},
            admin={"listen": f"127.0.0.1:{admin_port}"},
        )
    )
    log = tmp_path / "sluice.log"
    alice = fediverse.actor("alice")
    bodies = [json.dumps(alice.activity()).encode() for _ in range(BURST)]
    ids = [json.loads(b)["id"] for b in bodies]
    inbox = f"http://127.0.0.1:{port}/inbox"
    acknowledged: set[int] = set()

    async def send(session: aiohttp.ClientSession, index: int) -> None:
        headers = alice.sign("https://social.example/inbox", bodies[index])
        try:
            async with session.post(inbox, data=bodies[index], headers=headers) as response:
                if response.status == 202:
                    acknowledged.add(index)
        except aiohttp.ClientError:
            pass  # killed mid-request: the sender will try again, as real senders do

    process = await start_sluice(config, admin_port, log)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        burst = asyncio.gather(*(send(session, i) for i in range(BURST)))
        await wait_for(lambda: len(acknowledged) >= BURST // 2, timeout=60, interval=0.001)
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        await burst
    assert BURST // 2 <= len(acknowledged) < BURST, "the kill must land mid-burst"

    process = await start_sluice(config, admin_port, log)
    try:
        async with aiohttp.ClientSession() as session:
            # Real senders retry what was not acknowledged; some of those were stored.
            await asyncio.gather(*(send(session, i) for i in range(BURST) if i not in acknowledged))
        assert len(acknowledged) == BURST

        upstream = Upstream()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", upstream.handle)
        upstream.server = await start_server(app, port=upstream_port)
        try:
            await wait_for(lambda: len(set(upstream.ids())) == BURST, timeout=90, interval=0.2)
            await asyncio.sleep(2.5)  # past a lease: anything left over would show up now
            counts = Counter(upstream.ids())
            assert set(counts) == set(ids)
            assert [i for i, n in counts.items() if n > 1] == []
        finally:
            await upstream.server.close()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0, log.read_text()[-2000:]
    _assert_embedded_postgres_stopped(tmp_path / "data" / "postgres")


def _assert_embedded_postgres_stopped(pgdata: Path) -> Any:
    # A clean exit of the last Sluice stops its embedded PostgreSQL, even after a crash.
    pidfile = pgdata / "postmaster.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().split()[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        os.kill(pid, signal.SIGTERM)
        raise AssertionError("embedded PostgreSQL still running after Sluice exited")
