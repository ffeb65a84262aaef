"""``sluice bank`` (import, list, add-image, sync): the hash lists media is matched
against; and ``sluice hash``, which prints the hashes a bank would hold for a file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from relay.cli.bootstrap import Commands, configured, connected

__all__ = ["register"]


def _with_banks(config_path: str | None, action) -> int:  # type: ignore[no-untyped-def]
    """Run ``action(store, config)`` against the configured database."""
    from relay.banks import BankStore

    # The command prints its own summary; info logs (migrations, bank_created) are noise here.
    config = configured(config_path, evidence_key=False, log_level="warning")

    async def run() -> int:
        async with connected(config) as database:
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
    from relay.media.hashes import hash_media
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
    from relay.media.hashes import hash_file

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


def _bank_sync(args: argparse.Namespace) -> int:
    """Sync the named banks (every bank with a ``source`` without names) once, now."""
    from relay.banks.sync import SyncError, bank_syncs

    async def run(store, config) -> int:  # type: ignore[no-untyped-def]
        syncs = await bank_syncs(config, store.pool)
        chosen = [s for s in syncs if not args.banks or s.bank in args.banks]
        unknown = sorted(set(args.banks) - {s.bank for s in syncs})
        if unknown:
            print(f"no [[bank]] with a source named {', '.join(unknown)}", file=sys.stderr)
            return 1
        failed = False
        for scheduled in chosen:
            try:
                done = await scheduled.sync.run()
            except SyncError as exc:
                print(json.dumps({"bank": scheduled.bank, "error": str(exc)}))
                failed = True
                continue
            print(json.dumps(done.counts()))
        return 1 if failed else 0

    try:
        return _with_banks(args.config, run)
    except SyncError as exc:
        print(exc, file=sys.stderr)
        return 1


def register(commands: Commands) -> None:
    """``hash`` and ``bank import|list|add-image|sync``."""
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

    sync = banks.add_parser(
        "sync", help="sync banks that fill themselves ([[bank]] source) now, once"
    )
    sync.add_argument("--config", "-c", help="TOML configuration file")
    sync.add_argument("banks", nargs="*", metavar="BANK", help="default: every one")
    sync.set_defaults(run=_bank_sync)
