"""``sluice serve`` runs Sluice; ``sluice check-config`` checks a file as ``serve`` would."""

from __future__ import annotations

import argparse
import sys

from relay.cli.bootstrap import Commands, configured

__all__ = ["register"]


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from relay.app import build_app

    config = configured(args.config)
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

    return main_check_config(args.file, summary=args.summary)


def register(commands: Commands) -> None:
    """``serve`` and ``check-config``."""
    serve = commands.add_parser("serve", help="run Sluice (embedded defaults without --config)")
    serve.add_argument("--config", "-c", help="TOML configuration file")
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    check.add_argument(
        "--summary",
        action="store_true",
        help="also say, per door and external checker, what happens when a check fails",
    )
    check.set_defaults(run=_check_config)
