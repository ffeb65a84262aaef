"""The ``sluice`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from relay import __version__

if TYPE_CHECKING:
    import asyncpg

    from relay.config import Config
    from relay.store.activities import ActivityStore
    from relay.store.db import Database

__all__ = ["main"]


# -- one start-up path -------------------------------------------------------------
#
# Every command that reads the configuration goes through ``_configured`` (the checks
# ``serve`` and ``check-config`` make, before anything opens) and, when it needs the
# database, ``_database`` (closed, and the embedded PostgreSQL stopped, however the
# command ends). ``main`` turns the errors into exit codes: 2 and the located problems
# for a bad configuration, 1 and the message for anything else Sluice refuses.


def _configured(
    path: str | None, *, evidence_key: bool = True, log_level: str | None = None
) -> Config:
    """The configuration at ``path``, checked as ``serve`` checks it; raises ConfigError.

    ``evidence_key=False`` for commands that never read evidence. Logs go to stderr at
    ``log_level`` (default: the configured one): stdout carries the command's output.
    """
    from relay.config import load_config, startup_problems
    from relay.errors import ConfigError
    from relay.log import configure_logging

    config = load_config(path)
    problems = startup_problems(config, evidence_key=evidence_key)
    if problems:
        raise ConfigError(problems)
    configure_logging(log_level or config.log.level)
    return config


@contextlib.asynccontextmanager
async def _database(config: Config) -> AsyncIterator[Database]:
    """The configured database, closed however the command ends."""
    from relay.store import connect

    database = await connect(config.database.url, config.storage.data_dir)
    try:
        yield database
    finally:
        await database.close()


def _activity_store(config: Config, pool: asyncpg.Pool) -> ActivityStore:
    """The activity store as a command uses it: the process's queue settings, its own name."""
    from relay.store.activities import ActivityStore

    return ActivityStore(
        pool,
        owner="sluice-cli",
        lease_seconds=config.delivery.lease_seconds,
        dedup_window_seconds=config.delivery.dedup_window_seconds,
        max_age_seconds=config.delivery.max_age_seconds,
    )


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from relay.app import build_app

    config = _configured(args.config)
    try:
        web.run_app(
            build_app(config),
            host=config.server.host,
            port=config.server.port,
            print=None,
            access_log=None,
            shutdown_timeout=10,
        )
    except OSError as exc:  # a listen address taken or not ours; all is closed by now
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from relay.config import main_check_config

    return main_check_config(args.file)


def _dead_letters(args: argparse.Namespace) -> int:

    ids = None
    if args.replay is not None and args.replay != ["all"]:
        if not all(i.isascii() and i.isdigit() for i in args.replay):
            print("--replay takes row ids (numbers), or `all`", file=sys.stderr)
            return 2
        ids = [int(i) for i in args.replay]
    config = _configured(args.config, evidence_key=False, log_level="warning")

    async def run() -> int:
        async with _database(config) as database:
            store = _activity_store(config, database.pool)
            if args.replay is None:
                for row in await store.dead_letters(args.limit):
                    print(json.dumps(row))
                return 0
            print(json.dumps({"replayed": await store.replay(ids)}))
            return 0

    return asyncio.run(run())


# -- sluice effects ----------------------------------------------------------------


def _effects_list(args: argparse.Namespace) -> int:
    """Effects of verdicts (notify…), newest first, one JSON object per line."""
    config = _configured(args.config, evidence_key=False, log_level="warning")

    async def run() -> int:
        from relay.outbox import Outbox

        async with _database(config) as database:
            for row in await Outbox(database.pool).list(args.state, args.limit):
                print(json.dumps(row))
        return 0

    return asyncio.run(run())


def _effects_replay(args: argparse.Namespace) -> int:
    """Dead effects back to pending; a running Sluice carries them out."""
    if args.all == bool(args.ids):
        print("give effect ids (numbers), or --all", file=sys.stderr)
        return 2
    if not all(i.isascii() and i.isdigit() for i in args.ids):
        print("effect ids are numbers", file=sys.stderr)
        return 2
    ids = None if args.all else [int(i) for i in args.ids]
    config = _configured(args.config, evidence_key=False, log_level="warning")

    async def run() -> int:
        from relay.outbox import Outbox

        async with _database(config) as database:
            print(json.dumps({"replayed": await Outbox(database.pool).replay(ids)}))
        return 0

    return asyncio.run(run())


# -- sluice quarantine -----------------------------------------------------------


def _quarantine_release(args: argparse.Namespace) -> int:
    """Queue a quarantined activity found to be a false positive (see relay.release)."""
    from relay.evidence import EvidenceStore
    from relay.release import release

    config = _configured(args.config, log_level="warning")

    async def run() -> int:
        async with _database(config) as database:
            store = _activity_store(config, database.pool)
            evidence = EvidenceStore.from_config(database.pool, config)
            state = await release(store, evidence, args.row, moderator=args.who, reason=args.why)
            print(json.dumps({"row": args.row, "state": state}))
            return 0

    return asyncio.run(run())


# -- sluice evidence -------------------------------------------------------------

