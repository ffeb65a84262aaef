"""RsaSignature2017 linked-data signatures, as Mastodon puts them on relayed activities.

Mastodon's scheme (app/lib/activitypub/linked_data_signature.rb):

    options = signature - {type, id, signatureValue} + {"@context": identity/v1}
    signed  = sha256hex(URDNA2015(options)) + sha256hex(URDNA2015(document - signature))
    signatureValue = base64(RSA-SHA256 PKCS#1 v1.5 over `signed`)

Canonicalisation goes through pyld, which is slow (tens of milliseconds per activity),
so it runs in a worker thread, one at a time, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from pyld.jsonld import JsonLdError

from relay.errors import SignatureError
from relay.jsonld import UnknownContext, normalize
from relay.signature.keys import KeyResolver, PublicKey, check_owner, verify_with_key

__all__ = ["SIGNATURE_TYPE", "sign_ld", "signed_bytes", "verify_ld"]

SIGNATURE_TYPE = "RsaSignature2017"
IDENTITY_CONTEXT = "https://w3id.org/identity/v1"

# pyld's context cache is shared, unsynchronised state; keep it to one thread at a time.
_PYLD_LOCK = threading.Lock()


def _hash(document: Mapping[str, Any]) -> str:
    with _PYLD_LOCK:
        return hashlib.sha256(normalize(dict(document)).encode("utf-8")).hexdigest()


def signed_bytes(document: Mapping[str, Any], options: Mapping[str, Any]) -> bytes:
    """The bytes an RsaSignature2017 signs, for `document` and its signature `options`."""
    config = {k: v for k, v in options.items() if k not in ("type", "id", "signatureValue")}
    config["@context"] = IDENTITY_CONTEXT
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return (_hash(config) + _hash(unsigned)).encode("ascii")


def sign_ld(
    document: Mapping[str, Any],
    rsa_private_key: RSAPrivateKey,
    key_id: str,
    *,
    created: str | None = None,
) -> dict[str, Any]:
    """Return a copy of `document` carrying an RsaSignature2017 by `key_id`."""
    options = {
        "type": SIGNATURE_TYPE,
        "creator": key_id,
        "created": created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    value = rsa_private_key.sign(
        signed_bytes(unsigned, options), padding.PKCS1v15(), hashes.SHA256()
    )
    options["signatureValue"] = base64.b64encode(value).decode()
    return {**unsigned, "signature": options}


async def _signed_bytes_off_loop(document: Mapping[str, Any], options: Mapping[str, Any]) -> bytes:
    try:
        return await asyncio.to_thread(signed_bytes, document, options)
    except UnknownContext as exc:
        raise SignatureError(f"object uses an unknown JSON-LD context {exc.url}") from exc
    except JsonLdError as exc:
        raise SignatureError("object is not valid JSON-LD") from exc


async def verify_ld(document: Mapping[str, Any], actor_id: str, keys: KeyResolver) -> None:
    """Verify the document's RsaSignature2017 and that `actor_id` owns the signing key."""
    options = document.get("signature")
    if not isinstance(options, Mapping) or options.get("type") != SIGNATURE_TYPE:
        raise SignatureError(f"object has no {SIGNATURE_TYPE} signature")
    key_id = options.get("creator")
    if not isinstance(key_id, str) or not key_id:
        raise SignatureError("signature has no creator")
    try:
        signature = base64.b64decode(str(options.get("signatureValue", "")), validate=True)
    except (ValueError, binascii.Error):
        raise SignatureError("signatureValue is not valid base64") from None
    if not signature:
        raise SignatureError("signature has no signatureValue")
    check_owner(await keys.resolve(key_id), actor_id)
    message = await _signed_bytes_off_loop(document, options)

    def check(key: PublicKey) -> str | None:
        if not isinstance(key.key, RSAPublicKey):
            return f"key {key_id} is not an RSA key"
        try:
            key.key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return f"signature does not verify with key {key_id}"
        return None

    await verify_with_key(keys, key_id, check)
