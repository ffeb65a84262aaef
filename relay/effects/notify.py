"""Notify: a verdict told to the admin's webhooks (``[notify] webhooks``).

Each webhook gets a POST with ``Content-Type: application/json``, Sluice's
``User-Agent`` and an ``Idempotency-Key`` header: the effect's key, the same on every
attempt. Delivery is at least once (a Sluice killed mid-POST sends it again), so a
receiver drops a key it has seen. A 2xx answer is delivered; 5xx, 408, 429, timeouts
and connection errors are retried with backoff; any other answer (a 4xx, a redirect,
which is never followed) makes the effect a dead letter at once, listed with the
status by ``sluice effects list --state dead``. With ``[notify] secret_file`` each POST
also carries ``X-Sluice-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the body
under that secret: a receiver recomputes it and compares in constant time.

The body (the admin's integration contract)::

    {
      "event": "verdict",
      "disposition": "quarantine",          # deliver | review | reject | quarantine
      "rule": "csam-exact",                 # the rule that decided, or null
      "activity": {"id": "https://…", "type": "Create", "actor": "https://…",
                   "signer": "https://…", "row": 42},
      "signals": [                          # an outline: never media bytes, never base64
        {"kind": "match", "source": "bank-name", "category": "csam",
         "hash_kind": "pdq", "distance": 12, "url": "https://…/media.jpg"}
      ],
      "evidence_id": 7,                     # or null
      "links": {"activity": "ADMIN/_sluice/api/activities/42",
                "evidence": "ADMIN/_sluice/api/evidence/7"},   # evidence: only with one
      "at": "2026-12-03T10:00:00+00:00"     # ISO 8601, UTC
    }

With ``[hold] lazy`` (or ``[upload] lazy``) the activity or upload went through before
it was checked: the message then also says ``"checked_after": true`` (uploads: in its
``upload`` object), and the disposition is what Sluice would have done.

Outline fields a signal does not have are null. Webhook URLs come from the admin's own
configuration, so they may be on loopback: the SSRF policy for fediverse fetches does
not apply to them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from relay.effects import Decided, EffectFailed, Plan
from relay.network import DEFAULT_USER_AGENT
from relay.outbox import Pending
from relay.signal import Signal
from relay.verdict import Verdict

__all__ = [
    "KIND",
    "SIGNATURE_HEADER",
    "Notify",
    "message",
    "notifications",
    "outline",
    "planner",
    "right_away",
    "signature",
]

log = structlog.get_logger(__name__)

#: The outbox kind of a notification.
KIND = "notify"

#: Answers that may succeed later: the receiver is busy or down for now.
_RETRIED = frozenset({408, 429})


class Notify:
    """POSTs a message to one webhook (payload: ``url``, ``message``, ``key``)."""

    name = KIND
    irreversible = False

    def __init__(
        self, session: aiohttp.ClientSession, *, timeout: float = 10.0, secret: str | None = None
    ) -> None:
        """``secret``: the key each message's body is signed with (``[notify]
        secret_file``), so that a receiver can tell Sluice's messages from forgeries."""
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.secret = secret.encode() if secret else None

    async def run(self, payload: dict[str, Any]) -> None:
        try:
            url, body, key = payload["url"], payload["message"], payload["key"]
        except KeyError as exc:
            raise EffectFailed(f"notify payload lacks {exc.args[0]!r}", permanent=True) from None
        data = json.dumps(body, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": str(key),
            "User-Agent": DEFAULT_USER_AGENT,
        }
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, data)
        try:
            async with self.session.post(
                url, data=data, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as response:
                status = response.status
                reason = response.reason or ""
        except TimeoutError as exc:
            raise EffectFailed(f"webhook timed out: {url}") from exc
        except aiohttp.ClientError as exc:
            raise EffectFailed(f"webhook unreachable: {url}: {type(exc).__name__}") from exc
        if 200 <= status < 300:
            return
        said = f"webhook answered {status} {reason}".rstrip()
        if status >= 500 or status in _RETRIED:
            raise EffectFailed(said)
        if 300 <= status < 400:
            said += " (redirects are not followed)"
        raise EffectFailed(said, permanent=True)


#: The header a signed message carries: ``sha256=`` and the body's HMAC in hex.
SIGNATURE_HEADER = "X-Sluice-Signature-256"


def signature(secret: bytes, body: bytes) -> str:
    """The value of ``SIGNATURE_HEADER`` for ``body`` (what a receiver recomputes and
    compares in constant time)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def outline(signal: Signal) -> dict[str, Any]:
    """What a webhook learns of a signal: what kind, from where, how close, about what
    URL; never the media, never a hash value."""
    detail = signal.detail
    return {
        "kind": signal.kind,
        "source": signal.source,
        "category": detail.get("category"),
        "hash_kind": detail.get("hash_kind"),
        "distance": detail.get("distance"),
        "url": detail.get("url"),
    }


def message(
    *,
    disposition: str,
    rule: str | None,
    activity: dict[str, Any],
    signals: Iterable[Signal],
    admin_url: str,
    evidence_id: int | None = None,
    at: datetime | None = None,
    event: str = "verdict",
) -> dict[str, Any]:
    """The JSON a webhook gets about a verdict (the module docstring documents it).
    ``activity`` holds id, type, actor, signer and row (the activity table's id)."""
    base = admin_url.rstrip("/")
    row = activity.get("row")
    links: dict[str, str] = {}
    if row is not None:
        links["activity"] = f"{base}/_sluice/api/activities/{row}"
    if evidence_id is not None:
        links["evidence"] = f"{base}/_sluice/api/evidence/{evidence_id}"
    when = (at or datetime.now(UTC)).astimezone(UTC)
    return {
        "event": event,
        "disposition": disposition,
        "rule": rule,
        "activity": {name: activity.get(name) for name in ("id", "type", "actor", "signer", "row")},
        "signals": [outline(s) for s in signals],
        "evidence_id": evidence_id,
        "links": links,
        "at": when.isoformat(),
    }


def notifications(*, key: str, message: dict[str, Any], webhooks: Sequence[str]) -> list[Pending]:
    """One effect per webhook. ``key`` names the verdict (stable when it is recorded
    again: the activity's row, say), so each webhook is told once."""
    return [
        Pending(
            KIND, f"{key}:notify:{i}", {"url": url, "message": message, "key": f"{key}:notify:{i}"}
        )
        for i, url in enumerate(webhooks)
    ]


def planner(webhooks: Sequence[str], admin_url: Callable[[], str | None]) -> Plan:
    """How a recorded verdict becomes notifications: one per webhook, keyed by the
    verdict. ``admin_url`` is read when a verdict is recorded (the admin listener's
    address is known only once it listens)."""

    def plan(decided: Decided) -> list[Pending]:
        verdict = decided.verdict
        body = message(
            disposition=verdict.disposition.value,
            rule=verdict.rule,
            activity={**decided.activity, "row": decided.row},
            signals=verdict.signals,
            admin_url=admin_url() or "",
            evidence_id=decided.evidence_id,
            event=decided.event,
        )
        if decided.after:  # the disposition is what the hold would have done
            body["checked_after"] = True
        return notifications(key=decided.key, message=body, webhooks=webhooks)

    return plan


def right_away(
    verdict: Verdict,
    *,
    event: str,
    activity: dict[str, Any],
    about: dict[str, Any],
    webhooks: Sequence[str],
    admin_url: str,
    evidence_id: int | None = None,
) -> list[Pending]:
    """The notifications of a verdict a door gave at once, with no row to key it by (an
    upload, a proxied fetch): ``about`` goes into the message under ``event``'s name,
    and each verdict gets a key of its own. Notify is the only effect such a verdict
    can run yet; the others are logged and skipped."""
    pending: list[Pending] = []
    for effect in verdict.effects:
        if effect != KIND:
            log.error("effect_unsupported", effect=effect, event=event)
            continue
        if not webhooks:
            continue
        body = message(
            disposition=verdict.disposition.value,
            rule=verdict.rule,
            activity=activity,
            signals=verdict.signals,
            admin_url=admin_url,
            evidence_id=evidence_id,
            event=event,
        )
        body[event] = about
        pending += notifications(key=f"{event}:{uuid.uuid4()}", message=body, webhooks=webhooks)
    return pending
