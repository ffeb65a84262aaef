"""The ``sluice`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from relay import __version__

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from relay.app import build_app
    from relay.config import load_config
    from relay.errors import ConfigError
    from relay.log import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(config.log.level)
    web.run_app(
        build_app(config),
        host=config.server.host,
        port=config.server.port,
        print=None,
        access_log=None,
        shutdown_timeout=10,
    )
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from relay.config import main_check_config

    return main_check_config(args.file)


async def _with_store(config_path: str | None, action):  # type: ignore[no-untyped-def]
    from relay.config import load_config
    from relay.store import connect
    from relay.store.activities import ActivityStore

    config = load_config(config_path)
    database = await connect(config.database.url, config.storage.data_dir)
    try:
        store = ActivityStore(
            database.pool,
            owner="sluice-cli",
            lease_seconds=config.delivery.lease_seconds,
            dedup_window_seconds=config.delivery.dedup_window_seconds,
            max_age_seconds=config.delivery.max_age_seconds,
        )
        return await action(store)
    finally:
        await database.close()


def _dead_letters(args: argparse.Namespace) -> int:
    async def run(store) -> int:  # type: ignore[no-untyped-def]
        if args.replay is None:
            for row in await store.dead_letters(args.limit):
                print(json.dumps(row))
            return 0
        ids = None if args.replay == ["all"] else [int(i) for i in args.replay]
        print(json.dumps({"replayed": await store.replay(ids)}))
        return 0

    return asyncio.run(_with_store(args.config, run))


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

    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
