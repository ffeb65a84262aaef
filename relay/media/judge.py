"""Judging bytes a door holds in memory: the spine's one inspect path for a file that
cannot wait for the hold (an upload, a fetch through the outbound proxy).

The bytes are decoded on the hold's ``MediaHasher`` (charged to ``sender``), met by the
hold's ``Inspector``, and what could not be decoded becomes a signal beside ``hashed``,
as the hold's media check puts it, so the same ``Policy`` decides.

A file the hold (or a door) already decoded is known by its SHA-256 in the hold's
``HashCache``: its hashes are reused, not decoded again, and matched afresh. That is
the common case at the outbound door: the instance fetches the media of an activity
Sluice has just checked.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from relay.errors import DecodeError
from relay.evidence import EvidenceStore, MediaItem
from relay.media.fetch import HashCache
from relay.media.hasher import MediaHasher, OverBudget
from relay.media.inspect import Inspector
from relay.media.media import Media
from relay.media.refs import MediaRef
from relay.policy import OVER_BUDGET, Policy
from relay.signal import Signal
from relay.verdict import Disposition, Verdict

__all__ = ["Inspected", "decide", "inspect_bytes", "keep_evidence"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Inspected:
    signals: list[Signal]
    undecodable: bool = False
    """A picture that did not decode: its exact hashes met the banks, nothing else."""
    sha256: str = ""
    """The file's SHA-256, computed once here for the doors' evidence."""


async def inspect_bytes(
    data: bytes,
    ref: MediaRef,
    *,
    inspector: Inspector,
    hasher: MediaHasher,
    sender: str,
    source: str,
    cache: HashCache | None = None,
) -> Inspected:
    """The signals about ``data``; ``source`` names the door in problem signals.
    ``cache``: the hold's, by SHA-256 (a file decoded is remembered; one known is not
    decoded again)."""
    where = {"url": ref.url, "where": ref.where, "role": ref.role}
    problem: Signal | None = None
    undecodable = False
    sha256 = hashlib.sha256(data).hexdigest()
    known = cache.by_sha256(sha256) if cache is not None else None
    try:
        if known is not None:
            media = replace(known, data=data, ref=ref)
        else:
            media = Media.of(data, await hasher.hash(data, sender=sender), ref=ref)
            if cache is not None:
                cache.put(None, media.remembered())
    except OverBudget as exc:
        media = Media.of(data, ref=ref)
        problem = Signal(OVER_BUDGET, source, {**where, "error": str(exc)})
    except DecodeError as exc:
        # Not decoded: the exact hashes still meet the banks; on_error decides the rest.
        media = Media.of(data, ref=ref)
        undecodable = True
        problem = Signal("error", source, {**where, "stage": "decode", "error": str(exc)})
    signals = await inspector.inspect(media)
    if problem is not None:
        signals = [*signals[:1], problem, *signals[1:]]
    return Inspected(signals, undecodable, sha256)


def decide(
    policy: Policy, signals: Iterable[Signal], *, on_error: Disposition, rule: str
) -> Verdict:
    """``policy``'s verdict, with what cannot be decided the door's ``on_error``
    (named ``rule``) rather than the hold's: a door cannot hold a file for later."""
    verdict = replace(policy, on_error=on_error).decide(list(signals))
    if verdict.rule == "hold.on_error":
        verdict = replace(verdict, rule=rule)
    return verdict


async def keep_evidence(
    evidence: EvidenceStore | None,
    verdict: Verdict,
    facts: dict[str, Any],
    media: Sequence[MediaItem],
    **context: object,
) -> int | None:
    """A door's refusal of a match keeps its evidence (when a key is set): ``facts``
    (what the door knows: the upload, the fetch), the time, the signals and the
    verdict, and ``media``. The id, or None. A failure is logged with ``context``; the
    refusal stands all the same."""
    if (
        verdict.disposition == Disposition.DELIVER
        or evidence is None
        or evidence.key is None
        or not any(s.kind == "match" for s in verdict.signals)
    ):
        return None
    facts = {
        **facts,
        "received_at": time.time(),
        "signals": [s.as_json() for s in verdict.signals],
        "verdict": verdict.as_json(),
    }
    try:
        return await evidence.preserve(activity_row=None, facts=facts, media=media)
    except Exception as exc:  # the admins must hear of it
        log.error("evidence_failed", error=str(exc), **context)
        return None
