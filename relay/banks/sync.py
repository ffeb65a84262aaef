"""Banks that fill themselves: ``BankSync`` fetches one bank's source (NCMEC's hash
sharing API, StopNCII, Meta's ThreatExchange) through python-threatexchange's clients,
from the checkpoint the last good run stored, and applies what changed upstream.

The clients block, so each page is fetched in a thread. A run is bounded (pages,
records, seconds); the next run continues from the checkpoint, which is stored only
after the entries of its page are committed. An upstream deletion names a record, so
``bank_sync_record`` remembers which hashes each record brought in; a hash leaves the
bank when no live record names it. A synced bank should hold only its source's hashes.

python-threatexchange is an optional extra (``pip install sluice[exchanges]``); it is
imported only when a run starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from relay.banks.store import BankStore
from relay.errors import SluiceError
from relay.hashing import KINDS
from relay.store.db import translating

if TYPE_CHECKING:
    from relay.config import Config
    from relay.config.sluice import BankConfig

__all__ = [
    "INSTALL_HINT",
    "SOURCES",
    "BankSync",
    "Change",
    "Page",
    "Scheduled",
    "SyncError",
    "SyncRun",
    "bank_syncs",
    "source_credentials",
    "sync_status",
]

log = structlog.get_logger(__name__)

SOURCES = ("ncmec", "stopncii", "threatexchange")
INSTALL_HINT = "pip install sluice[exchanges]"

# One run per bank at a time, across processes (second key: the bank id).
_SYNC_LOCK = 0x5B5C
_MAX_KEY = 512  # characters of an upstream record key; longer records are ignored
_MAX_VALUE = 1024  # characters of a hash value before it is validated
_MAX_NOTE = 200
_MAX_ERROR = 1000
# The most of one ThreatExchange answer read (a page of up to 100 indicators with their
# descriptors is well under a megabyte); past it, the page is a failure, not a hang.
_MAX_GRAPH_ANSWER = 16 << 20

# Upstream names for the kinds Sluice knows; every other hash is counted as ignored.
_NCMEC_KINDS = {"md5": "md5", "pdq": "pdq"}
_STOPNCII_KINDS = {"ImagePDQ": "pdq", "VideoMD5": "md5"}
_THREATEXCHANGE_KINDS = {
    "HASH_PDQ": "pdq",
    "HASH_MD5": "md5",
    "HASH_VIDEO_MD5": "md5",
    "HASH_SHA256": "sha256",
}


class SyncError(SluiceError):
    """A sync could not run or failed; the message says why (and is recorded)."""


@dataclass(frozen=True)
class Change:
    """One upstream record as it is now: its hashes, or None when it is gone."""

    key: str
    entries: frozenset[tuple[str, str]] | None
    note: str | None = None


@dataclass
class Page:
    """What one fetch brought: changes, hashes ignored, and the checkpoint after it."""

    changes: list[Change]
    ignored: int
    checkpoint: dict[str, Any]


@dataclass
class SyncRun:
    """What one run did. ``stopped`` says which bound ended it early (``pages``,
    ``records``, ``time``) or ``busy`` when another run held the bank."""

    bank: str
    source: str
    pages: int = 0
    fetched: int = 0
    added: int = 0
    removed: int = 0
    ignored: int = 0
    caught_up: bool = False
    stopped: str | None = None
    error: str | None = None

    def counts(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BankSync:
    """One bank filled from one source.

    ``credentials`` are in python-threatexchange's own formats: ``user:password``
    (ncmec), ``fetch_function_key,subscription_key`` (stopncii), ``app_id|token``
    (threatexchange). ``options``: ``environment`` (ncmec, a NCMECEnvironment name,
    default ``Industry``), ``privacy_group`` (threatexchange, required).
    """

    pool: asyncpg.Pool
    bank: str
    source: str
    credentials: str = field(repr=False)
    url: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    max_pages: int = 1000
    max_records: int = 200_000
    budget_seconds: float = 600.0
    page_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SyncError(
                f"bank `{self.bank}`: unknown source `{self.source}` (known: {', '.join(SOURCES)})"
            )
        if self.max_pages < 1 or self.max_records < 1 or self.budget_seconds <= 0:
            raise SyncError(f"bank `{self.bank}`: sync bounds must be positive")

    async def run(self) -> SyncRun:
        """Fetch from the checkpoint and apply; SyncError (recorded) when it fails."""
        result = SyncRun(self.bank, self.source)
        bank_id = await self._bank_id()
        async with self.pool.acquire() as holder:
            if not await holder.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", _SYNC_LOCK, bank_id
            ):
                result.stopped = "busy"
                return result
            try:
                checkpoint = await self._begin(bank_id)
                try:
                    await self._fetch(bank_id, checkpoint, result)
                except Exception as exc:
                    result.error = _describe(exc)[:_MAX_ERROR]
                    await self._end(bank_id, result)
                    log.warning(
                        "bank_sync_failed", bank=self.bank, source=self.source, error=result.error
                    )
                    raise SyncError(f"bank `{self.bank}` ({self.source}): {result.error}") from exc
                await self._end(bank_id, result)
            finally:
                await holder.execute("SELECT pg_advisory_unlock($1, $2)", _SYNC_LOCK, bank_id)
        log.info("bank_synced", **result.counts())
        return result

    @translating
    async def status(self) -> dict[str, Any] | None:
        """The bank's sync record (progress, last error), or None before any run."""
        rows = await _status_rows(self.pool, self.bank)
        return rows[0] if rows else None

    # -- the run's steps ---------------------------------------------------------

    @translating
    async def _bank_id(self) -> int:
        bank_id = await self.pool.fetchval("SELECT id FROM bank WHERE name = $1", self.bank)
        if bank_id is None:
            raise SyncError(f"no bank named `{self.bank}`")
        return int(bank_id)

    @translating
    async def _begin(self, bank_id: int) -> dict[str, Any] | None:
        raw = await self.pool.fetchval(
            "INSERT INTO bank_sync (bank_id, source, last_run_at) VALUES ($1, $2, now()) "
            "ON CONFLICT (bank_id, source) DO UPDATE SET last_run_at = now() "
            "RETURNING checkpoint",
            bank_id,
            self.source,
        )
        return None if raw is None else dict(json.loads(raw))

    @translating
    async def _end(self, bank_id: int, result: SyncRun) -> None:
        await self.pool.execute(
            "UPDATE bank_sync SET last_error = $3, last_run = $4::jsonb, "
            "last_ok_at = CASE WHEN $3::text IS NULL THEN now() ELSE last_ok_at END, "
            "caught_up = CASE WHEN $3::text IS NULL THEN $5 ELSE caught_up END "
            "WHERE bank_id = $1 AND source = $2",
            bank_id,
            self.source,
            result.error,
            json.dumps(result.counts()),
            result.caught_up,
        )

    async def _fetch(
        self, bank_id: int, checkpoint: dict[str, Any] | None, result: SyncRun
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget_seconds
        feed = _feed(self.source, self.credentials, self.url, self.options, checkpoint)
        running = False
        try:
            while True:
                if result.pages >= self.max_pages:
                    result.stopped = "pages"
                    return
                if result.fetched >= self.max_records:
                    result.stopped = "records"
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    result.stopped = "time"
                    return
                wait = min(self.page_timeout, remaining)
                running = True
                try:
                    page = await asyncio.wait_for(asyncio.to_thread(next, feed, None), wait)
                except TimeoutError:
                    # The thread finishes its request on its own (the client's timeout);
                    # its page is dropped and the checkpoint stays before it.
                    if wait < self.page_timeout:
                        result.stopped = "time"
                        return
                    raise SyncError(f"no page within {self.page_timeout:g}s") from None
                running = False
                if page is None:
                    result.caught_up = True
                    return
                await self._apply(bank_id, page, result)
        finally:
            if not running:
                feed.close()

    @translating
    async def _apply(self, bank_id: int, page: Page, result: SyncRun) -> None:
        """Entries first (BankStore, each its own transaction), then the records and
        the checkpoint in one: a crash between them replays the page, which is
        idempotent."""
        keys = [c.key for c in page.changes]
        old: dict[str, set[tuple[str, str]]] = {}
        for row in await self.pool.fetch(
            "SELECT key, kind, value FROM bank_sync_record "
            "WHERE bank_id = $1 AND source = $2 AND key = ANY($3::text[])",
            bank_id,
            self.source,
            keys,
        ):
            old.setdefault(row["key"], set()).add((row["kind"], row["value"]))
        named_now: set[tuple[str, str]] = set()
        adds: dict[tuple[str, str], str | None] = {}
        for change in page.changes:
            for entry in change.entries or ():
                named_now.add(entry)
                if entry not in old.get(change.key, set()):
                    adds.setdefault(entry, change.note)
        dropped = {e for c in page.changes for e in old.get(c.key, set())} - named_now
        if dropped:
            still = await self.pool.fetch(
                "SELECT DISTINCT r.kind, r.value FROM bank_sync_record r "
                "JOIN unnest($3::text[], $4::text[]) AS d(kind, value) "
                "ON r.kind = d.kind AND r.value = d.value "
                "WHERE r.bank_id = $1 AND r.source = $2 AND NOT (r.key = ANY($5::text[]))",
                bank_id,
                self.source,
                [d[0] for d in dropped],
                [d[1] for d in dropped],
                keys,
            )
            dropped -= {(r["kind"], r["value"]) for r in still}
        store = BankStore(self.pool)
        added = await store.add(self.bank, [(k, v, n) for (k, v), n in adds.items()]) if adds else 0
        removed = await store.remove(self.bank, sorted(dropped)) if dropped else 0
        rows = [(c.key, k, v) for c in page.changes for (k, v) in sorted(c.entries or ())]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM bank_sync_record "
                "WHERE bank_id = $1 AND source = $2 AND key = ANY($3::text[])",
                bank_id,
                self.source,
                keys,
            )
            if rows:
                await conn.execute(
                    "INSERT INTO bank_sync_record (bank_id, source, key, kind, value) "
                    "SELECT $1, $2, r.key, r.kind, r.value "
                    "FROM unnest($3::text[], $4::text[], $5::text[]) AS r(key, kind, value) "
                    "ON CONFLICT DO NOTHING",
                    bank_id,
                    self.source,
                    [r[0] for r in rows],
                    [r[1] for r in rows],
                    [r[2] for r in rows],
                )
            await conn.execute(
                "UPDATE bank_sync SET checkpoint = $3::jsonb, fetched = fetched + $4, "
                "added = added + $5, removed = removed + $6, ignored = ignored + $7 "
                "WHERE bank_id = $1 AND source = $2",
                bank_id,
                self.source,
                json.dumps(page.checkpoint),
                len(page.changes),
                added,
                removed,
                page.ignored,
            )
        result.pages += 1
        result.fetched += len(page.changes)
        result.added += added
        result.removed += removed
        result.ignored += page.ignored


