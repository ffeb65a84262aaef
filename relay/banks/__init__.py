"""Banks: named hash lists in PostgreSQL, matched in memory by every Sluice process.

- ``files``: the hash list files admins get (``parse_hash_file``, ``read_hash_file``,
  ``Entry``), and ``BankError``, which every bank operation raises.
- ``store``: ``BankStore`` writes banks and their entries; triggers in migration 0002
  announce every change on channel ``sluice_bank`` (payload: the bank's name).
- ``index``: ``BankIndex`` holds every bank in memory, one index per hash kind, built
  by the kind, and matches a file's ``Media`` against them (``BankMatch``); with the
  loader that reads banks whole or past their marks. Nothing here names a kind.
  ``ALLOW``: the category of banks of media known to be harmless (false positives).
- ``watcher``: ``BankWatcher`` keeps the index current: a notification on ``CHANNEL``
  naming a bank applies what changed past the bank's marks, and a periodic pass does
  so for every bank, in case a notification was lost.
- ``matcher``: ``BankMatcher``, the index as a ``relay.matcher.Matcher``. Not
  re-exported here: it imports ``relay.media``, which writing banks does not need.
"""

from relay.banks.files import BankError, Entry, parse_hash_file, read_hash_file
from relay.banks.index import ALLOW, BankIndex, BankMatch
from relay.banks.store import BankStore
from relay.banks.watcher import CHANNEL, BankWatcher

__all__ = [
    "ALLOW",
    "CHANNEL",
    "BankError",
    "BankIndex",
    "BankMatch",
    "BankStore",
    "BankWatcher",
    "Entry",
    "parse_hash_file",
    "read_hash_file",
]
