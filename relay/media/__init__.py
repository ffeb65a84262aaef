"""Media an activity refers to: finding, fetching, decoding and hashing it."""
