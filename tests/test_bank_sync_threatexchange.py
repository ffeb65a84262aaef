"""Banks that fill themselves from Meta's ThreatExchange (relay.banks.sync): the real
python-threatexchange client against a stand-in of the Graph API on loopback, written
from Meta's documentation of ``/<privacy-group>/threat_updates`` and of Graph API errors.

The stand-in is what the client calls: ``GET /v26.0/<group>/threat_updates/`` with
``access_token`` (``app_id|secret``), ``start_time``/``stop_time`` (unix seconds; updates
whose ``last_updated`` lies in [start, stop)), ``limit``, ``fields`` (a selector; only
those fields come back, with ``id``). Updates come ordered by ``last_updated``; a page
names the next one in ``paging.next``, a full URL carrying every parameter and the
``after`` cursor. ``should_delete`` marks an indicator removed from the group. Errors are
``{"error": {"message", "type", "code", "fbtrace_id"}}``: OAuthException code 190 for a
bad token, code 100 for a bad parameter, 500 where the call is not enabled.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp import web

from relay.banks import BankStore
from relay.banks.sync import BankSync, SyncError
from tests.conftest import start_server
from tests.test_bank_sync import entries, md5, need_threatexchange, pdq  # noqa: F401

pytestmark = pytest.mark.usefixtures("need_threatexchange")

_VERSION = "v26.0"  # the client's default; its endpoint_override replaces the whole base

# Code sets on ThreatExchange are shared through a privacy group by these apps.
_OTHER_APP = 777000111


def _selector(text: str) -> dict[str, str | None]:
    """A Graph API field selector (``a,b{c,d{e}}``) as name -> its sub-selector."""
    found: dict[str, str | None] = {}
    depth, start = 0, 0
    for i, char in enumerate(text + ","):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            part = text[start:i].strip()
            start = i + 1
            if part:
                name, brace, rest = part.partition("{")
                found[name] = rest[:-1] if brace else None
    return found


def _project(value: dict[str, Any], selector: dict[str, str | None]) -> dict[str, Any]:
    """Only the fields asked for (and ``id``), as the Graph API answers."""
    out: dict[str, Any] = {"id": value["id"]} if "id" in value else {}
    for name, sub in selector.items():
        if name not in value:
            continue
        item = value[name]
        if sub is not None and isinstance(item, dict) and "data" in item:
            item = {"data": [_project(d, _selector(sub)) for d in item["data"]]}
        elif sub is not None and isinstance(item, dict):
            item = _project(item, _selector(sub))
        out[name] = item
    return out


def graph_error(
    status: int, message: str, kind: str, code: int, subcode: int | None = None
) -> web.Response:
    """The Graph API's error answer (developers.facebook.com/docs/graph-api/guides/
    error-handling); OAuth errors also say so in WWW-Authenticate."""
    error: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = "AbCdEfGh123"
    headers = {}
    if kind == "OAuthException":
        headers["WWW-Authenticate"] = f'OAuth "Facebook Platform" "invalid_token" "{message}"'
    return web.json_response({"error": error}, status=status, headers=headers)


@dataclass
class Fault:
    """An answer served instead of a page: on requests for offsets >= ``from_offset``."""

    status: int
    body: str
    content_type: str = "application/json"
    from_offset: int = 0


@dataclass
class ThreatExchange:
    """GET /v26.0/<privacy-group>/threat_updates/ over a list of indicator updates."""

    app_id: int = 1029384756
    secret: str = "a1B2c3D4e5F6g7H8i9J0kLmN"
    group: int = 303030303
    max_limit: int = 2  # the server's page cap, below the client's 100, so pages happen
    updates: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    queries: list[dict[str, str]] = field(default_factory=list)
    fault: Fault | None = None
    stall: asyncio.Event | None = None
    url: str = ""
    _ids: int = 100

    @property
    def token(self) -> str:
        return f"{self.app_id}|{self.secret}"

    def put(
        self,
        kind: str,
        indicator: str,
        ts: int,
        *,
        status: str = "MALICIOUS",
        tags: tuple[str, ...] = (),
        owner: int = _OTHER_APP,
    ) -> None:
        """An opinion created or updated: the indicator moves to the end of the list."""
        self._ids += 1
        old = self.updates.pop((kind, indicator), None)
        self.updates[(kind, indicator)] = {
            "id": old["id"] if old else str(self._ids),
            "indicator": indicator,
            "type": kind,
            "last_updated": ts,
            "should_delete": False,
            "descriptors": {
                "data": [
                    {
                        "id": str(self._ids + 10_000),
                        "owner": {"id": str(owner), "name": "A member"},
                        "status": status,
                        "added_on": "2024-01-02T03:04:05+0000",
                        "tags": {
                            "data": [{"id": str(900 + i), "text": t} for i, t in enumerate(tags)]
                        },
                        "reactions": [],
                        "my_reactions": [],
                        "description": "benign stand-in data",
                    }
                ]
            },
        }

    def remove(self, kind: str, indicator: str, ts: int) -> None:
        """The indicator left the group: a tombstone, kept 90 days upstream."""
        old = self.updates.pop((kind, indicator))
        self.updates[(kind, indicator)] = {
            "id": old["id"],
            "indicator": indicator,
            "type": kind,
            "last_updated": ts,
            "should_delete": True,
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        self.queries.append(dict(query))
        if query.get("access_token") != self.token:
            return graph_error(
                400, "Invalid OAuth access token - Cannot parse access token", "OAuthException", 190
            )
        if request.match_info["group"] != str(self.group):
            return graph_error(
                400,
                f"Unsupported get request. Object with ID '{request.match_info['group']}' "
                "does not exist, cannot be loaded due to missing permissions, or does not "
                "support this operation.",
                "GraphMethodException",
                100,
                33,
            )
        try:
            start = int(query.get("start_time") or 0)
            stop = int(query["stop_time"]) if query.get("stop_time") else None
            limit = max(1, min(int(query.get("limit") or 25), self.max_limit))
            offset = int(base64.urlsafe_b64decode(query.get("after", "MA==")).decode())
        except (ValueError, binascii.Error):
            return graph_error(400, "(#100) Invalid parameter", "OAuthException", 100)
        if self.stall is not None:
            await self.stall.wait()
        if self.fault is not None and offset >= self.fault.from_offset:
            return web.Response(
                status=self.fault.status,
                text=self.fault.body,
                content_type=self.fault.content_type,
            )
        chosen = sorted(
            (
                u
                for u in self.updates.values()
                if u["last_updated"] >= start and (stop is None or u["last_updated"] < stop)
            ),
            key=lambda u: (u["last_updated"], int(u["id"])),
        )
        selector = _selector(query.get("fields", "id"))
        page = [_project(u, selector) for u in chosen[offset : offset + limit]]
        if not page:
            return web.json_response({"data": []})

        def cursor(at: int) -> str:
            return base64.urlsafe_b64encode(str(at).encode()).decode()

        paging: dict[str, Any] = {
            "cursors": {"before": cursor(offset), "after": cursor(offset + len(page))}
        }
        if offset + len(page) < len(chosen):
            paging["next"] = str(request.url.update_query({"after": cursor(offset + len(page))}))
        return web.json_response({"data": page, "paging": paging})


@pytest.fixture
async def threatexchange() -> AsyncIterator[ThreatExchange]:
    stand_in = ThreatExchange()
    app = web.Application()
    app.router.add_get(f"/{_VERSION}/{{group}}/threat_updates/", stand_in.handle)
    app.router.add_get(f"/{_VERSION}/{{group}}/threat_updates", stand_in.handle)
    server = await start_server(app)
    stand_in.url = str(server.make_url(f"/{_VERSION}"))
    yield stand_in
    if stand_in.stall is not None:
        stand_in.stall.set()
    await server.close()


def tx_sync(pool: asyncpg.Pool, stand_in: ThreatExchange, **bounds: Any) -> BankSync:
    return BankSync(
        pool,
        "tx",
        "threatexchange",
        stand_in.token,
        url=stand_in.url,
        options={"privacy_group": str(stand_in.group)},
        **bounds,
    )


async def _fill(pool: asyncpg.Pool, tx: ThreatExchange) -> tuple[BankSync, dict[str, Any]]:
    """A bank synced once from two PDQ hashes and an MD5: the sync and its status."""
    await BankStore(pool).ensure("tx", category="csam", source="threatexchange")
    now = int(time.time())
    tx.put("HASH_PDQ", pdq(), now - 300)
    tx.put("HASH_PDQ", pdq(), now - 200)
    tx.put("HASH_MD5", md5(), now - 100)
    sync = tx_sync(pool, tx)
    run = await sync.run()
    assert run.caught_up and run.added == 3
    status = await sync.status()
    assert status is not None and status["checkpoint"]["update_time"] == now - 100
    return sync, status


async def test_a_first_sync_fills_the_bank_page_by_page_and_records_its_checkpoint(
    migrated_pool: asyncpg.Pool, threatexchange: ThreatExchange
) -> None:
    await BankStore(migrated_pool).ensure("tx", category="csam", source="threatexchange")
    now = int(time.time())
    listed, other, image_md5, video_md5 = pdq(), pdq(), md5(), md5()
    tx = threatexchange
    tx.put("HASH_PDQ", listed.upper(), now - 900, tags=("csam", "media_type_photo"))
    tx.put("HASH_MD5", image_md5, now - 800)
    tx.put("URI", "https://example.org/not-a-hash", now - 700)  # not a kind Sluice banks
    tx.put("HASH_VIDEO_MD5", video_md5, now - 600)
    tx.put("HASH_PDQ", "not-a-hash", now - 500)
    tx.put("HASH_PDQ", other, now - 400)
    sync = tx_sync(migrated_pool, tx)

    run = await sync.run()

    assert run.error is None and run.caught_up and run.stopped is None
    assert (run.pages, run.fetched, run.added, run.ignored) == (3, 5, 4, 2)
    assert await entries(migrated_pool, "tx") == {
        ("pdq", listed),  # normalised to lower case
        ("md5", image_md5),
        ("md5", video_md5),
        ("pdq", other),
    }
    note = await migrated_pool.fetchval("SELECT note FROM bank_entry WHERE value = $1", listed)
    assert note == "threatexchange csam media_type_photo"
    status = await sync.status()
    assert status is not None and status["last_error"] is None and status["caught_up"]
    assert status["checkpoint"]["update_time"] == now - 400
    assert abs(status["checkpoint"]["last_fetch_time"] - now) < 60
    assert status["records"] == 4 and status["ignored"] == 2

    # What the client sent: no start time the first time, the selector naming what it
    # reads, then each page through the URL the previous one named, token included.
    first, *rest = tx.queries
    assert "start_time" not in first and first["access_token"] == tx.token
    asked = _selector(first["fields"])
    assert {"indicator", "type", "last_updated", "should_delete", "descriptors"} <= set(asked)
    assert len(rest) == 2 and all(q["access_token"] == tx.token and "after" in q for q in rest)


async def test_a_second_sync_continues_from_the_checkpoint_and_deletions_leave(
    migrated_pool: asyncpg.Pool, threatexchange: ThreatExchange
) -> None:
    tx = threatexchange
    sync, before = await _fill(migrated_pool, tx)
    checkpoint = before["checkpoint"]["update_time"]
    (gone_kind, gone), (_, kept), _ = list(tx.updates)
    added = pdq()
    tx.remove(gone_kind, gone, checkpoint + 10)
    tx.put("HASH_PDQ", added, checkpoint + 20)
    tx.queries.clear()

    run = await sync.run()

    assert run.error is None and run.caught_up
    # The stand-in answered from the stored time on: the last update again (start_time
    # is inclusive), the tombstone and the new hash; nothing older.
    assert tx.queries[0]["start_time"] == str(checkpoint)
    assert (run.fetched, run.added, run.removed) == (3, 1, 1)
    hashes = await entries(migrated_pool, "tx")
    assert ("pdq", gone) not in hashes and ("pdq", kept) in hashes and ("pdq", added) in hashes
    assert len(hashes) == 3
    after = await sync.status()
    assert after is not None and after["checkpoint"]["update_time"] == checkpoint + 20
    assert after["removed"] == 1 and after["records"] == 3
    # The tombstone's record is gone: a later update of it counts as new again.
    tx.put(gone_kind, gone, checkpoint + 30)
    again = await sync.run()
    assert again.added == 1 and ("pdq", gone) in await entries(migrated_pool, "tx")


@pytest.mark.parametrize("status", [400, 401])
async def test_a_wrong_token_is_a_recorded_failure_that_changes_nothing(
    migrated_pool: asyncpg.Pool, threatexchange: ThreatExchange, status: int
) -> None:
    tx = threatexchange
    sync, before = await _fill(migrated_pool, tx)
    hashes = await entries(migrated_pool, "tx")
    tx.put("HASH_PDQ", pdq(), before["checkpoint"]["update_time"] + 5)
    tx.fault = Fault(
        status,
        '{"error": {"message": "Error validating access token: The session has been '
        'invalidated because the user changed their password.", "type": "OAuthException", '
        '"code": 190, "error_subcode": 460, "fbtrace_id": "AbCdEfGh123"}}',
    )

    with pytest.raises(SyncError, match=str(status)):
        await sync.run()

    failed = await sync.status()
    assert failed is not None and str(status) in failed["last_error"]
    assert failed["checkpoint"] == before["checkpoint"]
    assert failed["last_ok_at"] == before["last_ok_at"] and failed["added"] == 3
    assert await entries(migrated_pool, "tx") == hashes


async def test_a_token_the_graph_api_refuses_is_recorded_as_a_failure(
    migrated_pool: asyncpg.Pool, threatexchange: ThreatExchange
) -> None:
    """The stand-in's own check: the client sends the configured token as access_token."""
    await BankStore(migrated_pool).ensure("tx", category="csam", source="threatexchange")
    threatexchange.put("HASH_PDQ", pdq(), int(time.time()))
    sync = BankSync(
        migrated_pool,
        "tx",
        "threatexchange",
        f"{threatexchange.app_id}|wrongwrongwrongwrongwrong",
        url=threatexchange.url,
        options={"privacy_group": str(threatexchange.group)},
    )
    with pytest.raises(SyncError, match="400"):
        await sync.run()
    status = await sync.status()
    assert status is not None and "400" in status["last_error"] and status["checkpoint"] is None
    assert await entries(migrated_pool, "tx") == set()


