"""``sluice dead-letters``: activities whose delivery gave up, listed or replayed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from relay.cli.bootstrap import Commands, activity_store, configured, connected

__all__ = ["register"]


def _dead_letters(args: argparse.Namespace) -> int:

    ids = None
    if args.replay is not None and args.replay != ["all"]:
        if not all(i.isascii() and i.isdigit() for i in args.replay):
            print("--replay takes row ids (numbers), or `all`", file=sys.stderr)
            return 2
        ids = [int(i) for i in args.replay]
    config = configured(args.config, evidence_key=False, log_level="warning")

    async def run() -> int:
        async with connected(config) as database:
            store = activity_store(config, database.pool)
            if args.replay is None:
                for row in await store.dead_letters(args.limit):
                    print(json.dumps(row))
                return 0
            print(json.dumps({"replayed": await store.replay(ids)}))
            return 0

    return asyncio.run(run())


def register(commands: Commands) -> None:
    """``dead-letters``."""
    dead = commands.add_parser(
        "dead-letters", help="list activities whose delivery gave up, or replay them"
    )
    dead.add_argument("--config", "-c", help="TOML configuration file")
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument(
        "--replay", nargs="+", metavar="ROW", help="row ids to deliver again, or `all`"
    )
    dead.set_defaults(run=_dead_letters)
