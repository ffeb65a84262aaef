"""What every external checker needs from a paid, remote service it cannot trust, written once.

A ``Checker`` is a ``relay.matcher.Matcher`` whose answer comes from a service over HTTP.
Its subclass says what to send and how to read the answer (``ask``); this module gives it:

- ``Pace``: the service's rate, a token bucket of requests a second. A request waits for
  its turn up to the timeout, else it is an error signal "rate limited": the service
  bills or blocks past its rate, and a hold cannot wait for ever.
- ``Checker.post``: one request, its time bounded (``timeout_seconds``), its answer's
  size bounded (``max_answer_bytes``, counted after decompression), redirects refused
  (a custom credential header would follow them to another host).
- ``Answers``: the answers by the file's SHA-256, "no match" included, kept
  ``cache_seconds`` (at most ``cache_entries``), so a paid service is never asked twice
  about the same bytes while an answer lives; checks of the same bytes running at once
  share one request. Errors are never cached.

A failure (timeout, connection refused, 429, 5xx, an answer too large or unreadable) is
ONE ``error`` signal naming the checker, never an exception: ``[hold] on_error`` decides
what happens to a file no checker could vouch for.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict, Unpack

import aiohttp
import structlog

from relay.media.media import Media
from relay.signal import Signal

__all__ = [
    "MAX_LIST",
    "MAX_PAUSE_SECONDS",
    "MAX_TEXT",
    "Answer",
    "Answers",
    "CheckFailed",
    "Checker",
    "CheckerLimits",
    "Pace",
    "category_name",
    "number",
    "text",
    "texts",
]

log = structlog.get_logger(__name__)

#: The longest string a service's answer puts into a signal, and the most list items:
#: a signal is stored, shown and sent, and the service chooses what it says.
MAX_TEXT = 200
MAX_LIST = 16
#: The longest a 429's Retry-After pauses a service's requests.
MAX_PAUSE_SECONDS = 300.0

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class CheckFailed(Exception):
    """The service gave no usable answer; ``str()`` says why (no credential in it)."""

    def __init__(self, reason: str, **facts: Any) -> None:
        super().__init__(reason)
        self.facts = facts


def text(value: object, limit: int = MAX_TEXT) -> str | None:
    """A string from a service's answer, fit for a signal: printable, bounded; else None."""
    if not isinstance(value, str):
        return None
    return _CONTROL.sub(" ", value)[:limit]


def texts(value: object) -> list[str]:
    """The strings of a list from a service's answer, at most ``MAX_LIST`` of them."""
    if not isinstance(value, list):
        return []
    found = (text(v) for v in value[:MAX_LIST])
    return [v for v in found if v is not None]


def number(value: object) -> float | None:
    """A finite number from a service's answer (JSON allows NaN, which JSONB refuses)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        found = float(value)
    except OverflowError:  # an integer of 400 digits
        return None
    return found if math.isfinite(found) else None


def category_name(value: object, default: str = "unknown") -> str:
    """A service's classification as a rule's ``category:NAME`` may name it."""
    name = text(value, 64)
    name = name.strip().lower() if name else ""
    return name if _CATEGORY.fullmatch(name) else default


class Pace:
    """One service's rate: ``per_second`` requests a second, a second's worth at once.

    Not ``relay.rate.TokenBuckets``: those hold a minute's worth, a burst a service
    limited per second (PhotoDNA: 5) would answer with 429s."""

    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not per_second > 0:
            raise ValueError("per_second must be positive")
        self.per_second = float(per_second)
        self.burst = max(1.0, self.per_second)
        self._clock = clock
        self._tokens = self.burst
        self._when = clock()

    def reserve(self, patience: float) -> float | None:
        """Take the next turn and return the seconds until it comes; None (nothing
        taken) when that is longer than ``patience``. Turns are taken in the order
        asked, so waiting requests keep theirs."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._when) * self.per_second)
        self._when = now
        wait = max(0.0, (1.0 - self._tokens) / self.per_second)
        if wait > patience:
            return None
        self._tokens -= 1.0
        return wait

    def pause(self, seconds: float) -> None:
        """The service asked for a break (429 with Retry-After): no turn for ``seconds``."""
        seconds = min(max(0.0, seconds), MAX_PAUSE_SECONDS)
        self.reserve(math.inf)  # brings the bucket up to now; the turn taken is given back
        self._tokens = min(self._tokens + 1.0, 1.0 - seconds * self.per_second)