@pytest.mark.parametrize(
    ("status", "kind", "code", "words"),
    [
        (400, "OAuthException", 190, "Invalid OAuth access token"),
        (401, "OAuthException", 190, "Invalid OAuth access token"),
        (500, "OAuthException", 2, "An unexpected error has occurred"),
    ],
)
async def test_a_graph_api_error_is_named_and_the_token_is_never_recorded(
    migrated_pool: asyncpg.Pool,
    threatexchange: ThreatExchange,
    status: int,
    kind: str,
    code: int,
    words: str,
) -> None:
    await BankStore(migrated_pool).ensure("tx", category="csam", source="threatexchange")
    threatexchange.fault = Fault(
        status,
        f'{{"error": {{"message": "{words}.", "type": "{kind}", "code": {code}, '
        '"fbtrace_id": "AbCdEfGh123"}}',
    )
    sync = tx_sync(migrated_pool, threatexchange)
    with pytest.raises(SyncError) as raised:
        await sync.run()
    recorded = (await sync.status() or {})["last_error"]
    secret = threatexchange.secret
    for text in (str(raised.value), recorded):
        assert secret not in text and quote(threatexchange.token, safe="") not in text
        assert str(status) in text and kind in text and str(code) in text and words in text


_MALFORMED = {
    "500 with the Graph API's error": Fault(
        500,
        '{"error": {"message": "An unexpected error has occurred. Please retry your request '
        'later.", "type": "OAuthException", "code": 2, "is_transient": true}}',
    ),
    "502 from a proxy, in HTML": Fault(502, "<html>Bad Gateway</html>", "text/html"),
    "200 that is not JSON": Fault(200, "<html>maintenance</html>", "text/html"),
    "200 with a JSON list": Fault(200, "[1, 2, 3]"),
    "200 whose data is not a list": Fault(200, '{"data": "nothing"}'),
    "200 with an update missing its fields": Fault(200, '{"data": [{"id": "1"}]}'),
    "200 with last_updated not a number": Fault(
        200,
        '{"data": [{"id": "1", "indicator": "x", "type": "HASH_MD5", "last_updated": "soon", '
        '"should_delete": false, "descriptors": {"data": []}}]}',
    ),
    "200 with descriptors of the wrong shape": Fault(
        200,
        '{"data": [{"id": "1", "indicator": "x", "type": "HASH_MD5", "last_updated": 1, '
        '"should_delete": false, "descriptors": [1]}]}',
    ),
}


