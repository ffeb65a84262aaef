"""Evidence of quarantined activities, preserved encrypted and read only on the record.

US providers must preserve reported material and the related account data for a
year (18 U.S.C. 2258A, as amended by the REPORT Act 2024), the UK code asks for
90 days, and destroying it can itself be unlawful. So a quarantine keeps all
that Sluice knew (activity, actor, signer, sender address, headers, URLs,
hashes, signals, verdict) together with the media bytes.

Every record is a set of blobs in a blob store (``relay.blobs``: files under
``directory`` by default, or the database's ``evidence_blob`` table, which every
process sharing the database reads): the facts (JSON) and each media file, one
blob each, named by a random id (``<32 hex>.blob``). A blob is, in any store::

    version (1 byte, 0x01) || nonce (12 bytes) || AES-256-GCM ciphertext || tag (16 bytes)

with the associated data ``b"sluice-evidence:v1:<evidence id>:<name>"`` (name:
``facts``, ``media-0``, ``media-1``…), so a blob copied over another record's,
or over another blob of the same record, fails authentication. The facts are
encrypted too: they name accounts, and possibly victims. The ``evidence`` row
holds only what may be shown without the key: ids, times, sizes, SHA-256s, bank
names and the action.

A quarantined activity's row keeps none of this in clear: once its evidence is
recorded, the ``activity`` row loses its body, headers, sender address and the
details of its verdict's signals, and points at the evidence instead
(``activity.evidence_id``; see ``ActivityStore.quarantine``). ``seal`` writes the
blobs and ``record`` commits the row, on the caller's connection if it gives one,
so that the pointer and the scrubbing commit with it.

Blobs are written atomically (temporary name, fsync, rename, fsync of the
directory) before the row is committed, so a crash leaves at worst an orphan:
an encrypted file that no row names (or a ``.tmp-`` file cut short). Orphans
are harmless, unreadable without the key and its record's id; ``orphans()``
lists them for an admin to inspect or remove. Files of a ``preserve`` still in
progress show up there until its row commits, so judge them by their age.

Every ``read`` writes an ``evidence_access`` row (who, why, what, outcome),
failed reads included, before it returns anything.

The lifecycle: ``retain_until`` is the row's keep-until, the longest period its
jurisdictions ask (``keep_days_by_jurisdiction``); ``hold`` puts a legal hold on
one record (who, why) and ``unhold`` lifts it; ``purge`` deletes the blobs of what
is past retention and not held, and marks the row purged (the row, its hashes and
its audit log stay); ``export`` writes one case for an authority, decrypted on
that explicit call only. Each of them is written to the audit log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import hashlib
import json
import mimetypes
import os
import re
import secrets
import shutil
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.blobs import (
    BlobError,
    BlobMissing,
    BlobStore,
    LocalBlobs,
    PostgresBlobs,
    blob_name,
    fsync_dir,
)
from relay.errors import SluiceError
from relay.store.db import Connection, translated, translating

if TYPE_CHECKING:
    from relay.config import Config

__all__ = [
    "KEEP_DAYS",
    "KEEP_DAYS_BY_JURISDICTION",
    "SUBDIRECTORY",
    "EvidenceError",
    "EvidenceKey",
    "EvidenceRecord",
    "EvidenceStore",
    "MediaItem",
    "Purged",
    "Sealed",
]

#: Where the blobs live, under ``[storage] data_dir``.
SUBDIRECTORY = "evidence"
#: How long evidence is kept when no jurisdiction says otherwise: 18 U.S.C. 2258A(h),
#: a year since the REPORT Act of 2024 (Pub. L. 118-59).
KEEP_DAYS = 365
#: What each jurisdiction asks for (ISO 3166-1 alpha-2): the US a year (2258A(h)),
#: the UK interim code on CSEA at least 90 days.
KEEP_DAYS_BY_JURISDICTION: Mapping[str, int] = {"US": 365, "GB": 90}

log = structlog.get_logger(__name__)

_VERSION = 1
_NONCE = 12
_TAG = 16
_HEADER = 1 + _NONCE
_KEY_BYTES = 32
_BLOB_FILE = re.compile(r"[0-9a-f]{32}\.blob")
_FORMATS = "32 raw bytes, 64 hex characters or the base64 text of 32 bytes"
_TEXT_BYTES = frozenset(string.printable.encode())


class EvidenceError(SluiceError):
    """Evidence cannot be preserved or read: bad key, unknown id, missing or tampered blob."""


def _aad(evidence_id: int, name: str) -> bytes:
    return f"sluice-evidence:v1:{evidence_id}:{name}".encode()


def _parse_key(raw: bytes, path: Path) -> bytes:
    """The key in a key file's bytes; the error says what was found, never the bytes."""
    # A random 32-byte key is never all printable text (odds about 1e-13); such a file
    # is a password or a short hex string, too weak to use as the key itself.
    if len(raw) == _KEY_BYTES and not set(raw) <= _TEXT_BYTES:
        return raw
    try:
        text = "".join(raw.decode("ascii").split())
    except UnicodeDecodeError:
        found = f"{len(raw)} bytes of binary data"
    else:
        if len(text) == 2 * _KEY_BYTES and all(c in string.hexdigits for c in text):
            return bytes.fromhex(text)
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) == _KEY_BYTES:
            return decoded
        found = f"{len(text)} characters of text" if text else "an empty file"
    raise EvidenceError(
        f"evidence key file {path}: expected {_FORMATS}, found {found} "
        "(create a key with `sluice evidence keygen FILE`)"
    )


