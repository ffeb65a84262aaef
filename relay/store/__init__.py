"""PostgreSQL storage: connection (embedded or configured), migrations, and queries."""

from relay.store.db import connect, migrate

__all__ = ["connect", "migrate"]
