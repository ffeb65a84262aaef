"""Notify (issue 12, point 4): what a webhook is sent, and which answers are retried,
against a real loopback webhook."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest

from relay.config import check_config, load_config
from relay.effects import EffectFailed
from relay.effects.notify import KIND, Notify, message, notifications
from relay.signal import Signal
from tests.webhook_support import Webhook

MATCH = Signal(
    "match",
    "known-bad",
    {"category": "csam", "hash_kind": "pdq", "distance": 12, "value": "ab" * 32, "entry": 3},
)
ERROR = Signal("error", "media", {"url": "https://files.example/a.jpg", "error": "timeout"})


def test_the_message_outlines_the_verdict_without_media_or_hash_values() -> None:
    at = datetime(2026, 12, 3, 11, 0, tzinfo=timezone(timedelta(hours=1)))
    built = message(
        disposition="quarantine",
        rule="known-bad",
        activity={
            "id": "https://remote.example/a/1",
            "type": "Create",
            "actor": "https://remote.example/users/a",
            "signer": "https://remote.example/users/a",
            "row": 42,
            "body": "not for the webhook",
        },
        signals=[MATCH, ERROR],
        admin_url="http://127.0.0.1:9090/",
        evidence_id=7,
        at=at,
    )
    assert built == {
        "event": "verdict",
        "disposition": "quarantine",
        "rule": "known-bad",
        "activity": {
            "id": "https://remote.example/a/1",
            "type": "Create",
            "actor": "https://remote.example/users/a",
            "signer": "https://remote.example/users/a",
            "row": 42,
        },
        "signals": [
            {
                "kind": "match",
                "source": "known-bad",
                "category": "csam",
                "hash_kind": "pdq",
                "distance": 12,
                "url": None,
            },
            {
                "kind": "error",
                "source": "media",
                "category": None,
                "hash_kind": None,
                "distance": None,
                "url": "https://files.example/a.jpg",
            },
        ],
        "evidence_id": 7,
        "links": {
            "activity": "http://127.0.0.1:9090/_sluice/api/activities/42",
            "evidence": "http://127.0.0.1:9090/_sluice/api/evidence/7",
        },
        "at": "2026-12-03T10:00:00+00:00",
    }
    text = json.dumps(built)
    assert "ab" * 32 not in text


def test_without_evidence_no_evidence_link_and_now_in_utc() -> None:
    built = message(
        disposition="review",
        rule=None,
        activity={"id": "https://remote.example/a/1", "row": 5},
        signals=[],
        admin_url="http://admin.example",
    )
    assert built["links"] == {"activity": "http://admin.example/_sluice/api/activities/5"}
    assert built["evidence_id"] is None
    at = datetime.fromisoformat(built["at"])
    assert at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=1)


def test_one_effect_per_webhook_with_stable_keys() -> None:
    body = {"event": "verdict"}
    hooks = ["https://a.example/hook", "http://127.0.0.1:9/hook"]
    first = notifications(key="verdict:42", message=body, webhooks=hooks)
    again = notifications(key="verdict:42", message=body, webhooks=hooks)
    assert first == again
    assert [p.kind for p in first] == [KIND, KIND]
    assert len({p.key for p in first}) == 2
    assert [p.payload["url"] for p in first] == hooks
    assert all(p.payload["key"] == p.key and p.payload["message"] == body for p in first)
    assert notifications(key="verdict:42", message=body, webhooks=[]) == []


async def test_delivered_on_2xx(webhook: Webhook, session: aiohttp.ClientSession) -> None:
    webhook.status = 204
    await Notify(session).run({"url": webhook.url, "message": {"a": 1}, "key": "k1"})
    [sent] = webhook.requests
    assert sent.json() == {"a": 1}
    assert sent.headers["Idempotency-Key"] == "k1"


@pytest.mark.parametrize(
    ("status", "permanent"), [(500, False), (503, False), (429, False), (408, False), (404, True)]
)
async def test_answers_retried_or_not(
    webhook: Webhook, session: aiohttp.ClientSession, status: int, permanent: bool
) -> None:
    webhook.status = status
    with pytest.raises(EffectFailed) as failed:
        await Notify(session).run({"url": webhook.url, "message": {}, "key": "k"})
    assert failed.value.permanent is permanent
    assert str(status) in failed.value.reason


async def test_a_redirect_is_not_followed(webhook: Webhook, session: aiohttp.ClientSession) -> None:
    webhook.status = 302
    with pytest.raises(EffectFailed, match="redirects are not followed") as failed:
        await Notify(session).run({"url": webhook.url, "message": {}, "key": "k"})
    assert failed.value.permanent
    assert len(webhook.requests) == 1


async def test_a_hanging_webhook_times_out_and_is_retried(
    webhook: Webhook, session: aiohttp.ClientSession
) -> None:
    webhook.hang = True
    with pytest.raises(EffectFailed, match="timed out") as failed:
        await Notify(session, timeout=0.3).run({"url": webhook.url, "message": {}, "key": "k"})
    assert not failed.value.permanent


async def test_a_webhook_not_listening_is_retried(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(EffectFailed, match="unreachable") as failed:
        await Notify(session).run({"url": f"http://127.0.0.1:{port}/", "message": {}, "key": "k"})
    assert not failed.value.permanent


async def test_a_payload_without_url_is_dead_at_once(session: aiohttp.ClientSession) -> None:
    with pytest.raises(EffectFailed, match="'url'") as failed:
        await Notify(session).run({"message": {}, "key": "k"})
    assert failed.value.permanent


def test_check_config_refuses_webhooks_that_are_not_http(tmp_path: Path) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text(
        "[notify]\n"
        'webhooks = ["https://hooks.example/a", "ftp://hooks.example/b"]\n'
        'on = ["quarantine", "quarantined"]\n'
        'admin_url = "admin.example"\n'
        "[outbox]\n"
        "backoff_initial_seconds = 10\n"
        "backoff_max_seconds = 5\n"
    )
    problems = {(p.line, p.key): p.message for p in check_config(path, environ={})}
    assert set(problems) == {
        (2, "notify.webhooks[1]"),
        (3, "notify.on[1]"),
        (4, "notify.admin_url"),
        (7, "outbox.backoff_max_seconds"),
    }
    assert "http:// or https://" in problems[(2, "notify.webhooks[1]")]
    assert "did you mean `quarantine`" in problems[(3, "notify.on[1]")]
    defaults = load_config(None, environ={})
    assert defaults.notify.webhooks == ()
    assert defaults.notify.on == ("review", "quarantine")  # issue 14: new reviews notify too
    assert (defaults.outbox.max_attempts, defaults.outbox.backoff_max_seconds) == (10, 3600.0)
