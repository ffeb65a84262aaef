"""Send: one activity POSTed, signed by Sluice's actor, to one remote inbox.

Receipts pushed to followers, the Accept of a Follow, a Flag to an origin: each is an
outbox row of kind ``send`` (payload ``inbox``, ``activity``), so it survives a crash
and is retried with the outbox's backoff. A 2xx answer is delivered; 5xx, 408, 429,
timeouts and connection errors are retried; any other answer (a 4xx, a redirect, which
is never followed) and an inbox the ``[network]`` rules refuse make it a dead letter at
once.

Inboxes are named by peers, so they go through the fediverse session (SSRF-guarded)
and ``NetworkPolicy.check_url``, as key and media fetches do. A host that keeps failing
trips its circuit (``Breaker``): sends to it are not attempted until a cool-down that
doubles with each trip has passed, so one dead follower does not eat the outbox's
turns while a thousand receipts queue behind it.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
import yarl

from relay.effects import EffectFailed
from relay.errors import BlockedAddress
from relay.network import DEFAULT_USER_AGENT, NetworkPolicy
from relay.outbox import Outbox, Pending
from relay.store.db import Connection

__all__ = ["CONTENT_TYPE", "KIND", "Breaker", "Deferred", "Send", "Signer", "fan_out", "sends"]

log = structlog.get_logger(__name__)

#: The outbox kind of a send.
KIND = "send"

#: What an activity is POSTed as.
CONTENT_TYPE = "application/activity+json"

#: Signs a request: (method, url, headers, body) to the headers to send (Date, Host,
#: Digest, Signature): ``relay.actor.Actor.sign_request``.
Signer = Callable[[str, str, Mapping[str, str] | None, bytes | None], dict[str, str]]

#: Answers that may succeed later: the receiver is busy or down for now.
_RETRIED = frozenset({408, 429})


class Deferred(EffectFailed):
    """Not attempted: the host's circuit is open for ``retry_after`` more seconds."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason, deferred=retry_after)
        self.retry_after = retry_after


@dataclass(slots=True)
class _Circuit:
    failures: int = 0  # consecutive, since the last success
    trips: int = 0  # times opened since the last success
    until: float = 0.0  # closed again from then on (monotonic clock)


class Breaker:
    """A circuit per host: ``failures`` consecutive failures open it for ``cooldown``
    seconds, doubled at each trip up to ``max_cooldown``; after a cool-down one failure
    opens it again, one success closes it for good. At most ``max_hosts`` hosts are
    remembered (the least recently used are forgotten first)."""

    def __init__(
        self,
        *,
        failures: int = 5,
        cooldown: float = 30.0,
        max_cooldown: float = 3600.0,
        max_hosts: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.failures = failures
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.max_hosts = max_hosts
        self._clock = clock
        self._hosts: OrderedDict[str, _Circuit] = OrderedDict()

    def open_for(self, host: str) -> float:
        """Seconds until ``host`` may be tried again; 0 when it may be now."""
        circuit = self._hosts.get(host)
        if circuit is None:
            return 0.0
        return max(0.0, circuit.until - self._clock())

    def succeeded(self, host: str) -> None:
        self._hosts.pop(host, None)

    def failed(self, host: str) -> None:
        circuit = self._hosts.get(host)
        if circuit is None:
            circuit = self._hosts[host] = _Circuit()
            while len(self._hosts) > self.max_hosts:
                self._hosts.popitem(last=False)
        else:
            self._hosts.move_to_end(host)
        circuit.failures += 1
        if circuit.failures >= self.failures:
            circuit.trips += 1
            delay = min(self.max_cooldown, self.cooldown * 2.0 ** (circuit.trips - 1))
            circuit.until = self._clock() + delay
            circuit.failures = self.failures - 1  # half-open: one more failure re-opens
            log.warning("circuit_open", host=host, seconds=round(delay, 1), trips=circuit.trips)


class Send:
    """POSTs ``activity`` to ``inbox`` (the payload), signed by ``signer``."""

    name = KIND
    irreversible = False  # the plumbing; what it carries (a receipt) is judged by its plan

    def __init__(
        self,
        session: aiohttp.ClientSession,
        policy: NetworkPolicy,
        signer: Signer,
        *,
        timeout: float = 10.0,
        breaker: Breaker | None = None,
    ) -> None:
        """``session``: one made by ``relay.network.client_session`` with ``policy``
        (its resolver refuses what the policy refuses, after DNS)."""
        self.session = session
        self.policy = policy
        self.signer = signer
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.breaker = breaker if breaker is not None else Breaker()

    async def run(self, payload: dict[str, Any]) -> None:
        inbox, activity = payload.get("inbox"), payload.get("activity")
        if not isinstance(inbox, str) or not isinstance(activity, dict):
            raise EffectFailed(
                "send payload needs an `inbox` URL and an `activity`", permanent=True
            )
        try:
            url = self.policy.check_url(inbox)
        except BlockedAddress as exc:
            raise EffectFailed(f"inbox refused: {exc}", permanent=True) from None
        host = _host(url)
        wait = self.breaker.open_for(host)
        if wait > 0:
            raise Deferred(f"not sent: {host} keeps failing; next try in {wait:.0f}s", wait)
        body = json.dumps(activity, ensure_ascii=False).encode()
        headers = {"Content-Type": CONTENT_TYPE, "User-Agent": DEFAULT_USER_AGENT}
        headers.update(self.signer("POST", inbox, {"Content-Type": CONTENT_TYPE}, body))
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as response:
                status = response.status
                reason = response.reason or ""
        except BlockedAddress as exc:  # the resolver's verdict, after DNS
            raise EffectFailed(f"inbox refused: {exc}", permanent=True) from None
        except TimeoutError as exc:
            self.breaker.failed(host)
            raise EffectFailed(f"inbox timed out: {inbox}") from exc
        except aiohttp.ClientError as exc:
            self.breaker.failed(host)
            raise EffectFailed(f"inbox unreachable: {inbox}: {type(exc).__name__}") from exc
        said = f"inbox {inbox} answered {status} {reason}".rstrip()
        if status >= 500 or status in _RETRIED:
            self.breaker.failed(host)
            raise EffectFailed(said)
        self.breaker.succeeded(host)  # it answered: the host is up
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            said += " (redirects are not followed)"
        raise EffectFailed(said, permanent=True)


def _host(url: yarl.URL) -> str:
    """A circuit's name: host and port, as servers on one host may differ by port."""
    return f"{(url.host or '').lower()}:{url.explicit_port or url.port or ''}"


def sends(activity: Mapping[str, Any], inboxes: Iterable[str], key_prefix: str) -> list[Pending]:
    """One send of ``activity`` per distinct inbox, keyed ``{key_prefix}:send:{inbox}``
    (a receipt id as prefix: each inbox gets a receipt once, whoever enqueues it again)."""
    body = dict(activity)
    seen: dict[str, Pending] = {}
    for inbox in inboxes:
        key = f"{key_prefix}:send:{inbox}"
        seen.setdefault(key, Pending(KIND, key, {"inbox": inbox, "activity": body}))
    return list(seen.values())


async def fan_out(
    outbox: Outbox,
    activity: Mapping[str, Any],
    inboxes: Iterable[str],
    key_prefix: str,
    *,
    conn: Connection | None = None,
) -> int:
    """Enqueue ``activity`` to every inbox in one statement (all or none), inside the
    caller's transaction with ``conn``. Returns the sends added (repeats add none)."""
    return await outbox.enqueue(sends(activity, inboxes, key_prefix), conn=conn)
