"""``sluice quarantine release``: deliver a quarantined activity found to be a false positive."""

from __future__ import annotations

import argparse
import asyncio
import json

from relay.cli.bootstrap import Commands, activity_store, configured, connected

__all__ = ["register"]


def _quarantine_release(args: argparse.Namespace) -> int:
    """Queue a quarantined activity found to be a false positive (see relay.release)."""
    from relay.evidence import EvidenceStore
    from relay.release import release

    config = configured(args.config, log_level="warning")

    async def run() -> int:
        async with connected(config) as database:
            store = activity_store(config, database.pool)
            evidence = EvidenceStore.from_config(database.pool, config)
            state = await release(store, evidence, args.row, moderator=args.who, reason=args.why)
            print(json.dumps({"row": args.row, "state": state}))
            return 0

    return asyncio.run(run())


def register(commands: Commands) -> None:
    """``quarantine release``."""
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
