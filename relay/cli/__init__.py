"""The ``sluice`` command: the argument parser, assembled from the command groups.

Each group is a module with a ``register`` that adds its commands: ``serve`` (serve,
check-config), ``dead_letters``, ``effects``, ``banks`` (bank import/list/add-image,
hash), ``quarantine``, ``evidence`` (keygen, list, show, hold, unhold, purge, export),
``ca``, ``actor`` and ``users`` (sluice user …). They all start through ``bootstrap``.
"""

from __future__ import annotations

import argparse
import sys

from relay import __version__
from relay.cli import actor, banks, ca, dead_letters, effects, evidence, quarantine, serve, users

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sluice", description="ActivityPub filtering relay in front of an instance's inboxes."
    )
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve.register(commands)
    dead_letters.register(commands)
    effects.register(commands)
    banks.register(commands)
    quarantine.register(commands)
    evidence.register(commands)
    ca.register(commands)
    actor.register(commands)
    users.register(commands)

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
