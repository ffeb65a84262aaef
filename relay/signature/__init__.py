"""Who sent this? HTTP signatures on requests, and signatures carried inside objects.

Requests: draft-cavage-12 ``Signature`` (what Mastodon, Misskey, Pleroma send) or RFC 9421
``Signature-Input``/``Signature`` (Mastodon 4.5+, Fedify). Objects relayed on behalf of
someone else: Mastodon's RsaSignature2017 or a FEP-8b32 eddsa-jcs-2022 proof.

Every refusal raises relay.errors.SignatureError whose message is safe to return to the
sender: it names the reason, never our internals.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

from relay.errors import SignatureError
from relay.signature import objects
from relay.signature.cavage import (
    HeaderGetter,
    header_getter,
    parse_signature,
    sign_cavage,
    verify_cavage,
)
from relay.signature.keys import KeyCache, KeyResolver, PublicKey, Verified
from relay.signature.linked_data import sign_ld
from relay.signature.proof import sign_proof
from relay.signature.rfc9421 import carries_signature, sign_rfc9421, verify_rfc9421

__all__ = [
    "KeyCache",
    "KeyResolver",
    "PublicKey",
    "Verified",
    "sign_cavage",
    "sign_ld",
    "sign_proof",
    "sign_rfc9421",
    "signed_at",
    "verify_object",
    "verify_request",
]


async def verify_request(
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    keys: KeyResolver,
    *,
    now: float | None = None,
    max_age: float = 43200,
    clock_skew: float = 3600,
) -> Verified:
    """Verify a request's HTTP signature and say who signed it.

    `target` is the path and query as received; `headers` a case-insensitive mapping
    (aiohttp's) or a plain dict. RFC 9421 is used when Signature-Input names a signature
    that Signature carries; else draft-cavage when Signature is one (a stray
    Signature-Input must not sink a good cavage signature); else RFC 9421 again, to say
    what is wrong with it. An RFC 9421 signature that is there and fails is never retried
    as cavage. Raises SignatureError (KeyFetchError when the key is unreachable).
    """
    get = header_getter(headers)
    when = time.time() if now is None else now
    limits = {"now": when, "max_age": max_age, "clock_skew": clock_skew}
    signature_input = get("signature-input")
    if signature_input is not None and (
        carries_signature(signature_input, get("signature")) or not _looks_cavage(get)
    ):
        return await verify_rfc9421(method, target, headers, get, body, keys, **limits)
    return await verify_cavage(method, target, get, body, keys, **limits)


_CREATED = re.compile(r"[;\s,]created=\"?(\d{1,12})")


def signed_at(headers: Mapping[str, str]) -> float | None:
    """When a request was signed, as its signature says (``created``, else Date),
    unverified: for deciding whether it is still worth sending, never for trust."""
    get = header_getter(headers)
    for name in ("signature-input", "signature"):
        found = _CREATED.search(" " + (get(name) or ""))
        if found:
            return float(found.group(1))
    try:
        return email.utils.parsedate_to_datetime(get("date") or "").timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _looks_cavage(get: HeaderGetter) -> bool:
    """A draft-cavage signature is there: Signature (or Authorization: Signature) has a keyId."""
    header = get("signature")
    if header is None:
        header = get("authorization") or ""
        if header[:10].lower() != "signature ":
            return False
    try:
        return bool(parse_signature(header).get("keyid"))
    except SignatureError:
        return False


async def verify_object(
    document: Mapping[str, Any], actor_id: str, keys: KeyResolver, *, signer: str | None = None
) -> str:
    """Verify a signature carried by an object itself; return which kind it was.

    Used for activities relayed by someone other than their actor, where the HTTP
    signature proves only the relaying server. A FEP-8b32 eddsa-jcs-2022 proof is
    preferred (cheap, no JSON-LD); else a Mastodon RsaSignature2017. The signing key
    must belong to `actor_id`. `signer`, the relaying server's actor, is rate-limited
    (RateLimited, a SignatureError with retry_after). Uses the process-wide
    objects.shared() limits; a server builds its own objects.ObjectVerifier.
    """
    return await objects.shared().verify(document, actor_id, keys, signer=signer)
