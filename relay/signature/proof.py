"""FEP-8b32 object integrity proofs: DataIntegrityProof with the eddsa-jcs-2022 cryptosuite.

The cryptosuite (W3C vc-di-eddsa, section 3.3) canonicalises with JCS (RFC 8785), not
JSON-LD, so a proof verifies without pyld:

    hash = sha256(JCS(proof options + document @context)) || sha256(JCS(document - proof))

and the proof value is the Ed25519 signature of that hash, multibase base58btc ("z...").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from relay.errors import SignatureError
from relay.signature.keys import KeyResolver, PublicKey, check_owner, verify_with_key

__all__ = [
    "CRYPTOSUITE",
    "b58decode",
    "b58encode",
    "canonical_json",
    "find_proof",
    "sign_proof",
    "verify_proof",
]

CRYPTOSUITE = "eddsa-jcs-2022"

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Encode bytes as base58btc (Bitcoin alphabet; leading zero bytes become '1')."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rest = divmod(number, 58)
        digits.append(_B58_ALPHABET[rest])
    return "1" * zeros + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """Decode base58btc; raises ValueError on a character outside the alphabet."""
    number = 0
    for char in text:
        try:
            number = number * 58 + _B58_INDEX[char]
        except KeyError:
            raise ValueError(f"{char!r} is not a base58btc character") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


# --- RFC 8785 JSON Canonicalization Scheme -------------------------------------------------

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def canonical_json(value: Any) -> bytes:
    """Serialise a JSON value per RFC 8785 (JCS), UTF-8 encoded.

    Raises ValueError for values JSON cannot carry (NaN, infinities, lone surrogates,
    non-string keys).
    """
    parts: list[str] = []
    _write(value, parts)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("string contains a lone surrogate") from exc


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int | float):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("object keys must be strings")
        out.append("{")
        # RFC 8785 3.2.3: members sorted by the UTF-16 code units of their names.
        for i, key in enumerate(sorted(value, key=_utf16)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise ValueError(f"{type(value).__name__} is not a JSON value")


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _string(text: str) -> str:
    """Quote a string as ECMAScript JSON.stringify does (RFC 8785 3.2.2.2)."""
    chars = []
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            chars.append(escaped)
        elif char < " ":
            chars.append(f"\\u{ord(char):04x}")
        else:
            chars.append(char)
    return '"' + "".join(chars) + '"'


def _number(number: float) -> str:
    """Format a number as ECMAScript Number.prototype.toString does (RFC 8785 3.2.2.3)."""
    if isinstance(number, int) and abs(number) < 2**53:
        return str(number)
    number = float(number)  # beyond 2**53 JSON numbers are IEEE 754 doubles
    if math.isnan(number) or math.isinf(number):
        raise ValueError("NaN and infinities are not JSON numbers")
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    # repr gives the shortest round-tripping digits, as ECMAScript requires.
    _, digit_tuple, exponent = Decimal(repr(abs(number))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    assert isinstance(exponent, int)
    exponent += len("".join(map(str, digit_tuple))) - len(digits)
    k = len(digits)
    n = k + exponent  # value = 0.digits * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + text


# --- eddsa-jcs-2022 ---------------------------------------------------------------------------


def _hash_input(document: Mapping[str, Any], proof: Mapping[str, Any]) -> bytes:
    """The bytes the cryptosuite signs (vc-di-eddsa 3.3.4 hashing, 3.3.5 proof configuration)."""
    config = {k: v for k, v in proof.items() if k != "proofValue"}
    if "@context" in document:
        config["@context"] = document["@context"]
    unsecured = {k: v for k, v in document.items() if k != "proof"}
    return (
        hashlib.sha256(canonical_json(config)).digest()
        + hashlib.sha256(canonical_json(unsecured)).digest()
    )


def sign_proof(
    document: Mapping[str, Any],
    ed25519_private_key: Ed25519PrivateKey,
    verification_method: str,
    *,
    created: str | None = None,
) -> dict[str, Any]:
    """Return a copy of `document` with an eddsa-jcs-2022 DataIntegrityProof added."""
    proof: dict[str, Any] = {
        "type": "DataIntegrityProof",
        "cryptosuite": CRYPTOSUITE,
        "verificationMethod": verification_method,
        "proofPurpose": "assertionMethod",
        "created": created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    unsecured = {k: v for k, v in document.items() if k != "proof"}
    signature = ed25519_private_key.sign(_hash_input(unsecured, proof))
    return {**unsecured, "proof": {**proof, "proofValue": "z" + b58encode(signature)}}


def find_proof(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The document's eddsa-jcs-2022 proof, if it carries one (a proof may be a set)."""
    proofs = document.get("proof")
    for proof in proofs if isinstance(proofs, list) else [proofs]:
        if isinstance(proof, Mapping) and proof.get("cryptosuite") == CRYPTOSUITE:
            return proof
    return None


def _check_options(proof: Mapping[str, Any]) -> str:
    """Validate the proof's options; return its verification method (a key id)."""
    if proof.get("type") != "DataIntegrityProof":
        raise SignatureError("proof type is not DataIntegrityProof")
    if proof.get("proofPurpose") != "assertionMethod":
        raise SignatureError("proof purpose is not assertionMethod")
    method = proof.get("verificationMethod")
    if not isinstance(method, str) or not method:
        raise SignatureError("proof has no verificationMethod")
    expires = proof.get("expires")
    if isinstance(expires, str):
        try:
            when = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        except ValueError:
            raise SignatureError("proof expires is not a date-time") from None
        if when.tzinfo is not None and when < datetime.now(UTC):
            raise SignatureError("proof has expired")
    return method


def _signature_bytes(proof: Mapping[str, Any]) -> bytes:
    value = proof.get("proofValue")
    if not isinstance(value, str) or not value.startswith("z"):
        raise SignatureError("proofValue is not multibase base58btc")
    try:
        return b58decode(value[1:])
    except ValueError:
        raise SignatureError("proofValue is not multibase base58btc") from None


async def verify_proof(document: Mapping[str, Any], actor_id: str, keys: KeyResolver) -> None:
    """Verify the document's eddsa-jcs-2022 proof and that `actor_id` owns its key."""
    proof = find_proof(document)
    if proof is None:
        raise SignatureError(f"object has no {CRYPTOSUITE} proof")
    key_id = _check_options(proof)
    signature = _signature_bytes(proof)
    try:
        message = _hash_input(document, proof)
    except ValueError as exc:
        raise SignatureError(f"object cannot be canonicalised: {exc}") from None
    check_owner(await keys.resolve(key_id), actor_id)

    def check(key: PublicKey) -> str | None:
        if not isinstance(key.key, Ed25519PublicKey):
            return f"key {key_id} is not an Ed25519 key"
        try:
            key.key.verify(signature, message)
        except InvalidSignature:
            return f"proof does not verify with key {key_id}"
        return None

    await verify_with_key(keys, key_id, check)
