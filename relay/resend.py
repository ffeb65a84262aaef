"""Sending an activity on after its sender's signature has gone stale.

Signatures age fast: Mastodon refuses one about 65 minutes after it was made (created
+ 5 minutes, with an hour of clock skew), Lemmy after an hour. An activity held longer
(for a moderator, a long retry, a release from quarantine) can no longer go as it
came. In this order, then:

1. **as sent**, while the signature is fresh (younger than ``fresh_seconds``);
2. **re-signed**: when the body carries its author's own signature (an RsaSignature2017,
   or a FEP-8b32 proof), the same bytes go signed by Sluice's actor; Mastodon accepts a
   relaying signer when the object's own signature verifies;
3. **fetched**: the instance is asked (through its API, relay.instance) to fetch the
   object from its origin by id, as a user's search would;
4. **as sent** still, while receivers may take the signature (``accepted_seconds``,
   Mastodon's 65 minutes): a last try costs one request, an expiry loses the activity;
5. otherwise it is **expired**: dead-lettered, with the reason, for the admin to see.
   A Like or a Follow has no object the instance could fetch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from yarl import URL

from relay.instance import InstanceApi
from relay.network import Signer
from relay.signature import signed_at
from relay.signature.proof import find_proof

__all__ = ["Resend", "Way", "delivery_url"]

# What the instance can fetch on its own: the object of these, by its id.
_FETCHABLE = {"Create", "Update", "Announce"}
# Fields of the original request that still describe the body, kept when re-signing.
_KEEP = ("Content-Type",)


@dataclass(frozen=True, slots=True)
class Way:
    """How a held activity goes on: ``as_sent``, ``resigned`` (with ``headers``),
    ``fetch`` (the instance fetches ``url``) or ``expired`` (``reason``)."""

    kind: Literal["as_sent", "resigned", "fetch", "expired"]
    headers: Sequence[tuple[str, str]] = ()
    url: str | None = None
    reason: str = ""


class Resend:
    """Chooses the way for each delivery; ``signer`` is Sluice's actor's (None: no
    actor), ``instance`` the instance's API (None: no token configured)."""

    def __init__(
        self,
        *,
        fresh_seconds: float = 3000.0,
        accepted_seconds: float = 3900.0,
        signer: Signer | None = None,
        instance: InstanceApi | None = None,
    ) -> None:
        self.fresh_seconds = fresh_seconds
        # How long receivers still take a signature (Mastodon: created + 5 min + 1 h of
        # skew): what cannot go another way is still tried as sent until then.
        self.accepted_seconds = max(accepted_seconds, fresh_seconds)
        self.signer = signer
        self.instance = instance

    def way(
        self,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        url: str,
        *,
        now: float | None = None,
    ) -> Way:
        """The way for a delivery of ``body`` to ``url`` (the full URL it was signed for)."""
        fields = {name.lower(): value for name, value in headers}
        signed = signed_at(fields)
        now = time.time() if now is None else now
        if signed is None or now - signed <= self.fresh_seconds:
            return Way("as_sent")  # no signing time: the instance judges it as it came
        age = f"signed {round((now - signed) / 60)} min ago"
        document = _document(body)
        if self.signer is not None and _self_signed(document):
            kept = {name: fields[name.lower()] for name in _KEEP if name.lower() in fields}
            # The signer's headers are the caller's plus its own: each name once.
            signed_headers = {**kept, **self.signer("POST", url, kept, body)}
            return Way("resigned", headers=list(signed_headers.items()))
        target = _fetchable(document)
        if self.instance is not None and target is not None:
            return Way("fetch", url=target)
        if now - signed <= self.accepted_seconds:
            return Way("as_sent")  # no other way, and the receiver may still take it
        if target is None:
            reason = f"signature stale ({age}); a {document.get('type', 'body')} cannot be fetched"
        elif self.signer is None and self.instance is None:
            reason = (
                f"signature stale ({age}); set [actor] base_url to re-sign what carries its "
                "author's signature, or [upstream] software and token_file to have the "
                "instance fetch it"
            )
        else:
            reason = f"signature stale ({age}); no signature of its author, no instance API"
        return Way("expired", reason=reason)


def delivery_url(headers: Sequence[tuple[str, str]], target: str, destination: str | None) -> str:
    """The URL a delivery was signed for: its remote inbox, or the instance's own Host
    and the path it came to (the instance checks its signature against those)."""
    if destination is not None:
        return destination
    host = next((value for name, value in headers if name.lower() == "host"), "localhost")
    return str(URL(f"https://{host}{target}", encoded=True))


def _document(body: bytes) -> dict[str, object]:
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _self_signed(document: Mapping[str, object]) -> bool:
    """The body carries its author's own signature, which a receiver checks itself."""
    signature = document.get("signature")
    if isinstance(signature, dict) and signature.get("type") == "RsaSignature2017":
        return True
    return find_proof(document) is not None


def _fetchable(document: Mapping[str, object]) -> str | None:
    """The id of the object the instance could fetch in the activity's stead."""
    if document.get("type") not in _FETCHABLE:
        return None
    found = document.get("object")
    if isinstance(found, dict):
        found = found.get("id")
    return found if isinstance(found, str) and found.startswith(("https://", "http://")) else None
