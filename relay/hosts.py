"""The names the instance answers to (``[server] hosts``), in one spelling.

Senders write a host in ``Host`` and in URLs in more than one way (case, a trailing
dot, a default port, brackets around IPv6); everything that asks "is this us?" goes
through here so that the inbound door and the media check cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["LocalHosts", "split_authority"]

_DEFAULT_PORTS = frozenset({"80", "443"})


def split_authority(value: str) -> tuple[str, str]:
    """A ``host[:port]`` as (host, port): lower-cased, brackets, a trailing dot and a
    default port (80, 443) gone."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = value.partition(":")
        host = host.rstrip(".")
    return host, "" if port in _DEFAULT_PORTS else port


class LocalHosts:
    """``[server] hosts``: an entry without a port stands for the name on any port."""

    def __init__(self, hosts: Iterable[str] = ()) -> None:
        self._names = frozenset(split_authority(h) for h in hosts)

    def __bool__(self) -> bool:
        return bool(self._names)

    def _named(self, authority: str) -> bool:
        name, port = split_authority(authority)
        return (name, port) in self._names or (name, "") in self._names

    def answers_to(self, host: str) -> bool:
        """May a request with this ``Host`` be for the instance? Any, when unconfigured."""
        return not self._names or self._named(host)

    def owns(self, url: str) -> bool:
        """Is ``url`` the instance's own (so it never fetches it)? None are, unconfigured."""
        if not self._names:
            return False
        try:
            authority = urlsplit(url.strip()).netloc.rpartition("@")[2]
        except ValueError:
            return False
        return bool(authority) and self._named(authority)
