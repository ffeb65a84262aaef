"""``sluice actor show`` and ``sluice actor rotate-key``: Sluice's own actor and its keys."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from relay.cli.bootstrap import Commands, configured

if TYPE_CHECKING:
    from relay.actor import Actor

__all__ = ["register"]


def _actor(args: argparse.Namespace) -> Actor:
    from relay.actor import Actor, ActorError

    config = configured(args.config, evidence_key=False, log_level="warning")
    actor = Actor.configured(config)
    if actor is None:
        raise ActorError("Sluice has no actor: set [actor] base_url")
    return actor


def _print(actor: Actor) -> None:
    print(f"actor: {actor.id}")
    print(f"webfinger: acct:{actor.handle}")
    print(f"key: {actor.key_id}")
    print(f"ed25519 key: {actor.ed25519_key_id}")
    now = time.time()
    for old in actor.keys.published(now):
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(old.until))
        print(f"retired {old.kind} key: {actor.id}#{old.fragment} (published until {until})")
    print(f"key directory: {actor.key_dir}")


def _show(args: argparse.Namespace) -> int:
    _print(_actor(args))
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from relay.actor import Actor, rotate_keys

    if args.keep_days < 0:
        print("--keep-days must be 0 or more", file=sys.stderr)
        return 2
    actor = _actor(args)
    assert actor.key_dir is not None
    keys = rotate_keys(actor.key_dir, keep_days=args.keep_days)
    print(
        f"made new keys; the old ones stay published for {args.keep_days:g} days "
        "(restart Sluice so it signs with the new ones)",
        file=sys.stderr,
    )
    _print(Actor(actor.base_url, keys, name=actor.name, key_dir=actor.key_dir))
    return 0


def register(commands: Commands) -> None:
    """``actor show`` and ``actor rotate-key``."""
    actor = commands.add_parser(
        "actor", help="Sluice's own ActivityPub actor ([actor] base_url)"
    ).add_subparsers(dest="actor_command", required=True)
    show = actor.add_parser(
        "show", help="print the actor id, WebFinger handle and key ids (makes the keys if none)"
    )
    show.add_argument("--config", "-c", help="TOML configuration file")
    show.set_defaults(run=_show)
    rotate = actor.add_parser(
        "rotate-key",
        help="make new keys; the old public keys stay in the actor document for --keep-days",
    )
    rotate.add_argument("--config", "-c", help="TOML configuration file")
    rotate.add_argument(
        "--keep-days",
        type=float,
        default=7,
        help="how long peers may still verify with the old keys (default 7)",
    )
    rotate.set_defaults(run=_rotate)