@translating
async def sync_status(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every synced bank's progress and last error (the admin API, the CLI)."""
    return await _status_rows(pool, None)


async def _status_rows(pool: asyncpg.Pool, bank: str | None) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT b.name, s.source, s.last_run_at, s.last_ok_at, s.last_error, s.caught_up, "
        "s.fetched, s.added, s.removed, s.ignored, s.last_run, s.checkpoint, "
        "(SELECT count(*) FROM bank_sync_record r "
        " WHERE r.bank_id = s.bank_id AND r.source = s.source) AS records "
        "FROM bank_sync s JOIN bank b ON b.id = s.bank_id "
        "WHERE $1::text IS NULL OR b.name = $1 ORDER BY b.name",
        bank,
    )
    return [
        {
            "bank": r["name"],
            "source": r["source"],
            "last_run_at": _iso(r["last_run_at"]),
            "last_ok_at": _iso(r["last_ok_at"]),
            "last_error": r["last_error"],
            "caught_up": r["caught_up"],
            "records": r["records"],
            "fetched": r["fetched"],
            "added": r["added"],
            "removed": r["removed"],
            "ignored": r["ignored"],
            "last_run": json.loads(r["last_run"]),
            "checkpoint": None if r["checkpoint"] is None else json.loads(r["checkpoint"]),
        }
        for r in rows
    ]


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SluiceError):
        return str(exc)
    text = str(exc).strip() or "no message"
    return f"{type(exc).__name__}: {text}"


