"""Where sealed evidence blobs live: one seam, a local directory or PostgreSQL.

The blobs are already encrypted (``relay.evidence`` seals and unseals above this
seam), so a store only keeps opaque bytes under a name; no store ever sees a key
or a plaintext. ``LocalBlobs`` is the embedded default, files under the data
directory of one process; ``PostgresBlobs`` keeps them in the database itself
(``evidence_blob``), so every Sluice process sharing the database, on any machine,
reads what another preserved.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Set
from pathlib import Path
from typing import Protocol, runtime_checkable

import asyncpg

from relay.errors import SluiceError
from relay.store.db import translated

__all__ = [
    "STORES",
    "BlobError",
    "BlobMissing",
    "BlobStore",
    "LocalBlobs",
    "PostgresBlobs",
    "blob_name",
    "fsync_dir",
]

#: The names ``[evidence] store`` may take.
STORES = ("local", "postgresql")

_TMP = ".tmp-"
_SUFFIX = ".blob"


class BlobError(SluiceError):
    """A blob cannot be written, read or deleted."""


class BlobMissing(BlobError):
    """No blob has that name (never written, or purged)."""


@runtime_checkable
class BlobStore(Protocol):
    """Opaque bytes by name; ``put`` is durable when it returns."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes:
        """Raises BlobMissing when there is none."""
        ...

    async def delete(self, name: str) -> None:
        """Deleting what is not there is not an error (a purge may run twice)."""
        ...

    async def exists(self, name: str) -> bool: ...

    async def orphans(self, named: Set[str]) -> list[Path | str]:
        """Blobs not in ``named``, and writes cut short: where each is, for an admin."""
        ...

    def where(self, name: str) -> str:
        """Where the blob ``name`` is, for an error message."""
        ...


def fsync_dir(directory: Path) -> None:
    """Make a rename or an unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobs:
    """One file per blob under ``directory`` (mode 0700, files 0600), written
    atomically: a temporary name, fsync, rename, fsync of the directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __str__(self) -> str:
        return str(self.directory)

    def where(self, name: str) -> str:
        return str(self.directory / name)

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, name, data)

    def _put(self, name: str, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.directory / (_TMP + name)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(temporary, self.directory / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_dir(self.directory)  # the rename is durable too

    async def get(self, name: str) -> bytes:
        path = self.directory / name
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise BlobMissing(f"{path} is missing") from exc
        except OSError as exc:
            raise BlobError(f"{path} cannot be read: {exc.strerror}") from exc

    async def delete(self, name: str) -> None:
        def unlink() -> None:
            (self.directory / name).unlink(missing_ok=True)
            fsync_dir(self.directory)

        try:
            await asyncio.to_thread(unlink)
        except FileNotFoundError:
            pass  # no directory: nothing to delete
        except OSError as exc:
            raise BlobError(f"{self.directory / name} cannot be deleted: {exc.strerror}") from exc

    async def exists(self, name: str) -> bool:
        return await asyncio.to_thread((self.directory / name).is_file)

    async def orphans(self, named: Set[str]) -> list[Path | str]:
        def scan() -> list[Path | str]:
            if not self.directory.is_dir():
                return []
            return sorted(
                p
                for p in self.directory.iterdir()
                if p.name.startswith(_TMP) or (p.name.endswith(_SUFFIX) and p.name not in named)
            )

        return await asyncio.to_thread(scan)


class PostgresBlobs:
    """Blobs as ``bytea`` rows of ``evidence_blob`` (migration 0015), durable once
    their INSERT commits; readable from every process on the database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def __str__(self) -> str:
        return "the evidence_blob table"

    def where(self, name: str) -> str:
        return f"evidence_blob {name}"

    async def put(self, name: str, data: bytes) -> None:
        try:
            with translated():  # a database gone is StoreUnavailable, not a bad blob
                await self.pool.execute(
                    "INSERT INTO evidence_blob (name, data) VALUES ($1, $2)", name, data
                )
        except asyncpg.PostgresError as exc:
            raise BlobError(f"cannot write {self.where(name)}: {exc}") from exc

    async def get(self, name: str) -> bytes:
        data: bytes | None = await self.pool.fetchval(
            "SELECT data FROM evidence_blob WHERE name = $1", name
        )
        if data is None:
            raise BlobMissing(f"{self.where(name)} is missing")
        return data

    async def delete(self, name: str) -> None:
        await self.pool.execute("DELETE FROM evidence_blob WHERE name = $1", name)

    async def exists(self, name: str) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM evidence_blob WHERE name = $1)", name
            )
        )

    async def orphans(self, named: Set[str]) -> list[Path | str]:
        rows = await self.pool.fetch(
            "SELECT name FROM evidence_blob WHERE NOT (name = ANY($1::text[])) ORDER BY name",
            sorted(named),
        )
        return [self.where(r["name"]) for r in rows]


def blob_name() -> str:
    """A new random blob name (``<32 hex>.blob``): it says nothing about its content."""
    return secrets.token_hex(16) + _SUFFIX
