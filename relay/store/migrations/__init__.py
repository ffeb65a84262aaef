"""The schema's migrations, applied in order by relay.store.migrate (SQL files only)."""

__all__: list[str] = []
