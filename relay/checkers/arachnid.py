"""Arachnid Shield (Canadian Centre for Child Protection): the file, or only its PDQ hashes.

As its SDKs (``arachnid-shield-sdk-python`` ``api/v1.py``) call it, with HTTP Basic auth:

- ``send = "bytes"``: ``POST v1/media/`` with the raw bytes and ``Content-Type`` their
  type; a ``ScannedMedia`` comes back: ``classification`` (``csam``,
  ``harmful-abusive-material``, ``no-known-match``; "more may be added"), ``match_type``
  (``exact``: a SHA-1 match; ``near``: a PhotoDNA match; null when none),
  ``sha256_hex`` of what it scanned, ``near_match_details[]``. Stills and videos.
- ``send = "pdq"``: ``POST v1/pdq/`` with ``{"hashes": [base64 PDQ, …]}`` (the PDQ
  hashes Sluice computed, every good frame), so the bytes never leave the server;
  ``{"scanned_hashes": {<pdq>: {classification, match_type, near_match_details} | null}}``.

A classification other than ``no-known-match`` is a ``match`` signal of that category.
It is exact only for a SHA-1 match of the bytes sent whose ``sha256_hex`` is ours too
(a service that says "exact" about other bytes is not believed); a PDQ query is
perceptual whatever the answer says. Refusals carry ``{"detail": …}``, which the error
signal repeats.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Unpack
from urllib.parse import urljoin

import aiohttp

from relay.checkers.base import (
    MAX_LIST,
    Checker,
    CheckerLimits,
    CheckFailed,
    category_name,
    number,
    text,
)
from relay.media.media import Media
from relay.signal import Signal

__all__ = ["DEFAULT_URL", "MAX_HASHES", "NO_MATCH", "ArachnidShield", "Send", "pdq_base64"]

DEFAULT_URL = "https://shield.projectarachnid.com/"
NO_MATCH = "no-known-match"
#: PDQ hashes sent at once: a picture's frames (the hasher keeps at most 8).
MAX_HASHES = 16

Send = Literal["bytes", "pdq"]


def pdq_base64(hex_hash: str) -> str:
    """A PDQ hash as Arachnid takes it: its 32 bytes (most significant bit first, as
    ``np.packbits`` of pdqhash's bits) in base64, from Sluice's 64 hex digits."""
    return base64.b64encode(bytes.fromhex(hex_hash)).decode("ascii")


class ArachnidShield(Checker):
    """Arachnid Shield's ``v1/media/`` or ``v1/pdq/``; ``credentials`` is
    ``USERNAME:PASSWORD``."""

    limits: ClassVar[CheckerLimits] = {
        "rate_per_second": 5.0,
        "timeout_seconds": 10.0,
        "max_answer_bytes": 262_144,
    }

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: str,
        *,
        name: str = "arachnid",
        url: str = DEFAULT_URL,
        send: Send = "bytes",
        **limits: Unpack[CheckerLimits],
    ) -> None:
        super().__init__(name, session, **limits)
        if send not in ("bytes", "pdq"):
            raise ValueError(f'send must be "bytes" or "pdq", not {send!r}')
        username, colon, password = credentials.partition(":")
        if not colon or not username:
            raise ValueError("credentials must be USERNAME:PASSWORD")
        # HTTP Basic (RFC 7617, UTF-8), written out: aiohttp deprecates its BasicAuth.
        pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._auth = {"Authorization": f"Basic {pair}"}
        self.url = url if url.endswith("/") else url + "/"
        self.send: Send = send

    async def ask(self, media: Media) -> Sequence[Signal]:
        if self.send == "pdq":
            return await self._pdq(media)
        if media.kind not in ("image", "video"):
            return ()
        if media.data is None:
            raise CheckFailed("the file's bytes are not at hand (known from the media cache)")
        answer = await self.post(
            urljoin(self.url, "v1/media/"),
            headers={**self._auth, "Content-Type": media.mime or "application/octet-stream"},
            data=media.data,
        )
        scanned = answer.json()
        classification = scanned.get("classification")
        if not isinstance(classification, str):
            raise CheckFailed("unreadable answer: no classification")
        if classification == NO_MATCH:
            return ()
        match_type = scanned.get("match_type")
        theirs = scanned.get("sha256_hex")
        confirmed = isinstance(theirs, str) and theirs.lower() == media.sha256
        exact = match_type == "exact" and confirmed
        detail = self._detail(classification, match_type, exact)
        detail["hash_kind"] = "sha1" if exact else "photodna"
        if match_type == "exact" and not confirmed:
            detail["note"] = "exact match of other bytes than those sent: counted as near"
        if confirmed:
            detail["value"] = media.sha256
        detail["near_matches"] = _near(scanned.get("near_match_details"))
        return (Signal("match", self.name, detail),)

    async def _pdq(self, media: Media) -> Sequence[Signal]:
        if media.kind != "image":
            return ()  # video and audio: the inspector says they went unchecked
        hashes = media.hashes.get("pdq", ())[:MAX_HASHES]
        if not hashes:
            reason = f"no PDQ hash good enough to send (quality {media.quality})"
            return (Signal("unchecked", self.name, {"matcher": self.name, "reason": reason}),)
        sent = {pdq_base64(h): h for h in hashes}
        answer = await self.post(
            urljoin(self.url, "v1/pdq/"), headers=self._auth, json_body={"hashes": list(sent)}
        )
        scanned = answer.json().get("scanned_hashes")
        if not isinstance(scanned, dict):
            raise CheckFailed("unreadable answer: no scanned_hashes")
        # Keyed by the hashes sent; read back by their bytes, whatever base64 padding.
        answered = {_hex(k): v for k, v in list(scanned.items())[: MAX_HASHES * 4]}
        found = []
        for hex_hash in sent.values():
            if hex_hash not in answered:
                raise CheckFailed("unreadable answer: a hash sent is not in scanned_hashes")
            result = answered[hex_hash]
            if result is None:
                continue
            if not isinstance(result, dict):
                raise CheckFailed("unreadable answer: a scanned hash is not an object")
            classification = result.get("classification")
            if classification in (None, NO_MATCH):
                continue
            detail = self._detail(classification, result.get("match_type"), False)
            detail.update(hash_kind="pdq", value=hex_hash)
            detail["near_matches"] = _near(result.get("near_match_details"))
            found.append(Signal("match", self.name, detail))
        return found

    def _detail(self, classification: object, match_type: object, exact: bool) -> dict[str, Any]:
        return {
            "matcher": self.name,
            "category": category_name(classification),
            "classification": text(classification, 64),
            "match_type": text(match_type, 16),
            "exact": exact,
        }


def _near(value: object) -> list[dict[str, Any]]:
    """``near_match_details``: a list for ``v1/media/``, one object or null for
    ``v1/pdq/``; what each says of the listed file it resembles, bounded."""
    items = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
    near = []
    for item in items[:MAX_LIST]:
        if not isinstance(item, dict):
            continue
        timestamp = item.get("timestamp")  # seconds into a video; 0.0 for stills
        near.append(
            {
                "classification": text(item.get("classification"), 64),
                "sha256_hex": text(item.get("sha256_hex"), 64),
                "sha1_base32": text(item.get("sha1_base32"), 32),
                "timestamp": number(timestamp),
            }
        )
    return near


def _hex(key: object) -> str | None:
    if not isinstance(key, str) or len(key) > 64:
        return None
    try:
        raw = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None
