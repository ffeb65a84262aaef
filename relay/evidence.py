"""Evidence of quarantined activities, preserved encrypted and read only on the record.

US providers must preserve reported material and the related account data for a
year (18 U.S.C. 2258A, as amended by the REPORT Act 2024), the UK code asks for
90 days, and destroying it can itself be unlawful. So a quarantine keeps all
that Sluice knew (activity, actor, signer, sender address, headers, URLs,
hashes, signals, verdict) together with the media bytes.

Every record is a set of blobs under ``directory``: the facts (JSON) and each
media file, one file per blob, named by a random id (``<32 hex>.blob``). A blob
file is::

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

Nothing here deletes evidence: ``retain_until`` records the minimum the law
asks for; removal after it is left to a later, deliberate tool.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import hashlib
import json
import os
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.errors import SluiceError
from relay.store.db import Connection, translated, translating

if TYPE_CHECKING:
    from relay.config import Config

__all__ = [
    "SUBDIRECTORY",
    "EvidenceError",
    "EvidenceKey",
    "EvidenceRecord",
    "EvidenceStore",
    "MediaItem",
    "Sealed",
]

#: Where the blobs live, under ``[storage] data_dir``.
SUBDIRECTORY = "evidence"

log = structlog.get_logger(__name__)

_VERSION = 1
_NONCE = 12
_TAG = 16
_HEADER = 1 + _NONCE
_KEY_BYTES = 32
_SUFFIX = ".blob"
_TMP = ".tmp-"
_BLOB_FILE = re.compile(r"[0-9a-f]{32}\.blob")
_FORMATS = "32 raw bytes, 64 hex characters or the base64 text of 32 bytes"
_TEXT_BYTES = frozenset(string.printable.encode())


class EvidenceError(SluiceError):
    """Evidence cannot be preserved or read: bad key, unknown id, missing or tampered blob."""


def _aad(evidence_id: int, name: str) -> bytes:
    return f"sluice-evidence:v1:{evidence_id}:{name}".encode()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            _fsync_dir(path.absolute().parent)
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


class EvidenceStore:
    """Preserved evidence: encrypted blobs under ``directory``, rows in ``evidence``.

    ``key`` may be None where only metadata is needed (``list``, ``audit``,
    ``orphans``); ``preserve`` and ``read`` then refuse.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        directory: Path,
        key: EvidenceKey | None,
        *,
        retention_days: int = 365,
    ) -> None:
        if retention_days < 1:
            raise EvidenceError(f"retention_days must be at least 1, not {retention_days}")
        self.pool = pool
        self.directory = directory
        self.key = key
        self.retention_days = retention_days

    @classmethod
    def from_config(cls, pool: asyncpg.Pool, config: Config) -> EvidenceStore:
        """The store under ``[storage] data_dir``, with the key of ``[evidence] key_file``
        (None when no file is set)."""
        key_file = config.evidence.key_file
        key = EvidenceKey.load(key_file) if key_file is not None else None
        return cls(pool, config.storage.data_dir / SUBDIRECTORY, key)

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
        blobs = await asyncio.to_thread(self._write_blobs, key, evidence_id, plaintexts)
        return Sealed(evidence_id, blobs, summary, len(media))

    @translating
    async def record(
        self,
        sealed: Sealed,
        *,
        activity_row: int | None,
        conn: Connection | None = None,
    ) -> None:
        """Write the row naming ``sealed``'s blobs; within ``conn``'s transaction if given
        (then it counts once that commits)."""
        await self._insert(conn or self.pool, sealed.id, activity_row, sealed.blobs, sealed.summary)

    def _write_blobs(
        self, key: EvidenceKey, evidence_id: int, plaintexts: list[tuple[str, bytes]]
    ) -> list[dict[str, Any]]:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            blobs = [self._write_blob(key, evidence_id, name, data) for name, data in plaintexts]
            _fsync_dir(self.directory)  # the renames are durable too
        except OSError as exc:
            raise EvidenceError(
                f"cannot write evidence {evidence_id} into {self.directory}: {exc}"
            ) from exc
        return blobs

    def _write_blob(
        self, key: EvidenceKey, evidence_id: int, name: str, data: bytes
    ) -> dict[str, Any]:
        file = secrets.token_hex(16) + _SUFFIX
        sealed = key.seal(data, _aad(evidence_id, name))
        temporary = self.directory / (_TMP + file)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, "wb") as out:
                out.write(sealed)
                out.flush()
                os.fsync(out.fileno())
            os.rename(temporary, self.directory / file)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
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
    ) -> None:
        try:
            with translated():  # a database gone is StoreUnavailable, not a bad record
                await db.execute(
                    "INSERT INTO evidence (id, activity_row, retain_until, blobs, summary) "
                    "VALUES ($1, $2, now() + make_interval(days => $3), $4::jsonb, $5::jsonb)",
                    evidence_id,
                    activity_row,
                    self.retention_days,
                    json.dumps(blobs),
                    summary,
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
                "SELECT id, activity_row, created_at, retain_until, blobs FROM evidence "
                "WHERE id = $1",
                evidence_id,
            )
            if row is None:
                raise EvidenceError(f"no evidence with id {evidence_id}")
            blobs = json.loads(row["blobs"])
            if not media:
                blobs = [b for b in blobs if b["name"] == "facts"]
            plaintexts = await asyncio.to_thread(self._read_blobs, key, evidence_id, blobs)
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

    def _read_blobs(
        self, key: EvidenceKey, evidence_id: int, blobs: list[dict[str, Any]]
    ) -> list[bytes]:
        return [self._read_blob(key, evidence_id, blob) for blob in blobs]

    def _read_blob(self, key: EvidenceKey, evidence_id: int, blob: dict[str, Any]) -> bytes:
        name = blob["name"]
        where = f"evidence blob {name} of evidence {evidence_id}"
        if not _BLOB_FILE.fullmatch(blob["file"]):
            raise EvidenceError(f"{where} has an invalid file name in the database")
        path = self.directory / blob["file"]
        try:
            sealed = path.read_bytes()
        except FileNotFoundError as exc:
            raise EvidenceError(f"{where} is missing: {path}") from exc
        except OSError as exc:
            raise EvidenceError(f"{where} cannot be read: {path}: {exc.strerror}") from exc
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
            data = key.unseal(sealed, _aad(evidence_id, name))
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
                await self.pool.execute(
                    "INSERT INTO evidence_access (evidence_id, who, why, what, outcome) "
                    "VALUES ($1, $2, $3, $4, $5)",
                    evidence_id,
                    who,
                    why,
                    what,
                    outcome,
                )
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

    @translating
    async def orphans(self) -> list[Path]:
        """Blob files no row names: left by a crash (or a failed insert) between writing
        the blobs and committing the row, or by a ``preserve`` still under way."""
        named = {
            r["file"]
            for r in await self.pool.fetch(
                "SELECT jsonb_array_elements(blobs)->>'file' AS file FROM evidence"
            )
        }

        def scan() -> list[Path]:
            if not self.directory.is_dir():
                return []
            return sorted(
                p
                for p in self.directory.iterdir()
                if p.name.startswith(_TMP) or (p.name.endswith(_SUFFIX) and p.name not in named)
            )

        return await asyncio.to_thread(scan)

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


_METADATA = "id, activity_row, created_at, retain_until, blobs, summary"


def _metadata(row: asyncpg.Record) -> dict[str, Any]:
    return {**dict(row), "blobs": json.loads(row["blobs"]), "summary": json.loads(row["summary"])}
