"""The `sluice` command as an admin runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

SLUICE = str(Path(sys.executable).parent / "sluice")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=60)


def test_check_config_names_file_line_and_key(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[upstream]\nurl = "http://127.0.0.1:3000"\n')
    result = run("check-config", str(good))
    assert result.returncode == 0
    assert "OK" in result.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream]\nurl = "ftp://x"\n\n[network]\nalow = []\n')
    result = run("check-config", str(bad))
    assert result.returncode == 1
    assert f"{bad}:2: upstream.url:" in result.stderr
    assert f"{bad}:5: network.alow:" in result.stderr
    assert "did you mean `allow`" in result.stderr


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[hold]\non_timeout = "shrug"\n')
    result = run("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "hold.on_timeout" in result.stderr


async def test_dead_letters_listed_and_replayed(
    make_config: Any, database_url: str, tmp_path: Path
) -> None:
    config = make_config()
    pool = await asyncpg.create_pool(database_url)
    from relay.store import migrate

    await migrate(pool)
    row = await pool.fetchval(
        "INSERT INTO activity (ap_id, type, actor, target, headers, body, deadline, state, "
        "last_error) VALUES ('https://a.example/1', 'Create', 'https://a.example/u', '/inbox', "
        "'[]', '{}', now(), 'dead', 'upstream answered 500') RETURNING id"
    )
    listed = run("dead-letters", "--config", config.source)
    assert listed.returncode == 0, listed.stderr
    [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["id"] == row
    assert entry["last_error"] == "upstream answered 500"
    replayed = run("dead-letters", "--config", config.source, "--replay", "all")
    assert json.loads(replayed.stdout) == {"replayed": 1}
    assert await pool.fetchval("SELECT state FROM activity WHERE id = $1", row) == "queued"
    await pool.close()