# -- the feeds: blocking, run in a thread page by page ----------------------------


def _tx(module: str) -> Any:
    """A python-threatexchange module (untyped here, so Sluice type-checks without it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SyncError(
            f"bank sources need python-threatexchange, which is not installed: {INSTALL_HINT}"
        ) from exc


def _feed(
    source: str,
    credentials: str,
    url: str | None,
    options: Mapping[str, str],
    checkpoint: dict[str, Any] | None,
) -> Generator[Page, None, None]:
    """The pages of ``source`` from ``checkpoint`` on (nothing runs until the first next)."""
    feeds = {"ncmec": _ncmec, "stopncii": _stopncii, "threatexchange": _threatexchange}
    return feeds[source](credentials, url, options, checkpoint)


def _restore(cls: Any, checkpoint: dict[str, Any] | None) -> Any:
    if checkpoint is None:
        return None
    dacite = _tx("dacite")
    try:
        restored = dacite.from_dict(cls, checkpoint)
    except Exception as exc:
        raise SyncError(
            f"the stored checkpoint cannot be read ({exc}); clear it to refetch"
        ) from exc
    # A checkpoint kept too long (ThreatExchange keeps deletions 90 days): start again.
    return None if restored.is_stale() else restored


def _saved(checkpoint: Any) -> dict[str, Any]:
    return dict(dataclasses.asdict(checkpoint))


def _entry(kind: str, value: Any, ignored: list[int]) -> tuple[str, str] | None:
    """(kind, normalised hex), or None (counted) for a value Sluice refuses."""
    try:
        if not isinstance(value, str) or len(value) > _MAX_VALUE:
            raise ValueError("not a hash")
        return kind, KINDS[kind].validate(value.strip())
    except (ValueError, KeyError):
        ignored[0] += 1
        return None


def _note(*parts: object) -> str:
    return " ".join(str(p) for p in parts if p)[:_MAX_NOTE]


def _ncmec(
    credentials: str, url: str | None, options: Mapping[str, str], checkpoint: dict[str, Any] | None
) -> Generator[Page, None, None]:
    impl = _tx("threatexchange.exchanges.impl.ncmec_api")
    hash_api = _tx("threatexchange.exchanges.clients.ncmec.hash_api")
    user, _, password = credentials.strip().partition(":")
    if not user or not password:
        raise SyncError("ncmec credentials must be `user:password`")
    name = options.get("environment", "Industry")
    try:
        environment = hash_api.NCMECEnvironment[name]
    except KeyError:
        known = ", ".join(e.name for e in hash_api.NCMECEnvironment)
        raise SyncError(f"unknown NCMEC environment `{name}` (known: {known})") from None
    collab = impl.NCMECCollabConfig(name="sluice", environment=environment)
    exchange = impl.NCMECSignalExchangeAPI(collab, user, password)
    if url:
        base = url.rstrip("/")

        def client(env: Any) -> Any:
            api = hash_api.NCMECHashAPI(user, password, env)
            api._base_url = base  # the client has no override; tests and proxies need one
            return api

        exchange.get_client = client
    for delta in exchange.fetch_iter([], _restore(impl.NCMECCheckpoint, checkpoint)):
        ignored = [0]
        changes: list[Change] = []
        for key, record in delta.updates.items():
            if not isinstance(key, str) or len(key) > _MAX_KEY:
                ignored[0] += 1
            elif record is None or record.deleted:
                changes.append(Change(key, None))
            else:
                entries = set()
                for tag, value in record.fingerprints.items():
                    kind = _NCMEC_KINDS.get(str(tag).lower())
                    found = _entry(kind, value, ignored) if kind else None
                    if found is None and kind is None:
                        ignored[0] += 1
                    elif found is not None:
                        entries.add(found)
                note = _note("ncmec", key, record.classification)
                changes.append(Change(key, frozenset(entries), note))
        yield Page(changes, ignored[0], _saved(delta.checkpoint))


def _stopncii(
    credentials: str, url: str | None, options: Mapping[str, str], checkpoint: dict[str, Any] | None
) -> Generator[Page, None, None]:
    impl = _tx("threatexchange.exchanges.impl.stop_ncii_api")
    api = _tx("threatexchange.exchanges.clients.stopncii.api")
    parts = [p.strip() for p in credentials.strip().split(",")]
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise SyncError("stopncii credentials must be `fetch_function_key,subscription_key`")
    base = url or (parts[2] if len(parts) == 3 else None)
    client = api.StopNCIIAPI(parts[1], parts[0], base_url_override=base)
    start = _restore(impl.StopNCIICheckpoint, checkpoint)
    since = api.StopNCIIAPI.DEFAULT_START_TIME if start is None else start.update_time
    gone = {api.StopNCIICaseStatus.Withdrawn, api.StopNCIICaseStatus.Deleted}
    # Read from the client, not the library's fetch_iter: 1.2.17 compares the hash value,
    # not its status, with Withdrawn/Deleted, so withdrawn hashes would never leave.
    for response in client.fetch_hashes_iter(start_timestamp=since):
        ignored = [0]
        changes: dict[str, Change] = {}
        for record in response.hashRecords:
            key = f"{record.signalType.value}:{record.hashValue}"
            kind = _STOPNCII_KINDS.get(record.signalType.value)
            if len(key) > _MAX_KEY:
                ignored[0] += 1
            elif record.hashStatus in gone:
                changes[key] = Change(key, None)
            elif kind is None:
                ignored[0] += 1
            else:
                found = _entry(kind, record.hashValue, ignored)
                entries = frozenset([found] if found else [])
                changes[key] = Change(key, entries, _note("stopncii", record.hashStatus.value))
        yield Page(
            list(changes.values()),
            ignored[0],
            _saved(impl.StopNCIICheckpoint.from_stopncii_fetch(response)),
        )


def _threatexchange(
    credentials: str, url: str | None, options: Mapping[str, str], checkpoint: dict[str, Any] | None
) -> Generator[Page, None, None]:
    impl = _tx("threatexchange.exchanges.impl.fb_threatexchange_api")
    api = _tx("threatexchange.exchanges.clients.fb_threatexchange.api")
    token = credentials.strip()
    app_id, bar, secret = token.partition("|")
    if not (app_id.isdigit() and bar and secret):
        raise SyncError("threatexchange credentials must be an access token `app_id|secret`")
    group = str(options.get("privacy_group", ""))
    if not group.isdigit():
        raise SyncError("threatexchange needs the option privacy_group (a number)")
    client = api.ThreatExchangeAPI(token, endpoint_override=url.rstrip("/") if url else None)
    client.get_json_from_url = _graph_get
    pages = client.get_threat_updates

    def nonempty_pages(*args: Any, **kwargs: Any) -> Any:
        # fetch_iter asserts every page has updates; the Graph API answers {"data": []}
        # when nothing changed since start_time (or the group is empty).
        return (batch for batch in pages(*args, **kwargs) if batch)

    client.get_threat_updates = nonempty_pages
    collab = impl.FBThreatExchangeCollabConfig(name="sluice", privacy_group=int(group))
    exchange = impl.FBThreatExchangeSignalExchangeAPI(client, collab)
    for delta in exchange.fetch_iter([], _restore(impl.FBThreatExchangeCheckpoint, checkpoint)):
        ignored = [0]
        changes: list[Change] = []
        for (threat_type, indicator), record in delta.updates.items():
            key = f"{threat_type}:{indicator}"
            kind = _THREATEXCHANGE_KINDS.get(threat_type)
            if len(key) > _MAX_KEY:
                ignored[0] += 1
            elif record is None or _all_negative(record):
                # Gone upstream, or every member now calls it a false positive.
                changes.append(Change(key, None))
            elif kind is None:
                ignored[0] += 1
            else:
                found = _entry(kind, indicator, ignored)
                tags = sorted({t for o in record.opinions for t in o.tags})
                entries = frozenset([found] if found else [])
                changes.append(Change(key, entries, _note("threatexchange", *tags)))
        yield Page(changes, ignored[0], _saved(delta.checkpoint))


def _all_negative(record: Any) -> bool:
    """Every opinion on the indicator is NEGATIVE_CLASS (a false positive, test data)."""
    negative = _tx("threatexchange.exchanges.fetch_state").SignalOpinionCategory.NEGATIVE_CLASS
    opinions = getattr(record, "opinions", None) or ()
    return bool(opinions) and all(o.category == negative for o in opinions)


def _graph_get(url: str, params: Any = None, *, json_obj_hook: Any = None) -> Any:
    """ThreatExchangeAPI.get_json_from_url, bounded (the client's has no timeout) and with
    errors that name the Graph API's error, never the URL: it carries the access token."""
    requests = _tx("requests")
    try:
        with requests.get(url, params=params or {}, timeout=60, stream=True) as response:
            body = response.raw.read(_MAX_GRAPH_ANSWER + 1, decode_content=True)
    except (requests.RequestException, OSError) as exc:
        raise SyncError(f"ThreatExchange cannot be reached ({type(exc).__name__})") from None
    status = response.status_code
    if len(body) > _MAX_GRAPH_ANSWER:
        raise SyncError(f"ThreatExchange answered {status} with over {_MAX_GRAPH_ANSWER} bytes")
    if status >= 400:
        try:
            error = json.loads(body)["error"]
            said = _note(error.get("type"), "code", error.get("code"), error.get("message"))
        except Exception:
            said = "no Graph API error in the answer"
        raise SyncError(f"ThreatExchange answered {status}: {said}")
    try:
        return json.loads(body, object_hook=json_obj_hook)
    except ValueError:
        raise SyncError(f"ThreatExchange answered {status}, not JSON") from None


@dataclass(frozen=True)
class Scheduled:
    """A bank's sync as the outbox schedules it (``Outbox.every``)."""

    bank: str
    every: float
    sync: BankSync


def source_credentials(bank: BankConfig) -> str:
    """The text of a synced bank's ``source_credentials_file``; SyncError saying what is
    wrong (``check-config`` asks here too, so a missing file is caught before start)."""
    path = bank.source_credentials_file
    if path is None:
        raise SyncError(f"bank `{bank.name}`: source `{bank.source}` needs source_credentials_file")
    try:
        credentials = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SyncError(f"bank `{bank.name}`: cannot read {path}: {exc}") from exc
    if not credentials:
        raise SyncError(f"bank `{bank.name}`: {path} is empty")
    return credentials


async def bank_syncs(config: Config, pool: asyncpg.Pool) -> list[Scheduled]:
    """Each ``[[bank]]`` with a ``source``: its sync, ready to schedule (the bank made
    first if new). SyncError when its credentials cannot be read: Sluice does not start
    with a source it cannot reach."""
    found: list[Scheduled] = []
    for bank in config.bank:
        if not bank.source:
            continue
        credentials = source_credentials(bank)
        await BankStore(pool).ensure(bank.name, bank.category, bank.source)
        options = {
            name: value
            for name, value in (
                ("environment", bank.source_environment),
                ("privacy_group", bank.source_privacy_group),
            )
            if value
        }
        sync = BankSync(
            pool, bank.name, bank.source, credentials, url=bank.source_url or None, options=options
        )
        found.append(Scheduled(bank.name, bank.sync_every_seconds, sync))
    return found