_EXTRACT_WARNING = """\
WARNING: writing {count} decrypted media file(s) in clear to {directory}.
They may be illegal to possess or to share. Open them only if you must, keep them
off synced, shared or backed-up storage, and delete them when you are done.
This extraction is recorded in the evidence audit log."""


def _evidence(action):  # type: ignore[no-untyped-def]
    """Run ``action(args, store)`` on the configured evidence store."""

    def run(args: argparse.Namespace) -> int:
        from relay.evidence import EvidenceStore

        config = _configured(args.config)

        async def with_store() -> int:
            async with _database(config) as database:
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


def _with_banks(config_path: str | None, action) -> int:  # type: ignore[no-untyped-def]
    """Run ``action(store, config)`` against the configured database."""
    from relay.banks import BankStore

    # The command prints its own summary; info logs (migrations, bank_created) are noise here.
    config = _configured(config_path, evidence_key=False, log_level="warning")

    async def run() -> int:
        async with _database(config) as database:
            return int(await action(BankStore(database.pool), config))

    return asyncio.run(run())


def _bank_category(config, bank: str, given: str | None) -> str | None:  # type: ignore[no-untyped-def]
    """--category, else the configured bank's; a contradiction between the two is refused."""
    from relay.banks import BankError

    configured = next((b for b in config.bank if b.name == bank), None)
    if configured is None:
        return given
    if given is not None and given != configured.category:
        raise BankError(
            f"--category {given} contradicts {config.source}: bank `{bank}` "
            f"has category `{configured.category}`"
        )
    return configured.category


def _hashes_count(count: int) -> str:
    return f"{count} new hash" if count == 1 else f"{count} new hashes"


def _bank_import(args: argparse.Namespace) -> int:
    from relay.banks import BankError, read_hash_file

    try:
        entries = read_hash_file(args.path, default_kind=args.type)
    except BankError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not entries:
        print(f"{args.path}: no hashes in this file", file=sys.stderr)
        return 1
    distinct = len({(kind, value) for kind, value, _ in entries})

    async def run(store, config) -> int:  # type: ignore[no-untyped-def]
        category = _bank_category(config, args.bank, args.category)
        await store.ensure(args.bank, category, source=args.source or Path(args.path).name)
        added = await store.add(args.bank, entries)
        print(
            f"imported {_hashes_count(added)} into {args.bank} ({distinct - added} already there)"
        )
        return 0

    return _with_banks(args.config, run)


