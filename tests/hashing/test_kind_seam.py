"""A hash kind is the whole seam: a test-only kind (SHA-1 of the bytes), registered and
nothing else changed, goes through import (parser and ``sluice bank import``), the
database, the bank index, the media check on a real loopback-served image, and a
policy rule on its bank's category."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from relay.activity import parse_activity
from relay.banks import BankIndex, parse_hash_file
from relay.config import Config
from relay.hashing import KINDS, by_alias, register, registered, unregister
from relay.hashing.base import HexDigestKind
from relay.hold import Hold
from relay.media.check import MediaCheck
from relay.media.fetch import HashCache, MediaFetcher
from relay.media.hasher import MediaHasher
from relay.network import NetworkPolicy, client_session
from relay.policy import Policy, Rule
from relay.verdict import Disposition
from tests.conftest import start_server

PEN = (
    Path(__file__).parent.parent / "fixtures" / "pdq" / "misc" / "pen-and-coaster.png"
).read_bytes()
PEN_SHA1 = hashlib.sha1(PEN).hexdigest()


class Sha1(HexDigestKind):
    name = "sha1"
    label = "SHA-1"
    algorithm = "sha1"
    hex_length = 40
    aliases = ("hash_sha1",)
    examples = ("da39a3ee5e6b4b0d3255bfef95601890afd80709",)


@pytest.fixture
def sha1() -> Iterator[type[Sha1]]:
    with registered(Sha1) as kind:
        yield kind
    assert "sha1" not in KINDS


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    async def pen(request: web.Request) -> web.Response:
        return web.Response(body=PEN, content_type="image/png")

    app = web.Application()
    app.router.add_get("/pen.png", pen)
    server = await start_server(app)
    yield str(server.make_url("/pen.png"))
    await server.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


def sluice(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI with the test's kind registered, in a process of its own (the CLI
    configures logging for its process)."""
    script = (
        "import sys; from relay.hashing import register; from relay.cli import main; "
        "from tests.hashing.test_kind_seam import Sha1; register(Sha1); "
        "sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent.parent,
    )


async def test_a_registered_kind_goes_from_import_to_a_rule(
    sha1: type[Sha1],
    make_config: Callable[..., Config],
    database_url: str,
    origin: str,
    tmp_path: Path,
) -> None:
    # Import: the kind's name, its alias, and bare lines with --type.
    assert parse_hash_file(f"HASH_SHA1 {PEN_SHA1.upper()} pen\n") == [("sha1", PEN_SHA1, "pen")]
    assert by_alias("hash_sha1") is sha1
    listing = tmp_path / "sha1.txt"
    listing.write_text(f"{PEN_SHA1} the pen\n{Sha1.examples[0]}\n")
    config = make_config().source
    imported = await asyncio.to_thread(
        sluice, "bank", "import", "--config", config, "--bank", "seam", "--category", "test",
        "--type", "sha1", listing,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    listed = await asyncio.to_thread(sluice, "bank", "list", "--json", "--config", config)
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["name"] == "seam" and row["counts"]["sha1"] == 2

    # Index and match: a real image fetched over loopback, hashed by every kind.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        index = await BankIndex.load(pool)
    finally:
        await pool.close()
    assert index.counts() == {"seam": 2}
    policy = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)
    rule = Rule(match="category:test", disposition=Disposition.QUARANTINE)
    document = {"type": "Create", "id": "https://r.example/1", "actor": "https://r.example/u"}
    document["object"] = {"type": "Note", "attachment": [{"type": "Image", "url": origin}]}
    async with client_session(policy) as session:
        check = MediaCheck(
            MediaFetcher(session, policy, max_bytes=1 << 24),
            lambda: index,
            HashCache(0),
            hasher=MediaHasher(workers=1),
        )
        try:
            hold = Hold([check], policy=Policy(rules=(rule,)))
            verdict = await hold.decide(parse_activity(json.dumps(document).encode()))
        finally:
            check.hasher.close()

    # Rule: the bank's category fires, on the new kind's exact match.
    assert verdict.disposition is Disposition.QUARANTINE
    [match] = [s for s in verdict.signals if s.kind == "match"]
    detail: dict[str, Any] = dict(match.detail)
    assert detail["hash_kind"] == "sha1" and detail["value"] == PEN_SHA1
    assert detail["exact"] is True and detail["distance"] == 0
    assert detail["matcher"] == "banks" and detail["category"] == "test"
    assert match.payload == PEN
    [hashed] = [s for s in verdict.signals if s.kind == "hashed"]
    assert hashed.detail["sha1"] == PEN_SHA1


async def test_the_database_takes_a_kind_only_at_its_length(
    sha1: type[Sha1], pool: asyncpg.Pool
) -> None:
    from relay.store import migrate

    await migrate(pool)  # Sluice's start: the registry written into hash_kind
    assert await pool.fetchval("SELECT hex_length FROM hash_kind WHERE name = 'sha1'") == 40
    await migrate(pool)  # again: idempotent
    bank = await pool.fetchval("INSERT INTO bank (name, category) VALUES ('b', 't') RETURNING id")
    insert = "INSERT INTO bank_entry (bank_id, kind, value) VALUES ($1, $2, $3)"
    await pool.execute(insert, bank, "sha1", PEN_SHA1)
    with pytest.raises(asyncpg.CheckViolationError, match="a sha1 hash has 40 hex digits"):
        await pool.execute(insert, bank, "sha1", PEN_SHA1[:-2])
    with pytest.raises(asyncpg.CheckViolationError, match="bank_entry_value_is_hex"):
        await pool.execute(
            "UPDATE bank_entry SET value = $1 WHERE kind = 'sha1'", hashlib.sha256(PEN).hexdigest()
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(insert, bank, "sha3", PEN_SHA1)


async def test_a_kind_stored_at_another_length_is_refused_at_start(pool: asyncpg.Pool) -> None:
    from relay.errors import SluiceError
    from relay.store import migrate

    class Short(Sha1):
        name = "sha1"
        hex_length = 20
        aliases = ()

    with registered(Sha1):
        await migrate(pool)
    with registered(Short), pytest.raises(SluiceError, match=r"sha1 \(40, not 20\)"):
        await migrate(pool)


def test_registering_refuses_a_taken_name_or_alias() -> None:
    class Again(Sha1):
        name = "md5"

    class Alias(Sha1):
        aliases = ("photo_md5",)

    for kind in (Again, Alias):
        with pytest.raises(ValueError, match="already registered"):
            register(kind)
    unregister("sha1")
    assert set(KINDS) == {"pdq", "md5", "sha256"}


@pytest.mark.parametrize("name", ["pdq", "md5", "sha256", "sha1"])
def test_every_kind_indexes_its_examples(name: str) -> None:
    import numpy as np

    with registered(Sha1) if name == "sha1" else nullcontext():
        kind = KINDS[name]
        assert kind.examples and all(kind.validate(e) == e for e in kind.examples)
        assert all(len(e) == kind.hex_length == 2 * kind.size() for e in kind.examples)
        raw = bytes.fromhex("".join(kind.examples))
        hashes = np.frombuffer(raw, np.uint8).reshape(-1, kind.size())
        ids = np.arange(1, len(kind.examples) + 1, dtype=np.int64)
        index = kind.index(hashes, ids, kind.threshold)
        assert len(index) == len(kind.examples)
        last = kind.examples[-1]
        found = index.best(["0" * kind.hex_length, last], kind.threshold)
        assert found is not None
        assert (found.distance, found.entry_id, found.query, found.value) == (0, len(ids), 1, last)
        assert index.best(["f" * kind.hex_length], 0) is None