class EvidenceKey:
    """The AES-256-GCM key that seals evidence; its bytes never reach a repr, log or error."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise EvidenceError(f"an evidence key has {_KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "EvidenceKey(<hidden>)"

    @classmethod
    def load(cls, path: Path) -> EvidenceKey:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise EvidenceError(
                f"cannot read evidence key file {path}: {exc.strerror or exc}"
            ) from exc
        return cls(_parse_key(raw, path))

    @staticmethod
    def generate(path: Path) -> None:
        """Write a new random key as base64 text, mode 0600; never over an existing file,
        whose loss would make the evidence it encrypts unreadable."""
        text = base64.b64encode(secrets.token_bytes(_KEY_BYTES)) + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise EvidenceError(
                f"{path} exists already: refusing to overwrite an evidence key "
                "(the evidence it encrypts would become unreadable)"
            ) from exc
        except OSError as exc:
            raise EvidenceError(
                f"cannot create evidence key file {path}: {exc.strerror or exc}"
            ) from exc
        try:
            with open(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)  # whatever the umask
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            fsync_dir(path.absolute().parent)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise EvidenceError(f"cannot write evidence key file {path}: {exc}") from exc

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        # Random 96-bit nonces stay safe for 2**32 blobs under one key (NIST SP 800-38D).
        nonce = secrets.token_bytes(_NONCE)
        return bytes([_VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Raises InvalidTag when the blob was altered, moved, or sealed under another key."""
        return self._aead.decrypt(blob[1:_HEADER], blob[_HEADER:], aad)


@dataclass(frozen=True)
class MediaItem:
    """One fetched media file to preserve; ``hashes`` (sha256, md5, pdq…) are JSON."""

    url: str
    data: bytes = field(repr=False)  # never in a repr, so never in a log
    hashes: dict[str, Any]


@dataclass(frozen=True)
class EvidenceRecord:
    """A decrypted record. ``media``: ``{url, hashes, size, blob}`` per file, no bytes."""

    id: int
    activity_row: int | None
    created_at: datetime
    retain_until: datetime
    facts: dict[str, Any]
    media: list[dict[str, Any]]


@dataclass(frozen=True)
class Sealed:
    """Evidence written to disk, its row not yet committed (``EvidenceStore.record``)."""

    id: int
    blobs: list[dict[str, Any]]
    summary: str  # JSON
    media: int