@pytest.mark.parametrize("fault", list(_MALFORMED.values()), ids=list(_MALFORMED))
async def test_a_server_error_or_malformed_page_is_a_recorded_failure_and_resumes(
    migrated_pool: asyncpg.Pool, threatexchange: ThreatExchange, fault: Fault
) -> None:
    tx = threatexchange
    sync, before = await _fill(migrated_pool, tx)
    start = before["checkpoint"]["update_time"]
    fresh = [pdq() for _ in range(3)]
    for i, value in enumerate(fresh):
        tx.put("HASH_PDQ", value, start + 10 * (i + 1))
    # The first page (the last update again, and fresh[0]) is good; the second is not.
    tx.fault = replace(fault, from_offset=2)

    with pytest.raises(SyncError):
        await sync.run()

    failed = await sync.status()
    assert failed is not None and failed["last_error"]
    assert failed["last_ok_at"] == before["last_ok_at"]
    # The good page is kept with its checkpoint; what came after it is not.
    assert failed["checkpoint"]["update_time"] == start + 10
    hashes = await entries(migrated_pool, "tx")
    assert ("pdq", fresh[0]) in hashes and not {("pdq", fresh[1]), ("pdq", fresh[2])} & hashes

    tx.fault = None
    tx.queries.clear()
    run = await sync.run()
    assert run.error is None and run.caught_up and run.added == 2
    assert tx.queries[0]["start_time"] == str(start + 10)
    healed = await sync.status()
    assert healed is not None and healed["last_error"] is None


