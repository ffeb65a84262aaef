"""Media an activity refers to: finding, fetching, decoding and hashing it."""

__all__: list[str] = []
