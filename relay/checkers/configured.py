"""The external checkers the config turns on, in one place for every door's inspector."""

from __future__ import annotations

import aiohttp

from relay.checkers.arachnid import ArachnidShield
from relay.checkers.base import Checker
from relay.checkers.classifier import Classifier
from relay.checkers.photodna import PhotoDna
from relay.config import Config

__all__ = ["checkers"]


def checkers(config: Config, session: aiohttp.ClientSession) -> list[Checker]:
    """``[photodna]``, ``[arachnid]`` and ``[classifier]``, those switched on with their
    credentials. ``session``: the admin's services, not senders' (no SSRF policy: a
    self-hosted classifier may be on loopback)."""
    found: list[Checker] = []
    p = config.photodna
    if p.enabled and p.key:
        found.append(
            PhotoDna(
                session,
                p.key,
                url=p.endpoint,
                category=p.category,
                small="skip" if p.small == "skip" else "upscale",
                enhance=p.enhance,
                rate_per_second=p.rate_per_second,
                timeout_seconds=p.timeout_seconds,
                max_answer_bytes=p.max_answer_bytes,
                cache_seconds=p.cache_seconds,
                cache_entries=p.cache_entries,
            )
        )
    a = config.arachnid
    if a.enabled and a.credentials:
        found.append(
            ArachnidShield(
                session,
                a.credentials,
                url=a.endpoint,
                send="pdq" if a.send == "pdq" else "bytes",
                rate_per_second=a.rate_per_second,
                timeout_seconds=a.timeout_seconds,
                max_answer_bytes=a.max_answer_bytes,
                cache_seconds=a.cache_seconds,
                cache_entries=a.cache_entries,
            )
        )
    c = config.classifier
    if c.endpoint:
        found.append(
            Classifier(
                session,
                c.endpoint,
                token=c.token,
                token_header=c.token_header,
                token_prefix=c.token_prefix,
                score_key=c.score_key,
                match_at=c.match_at,
                review_at=c.review_at if c.review_at >= 0 else None,
                category=c.category,
                kinds=c.kinds,
                rate_per_second=c.rate_per_second,
                timeout_seconds=c.timeout_seconds,
                max_answer_bytes=c.max_answer_bytes,
                cache_seconds=c.cache_seconds,
                cache_entries=c.cache_entries,
            )
        )
    return found
