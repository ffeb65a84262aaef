"""``sluice effects``: the effects of verdicts (notify…), listed, and dead ones replayed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from relay.cli.bootstrap import Commands, configured, connected

__all__ = ["register"]


def _effects_list(args: argparse.Namespace) -> int:
    """Effects of verdicts (notify…), newest first, one JSON object per line."""
    config = configured(args.config, evidence_key=False, log_level="warning")

    async def run() -> int:
        from relay.outbox import Outbox

        async with connected(config) as database:
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
    config = configured(args.config, evidence_key=False, log_level="warning")

    async def run() -> int:
        from relay.outbox import Outbox

        async with connected(config) as database:
            print(json.dumps({"replayed": await Outbox(database.pool).replay(ids)}))
        return 0

    return asyncio.run(run())


def register(commands: Commands) -> None:
    """``effects list`` and ``effects replay``."""
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
