"""``sluice evidence``: preserved evidence of quarantined activities; every read is audited."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from relay.cli.bootstrap import Commands, configured, connected

__all__ = ["register"]


_EXTRACT_WARNING = """\
WARNING: writing {count} decrypted media file(s) in clear to {directory}.
They may be illegal to possess or to share. Open them only if you must, keep them
off synced, shared or backed-up storage, and delete them when you are done.
This extraction is recorded in the evidence audit log."""


def _evidence(action):  # type: ignore[no-untyped-def]
    """Run ``action(args, store)`` on the configured evidence store."""

    def run(args: argparse.Namespace) -> int:
        from relay.evidence import EvidenceStore

        config = configured(args.config)

        async def with_store() -> int:
            async with connected(config) as database:
                return int(await action(args, EvidenceStore.from_config(database.pool, config)))

        return asyncio.run(with_store())

    return run


def _evidence_keygen(args: argparse.Namespace) -> int:
    from relay.evidence import EvidenceKey

    EvidenceKey.generate(Path(args.file))
    print(f"wrote a new evidence key to {args.file} (mode 0600)", file=sys.stderr)
    print("keep a copy somewhere safe: without it the evidence cannot be read", file=sys.stderr)
    return 0


def _jsonable(value: object) -> str:
    from datetime import datetime

    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


async def _evidence_list(args: argparse.Namespace, store) -> int:  # type: ignore[no-untyped-def]
    for row in await store.list(args.limit):
        print(json.dumps(row, default=_jsonable))
    return 0


async def _evidence_audit(args: argparse.Namespace, store) -> int:  # type: ignore[no-untyped-def]
    for row in await store.audit(args.id):
        print(json.dumps(row, default=_jsonable))
    return 0


async def _evidence_orphans(args: argparse.Namespace, store) -> int:  # type: ignore[no-untyped-def]
    for path in await store.orphans():
        print(path)
    return 0


async def _evidence_show(args: argparse.Namespace, store) -> int:  # type: ignore[no-untyped-def]
    import os
    import re
    from pathlib import Path
    from urllib.parse import urlsplit

    directory = Path(args.extract).absolute() if args.extract else None
    what = f"extract to {directory}" if directory else "show"
    record, media = await store.read(args.id, who=args.who, why=args.why, what=what)
    shown = {
        "id": record.id,
        "activity_row": record.activity_row,
        "created_at": record.created_at,
        "retain_until": record.retain_until,
        "facts": record.facts,
        "media": record.media,
    }
    print(json.dumps(shown, indent=2, ensure_ascii=False, default=_jsonable))
    if directory is None:
        return 0
    print(_EXTRACT_WARNING.format(count=len(media), directory=directory), file=sys.stderr)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry, data in zip(record.media, media, strict=True):
        suffix = Path(urlsplit(entry["url"]).path).suffix
        suffix = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,5}", suffix) else ".bin"
        path = directory / f"evidence-{record.id}-{entry['blob']}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            print(f"error: {path} exists already; not overwritten", file=sys.stderr)
            return 1
        with open(fd, "wb") as out:
            out.write(data)
        print(path, file=sys.stderr)
    return 0


_EXPORT_WARNING = """\
WARNING: {directory} holds {count} decrypted media file(s) in clear, for an authority.
They may be illegal to possess or to share. Hand them over only as the law asks, keep
them off synced, shared or backed-up storage, and delete them when you are done.
This export is recorded in the evidence audit log."""


async def _evidence_hold(args: argparse.Namespace, store) -> int:  # type: ignore[no-untyped-def]
    await store.hold(args.id, who=args.who, why=args.why)
    print(f"evidence {args.id} is held: no purge removes it until `sluice evidence unhold`")
    return 0


async def _evidence_unhold(args: argparse.Namespace, store) -> int:  # type: ignore[no-untyped-def]
    await store.unhold(args.id, who=args.who, why=args.why)
    print(f"evidence {args.id} is no longer held")
    return 0


async def _evidence_purge(args: argparse.Namespace, store) -> int:  # type: ignore[no-untyped-def]
    from dataclasses import asdict

    for purged in await store.purge():
        print(json.dumps(asdict(purged), default=_jsonable))
    return 0


async def _evidence_export(args: argparse.Namespace, store) -> int:  # type: ignore[no-untyped-def]
    package = await store.export(args.id, who=args.who, why=args.why, into=Path(args.into))
    media = package / "media"
    count = sum(1 for _ in media.iterdir()) if media.is_dir() else 0
    print(_EXPORT_WARNING.format(count=count, directory=package), file=sys.stderr)
    print(package)
    return 0


def _on_the_record(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("id", type=int)
    parser.add_argument("--who", required=True, help=f"who {what}, for the audit log")
    parser.add_argument("--why", required=True, help="why, for the audit log")
    parser.add_argument("--config", "-c", help="TOML configuration file")


def register(commands: Commands) -> None:
    """``evidence keygen|list|show|audit|orphans|hold|unhold|purge|export``."""
    evidence = commands.add_parser(
        "evidence", help="preserved evidence of quarantined activities (every read is audited)"
    ).add_subparsers(dest="evidence_command", required=True)
    keygen = evidence.add_parser("keygen", help="write a new evidence key file (mode 0600)")
    keygen.add_argument("file")
    keygen.set_defaults(run=_evidence_keygen)
    listing = evidence.add_parser("list", help="list records (metadata only, nothing decrypted)")
    listing.add_argument("--config", "-c", help="TOML configuration file")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run=_evidence(_evidence_list))
    show = evidence.add_parser(
        "show", help="decrypt one record and print its facts (audited: --who and --why)"
    )
    show.add_argument("id", type=int)
    show.add_argument("--who", required=True, help="who reads it, for the audit log")
    show.add_argument("--why", required=True, help="why, for the audit log")
    show.add_argument("--config", "-c", help="TOML configuration file")
    show.add_argument(
        "--extract", metavar="DIR", help="also write the decrypted media, in clear, into DIR"
    )
    show.set_defaults(run=_evidence(_evidence_show))
    audit = evidence.add_parser("audit", help="list the reads of one record")
    audit.add_argument("id", type=int)
    audit.add_argument("--config", "-c", help="TOML configuration file")
    audit.set_defaults(run=_evidence(_evidence_audit))
    orphans = evidence.add_parser(
        "orphans", help="list blob files no record names (left by a crash; harmless)"
    )
    orphans.add_argument("--config", "-c", help="TOML configuration file")
    orphans.set_defaults(run=_evidence(_evidence_orphans))
    hold = evidence.add_parser(
        "hold", help="put a legal hold on one record: no purge removes it (audited)"
    )
    _on_the_record(hold, "holds it")
    hold.set_defaults(run=_evidence(_evidence_hold))
    unhold = evidence.add_parser("unhold", help="lift the legal hold on one record (audited)")
    _on_the_record(unhold, "lifts the hold")
    unhold.set_defaults(run=_evidence(_evidence_unhold))
    purge = evidence.add_parser(
        "purge",
        help="remove what is past retention and not held; prints each record removed",
    )
    purge.add_argument("--config", "-c", help="TOML configuration file")
    purge.set_defaults(run=_evidence(_evidence_purge))
    export = evidence.add_parser(
        "export",
        help="write one case for an authority into DIR/evidence-ID, media decrypted (audited)",
    )
    _on_the_record(export, "exports it")
    export.add_argument("--into", required=True, metavar="DIR", help="where the package goes")
    export.set_defaults(run=_evidence(_evidence_export))
