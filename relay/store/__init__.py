"""PostgreSQL storage: connection (embedded or configured), migrations, and queries."""

from relay.store.db import Database, connect, migrate

__all__ = ["Database", "connect", "migrate"]