def _summary(facts: dict[str, Any], media: Sequence[MediaItem]) -> dict[str, Any]:
    """What the table may show without the key: the action, the banks, counts, SHA-256s."""
    verdict = facts.get("verdict")
    verdict = verdict if isinstance(verdict, dict) else {}
    signals = [
        s
        for group in (facts.get("signals"), verdict.get("signals"))
        if isinstance(group, list)
        for s in group
    ]
    banks = sorted(
        {
            s["source"]
            for s in signals
            if isinstance(s, dict) and s.get("kind") == "match" and isinstance(s.get("source"), str)
        }
    )
    return {
        "action": verdict.get("action"),
        "rule": verdict.get("rule"),
        "banks": banks,
        "media": len(media),
        "bytes": sum(len(m.data) for m in media),
        "sha256": [hashlib.sha256(m.data).hexdigest() for m in media],
    }


@dataclass(frozen=True)
class Purged:
    """A record whose blobs a purge deleted."""

    id: int
    activity_row: int | None
    jurisdiction: str | None
    retain_until: datetime
    blobs: int


class EvidenceStore:
    """Preserved evidence: encrypted blobs in ``blobs`` (files under ``directory`` by
    default), rows in ``evidence``.

    ``key`` may be None where only metadata is needed (``list``, ``audit``,
    ``orphans``, ``hold``, ``purge``); ``preserve``, ``read`` and ``export`` then refuse.
    A record is kept for the longest period any of ``jurisdictions`` asks
    (``keep_days_by_jurisdiction``, its days by ISO code), or ``retention_days`` when
    none is named or known.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        directory: Path,
        key: EvidenceKey | None,
        *,
        retention_days: int = KEEP_DAYS,
        jurisdictions: Sequence[str] = (),
        keep_days_by_jurisdiction: Mapping[str, int] = KEEP_DAYS_BY_JURISDICTION,
        blobs: BlobStore | None = None,
    ) -> None:
        if retention_days < 1:
            raise EvidenceError(f"retention_days must be at least 1, not {retention_days}")
        for jurisdiction, days in keep_days_by_jurisdiction.items():
            if days < 1:
                raise EvidenceError(
                    f"evidence is kept at least 1 day, not {days} (jurisdiction {jurisdiction})"
                )
        self.pool = pool
        self.directory = directory
        self.key = key
        self.retention_days = retention_days
        self.jurisdictions = tuple(j.upper() for j in jurisdictions)
        self.keep_days_by_jurisdiction = {
            j.upper(): d for j, d in keep_days_by_jurisdiction.items()
        }
        self.blobs: BlobStore = blobs if blobs is not None else LocalBlobs(directory)

    @classmethod
    def from_config(cls, pool: asyncpg.Pool, config: Config) -> EvidenceStore:
        """The store of ``[evidence]``: blobs under ``[storage] data_dir`` (or in the
        database with ``store = "postgresql"``), the key of ``key_file`` (None when no
        file is set), kept ``keep_days``, or longer where ``[receipts] jurisdictions``
        name a law that asks for longer (KEEP_DAYS_BY_JURISDICTION)."""
        section = config.evidence
        key_file = section.key_file
        key = EvidenceKey.load(key_file) if key_file is not None else None
        directory = config.storage.data_dir / SUBDIRECTORY
        return cls(
            pool,
            directory,
            key,
            retention_days=section.keep_days,
            jurisdictions=config.receipts.jurisdictions,
            keep_days_by_jurisdiction=KEEP_DAYS_BY_JURISDICTION,
            blobs=PostgresBlobs(pool) if section.store == "postgresql" else LocalBlobs(directory),
        )

    def keep(self, jurisdictions: Sequence[str] | None = None) -> tuple[str | None, int]:
        """The jurisdiction whose period is longest among ``jurisdictions`` (the store's
        when None) and its days; ``(None, retention_days)`` when none is known."""
        named = self.jurisdictions if jurisdictions is None else jurisdictions
        by_days = self.keep_days_by_jurisdiction
        known = [(by_days[j], j) for j in (n.upper() for n in named) if j in by_days]
        if not known:
            return None, self.retention_days
        days, jurisdiction = max(known)
        return jurisdiction, days

    def _need_key(self) -> EvidenceKey:
        if self.key is None:
            raise EvidenceError("no evidence key: set [evidence] key_file")
        return self.key

    @translating
    async def preserve(
        self, *, activity_row: int | None, facts: dict[str, Any], media: Sequence[MediaItem]
    ) -> int:
        """Seal ``facts`` and ``media`` to disk, then record them; returns the evidence id.

        ``facts``: the activity document, actor, signer, key id, sender address,
        request headers, target path, received time, media URLs, hashes, signals
        and verdict, all JSON.
        """
        sealed = await self.seal(facts=facts, media=media)
        await self.record(sealed, activity_row=activity_row)
        log.info(
            "evidence_preserved", evidence=sealed.id, activity_row=activity_row, media=sealed.media
        )
        return sealed.id

    @translating
    async def seal(self, *, facts: dict[str, Any], media: Sequence[MediaItem]) -> Sealed:
        """Encrypt ``facts`` and ``media`` to durable blobs under a reserved id; nothing
        names them until ``record`` commits (a crash in between leaves orphans)."""
        key = self._need_key()
        media = list(media)
        entries: list[dict[str, Any]] = [
            {"url": m.url, "hashes": m.hashes, "size": len(m.data), "blob": f"media-{i}"}
            for i, m in enumerate(media)
        ]
        try:
            document = json.dumps({"facts": facts, "media": entries}, ensure_ascii=False)
            summary = json.dumps(_summary(facts, media))
        except (TypeError, ValueError) as exc:
            raise EvidenceError(f"evidence facts must be JSON: {exc}") from exc
        plaintexts = [("facts", document.encode())]
        plaintexts += [(e["blob"], m.data) for e, m in zip(entries, media, strict=True)]
        # The id comes first: the blobs' associated data binds them to it.
        evidence_id: int = await self.pool.fetchval(
            "SELECT nextval(pg_get_serial_sequence('evidence', 'id'))"
        )
        blobs = await self._write_blobs(key, evidence_id, plaintexts)
        return Sealed(evidence_id, blobs, summary, len(media))

    @translating
    async def record(
        self,
        sealed: Sealed,
        *,
        activity_row: int | None,
        conn: Connection | None = None,
        jurisdictions: Sequence[str] | None = None,
    ) -> None:
        """Write the row naming ``sealed``'s blobs; within ``conn``'s transaction if given
        (then it counts once that commits). Kept as ``jurisdictions`` ask (the store's
        when None)."""
        jurisdiction, days = self.keep(jurisdictions)
        await self._insert(
            conn or self.pool,
            sealed.id,
            activity_row,
            sealed.blobs,
            sealed.summary,
            jurisdiction,
            days,
        )

    async def _write_blobs(
        self, key: EvidenceKey, evidence_id: int, plaintexts: list[tuple[str, bytes]]
    ) -> list[dict[str, Any]]:
        try:
            return [
                await self._write_blob(key, evidence_id, name, data) for name, data in plaintexts
            ]
        except (OSError, BlobError) as exc:
            raise EvidenceError(
                f"cannot write evidence {evidence_id} into {self.blobs}: {exc}"
            ) from exc

    async def _write_blob(
        self, key: EvidenceKey, evidence_id: int, name: str, data: bytes
    ) -> dict[str, Any]:
        file = blob_name()
        sealed = await asyncio.to_thread(key.seal, data, _aad(evidence_id, name))
        await self.blobs.put(file, sealed)
        return {
            "name": name,
            "file": file,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    async def _insert(
        self,
        db: asyncpg.Pool | Connection,
        evidence_id: int,
        activity_row: int | None,
        blobs: list[dict[str, Any]],
        summary: str,
        jurisdiction: str | None = None,
        days: int | None = None,
    ) -> None:
        try:
            with translated():  # a database gone is StoreUnavailable, not a bad record
                await db.execute(
                    "INSERT INTO evidence "
                    "(id, activity_row, retain_until, blobs, summary, jurisdiction) "
                    "VALUES ($1, $2, now() + make_interval(days => $3), $4::jsonb, $5::jsonb, $6)",
                    evidence_id,
                    activity_row,
                    self.retention_days if days is None else days,
                    json.dumps(blobs),
                    summary,
                    jurisdiction,
                )
        except asyncpg.PostgresError as exc:
            raise EvidenceError(
                f"cannot record evidence {evidence_id} (its blobs stay on disk as orphans): {exc}"
            ) from exc

    @translating
    async def read(
        self, evidence_id: int, *, who: str, why: str, what: str = "read"
    ) -> tuple[EvidenceRecord, list[bytes]]:
        """The record and its media bytes, in order; audited first, failures included.

        ``what`` says what the reader does with it (``"extract to DIR"``).
        """
        return await self._read(evidence_id, who=who, why=why, what=what, media=True)

    @translating
    async def read_facts(
        self, evidence_id: int, *, who: str, why: str, what: str = "read facts"
    ) -> EvidenceRecord:
        """The record without decrypting its media (a release needs only the facts),
        audited as ``read`` is."""
        record, _ = await self._read(evidence_id, who=who, why=why, what=what, media=False)
        return record

    async def _read(
        self, evidence_id: int, *, who: str, why: str, what: str, media: bool
    ) -> tuple[EvidenceRecord, list[bytes]]:
        if not who.strip() or not why.strip():
            raise EvidenceError("reading evidence needs a `who` and a `why` for the audit log")
        try:
            key = self._need_key()
            row = await self.pool.fetchrow(
                "SELECT id, activity_row, created_at, retain_until, blobs, purged_at "
                "FROM evidence WHERE id = $1",
                evidence_id,
            )
            if row is None:
                raise EvidenceError(f"no evidence with id {evidence_id}")
            if row["purged_at"] is not None:
                raise EvidenceError(
                    f"evidence {evidence_id} was purged on {row['purged_at']:%Y-%m-%d} "
                    f"(kept until {row['retain_until']:%Y-%m-%d}, not held)"
                )
            blobs = json.loads(row["blobs"])
            if not media:
                blobs = [b for b in blobs if b["name"] == "facts"]
            plaintexts = [await self._read_blob(key, evidence_id, blob) for blob in blobs]
        except EvidenceError as exc:
            await self._log_access(evidence_id, who, why, what, f"failed: {exc}")
            raise
        await self._log_access(evidence_id, who, why, what, "ok")
        document = json.loads(plaintexts[0])
        record = EvidenceRecord(
            id=row["id"],
            activity_row=row["activity_row"],
            created_at=row["created_at"],
            retain_until=row["retain_until"],
            facts=document["facts"],
            media=document["media"],
        )
        return record, plaintexts[1:]

    async def _read_blob(self, key: EvidenceKey, evidence_id: int, blob: dict[str, Any]) -> bytes:
        name = blob["name"]
        where = f"evidence blob {name} of evidence {evidence_id}"
        if not _BLOB_FILE.fullmatch(blob["file"]):
            raise EvidenceError(f"{where} has an invalid file name in the database")
        path = self.blobs.where(blob["file"])
        try:
            sealed = await self.blobs.get(blob["file"])
        except BlobMissing as exc:
            raise EvidenceError(f"{where} is missing: {path}") from exc
        except BlobError as exc:
            raise EvidenceError(f"{where} cannot be read: {exc}") from exc
        expected = _HEADER + blob["size"] + _TAG
        if len(sealed) < expected:
            raise EvidenceError(
                f"{where} is truncated: {path} has {len(sealed)} of {expected} bytes"
            )
        if sealed[0] != _VERSION:
            raise EvidenceError(f"{where} has unknown format version {sealed[0]}: {path}")
        if len(sealed) != expected:
            raise EvidenceError(
                f"{where} has {len(sealed)} bytes, not {expected}: replaced or tampered ({path})"
            )
        try:
            data = await asyncio.to_thread(key.unseal, sealed, _aad(evidence_id, name))
        except InvalidTag as exc:
            raise EvidenceError(
                f"{where} failed authentication: tampered or wrong key ({path})"
            ) from exc
        if hashlib.sha256(data).hexdigest() != blob["sha256"]:
            raise EvidenceError(f"{where} does not match the SHA-256 its row records ({path})")
        return data

    async def _log_access(
        self, evidence_id: int, who: str, why: str, what: str, outcome: str
    ) -> None:
        try:
            with translated():
                await _audit(self.pool, evidence_id, who, why, what, outcome)
        except asyncpg.PostgresError as exc:
            raise EvidenceError(
                f"cannot write the audit log, so evidence {evidence_id} is not returned: {exc}"
            ) from exc
        log.info(
            "evidence_read", evidence=evidence_id, who=who, why=why, what=what, outcome=outcome
        )

    @translating
    async def audit(self, evidence_id: int) -> list[dict[str, Any]]:
        """Who read the evidence, when, why, and how it went; oldest first."""
        rows = await self.pool.fetch(
            "SELECT id, evidence_id, who, why, at, what, outcome FROM evidence_access "
            "WHERE evidence_id = $1 ORDER BY id",
            evidence_id,
        )
        return [dict(r) for r in rows]

    # -- the lifecycle: legal holds, the purge, the export ------------------------------

    @translating
    async def hold(self, evidence_id: int, *, who: str, why: str) -> None:
        """Put a legal hold on one record: no purge removes it until ``unhold``."""
        await self._hold(evidence_id, who=who, why=why, held=True)

    @translating
    async def unhold(self, evidence_id: int, *, who: str, why: str) -> None:
        """Lift the legal hold on one record; past its retention, the next purge removes it."""
        await self._hold(evidence_id, who=who, why=why, held=False)

    async def _hold(self, evidence_id: int, *, who: str, why: str, held: bool) -> None:
        what = "hold" if held else "unhold"
        if not who.strip() or not why.strip():
            raise EvidenceError(f"a legal {what} needs a `who` and a `why` for the audit log")
        async with self.pool.acquire() as conn, conn.transaction():
            # The row's lock orders this against a purge deciding about the same record.
            row = await conn.fetchrow(
                "SELECT purged_at FROM evidence WHERE id = $1 FOR UPDATE", evidence_id
            )
            if row is None:
                raise EvidenceError(f"no evidence with id {evidence_id}")
            if row["purged_at"] is not None:
                raise EvidenceError(
                    f"evidence {evidence_id} was purged on {row['purged_at']:%Y-%m-%d}: "
                    "nothing is left to hold"
                )
            current = await conn.fetchrow(
                "SELECT held_by, held_why, held_at FROM evidence_hold "
                "WHERE evidence_id = $1 AND released_at IS NULL",
                evidence_id,
            )
            if held and current is not None:
                raise EvidenceError(
                    f"evidence {evidence_id} is held already, since "
                    f"{current['held_at']:%Y-%m-%d %H:%M} UTC by {current['held_by']}: "
                    f"{current['held_why']}"
                )
            if not held and current is None:
                raise EvidenceError(f"evidence {evidence_id} is not held")
            if held:
                await conn.execute(
                    "INSERT INTO evidence_hold (evidence_id, held_by, held_why) "
                    "VALUES ($1, $2, $3)",
                    evidence_id,
                    who,
                    why,
                )
            else:
                await conn.execute(
                    "UPDATE evidence_hold SET released_by = $2, released_why = $3, "
                    "released_at = now() WHERE evidence_id = $1 AND released_at IS NULL",
                    evidence_id,
                    who,
                    why,
                )
            await _audit(conn, evidence_id, who, why, what, "ok")
        log.info(f"evidence_{what}", evidence=evidence_id, who=who, why=why)

    @translating
    async def holds(self, evidence_id: int) -> builtins.list[dict[str, Any]]:
        """The legal holds of one record, open or released, oldest first."""
        rows = await self.pool.fetch(
            "SELECT held_by, held_why, held_at, released_by, released_why, released_at "
            "FROM evidence_hold WHERE evidence_id = $1 ORDER BY id",
            evidence_id,
        )
        return [dict(r) for r in rows]

    @translating
    async def purge(
        self, now: datetime | None = None, *, limit: int = 1000
    ) -> builtins.list[Purged]:
        """Delete the blobs of records kept until ``now`` or before and not held (at most
        ``limit`` of them), mark each row purged, and write each purge to its audit log
        (who: ``retention``). The rows, their hashes and their audit logs stay."""
        now = now or datetime.now(UTC)
        due = await self.pool.fetch(
            "SELECT id FROM evidence e WHERE purged_at IS NULL AND retain_until <= $1 "
            "AND NOT EXISTS (SELECT 1 FROM evidence_hold h "
            "WHERE h.evidence_id = e.id AND h.released_at IS NULL) "
            "ORDER BY retain_until, id LIMIT $2",
            now,
            limit,
        )
        purged: builtins.list[Purged] = []
        for candidate in due:
            try:
                done = await self._purge_one(candidate["id"], now)
            except BlobError as exc:  # this one is tried again on the next run
                log.error("evidence_purge_failed", evidence=candidate["id"], error=str(exc))
                continue
            if done is not None:
                purged.append(done)
        if purged:
            log.info("evidence_purged", evidence=[p.id for p in purged])
        return purged

    async def _purge_one(self, evidence_id: int, now: datetime) -> Purged | None:
        async with self.pool.acquire() as conn, conn.transaction():
            # Decided again under the row's lock: a hold may have come since the listing.
            row = await conn.fetchrow(
                "SELECT id, activity_row, jurisdiction, retain_until, blobs FROM evidence e "
                "WHERE id = $1 AND purged_at IS NULL AND retain_until <= $2 "
                "AND NOT EXISTS (SELECT 1 FROM evidence_hold h "
                "WHERE h.evidence_id = e.id AND h.released_at IS NULL) "
                "FOR UPDATE SKIP LOCKED",
                evidence_id,
                now,
            )
            if row is None:
                return None
            blobs = json.loads(row["blobs"])
            for blob in blobs:  # a crash midway leaves the row to the next run: deletes repeat
                if _BLOB_FILE.fullmatch(blob["file"]):
                    await self.blobs.delete(blob["file"])
            await conn.execute("UPDATE evidence SET purged_at = now() WHERE id = $1", evidence_id)
            kept_for = row["jurisdiction"] or "the default retention"
            await _audit(
                conn,
                evidence_id,
                "retention",
                f"kept until {row['retain_until']:%Y-%m-%d} ({kept_for}), not held",
                "purge",
                f"ok: {len(blobs)} blobs deleted",
            )
        return Purged(
            id=row["id"],
            activity_row=row["activity_row"],
            jurisdiction=row["jurisdiction"],
            retain_until=row["retain_until"],
            blobs=len(blobs),
        )

    @translating
    async def export(self, evidence_id: int, *, who: str, why: str, into: Path) -> Path:
        """Write one case for an authority into the new directory ``into/evidence-ID``
        and return it: ``activity.json`` (the bytes as received), ``facts.json`` (all
        that was kept: accounts, signer, address, headers, signals, verdict), the media
        under ``media/``, and ``manifest.json`` (each file's SHA-256, MD5, size and
        time, the record's times, who exported it and why). The media are decrypted
        here only, in clear in that directory (mode 0700): audited first, like a read."""
        package = into.absolute() / f"evidence-{evidence_id}"
        if package.exists():
            raise EvidenceError(f"{package} exists already; nothing was overwritten")
        record, media = await self.read(evidence_id, who=who, why=why, what=f"export to {package}")
        row = await self.pool.fetchrow(
            "SELECT jurisdiction FROM evidence WHERE id = $1", evidence_id
        )
        meta = {
            "evidence_id": record.id,
            "activity_row": record.activity_row,
            "jurisdiction": row["jurisdiction"] if row is not None else None,
            "created_at": record.created_at.isoformat(),
            "retain_until": record.retain_until.isoformat(),
            "received_at": record.facts.get("received_at"),
            "exported_by": who,
            "why": why,
        }
        try:
            await asyncio.to_thread(_write_package, package, record, media, meta)
        except OSError as exc:
            error = EvidenceError(f"cannot export evidence {evidence_id} to {package}: {exc}")
            await self._log_access(
                evidence_id, who, why, f"export to {package}", f"failed: {error}"
            )
            raise error from exc
        log.info("evidence_exported", evidence=evidence_id, who=who, why=why, into=str(package))
        return package

    @translating
    async def orphans(self) -> builtins.list[Path | str]:
        """Blobs no row names: left by a crash (or a failed insert) between writing
        the blobs and committing the row, or by a ``preserve`` still under way. A
        file's path in a local store, ``evidence_blob NAME`` in the database."""
        named = {
            r["file"]
            for r in await self.pool.fetch(
                "SELECT jsonb_array_elements(blobs)->>'file' AS file FROM evidence"
            )
        }
        return await self.blobs.orphans(named)

    @translating
    async def list(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """The newest records' metadata; decrypts nothing, so it is not audited."""
        rows = await self.pool.fetch(
            f"SELECT {_METADATA} FROM evidence ORDER BY id DESC LIMIT $1", limit
        )
        return [_metadata(r) for r in rows]

    @translating
    async def metadata(self, evidence_id: int) -> dict[str, Any] | None:
        """One record's metadata (what the admin API's links show): the activity row,
        dates, blob names and sizes, the summary; decrypts nothing, so not audited."""
        row = await self.pool.fetchrow(
            f"SELECT {_METADATA} FROM evidence WHERE id = $1", evidence_id
        )
        return _metadata(row) if row is not None else None


_METADATA = "id, activity_row, created_at, retain_until, jurisdiction, purged_at, blobs, summary"


async def _audit(
    db: asyncpg.Pool | Connection, evidence_id: int, who: str, why: str, what: str, outcome: str
) -> None:
    await db.execute(
        "INSERT INTO evidence_access (evidence_id, who, why, what, outcome) "
        "VALUES ($1, $2, $3, $4, $5)",
        evidence_id,
        who,
        why,
        what,
        outcome,
    )


def _write_private(path: Path, data: bytes) -> dict[str, Any]:
    """Write a new file, mode 0600, durably; its manifest entry."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        "written_at": datetime.now(UTC).isoformat(),
    }


def _write_package(
    package: Path, record: EvidenceRecord, media: Sequence[bytes], meta: dict[str, Any]
) -> None:
    """The export's files, then its manifest; on failure nothing decrypted is left."""
    from relay.media.sniff import sniff

    package.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    package.mkdir(mode=0o700)
    try:
        files: list[dict[str, Any]] = []
        body = record.facts.get("body_base64")
        if isinstance(body, str):  # the exact bytes as sent, under the sender's signature
            activity = base64.b64decode(body)
        else:
            activity = json.dumps(record.facts.get("activity"), ensure_ascii=False).encode()
        files.append(
            {
                "path": "activity.json",
                "kind": "activity",
                **_write_private(package / "activity.json", activity),
            }
        )
        document = json.dumps(record.facts, indent=2, ensure_ascii=False).encode()
        files.append(
            {
                "path": "facts.json",
                "kind": "facts",
                **_write_private(package / "facts.json", document),
            }
        )
        if media:
            (package / "media").mkdir(mode=0o700)
        for entry, data in zip(record.media, media, strict=True):
            _, mime = sniff(data)
            suffix = (mimetypes.guess_extension(mime) if mime else None) or ".bin"
            name = f"media/{entry['blob']}{suffix}"
            files.append(
                {
                    "path": name,
                    "kind": "media",
                    "url": entry["url"],
                    "media_type": mime,
                    "hashes": entry["hashes"],
                    **_write_private(package / name, data),
                }
            )
        manifest = {
            "format": "sluice-evidence-export/1",
            **meta,
            "exported_at": datetime.now(UTC).isoformat(),
            "files": files,
        }
        _write_private(
            package / "manifest.json",
            json.dumps(manifest, indent=2, ensure_ascii=False).encode(),
        )
        fsync_dir(package)
    except BaseException:
        shutil.rmtree(package, ignore_errors=True)
        raise


def _metadata(row: asyncpg.Record) -> dict[str, Any]:
    return {**dict(row), "blobs": json.loads(row["blobs"]), "summary": json.loads(row["summary"])}