async def test_a_stalled_answer_is_bounded_by_the_page_timeout(
    migrated_pool: asyncpg.Pool, threatexchange: ThreatExchange
) -> None:
    """Sluice's page timeout bounds a page before the request's own (60 s) would."""
    await BankStore(migrated_pool).ensure("tx", category="csam", source="threatexchange")
    threatexchange.put("HASH_PDQ", pdq(), int(time.time()))
    threatexchange.stall = asyncio.Event()
    sync = tx_sync(migrated_pool, threatexchange, page_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(SyncError, match="no page within 1s"):
        await sync.run()
    assert time.monotonic() - started < 10
    status = await sync.status()
    assert status is not None and "no page within" in status["last_error"]
    threatexchange.stall.set()  # the abandoned thread's request ends; nothing is applied
    await asyncio.sleep(0.2)
    assert await entries(migrated_pool, "tx") == set()


async def test_nothing_to_fetch_is_caught_up_not_a_failure(
    migrated_pool: asyncpg.Pool, threatexchange: ThreatExchange
) -> None:
    await BankStore(migrated_pool).ensure("tx", category="csam", source="threatexchange")
    sync = tx_sync(migrated_pool, threatexchange)
    run = await sync.run()
    assert run.error is None and run.caught_up and run.fetched == 0
    status = await sync.status()
    assert status is not None and status["last_error"] is None


async def test_an_indicator_every_member_calls_non_malicious_is_not_banked(
    migrated_pool: asyncpg.Pool, threatexchange: ThreatExchange
) -> None:
    """NON_MALICIOUS is a member's "false positive": such a hash must not hold benign
    media, and a hash members come to call so leaves the bank."""
    sync, _ = await _fill(migrated_pool, threatexchange)
    before = await entries(migrated_pool, "tx")
    now = int(time.time())
    cleared = next(value for kind, value in before if kind == "md5")
    threatexchange.put("HASH_MD5", cleared, now, status="NON_MALICIOUS")
    never = pdq()
    threatexchange.put("HASH_PDQ", never, now + 1, status="NON_MALICIOUS")
    run = await sync.run()
    assert run.error is None and run.caught_up
    after = await entries(migrated_pool, "tx")
    assert ("md5", cleared) not in after and ("pdq", never) not in after
    assert after == before - {("md5", cleared)}


async def test_an_answer_past_the_bound_is_a_failure_not_a_hang(
    migrated_pool: asyncpg.Pool, threatexchange: ThreatExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ThreatExchange sends is read up to a bound (16 MiB; 64 KiB here)."""
    monkeypatch.setattr("relay.banks.sync._MAX_GRAPH_ANSWER", 65_536)
    await BankStore(migrated_pool).ensure("tx", category="csam", source="threatexchange")
    threatexchange.fault = Fault(200, '{"data": [' + "0," * 100_000 + "0]}")
    sync = tx_sync(migrated_pool, threatexchange)
    with pytest.raises(SyncError, match="over 65536 bytes"):
        await sync.run()
    status = await sync.status()
    assert status is not None and "over 65536 bytes" in status["last_error"]
    assert await entries(migrated_pool, "tx") == set()
