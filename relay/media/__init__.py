"""Media an activity refers to: finding, fetching, decoding and hashing it."""

from relay.media.media import Media

__all__ = ["Media"]
