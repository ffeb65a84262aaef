"""The external checkers the config turns on, in one place for every door's inspector."""

from __future__ import annotations

from typing import cast

import aiohttp

from relay.checkers.arachnid import ArachnidShield
from relay.checkers.base import Checker, CheckerLimits
from relay.checkers.classifier import Classifier
from relay.checkers.photodna import PhotoDna
from relay.config import Config
from relay.config.sluice import ArachnidConfig, ClassifierConfig, PhotoDnaConfig

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
                **_limits(p),
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
                **_limits(a),
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
                **_limits(c),
            )
        )
    return found


def _limits(section: PhotoDnaConfig | ArachnidConfig | ClassifierConfig) -> CheckerLimits:
    """A section's rate, timeout, answer bound and cache, as the checker takes them."""
    return cast(
        CheckerLimits, {name: getattr(section, name) for name in CheckerLimits.__annotations__}
    )