class Answers:
    """Answers by key (the file's SHA-256), each kept ``ttl`` seconds, at most
    ``max_entries``, least recently used forgotten first."""

    def __init__(
        self, ttl: float, max_entries: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, tuple[Signal, ...]]] = OrderedDict()

    def get(self, key: str) -> tuple[Signal, ...] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, signals: Sequence[Signal]) -> None:
        if self.ttl <= 0 or self.max_entries <= 0:
            return
        # Without the Media: the cache keeps answers, never the bytes they were about.
        kept = tuple(Signal(s.kind, s.source, s.detail) for s in signals)
        self._entries[key] = (self._clock() + self.ttl, kept)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class Answer:
    """A 2xx answer: its status and its body, at most ``max_answer_bytes``."""

    status: int
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; CheckFailed when it is anything else."""
        try:
            document = json.loads(self.body)
        except (ValueError, RecursionError) as exc:
            raise CheckFailed(f"unreadable answer: not JSON ({type(exc).__name__})") from exc
        if not isinstance(document, dict):
            raise CheckFailed("unreadable answer: not a JSON object")
        return document


class CheckerLimits(TypedDict, total=False):
    """What bounds a checker: each subclass states its service's own (``Checker.limits``),
    a caller's keywords and the config's sections override them."""

    rate_per_second: float
    timeout_seconds: float
    max_answer_bytes: int
    cache_seconds: float
    cache_entries: int


#: What a service that does not say otherwise gets.
_DEFAULT_LIMITS: CheckerLimits = {
    "rate_per_second": 5.0,
    "timeout_seconds": 10.0,
    "max_answer_bytes": 262_144,
    "cache_seconds": 86_400,
    "cache_entries": 100_000,
}


class Checker:
    """A matcher that asks a service. Subclasses implement ``ask``; ``match`` adds the
    cache, the sharing of requests, and turns every failure into one error signal."""

    #: A rule may name it (``[[rule]] match``); it is the signals' source and matcher.
    name: str
    #: This service's own rate, timeout, answer bound and cache (``**limits`` overrides).
    limits: ClassVar[CheckerLimits] = {}

    def __init__(
        self, name: str, session: aiohttp.ClientSession, **limits: Unpack[CheckerLimits]
    ) -> None:
        given: CheckerLimits = {**_DEFAULT_LIMITS, **self.limits, **limits}
        if not given["timeout_seconds"] > 0:
            raise ValueError("timeout_seconds must be positive")
        if given["max_answer_bytes"] <= 0:
            raise ValueError("max_answer_bytes must be positive")
        self.name = name
        self.session = session
        self.timeout = float(given["timeout_seconds"])
        self.max_answer_bytes = given["max_answer_bytes"]
        self.pace = Pace(given["rate_per_second"])
        self.answers = Answers(given["cache_seconds"], given["cache_entries"])
        #: Requests made (tests and metrics read it).
        self.requests = 0
        self._asking: dict[str, asyncio.Future[tuple[Signal, ...]]] = {}

    async def ask(self, media: Media) -> Sequence[Signal]:
        """What the service says about ``media`` (signals without the Media attached);
        CheckFailed when it says nothing usable. What it returns is cached."""
        raise NotImplementedError

    def key(self, media: Media) -> str:
        """What the cache keys on: the bytes' identity."""
        return media.sha256

    async def match(self, media: Media) -> list[Signal]:
        key = self.key(media)
        found = self.answers.get(key)
        cached = found is not None
        if found is None:
            task = self._asking.get(key)
            if task is None:
                task = asyncio.ensure_future(self._ask(key, media))
                self._asking[key] = task
                task.add_done_callback(lambda done: self._done(key, done))
            try:
                # Shielded: a hold that stops waiting must not cancel another's request.
                found = await asyncio.shield(task)
            except CheckFailed as failed:
                log.warning("checker_failed", checker=self.name, error=str(failed))
                detail = {
                    **failed.facts,
                    "error": f"{self.name}: {failed}",
                    "matcher": self.name,
                    "stage": "check",
                }
                return [Signal("error", self.name, detail, media=media)]
        return [
            Signal(
                s.kind, s.source, {**s.detail, "cached": True} if cached else s.detail, media=media
            )
            for s in found
        ]

    async def _ask(self, key: str, media: Media) -> tuple[Signal, ...]:
        found = tuple(await self.ask(media))
        self.answers.put(key, found)
        return found

    def _done(self, key: str, task: asyncio.Future[tuple[Signal, ...]]) -> None:
        if self._asking.get(key) is task:
            del self._asking[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have stopped waiting

    async def post(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        """POST to the service in turn (``Pace``), within the timeout; its 2xx answer, or
        CheckFailed saying what went wrong."""
        wait = self.pace.reserve(self.timeout)
        if wait is None:
            raise CheckFailed(
                f"rate limited: no turn within {self.timeout:g}s at "
                f"{self.pace.per_second:g} requests a second"
            )
        if wait:
            await asyncio.sleep(wait)
        headers = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        # Larger bodies go in pieces, as aiohttp asks (it warns of raw bytes over 1 MiB).
        body: bytes | io.BytesIO | None = data
        if data is not None and len(data) > 1 << 20:
            body = io.BytesIO(data)
        self.requests += 1
        try:
            async with (
                asyncio.timeout(self.timeout),
                self.session.post(
                    url,
                    headers=headers,
                    data=body,
                    params=dict(params or {}),
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as response,
            ):
                status = response.status
                retry_after = response.headers.get("Retry-After")
                answer = await self._read(response)
        except TimeoutError as exc:
            raise CheckFailed(f"no answer within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            reason = text(str(exc)) or type(exc).__name__
            raise CheckFailed(f"cannot reach the service: {reason}") from exc
        if 200 <= status < 300:
            return Answer(status, answer)
        said = _said(answer)
        said = f": {said}" if said else ""
        if status == 429:
            pause = _seconds(retry_after)
            if pause is not None:
                self.pace.pause(pause)
            raise CheckFailed(f"rate limited by the service (HTTP 429){said}", status=status)
        if status >= 500:
            raise CheckFailed(f"service error (HTTP {status}){said}", status=status)
        if status in (401, 403):
            raise CheckFailed(f"credentials refused (HTTP {status}){said}", status=status)
        if 300 <= status < 400:
            raise CheckFailed(f"redirected (HTTP {status}), not followed", status=status)
        raise CheckFailed(f"request refused (HTTP {status}){said}", status=status)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.max_answer_bytes
        if response.content_length is not None and response.content_length > limit:
            raise CheckFailed(f"answer too large: {response.content_length} > {limit} bytes")
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise CheckFailed(f"answer too large: over {limit} bytes")
        return bytes(body)


def _said(body: bytes) -> str | None:
    """What a refusal says about itself, where the services put it: Arachnid's
    ``detail``, PhotoDNA's ``Status.Description``, a ``message`` or ``error``. Other
    bodies (an HTML error page) are not repeated."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    status = document.get("Status")
    if isinstance(status, dict) and text(status.get("Description")):
        return text(status.get("Description"))
    for key in ("detail", "message", "error"):
        if text(document.get(key)):
            return text(document.get(key))
    return None


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds (its HTTP-date form is not worth parsing here)."""
    try:
        seconds = float(retry_after) if retry_after is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) else None