def _bank_list(args: argparse.Namespace) -> int:
    async def run(store, config) -> int:  # type: ignore[no-untyped-def]
        stored = {bank["name"]: bank for bank in await store.list()}
        configured = {bank.name: bank for bank in config.bank}
        rows = []
        for name in sorted(stored.keys() | configured.keys()):
            bank = stored.get(name) or {
                "name": name,
                "category": configured[name].category,
                "source": None,
                "confidential": True,
                "counts": {},
                "created_at": None,
                "changed_at": None,
            }
            rows.append({**bank, "configured": name in configured})
        if args.json:
            for row in rows:
                print(json.dumps(row, default=str))
            return 0
        if not rows:
            print("no banks yet: sluice bank import --bank NAME --category CAT FILE")
            return 0
        # A column per registered kind, in the registry's order, then any kind the
        # database holds that this Sluice does not know.
        from relay.hashing import KINDS

        names = [*KINDS, *sorted({n for row in rows for n in row["counts"]} - set(KINDS))]
        table = [("NAME", "CATEGORY", *(n.upper() for n in names), "CHANGED")]
        for row in rows:
            changed = row["changed_at"]
            counts = row["counts"]
            table.append(
                (
                    row["name"] + ("" if row["configured"] else " *"),
                    row["category"],
                    *(str(counts.get(n, 0)) for n in names),
                    changed.isoformat(" ", "seconds") if changed else "never",
                )
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for r in table:
            print(
                "  ".join(
                    c.rjust(w) if 2 <= i < len(r) - 1 else c.ljust(w)  # counts to the right
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                ).rstrip()
            )
        if not all(row["configured"] for row in rows):
            print(
                "* not in the configuration: matched with its stored category and "
                "the default distance"
            )
        return 0

    return _with_banks(args.config, run)


def _bank_add_image(args: argparse.Namespace) -> int:
    from relay.errors import SluiceError
    from relay.hashing import KINDS
    from relay.media.image import hash_media
    from relay.media.media import Media

    entries: list[tuple[str, str, str | None]] = []
    failed = False
    for image in args.images:
        try:
            data = Path(image).read_bytes()
            media = Media.of(data, hash_media(data))
        except OSError as exc:
            print(f"{image}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            failed = True
            continue
        except SluiceError as exc:
            print(f"{image}: {exc}", file=sys.stderr)
            failed = True
            continue
        note = args.note or Path(image).name
        # Every value of every kind: each kind knows what is worth matching.
        entries += [(kind, v, note) for kind, values in media.hashes.items() for v in values]
        if media.kind != "image":
            print(f"{image}: not a picture: adding only its exact hashes", file=sys.stderr)
            continue
        for kind in KINDS.values():
            why = kind.missing(media.quality) if kind.name not in media.hashes else None
            if why:
                print(f"{image}: {why}: adding only its exact hashes", file=sys.stderr)
    if failed:
        print("nothing added", file=sys.stderr)
        return 1
    distinct = len({(kind, value) for kind, value, _ in entries})

    async def run(store, config) -> int:  # type: ignore[no-untyped-def]
        category = _bank_category(config, args.bank, args.category)
        await store.ensure(args.bank, category, source="sluice bank add-image")
        added = await store.add(args.bank, entries)
        images = "1 image" if len(args.images) == 1 else f"{len(args.images)} images"
        print(
            f"added {_hashes_count(added)} from {images} into {args.bank} "
            f"({distinct - added} already there)"
        )
        return 0

    return _with_banks(args.config, run)


def _hash(args: argparse.Namespace) -> int:
    from relay.errors import SluiceError
    from relay.media.image import hash_file

    failed = False
    for name in args.files:
        try:
            print(json.dumps(hash_file(name)), flush=True)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            failed = True
        except SluiceError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sluice", description="ActivityPub filtering relay in front of an instance's inboxes."
    )
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run Sluice (embedded defaults without --config)")
    serve.add_argument("--config", "-c", help="TOML configuration file")
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(run=_check_config)

    dead = commands.add_parser(
        "dead-letters", help="list activities whose delivery gave up, or replay them"
    )
    dead.add_argument("--config", "-c", help="TOML configuration file")
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument(
        "--replay", nargs="+", metavar="ROW", help="row ids to deliver again, or `all`"
    )
    dead.set_defaults(run=_dead_letters)

    effects = commands.add_parser(
        "effects", help="effects of verdicts (notify…): list them, replay dead ones"
    ).add_subparsers(dest="effects_command", required=True)
    effects_list = effects.add_parser("list", help="effects, newest first, as JSON lines")
    effects_list.add_argument("--config", "-c", help="TOML configuration file")
    effects_list.add_argument("--state", choices=("pending", "done", "dead"))
    effects_list.add_argument("--limit", type=int, default=100)
    effects_list.set_defaults(run=_effects_list)
    effects_replay = effects.add_parser("replay", help="run dead effects again")
    effects_replay.add_argument("--config", "-c", help="TOML configuration file")
    effects_replay.add_argument("--all", action="store_true", help="every dead effect")
    effects_replay.add_argument("ids", nargs="*", metavar="ID", help="effect ids")
    effects_replay.set_defaults(run=_effects_replay)

    hash_ = commands.add_parser(
        "hash", help="print the SHA-256, MD5 and PDQ of files, one JSON object per line"
    )
    hash_.add_argument("files", nargs="+", metavar="FILE")
    hash_.set_defaults(run=_hash)

    bank = commands.add_parser("bank", help="hash lists media is matched against")
    banks = bank.add_subparsers(dest="bank_command", required=True)
    from relay.hashing import KINDS

    kinds = sorted(KINDS)

    imp = banks.add_parser(
        "import",
        help="add a hash list to a bank (ThreatExchange `pdq <hex>` lines, bare hashes, CSV)",
    )
    imp.add_argument("--config", "-c", help="TOML configuration file")
    imp.add_argument("--bank", required=True, help="the bank's name (created if new)")
    imp.add_argument("--category", help="what it lists (csam, ncii, unwanted…); needed to create")
    imp.add_argument("--type", choices=kinds, help="the kind of lines that do not name one")
    imp.add_argument("--source", help="where the list came from (default: the file's name)")
    imp.add_argument("path", metavar="PATH")
    imp.set_defaults(run=_bank_import)

    lst = banks.add_parser("list", help="banks, their categories and entry counts")
    lst.add_argument("--config", "-c", help="TOML configuration file")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    lst.set_defaults(run=_bank_list)

    add = banks.add_parser("add-image", help="hash local images into a bank")
    add.add_argument("--config", "-c", help="TOML configuration file")
    add.add_argument("--bank", required=True, help="the bank's name (created if new)")
    add.add_argument("--category", help="what it lists; needed to create the bank")
    add.add_argument("--note", help="kept with each hash (default: the image's file name)")
    add.add_argument("images", nargs="+", metavar="IMAGE")
    add.set_defaults(run=_bank_add_image)

    quarantine = commands.add_parser(
        "quarantine", help="activities held with their evidence"
    ).add_subparsers(dest="quarantine_command", required=True)
    release = quarantine.add_parser(
        "release",
        help="deliver a quarantined activity found to be a false positive, as it was sent "
        "(its evidence stays; the read is audited: --who and --why)",
    )
    release.add_argument("row", type=int, help="the activity's row id")
    release.add_argument("--who", required=True, help="the moderator, for the record")
    release.add_argument("--why", required=True, help="the reason, for the record")
    release.add_argument("--config", "-c", help="TOML configuration file")
    release.set_defaults(run=_quarantine_release)

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

    args = parser.parse_args(argv)
    from relay.errors import ConfigError, SluiceError

    try:
        return int(args.run(args))
    except ConfigError as exc:  # located problems, as check-config prints them
        print(exc, file=sys.stderr)
        return 2
    except SluiceError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
