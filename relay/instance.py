"""The instance behind Sluice, through its own client API: what Sluice asks of it.

One thing so far: ``resolve(url)`` has the instance fetch an object from its origin
by id, as a user's search does. That is how an activity held past its sender's
signature still reaches the instance (relay.resend). Each server software spells it
its own way; the token is an admin's (or a bot account's) API token from a file or
the environment, never from the TOML itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from relay.deliver import Delivery

__all__ = ["SOFTWARE", "InstanceApi"]

#: The server software whose API Sluice speaks.
SOFTWARE = ("mastodon", "gotosocial", "pleroma", "akkoma", "lemmy", "misskey")
_MASTODON_API = ("mastodon", "gotosocial", "pleroma", "akkoma")


@dataclass
class InstanceApi:
    """``base`` is the instance's URL as Sluice reaches it ([upstream] url)."""

    base: str
    software: str
    token: str
    timeout: float = 30.0
    #: Lemmy's API version, [upstream] lemmy_api: "v3" (0.19) or "v4" (1.0).
    lemmy_api: str = "v3"
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        if self.software not in SOFTWARE:
            raise ValueError(f"no instance API for {self.software!r} (known: {SOFTWARE})")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # the instance is the admin's own: no SSRF policy
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def resolve(self, url: str) -> Delivery:
        """Have the instance fetch ``url`` from its origin. ``ok`` when it found it."""
        base = URL(self.base.rstrip("/"))
        bearer = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        params: dict[str, str] | None = None
        body: dict[str, str] | None = None
        headers: dict[str, str] | None = bearer
        if self.software in _MASTODON_API:
            method, target = "GET", base / "api/v2/search"
            params = {"q": url, "resolve": "true", "limit": "1"}
        elif self.software == "lemmy":  # the bearer token, 0.19 and 1.0 alike
            target = base / f"api/{self.lemmy_api}/resolve_object"
            method, params = "GET", {"q": url}
        else:  # misskey: the token in the body
            method, target, headers = "POST", base / "api/ap/show", None
            body = {"uri": url, "i": self.token}
        started = time.perf_counter()
        try:
            async with self._client().request(
                method, target, params=params, json=body, headers=headers
            ) as response:
                status = response.status
                text = (await response.content.read(65_536)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            return Delivery(None, f"instance API unreachable: {why}", _since(started))
        if status >= 300:
            return Delivery(
                status, f"instance API answered {status}: {text[:200]}", _since(started)
            )
        if self.software in _MASTODON_API and not _found(text):
            # Found nothing: the origin refused it, or it is gone.
            return Delivery(404, f"the instance could not fetch {url}", _since(started))
        return Delivery(status, None, _since(started))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _found(text: str) -> bool:
    """A Mastodon-family search answer names a status or an account."""
    try:
        answer = json.loads(text)
    except ValueError:
        return False
    return isinstance(answer, dict) and bool(answer.get("statuses") or answer.get("accounts"))


def _since(started: float) -> float:
    return time.perf_counter() - started
