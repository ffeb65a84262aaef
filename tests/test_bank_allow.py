"""Allow banks: a moderator's false positives, listed by exact hash, never hold again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg
import pytest

from relay.banks import ALLOW, BankIndex, BankStore
from relay.banks import matcher as matcher_module
from relay.banks.matcher import BankMatcher
from relay.media.hashes import hash_media
from relay.media.media import Media
from relay.policy import Policy, Rule
from relay.signal import Signal
from relay.verdict import Disposition

PDQ = Path(__file__).parent / "fixtures" / "pdq"
BRIDGE = PDQ / "bridge-mods" / "aaa-orig.jpg"
EDIT = PDQ / "bridge-mods" / "blur-a-little.jpg"


@pytest.fixture
def pool(migrated_pool: asyncpg.Pool) -> asyncpg.Pool:
    return migrated_pool


def media(path: Path) -> Media:
    data = path.read_bytes()
    return Media.of(data, hash_media(data))


async def signals(pool: asyncpg.Pool, path: Path) -> list[Signal]:
    index = await BankIndex.load(pool)
    return await BankMatcher(lambda: index).match(media(path))


async def entry(pool: asyncpg.Pool, bank: str, kind: str) -> int:
    query = (
        "SELECT e.id FROM bank_entry e JOIN bank b ON b.id = e.bank_id"
        " WHERE b.name = $1 AND e.kind = $2"
    )
    return int(await pool.fetchval(query, bank, kind))


def test_the_category_is_allow() -> None:
    assert ALLOW == matcher_module.ALLOW == "allow"


async def test_an_exact_allow_suppresses_every_bank_match_of_the_file(
    pool: asyncpg.Pool,
) -> None:
    bridge = media(BRIDGE)
    store = BankStore(pool)
    # Listed exactly in one bank, perceptually in another: both are the same file.
    await store.ensure("zeta", "unwanted")
    await store.add("zeta", [("md5", bridge.hashes["md5"][0], None)])
    await store.ensure("alpha", "csam-test")
    await store.add("alpha", [("pdq", bridge.hashes["pdq"][0], None)])
    before = await signals(pool, BRIDGE)
    assert sorted((s.kind, s.source) for s in before) == [("match", "alpha"), ("match", "zeta")]

    await store.ensure("false-positives", ALLOW)
    await store.add(
        "false-positives", [("sha256", hashlib.sha256(BRIDGE.read_bytes()).hexdigest(), "fp")]
    )
    [allowed] = await signals(pool, BRIDGE)
    assert allowed.kind == "allowed"
    assert allowed.source == "false-positives"
    assert allowed.detail == {
        "matcher": "banks",
        "category": "allow",
        "hash_kind": "sha256",
        "entry": await entry(pool, "false-positives", "sha256"),
        "suppressed": ["alpha", "zeta"],
    }
    assert allowed.media is not None and allowed.media.sha256 == bridge.sha256
    assert allowed.targets == {"signal:allowed"}

    # The policy sees nothing to fire on: the file is delivered.
    policy = Policy(
        (
            Rule("zeta", Disposition.REJECT),
            Rule("category:csam-test", Disposition.QUARANTINE),
            Rule("banks", Disposition.REVIEW),
        )
    )
    assert policy.decide(before).disposition == Disposition.QUARANTINE
    assert policy.decide([allowed]).disposition == Disposition.DELIVER


async def test_a_perceptual_allow_suppresses_nothing(pool: asyncpg.Pool) -> None:
    bridge = media(BRIDGE)
    store = BankStore(pool)
    await store.ensure("unwanted", "unwanted")
    await store.add("unwanted", [("md5", bridge.hashes["md5"][0], None)])
    # A PDQ hash in an allow bank: a near-collision could be crafted to match it.
    await store.ensure("false-positives", ALLOW)
    await store.add("false-positives", [("pdq", bridge.hashes["pdq"][0], "fp")])
    index = await BankIndex.load(pool)
    assert {(m.bank, m.exact) for m in index.match(bridge)} == {
        ("unwanted", True),
        ("false-positives", False),
    }

    [found] = await BankMatcher(lambda: index).match(bridge)
    assert (found.kind, found.source) == ("match", "unwanted")
    assert found.detail["category"] == "unwanted"
    # Neither does an edit of the picture, nearer the allowed PDQ than any bank.
    assert await signals(pool, EDIT) == []


async def test_an_allow_bank_alone_yields_no_match(pool: asyncpg.Pool) -> None:
    bridge = media(BRIDGE)
    store = BankStore(pool)
    await store.ensure("false-positives", ALLOW)
    await store.add(
        "false-positives",
        [("sha256", bridge.sha256, None), ("pdq", bridge.hashes["pdq"][0], None)],
    )
    found = await signals(pool, BRIDGE)
    assert [(s.kind, s.source, s.detail["suppressed"]) for s in found] == [
        ("allowed", "false-positives", [])
    ]
    assert not any(s.kind == "match" for s in found)
    # Its PDQ entry alone matches the edit, and says nothing about it.
    assert await signals(pool, EDIT) == []
    # A rule naming the allow bank or its category never fires.
    rules = (
        Rule("false-positives", Disposition.REJECT),
        Rule("category:allow", Disposition.REJECT),
    )
    assert Policy(rules).decide(found).disposition == Disposition.DELIVER


async def test_a_different_file_still_matches(pool: asyncpg.Pool) -> None:
    bridge = media(BRIDGE)
    edit = media(EDIT)
    assert edit.sha256 != bridge.sha256
    store = BankStore(pool)
    await store.ensure("unwanted", "unwanted")
    await store.add("unwanted", [("pdq", bridge.hashes["pdq"][0], None)])
    await store.ensure("false-positives", ALLOW)
    await store.add(
        "false-positives", [("sha256", bridge.sha256, None), ("md5", bridge.hashes["md5"][0], None)]
    )

    assert [s.kind for s in await signals(pool, BRIDGE)] == ["allowed"]
    [found] = await signals(pool, EDIT)
    assert (found.kind, found.source) == ("match", "unwanted")
    assert found.detail["hash_kind"] == "pdq"
    assert found.detail["exact"] is False
    assert found.media is not None and found.media.sha256 == edit.sha256
