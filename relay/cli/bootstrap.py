"""The one start-up path every ``sluice`` command shares.

Every command that reads the configuration goes through ``configured`` (the checks
``serve`` and ``check-config`` make, before anything opens) and, when it needs the
database, ``connected`` (closed, and the embedded PostgreSQL stopped, however the
command ends). ``relay.cli.main`` turns the errors into exit codes: 2 and the located
problems for a bad configuration, 1 and the message for anything else Sluice refuses.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import asyncpg

    from relay.config import Config
    from relay.store.activities import ActivityStore
    from relay.store.db import Database

__all__ = ["Commands", "activity_store", "configured", "connected"]

#: What a command group adds its commands to (``parser.add_subparsers()``).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def configured(
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
async def connected(config: Config) -> AsyncIterator[Database]:
    """The configured database, closed however the command ends."""
    from relay.store import connect

    database = await connect(config.database.url, config.storage.data_dir)
    try:
        yield database
    finally:
        await database.close()


def activity_store(config: Config, pool: asyncpg.Pool) -> ActivityStore:
    """The activity store as a command uses it: the process's queue settings, its own name."""
    from relay.store.activities import ActivityStore

    return ActivityStore(
        pool,
        owner="sluice-cli",
        lease_seconds=config.delivery.lease_seconds,
        dedup_window_seconds=config.delivery.dedup_window_seconds,
        max_age_seconds=config.delivery.max_age_seconds,
    )
