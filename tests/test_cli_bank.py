"""`sluice hash` and `sluice bank` as an admin runs them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from relay.banks import BankIndex
from relay.config import Config
from relay.media.hashes import hash_media

SLUICE = str(Path(sys.executable).parent / "sluice")
FIXTURES = Path(__file__).parent / "fixtures"
PDQ = FIXTURES / "pdq"
BANKS = FIXTURES / "banks"
BRIDGE = PDQ / "bridge-mods" / "aaa-orig.jpg"
FLAT = PDQ / "labelme-subset" / "q0003.jpg"  # PDQ quality 3


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SLUICE, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.fixture
def config_file(make_config: Callable[..., Config]) -> Path:
    """A configuration with one [[bank]] table, as an admin would write it."""
    path = Path(make_config().source)
    path.write_text(
        path.read_text()
        + '\n[[bank]]\nname = "configured"\ncategory = "test-bridge"\npdq_max_distance = 20\n'
    )
    return path


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


def listed(config: Path) -> dict[str, dict[str, Any]]:
    result = run("bank", "list", "--json", "--config", config)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}


# -- sluice hash -------------------------------------------------------------------------


def test_hash_prints_one_json_object_per_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    result = run("hash", BRIDGE, FLAT, text, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [list(row) for row in rows] == [["file", "sha256", "md5", "pdq", "quality"]] * 3
    for row, path in zip(rows, (BRIDGE, FLAT, text), strict=True):
        data = path.read_bytes()
        assert row["file"] == str(path)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["md5"] == hashlib.md5(data).hexdigest()
    bridge, flat, notes = rows
    assert bridge["pdq"] == hash_media(BRIDGE.read_bytes()).pdq[0].hash
    assert bridge["pdq"] == bridge["pdq"].lower() and len(bridge["pdq"]) == 64
    assert bridge["quality"] == 100
    assert flat["quality"] == 3
    assert (notes["pdq"], notes["quality"]) == (None, None)
    # No configuration, no database: nothing written where it ran.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_hash_reports_bad_files_and_goes_on(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(BRIDGE.read_bytes()[:300])  # a JPEG cut short
    missing = tmp_path / "missing.jpg"
    result = run("hash", missing, broken, tmp_path, BRIDGE)
    assert result.returncode == 1
    [row] = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["file"] == str(BRIDGE)
    errors = result.stderr.splitlines()
    assert errors[0] == f"{missing}: cannot read: No such file or directory"
    assert errors[1].startswith(f"{broken}: cannot decode image/jpeg")
    assert errors[2] == f"{tmp_path}: cannot read: Is a directory"
    assert len(errors) == 3


# -- sluice bank import --------------------------------------------------------------------


async def test_import_threatexchange_file(config_file: Path, pool: asyncpg.Pool) -> None:
    te = BANKS / "threatexchange.txt"
    args = ("bank", "import", "--config", config_file, "--bank", "bridge")
    result = run(*args, "--category", "test-bridge", te)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "imported 3 new hashes into bridge (0 already there)\n"
    again = run(*args, te)
    assert again.stdout == "imported 0 new hashes into bridge (3 already there)\n"

    bank = listed(config_file)["bridge"]
    assert bank["category"] == "test-bridge"
    assert bank["source"] == "threatexchange.txt"
    assert bank["counts"] == {"md5": 1, "pdq": 1, "sha256": 1}
    # What was imported is what a running Sluice matches on.
    index = await BankIndex.load(pool)
    found = {m.kind: m for m in index.match(hash_media(BRIDGE.read_bytes()))}
    assert sorted(found) == ["md5", "pdq", "sha256"]
    assert 0 < found["pdq"].distance <= 31  # the C++ reference hash, a few bits away


def test_import_csv_and_bare_hashes(config_file: Path) -> None:
    args = ("bank", "import", "--config", config_file, "--bank", "edits")
    result = run(*args, "--category", "test-bridge", BANKS / "bridge.csv")
    assert result.stdout == "imported 4 new hashes into edits (0 already there)\n", result.stderr
    bare = BANKS / "bare-md5.txt"
    result = run(*args, bare)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bare}:2: a bare hash needs its type: write `md5 ")
    assert len(result.stderr.splitlines()) == 4  # every line named
    result = run(*args, "--type", "md5", "--source", "an NGO", bare)
    assert result.stdout == "imported 4 new hashes into edits (0 already there)\n"
    edits = listed(config_file)["edits"]
    assert edits["counts"] == {"md5": 6, "pdq": 1, "sha256": 1}
    assert edits["source"] == "bridge.csv"  # a bank keeps the source it was created with


def test_import_is_all_or_nothing(config_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "list.txt"
    bad.write_text("md5 d35c785545392755e7e4164457657269\n\nmd5 not-a-hash\npdq 00\n")
    result = run("bank", "import", "-c", config_file, "--bank", "b", "--category", "t", bad)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:3: not a MD5 hash: 'not-a-hash' (want 32 hex digits)",
        f"{bad}:4: not a PDQ hash: '00' (want 64 hex digits)",
    ]
    assert "b" not in listed(config_file)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    result = run("bank", "import", "-c", config_file, "--bank", "b", "--category", "t", empty)
    assert (result.returncode, result.stderr) == (1, f"{empty}: no hashes in this file\n")


def test_import_categories(config_file: Path) -> None:
    te = BANKS / "threatexchange.txt"
    base = ("bank", "import", "--config", config_file)
    result = run(*base, "--bank", "new", te)
    assert result.returncode == 1
    assert result.stderr == "no bank named `new`; give a category (--category) to create it\n"
    # A configured bank takes its category from the configuration.
    assert run(*base, "--bank", "configured", te).returncode == 0
    assert listed(config_file)["configured"]["category"] == "test-bridge"
    result = run(*base, "--bank", "configured", "--category", "csam", te)
    assert result.returncode == 1
    assert result.stderr == (
        f"--category csam contradicts {config_file}: bank `configured` has category `test-bridge`\n"
    )
    assert run(*base, "--bank", "other", "--category", "unwanted", te).returncode == 0
    result = run(*base, "--bank", "other", "--category", "csam", te)
    assert result.returncode == 1
    assert "bank `other` has category `unwanted`, not `csam`" in result.stderr


def test_bad_config_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[bank]]\nname = "x"\n')
    result = run("bank", "list", "--config", bad)
    assert result.returncode == 2
    assert f"{bad}:1: bank[0].category: missing required key" in result.stderr


# -- sluice bank list, add-image -------------------------------------------------------------


def test_list(config_file: Path) -> None:
    result = run("bank", "list", "--config", config_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "NAME        CATEGORY     PDQ  MD5  SHA256  CHANGED",
        "configured  test-bridge    0    0       0  never",
    ]
    run(
        "bank", "import", "-c", config_file, "--bank", "zz", "--category", "t", BANKS / "bridge.csv"
    )
    lines = run("bank", "list", "--config", config_file).stdout.splitlines()
    assert lines[0].split() == ["NAME", "CATEGORY", "PDQ", "MD5", "SHA256", "CHANGED"]
    assert lines[1].split() == ["configured", "test-bridge", "0", "0", "0", "never"]
    assert lines[2].split()[:6] == ["zz", "*", "t", "1", "2", "1"]
    assert lines[3].startswith("* not in the configuration")
    rows = listed(config_file)
    assert rows["zz"]["configured"] is False
    assert rows["configured"]["configured"] is True


async def test_add_image(config_file: Path, pool: asyncpg.Pool) -> None:
    args = ("bank", "add-image", "--config", config_file, "--bank", "unwanted-local")
    result = run(*args, "--category", "unwanted", BRIDGE, FLAT)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout == "added 5 new hashes from 2 images into unwanted-local (0 already there)\n"
    )
    assert result.stderr == (
        f"{FLAT}: PDQ quality 3 is too low for a perceptual match (needs 50): "
        "adding only its exact hashes\n"
    )
    assert listed(config_file)["unwanted-local"]["counts"] == {"md5": 2, "pdq": 1, "sha256": 2}
    notes = {r["note"] for r in await pool.fetch("SELECT note FROM bank_entry")}
    assert notes == {"aaa-orig.jpg", "q0003.jpg"}

    # The admin's recurring image now comes back edited, and is caught.
    index = await BankIndex.load(pool)
    blurred = hash_media((PDQ / "bridge-mods" / "blur-a-lot.jpg").read_bytes())
    [found] = index.match(blurred)
    assert (found.bank, found.category, found.kind) == ("unwanted-local", "unwanted", "pdq")

    again = run(*args, BRIDGE)
    assert again.stdout == "added 0 new hashes from 1 image into unwanted-local (3 already there)\n"
    missing = config_file.parent / "missing.png"
    result = run(*args, BRIDGE, missing)
    assert result.returncode == 1
    assert result.stderr == f"{missing}: cannot read: No such file or directory\nnothing added\n"
    assert listed(config_file)["unwanted-local"]["counts"] == {"md5": 2, "pdq": 1, "sha256": 2}
