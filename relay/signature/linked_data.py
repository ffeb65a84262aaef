"""RsaSignature2017 linked-data signatures, as Mastodon puts them on relayed activities.

Mastodon's scheme (app/lib/activitypub/linked_data_signature.rb):

    options = signature - {type, id, signatureValue} + {"@context": identity/v1}
    signed  = sha256hex(URDNA2015(options)) + sha256hex(URDNA2015(document - signature))
    signatureValue = base64(RSA-SHA256 PKCS#1 v1.5 over `signed`)

Canonicalisation goes through pyld: tens of milliseconds for an ordinary activity, but
more than a CPU-second for a 200 kB one, and minutes for a few hundred bytes of
symmetric blank nodes. And it runs before the signature value can be checked, so anyone
can ask for it. Verification therefore refuses, before any canonicalisation, documents
over MAX_BYTES or MAX_NODES, and canonicalises the rest in worker processes under a time
budget (relay.signature.canonical). Signing (sign_ld, for tests and tools) stays in-process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from relay.errors import SignatureError
from relay.jsonld import normalize
from relay.signature.canonical import Canonicaliser
from relay.signature.keys import KeyResolver, PublicKey, check_owner, verify_with_key

__all__ = [
    "MAX_BYTES",
    "MAX_NODES",
    "SIGNATURE_TYPE",
    "check_size",
    "sign_ld",
    "signed_bytes",
    "verify_ld",
]

SIGNATURE_TYPE = "RsaSignature2017"
_IDENTITY_CONTEXT = "https://w3id.org/identity/v1"

# Real activities are a few kB and at most a few hundred JSON values (PeerTube's videos
# are the largest seen: 7 kB, 214 values); a 200 kB one costs a CPU-second to canonicalise.
MAX_BYTES = 65536
MAX_NODES = 2000

# pyld's context cache is shared, unsynchronised state; keep it to one thread at a time.
_PYLD_LOCK = threading.Lock()


def _hash(document: Mapping[str, Any]) -> str:
    with _PYLD_LOCK:
        return hashlib.sha256(normalize(dict(document)).encode("utf-8")).hexdigest()


def _signed_parts(
    document: Mapping[str, Any], options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two documents whose canonical hashes, concatenated, are signed."""
    config = {k: v for k, v in options.items() if k not in ("type", "id", "signatureValue")}
    config["@context"] = _IDENTITY_CONTEXT
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return config, unsigned


def signed_bytes(document: Mapping[str, Any], options: Mapping[str, Any]) -> bytes:
    """The bytes an RsaSignature2017 signs, for `document` and its signature `options`."""
    config, unsigned = _signed_parts(document, options)
    return (_hash(config) + _hash(unsigned)).encode("ascii")


def check_size(
    document: Mapping[str, Any], *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES
) -> None:
    """Refuse a document too large to canonicalise: it is cheap to send, dear to check.

    Nodes are the JSON values (objects, arrays, strings, numbers, ...) at any depth: the
    quads and blank nodes URDNA2015 works on grow with them. Bytes are the compact JSON.
    """
    nodes = 0
    stack: list[Any] = [document]
    while stack:
        value = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise SignatureError(
                f"object has more than {max_nodes} JSON values, too many to check "
                f"its {SIGNATURE_TYPE}"
            )
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    try:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        raise SignatureError("object is not valid JSON-LD") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise SignatureError(
            f"object is {size} bytes, more than the {max_bytes} allowed to check "
            f"its {SIGNATURE_TYPE}"
        )


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


async def verify_ld(
    document: Mapping[str, Any],
    actor_id: str,
    keys: KeyResolver,
    canonicaliser: Canonicaliser,
    *,
    max_bytes: int = MAX_BYTES,
    max_nodes: int = MAX_NODES,
) -> None:
    """Verify the document's RsaSignature2017 and that `actor_id` owns the signing key.

    Size limits come first (before any key fetch or canonicalisation); `canonicaliser`
    bounds the time. Raises SignatureError, or RateLimited when it is too busy.
    """
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
    check_size(document, max_bytes=max_bytes, max_nodes=max_nodes)
    check_owner(await keys.resolve(key_id), actor_id)
    config_hash, document_hash = await canonicaliser.hashes(_signed_parts(document, options))
    message = (config_hash + document_hash).encode("ascii")

    def check(key: PublicKey) -> str | None:
        if not isinstance(key.key, RSAPublicKey):
            return f"key {key_id} is not an RSA key"
        try:
            key.key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return f"signature does not verify with key {key_id}"
        return None

    await verify_with_key(keys, key_id, check)
