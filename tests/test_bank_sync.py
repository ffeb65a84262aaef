"""Banks that fill themselves (relay.banks.sync): python-threatexchange's real clients
against stand-ins on loopback written from each API's documentation (as the clients
show it): NCMEC's hash sharing API (XML, basic auth, ``from``/``to`` and ``next``
paging) and StopNCII's FetchHashes (JSON, function and subscription keys,
``startTimestamp`` and ``nextPageToken``).

Without python-threatexchange these tests skip, unless SLUICE_REQUIRE_ALL=1 (CI),
where they fail; the test of the missing-extra message always runs.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

import asyncpg
import pytest
from aiohttp import web

from relay.banks import BankStore
from relay.banks.sync import INSTALL_HINT, BankSync, SyncError, sync_status
from tests.conftest import start_server, wait_for

HAVE_TX = importlib.util.find_spec("threatexchange") is not None
REQUIRE_ALL = os.environ.get("SLUICE_REQUIRE_ALL") == "1"


@pytest.fixture
def need_threatexchange() -> None:
    if not HAVE_TX:
        message = f"python-threatexchange is not installed ({INSTALL_HINT})"
        if REQUIRE_ALL:
            pytest.fail(f"SLUICE_REQUIRE_ALL=1 but {message}")
        pytest.skip(message)


_rng = random.Random(16)


def pdq() -> str:
    return "".join(_rng.choice("0123456789abcdef") for _ in range(64))


def md5() -> str:
    return "".join(_rng.choice("0123456789abcdef") for _ in range(32))


async def entries(pool: asyncpg.Pool, bank: str) -> set[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT e.kind, e.value FROM bank_entry e JOIN bank b ON b.id = e.bank_id "
        "WHERE b.name = $1",
        bank,
    )
    return {(r["kind"], r["value"]) for r in rows}


# -- NCMEC: XML over HTTP, basic auth ---------------------------------------------

_NCMEC_DATE = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class NcmecEntry:
    id: str
    member: int
    ts: int
    fingerprints: dict[str, str]
    type: str = "image"
    deleted: bool = False
    classification: str = "A1"


@dataclass
class Ncmec:
    """The hash sharing API's GET /v2/entries: entries whose timestamp lies in
    [from, to], ``size`` a page, ``paging/next`` naming the next page."""

    user: str = "esp"
    password: str = "s3cret"
    size: int = 1000
    failing: bool = False
    entries: list[NcmecEntry] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="x"'})
        self.queries.append(dict(request.query))
        if self.failing:
            return web.Response(status=500, text="down for maintenance")
        # The client writes local time with a Z; read it back the same way.
        start = int(datetime.strptime(request.query["from"], _NCMEC_DATE).timestamp())
        end = int(datetime.strptime(request.query["to"], _NCMEC_DATE).timestamp())
        chosen = sorted((e for e in self.entries if start <= e.ts <= end), key=lambda e: e.id)
        offset = int(request.query.get("start", 0))
        page = chosen[offset : offset + self.size]
        more = offset + self.size < len(chosen)
        return web.Response(
            text=self.xml(page, request, offset, len(chosen) if more else 0),
            content_type="application/xml",
        )

    def xml(self, page: list[NcmecEntry], request: web.Request, offset: int, total: int) -> str:
        parts = ['<?xml version="1.0" encoding="UTF-8"?>']
        parts.append('<queryResult xmlns="https://hashsharing.ncmec.org/hashsharing/v2">')
        for kind in ("image", "video"):
            chosen = [e for e in page if e.type == kind]
            if not chosen:
                continue
            newest = datetime.fromtimestamp(max(e.ts for e in chosen), UTC)
            parts.append(
                f'<{kind}s count="{len(chosen)}" maxTimestamp="{newest.strftime(_NCMEC_DATE)}">'
            )
            for e in chosen:
                tag = ("deleted" + kind.capitalize()) if e.deleted else kind
                parts.append(f'<{tag}><id>{e.id}</id><member id="{e.member}">ESP</member>')
                if not e.deleted:
                    parts.append(f"<classification>{e.classification}</classification>")
                    prints = "".join(f"<{k}>{v}</{k}>" for k, v in e.fingerprints.items())
                    parts.append(f"<fingerprints>{prints}</fingerprints>")
                parts.append(f"</{tag}>")
            parts.append(f"</{kind}s>")
        if total:
            query = (
                f"from={request.query['from']}&to={request.query['to']}"
                f"&start={offset + self.size}&size={self.size}&max={total}"
            )
            parts.append(f"<paging><next>{escape('/v2/entries?' + query)}</next></paging>")
        parts.append("</queryResult>")
        return "".join(parts)


@pytest.fixture
async def ncmec() -> AsyncIterator[Ncmec]:
    stand_in = Ncmec()
    app = web.Application()
    app.router.add_get("/hashsharing/v2/entries", stand_in.handle)
    server = await start_server(app)
    stand_in.url = str(server.make_url("/hashsharing"))
    yield stand_in
    await server.close()


def ncmec_sync(pool: asyncpg.Pool, stand_in: Ncmec, **bounds: Any) -> BankSync:
    return BankSync(
        pool, "ncmec", "ncmec", f"{stand_in.user}:{stand_in.password}", url=stand_in.url, **bounds
    )


async def test_ncmec_sync_adds_continues_removes_and_survives_failure(
    need_threatexchange: None, migrated_pool: asyncpg.Pool, ncmec: Ncmec
) -> None:
    store = BankStore(migrated_pool)
    await store.ensure("ncmec", category="csam", source="ncmec")
    now = int(time.time())
    kept, gone, video = pdq(), pdq(), md5()
    image_md5 = md5()
    ncmec.entries = [
        NcmecEntry("1", 42, now - 600, {"md5": image_md5, "pdq": kept, "pdna": "1,2,3"}),
        NcmecEntry("2", 42, now - 500, {"pdq": gone}),
        NcmecEntry("3", 7, now - 400, {"md5": video, "tmk_pdqf": "abc"}, type="video"),
        NcmecEntry("4", 7, now - 300, {"pdq": "not-a-hash"}),
    ]
    sync = ncmec_sync(migrated_pool, ncmec)

    first = await sync.run()
    assert first.caught_up and first.error is None
    assert await entries(migrated_pool, "ncmec") == {
        ("md5", image_md5),
        ("pdq", kept),
        ("pdq", gone),
        ("md5", video),
    }
    assert first.added == 4 and first.ignored == 3  # pdna, tmk_pdqf, the bad PDQ
    status = await sync.status()
    assert status is not None and status["last_error"] is None and status["caught_up"]
    checkpoint = status["checkpoint"]
    assert checkpoint["get_entries_max_ts"] >= now - 10
    note = await migrated_pool.fetchval("SELECT note FROM bank_entry WHERE value = $1", kept)
    assert note == "ncmec 42-1 A1"

    # Upstream deletes entry 2 (a tombstone: no fingerprints), after the checkpoint.
    await asyncio.sleep(2.2)  # the client fetches up to now - 5 s: let the range grow
    ncmec.entries[1] = NcmecEntry("2", 42, checkpoint["get_entries_max_ts"] + 1, {}, deleted=True)

    ncmec.failing = True
    with pytest.raises(SyncError, match="500"):
        await sync.run()
    failed = await sync.status()
    assert failed is not None
    assert "500" in failed["last_error"] and failed["checkpoint"] == checkpoint
    assert failed["last_ok_at"] == status["last_ok_at"]
    assert ("pdq", gone) in await entries(migrated_pool, "ncmec")

    ncmec.failing = False
    ncmec.queries.clear()
    second = await sync.run()
    assert second.caught_up and second.removed == 1 and second.added == 0
    # It continued from the checkpoint: the first query's `from` is the stored time.
    resumed = datetime.strptime(ncmec.queries[0]["from"], _NCMEC_DATE).timestamp()
    assert int(resumed) == checkpoint["get_entries_max_ts"]
    assert await entries(migrated_pool, "ncmec") == {
        ("md5", image_md5),
        ("pdq", kept),
        ("md5", video),
    }
    after = await sync.status()
    assert after is not None and after["last_error"] is None
    assert after["checkpoint"]["get_entries_max_ts"] > checkpoint["get_entries_max_ts"]
    assert after["added"] == 4 and after["removed"] == 1 and after["records"] == 3


async def test_ncmec_wrong_credentials_are_recorded(
    need_threatexchange: None, migrated_pool: asyncpg.Pool, ncmec: Ncmec
) -> None:
    await BankStore(migrated_pool).ensure("ncmec", category="csam")
    sync = BankSync(migrated_pool, "ncmec", "ncmec", "esp:wrong", url=ncmec.url)
    with pytest.raises(SyncError, match="401"):
        await sync.run()
    status = await sync.status()
    assert status is not None and "401" in status["last_error"] and status["checkpoint"] is None


# -- StopNCII: JSON, function key and subscription key -----------------------------


@dataclass
class StopNcii:
    """GET /v1/FetchHashes: records modified at or after ``startTimestamp`` in time
    order, ``page`` a page, ``nextPageToken`` while ``hasMoreRecords``."""

    function_key: str = "fetch-key"
    subscription_key: str = "sub-key"
    page: int = 2
    records: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def add(self, signal_type: str, value: str, ts: int, status: str = "Active") -> None:
        self.records = [r for r in self.records if r["hashValue"] != value]
        self.records.append(
            {
                "lastModtimestamp": ts,
                "signalType": signal_type,
                "hashValue": value,
                "hashStatus": status,
                "caseNumbers": {"case-1": status},
                "CSPFeedbacks": [],
            }
        )

    async def handle(self, request: web.Request) -> web.Response:
        if (
            request.headers.get("x-functions-key") != self.function_key
            or request.headers.get("Ocp-Apim-Subscription-Key") != self.subscription_key
        ):
            return web.json_response({"message": "unauthorised"}, status=401)
        self.queries.append(dict(request.query))
        start = int(request.query["startTimestamp"])
        size = min(int(request.query["pageSize"]), self.page)
        chosen = sorted(
            (r for r in self.records if r["lastModtimestamp"] >= start),
            key=lambda r: r["lastModtimestamp"],
        )
        offset = int(request.query.get("nextPageToken", 0))
        page = chosen[offset : offset + size]
        more = offset + size < len(chosen)
        return web.json_response(
            {
                "count": len(page),
                "nextPageToken": str(offset + size) if more else None,
                "nextSetTimestamp": page[-1]["lastModtimestamp"] if page else start,
                "hasMoreRecords": more,
                "hashRecords": page,
            }
        )


@pytest.fixture
async def stopncii() -> AsyncIterator[StopNcii]:
    stand_in = StopNcii()
    app = web.Application()
    app.router.add_get("/v1/FetchHashes", stand_in.handle)
    server = await start_server(app)
    stand_in.url = str(server.make_url("/v1"))
    yield stand_in
    await server.close()


async def test_stopncii_bounded_runs_continue_and_withdrawals_leave(
    need_threatexchange: None, migrated_pool: asyncpg.Pool, stopncii: StopNcii
) -> None:
    await BankStore(migrated_pool).ensure("stopncii", category="ncii", source="stopncii")
    hashes = [pdq() for _ in range(5)]
    video = md5()
    for i, value in enumerate(hashes):
        stopncii.add("ImagePDQ", value, 1000 + i)
    stopncii.add("VideoTMK", "f" * 256, 1005)
    stopncii.add("VideoMD5", video, 1006)
    sync = BankSync(
        migrated_pool,
        "stopncii",
        "stopncii",
        f"{stopncii.function_key},{stopncii.subscription_key}",
        url=stopncii.url,
        max_pages=2,
    )

    first = await sync.run()
    assert first.stopped == "pages" and not first.caught_up and first.pages == 2
    assert await entries(migrated_pool, "stopncii") == {("pdq", h) for h in hashes[:4]}
    status = await sync.status()
    assert status is not None and status["checkpoint"]["update_time"] == 1003

    stopncii.queries.clear()
    second = await sync.run()
    # The rest fills its two pages exactly: whether the feed ends is seen next time.
    assert second.fetched == 3 and second.ignored == 1  # VideoTMK
    assert stopncii.queries[0]["startTimestamp"] == "1003"
    assert "nextPageToken" not in stopncii.queries[0]
    assert await entries(migrated_pool, "stopncii") == {("pdq", h) for h in hashes} | {
        ("md5", video)
    }

    # A person withdraws a case: the hash comes back with its new status, and leaves.
    stopncii.add("ImagePDQ", hashes[1], 2000, status="Withdrawn")
    third = await sync.run()
    assert third.removed == 1 and third.caught_up
    assert ("pdq", hashes[1]) not in await entries(migrated_pool, "stopncii")
    (row,) = await sync_status(migrated_pool)
    assert row["bank"] == "stopncii" and row["removed"] == 1 and row["ignored"] == 1
    assert row["last_run"]["removed"] == 1


async def test_a_hash_named_by_two_records_stays_until_both_are_gone(
    need_threatexchange: None, migrated_pool: asyncpg.Pool, ncmec: Ncmec
) -> None:
    await BankStore(migrated_pool).ensure("ncmec", category="csam")
    shared = pdq()
    now = int(time.time())
    ncmec.entries = [
        NcmecEntry("1", 1, now - 100, {"pdq": shared}),
        NcmecEntry("2", 2, now - 90, {"pdq": shared}),
    ]
    sync = ncmec_sync(migrated_pool, ncmec)
    await sync.run()
    await asyncio.sleep(2.2)
    checkpoint = (await sync.status() or {})["checkpoint"]["get_entries_max_ts"]
    ncmec.entries[0] = NcmecEntry("1", 1, checkpoint + 1, {}, deleted=True)
    run = await sync.run()
    assert run.removed == 0 and await entries(migrated_pool, "ncmec") == {("pdq", shared)}


async def test_without_the_extra_run_names_the_install(
    migrated_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await BankStore(migrated_pool).ensure("ncmec", category="csam")
    monkeypatch.setitem(sys.modules, "threatexchange.exchanges.impl.ncmec_api", None)
    sync = BankSync(migrated_pool, "ncmec", "ncmec", "u:p", url="http://127.0.0.1:9")
    with pytest.raises(SyncError, match=r"pip install sluice\[exchanges\]"):
        await sync.run()
    status = await sync.status()
    assert status is not None and INSTALL_HINT in status["last_error"]


async def test_unknown_source_and_bank_are_refused(migrated_pool: asyncpg.Pool) -> None:
    with pytest.raises(SyncError, match="unknown source"):
        BankSync(migrated_pool, "x", "ftp", "")
    with pytest.raises(SyncError, match="no bank named"):
        await BankSync(migrated_pool, "absent", "ncmec", "u:p").run()


async def test_threatexchange_needs_a_privacy_group(
    need_threatexchange: None, migrated_pool: asyncpg.Pool
) -> None:
    await BankStore(migrated_pool).ensure("tx", category="terrorism")
    sync = BankSync(migrated_pool, "tx", "threatexchange", "1234|secret", url="http://127.0.0.1:9")
    with pytest.raises(SyncError, match="privacy_group"):
        await sync.run()
    status = await sync.status()
    assert status is not None and "privacy_group" in status["last_error"]


async def test_a_configured_source_fills_its_bank_in_a_running_sluice(
    need_threatexchange: None,
    sluice_factory: Any,
    ncmec: Ncmec,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "sync-admin")
    secret = tmp_path / "ncmec.secret"
    secret.write_text(f"{ncmec.user}:{ncmec.password}\n")
    listed = pdq()
    ncmec.entries = [NcmecEntry("1", 42, int(time.time()) - 600, {"pdq": listed})]
    sluice = await sluice_factory(
        bank=[
            {
                "name": "shared",
                "category": "test",
                "source": "ncmec",
                "source_url": ncmec.url,
                "source_credentials_file": str(secret),
            }
        ]
    )
    pool = sluice.parts.pool

    async def filled() -> bool:
        return ("pdq", listed) in await entries(pool, "shared")

    await wait_for(filled, timeout=15)

    async def recorded() -> dict[str, Any] | None:
        # The entries commit first, the run's bookkeeping a moment after.
        rows = await sync_status(pool)
        return rows[0] if rows and rows[0]["last_ok_at"] is not None else None

    status = await wait_for(recorded, timeout=15)
    assert status["bank"] == "shared" and status["last_error"] is None
    admin = {"Authorization": "Bearer sync-admin"}
    async with sluice.session.get(
        sluice.admin_url + "/_sluice/api/banks/sync", headers=admin
    ) as response:
        assert response.status == 200
        [listed] = (await response.json())["banks"]
    assert listed["bank"] == "shared" and listed["added"] == 1
    await wait_for(lambda: "shared" in sluice.parts.banks.index.counts(), timeout=5)


async def test_sluice_bank_sync_runs_a_source_once_and_says_what_it_did(
    need_threatexchange: None, make_config: Any, ncmec: Ncmec, tmp_path: Any
) -> None:
    from tests.test_cli_bank import run

    secret = tmp_path / "ncmec.secret"
    secret.write_text(f"{ncmec.user}:{ncmec.password}\n")
    ncmec.entries = [NcmecEntry("1", 42, int(time.time()) - 600, {"pdq": pdq(), "md5": md5()})]
    bank = {
        "name": "shared",
        "category": "test",
        "source": "ncmec",
        "source_url": ncmec.url,
        "source_credentials_file": str(secret),
    }
    config = make_config(bank=[bank]).source
    done = await asyncio.to_thread(run, "bank", "sync", "--config", config)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    counts = json.loads(line)
    assert (counts["bank"], counts["added"], counts["caught_up"]) == ("shared", 2, True)
    missing = await asyncio.to_thread(run, "bank", "sync", "--config", config, "nope")
    assert missing.returncode == 1 and "no [[bank]] with a source named nope" in missing.stderr


def test_check_config_reads_a_synced_banks_credentials_as_serve_would(tmp_path: Any) -> None:
    from relay.config import load_config, startup_problems

    def problems_of(path: Any, environ: dict[str, str]) -> list[Any]:
        return startup_problems(load_config(path, environ=environ), evidence_key=False)

    path = tmp_path / "sluice.toml"
    path.write_text(
        "[[bank]]\n"
        'name = "ncmec"\n'
        'category = "csam"\n'
        'source = "ncmec"\n'
        f'source_credentials_file = "{tmp_path / "missing.secret"}"\n'
    )
    [problem] = [p for p in problems_of(path, environ={}) if p.key.startswith("bank")]
    assert (problem.line, problem.key) == (5, "bank[0].source_credentials_file")
    assert "cannot read" in problem.message and "missing.secret" in problem.message
    (tmp_path / "missing.secret").write_text("esp:s3cret\n")
    assert not [p for p in problems_of(path, environ={}) if p.key.startswith("bank")]
