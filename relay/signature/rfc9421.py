"""HTTP Message Signatures (RFC 9421), as Mastodon 4.5+ and Fedify send them.

    Signature-Input: sig1=("@method" "@target-uri" "content-digest");created=1700000000;
                     keyid="https://a.example/users/alice#main-key"
    Signature: sig1=:base64:

The signature base is built and checked by the `http_message_signatures` library. Its key
resolver is synchronous, so the key is fetched here first and handed to it; its clock
checks are replaced by ours, which take `now`, `max_age` and `clock_skew` from the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import http_sf
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureAlgorithm,
    MappingKeyResolver,
    algorithms,
)

from relay.errors import SignatureError
from relay.signature.cavage import (
    HeaderGetter,
    add_headers,
    check_expires,
    check_key_id,
    check_window,
)
from relay.signature.keys import KeyResolver, PublicKey, Verified, verify_with_key

__all__ = ["carries_signature", "sign_rfc9421", "verify_rfc9421"]

_ALGORITHMS: dict[str, type[HTTPSignatureAlgorithm]] = {
    "rsa-v1_5-sha256": algorithms.RSA_V1_5_SHA256,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
    "ed25519": algorithms.ED25519,
}
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_SIGNATURE_FIELDS = frozenset({"signature-input", "signature"})


@dataclass
class _Message:
    """The request as the library reads it: method, absolute URL, header field lines."""

    method: str
    url: str
    headers: Any


@dataclass
class _Fields:
    """Header field lines in wire order; the library only calls items()."""

    pairs: list[tuple[str, str]]

    def items(self) -> Iterable[tuple[str, str]]:
        return self.pairs


class _Verifier(HTTPMessageVerifier):
    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        """Checked before the key fetch, against the caller's clock and limits."""


def _parse_dictionary(value: str, what: str) -> dict[str, Any]:
    try:
        parsed = http_sf.parse(value.encode("ascii"), tltype="dictionary")
    except (ValueError, TypeError, UnicodeEncodeError):
        raise SignatureError(f"malformed {what}") from None
    if not isinstance(parsed, dict):
        raise SignatureError(f"malformed {what}")
    return parsed


def carries_signature(signature_input: str, signature: str | None) -> bool:
    """Whether the request carries an RFC 9421 signature at all: Signature-Input parses and
    names a label that Signature, parsed as a dictionary, has too. A Signature-Input next
    to a draft-cavage ``Signature: keyId=...`` fails this (that is no dictionary)."""
    try:
        inputs = _parse_dictionary(signature_input, "Signature-Input")
        signatures = _parse_dictionary(signature or "", "Signature")
    except SignatureError:
        return False
    return not inputs.keys().isdisjoint(signatures.keys())


def _check_coverage(names: list[str], needs_digest: bool, has_query: bool) -> None:
    if "@method" not in names:
        raise SignatureError("signature does not cover `@method`")
    has_path = "@path" in names or "@request-target" in names
    if "@target-uri" not in names and not ("@authority" in names and has_path):
        raise SignatureError("signature does not cover `@target-uri` (or `@authority` and `@path`)")
    # @path leaves the query out: a proxy could change it and the signature still hold.
    # (@request-target is the path with its query.)
    if has_query and not {"@target-uri", "@query", "@request-target"} & set(names):
        raise SignatureError(
            "the target has a query, and the signature does not cover `@query` or `@target-uri`"
        )
    if needs_digest and "content-digest" not in names:
        raise SignatureError("signature does not cover `content-digest`")


def _check_content_digest(header: str, body: bytes) -> None:
    """RFC 9530: every sha-256/sha-512 member must match; other algorithms are ignored."""
    checked = False
    for name, (value, _params) in _parse_dictionary(header, "Content-Digest").items():
        algorithm = _DIGESTS.get(name)
        if algorithm is None:
            continue
        if not isinstance(value, bytes):
            raise SignatureError("malformed Content-Digest")
        if not hmac.compare_digest(value, algorithm(body).digest()):
            raise SignatureError("Content-Digest does not match the body")
        checked = True
    if not checked:
        raise SignatureError("Content-Digest has no sha-256 or sha-512 value")


def _algorithm_for(alg: str | None, key: PublicKey) -> type[HTTPSignatureAlgorithm] | None:
    """The algorithm named by `alg`, else the one the key implies (as Mastodon and Misskey do)."""
    if alg is None:
        if isinstance(key.key, RSAPublicKey):
            return algorithms.RSA_V1_5_SHA256
        return algorithms.ED25519
    chosen = _ALGORITHMS[alg]
    wants_rsa = chosen is not algorithms.ED25519
    return chosen if isinstance(key.key, RSAPublicKey) == wants_rsa else None


def _only_label(headers: Mapping[str, str], label: str, inputs: dict, signatures: dict) -> _Fields:
    """The headers with just one signature left, so the library need not choose between them."""
    pairs = [(k, v) for k, v in headers.items() if k.lower() not in _SIGNATURE_FIELDS]
    pairs.append(("Signature-Input", http_sf.ser({label: inputs[label]})))
    pairs.append(("Signature", http_sf.ser({label: signatures[label]})))
    return _Fields(pairs)


def _checker(
    method: str, urls: list[str], fields: Any, alg: str | None, key_id: str
) -> Callable[[PublicKey], str | None]:
    def check(key: PublicKey) -> str | None:
        algorithm = _algorithm_for(alg, key)
        if algorithm is None:
            return f"algorithm {alg} does not match key {key_id}"
        verifier = _Verifier(
            signature_algorithm=algorithm,
            key_resolver=MappingKeyResolver(public_keys={key_id: key.key}, private_keys={}),
        )
        for url in urls:
            try:
                verifier.verify(_Message(method, url, fields), max_age=None)
            except HTTPMessageSignaturesException as exc:
                if not isinstance(exc.__cause__, CryptoInvalidSignature):
                    raise SignatureError(f"cannot verify: {str(exc)[:200]}") from None
                continue
            return None
        return f"signature does not verify with key {key_id}"

    return check


@dataclass(frozen=True)
class _Input:
    """The signature we verify: its label, covered component names and parameters."""

    label: str
    names: list[str]
    params: dict[str, Any]
    several: bool  # other signatures came along; the library must be shown only this one


def _select(inputs: dict[str, Any], signatures: dict[str, Any]) -> _Input:
    """Take the first signature of Signature-Input and check its parameters' shapes."""
    if not inputs:
        raise SignatureError("Signature-Input is empty")
    label, (components, params) = next(iter(inputs.items()))
    signature = signatures.get(label)
    if not isinstance(components, list) or signature is None or not isinstance(signature[0], bytes):
        raise SignatureError(f"no valid signature labelled `{label}`")
    key_id = params.get("keyid")
    if not isinstance(key_id, str) or not key_id:
        raise SignatureError("Signature-Input has no keyid")
    check_key_id(key_id)
    alg = params.get("alg")
    if alg is not None and alg not in _ALGORITHMS:
        raise SignatureError(f"unsupported algorithm {str(alg)[:40]}")
    names = [name for name, _params in components]
    return _Input(label, names, params, len(inputs) > 1 or len(signatures) > 1)


def _signing_time(params: dict[str, Any], now: float, max_age: float, clock_skew: float) -> int:
    created = params.get("created")
    if type(created) is not int:
        raise SignatureError("signature has no `created` time")
    check_window("`created`", created, now, max_age, clock_skew)
    expires = params.get("expires")
    if expires is not None:
        if type(expires) is not int:
            raise SignatureError("`expires` is not an integer")
        check_expires("`expires`", expires, now)
    return created


def _target_uris(get: HeaderGetter, target: str, names: list[str]) -> list[str]:
    """The URLs the sender may have signed as @target-uri.

    nginx terminates TLS and speaks plain http to us, so the request as received says
    http while the sender signed the https URL it requested (Mastodon and Fedify sign the
    URL they fetch). Try https first, and http only when the scheme is signed at all.
    """
    host = get("host")
    if not host:
        raise SignatureError("no Host header")
    urls = [f"https://{host}{target}"]
    if "@target-uri" in names or "@scheme" in names:
        urls.append(f"http://{host}{target}")
    return urls


async def verify_rfc9421(
    method: str,
    target: str,
    headers: Mapping[str, str],
    get: HeaderGetter,
    body: bytes,
    keys: KeyResolver,
    *,
    now: float,
    max_age: float,
    clock_skew: float,
) -> Verified:
    """Verify the first signature in Signature-Input; cheap checks come before the key fetch."""
    inputs = _parse_dictionary(get("signature-input") or "", "Signature-Input")
    signatures = _parse_dictionary(get("signature") or "", "Signature")
    chosen = _select(inputs, signatures)
    _check_coverage(chosen.names, needs_digest=bool(body), has_query="?" in target)
    created = _signing_time(chosen.params, now, max_age, clock_skew)
    digest = get("content-digest")
    if digest is not None:
        _check_content_digest(digest, body)
    elif body:
        raise SignatureError("no Content-Digest header")
    urls = _target_uris(get, target, chosen.names)

    fields: Any = headers
    if chosen.several:
        fields = _only_label(headers, chosen.label, inputs, signatures)
    key_id = chosen.params["keyid"]
    check = _checker(method.upper(), urls, fields, chosen.params.get("alg"), key_id)
    key = await verify_with_key(keys, key_id, check)
    return Verified(scheme="rfc9421", key_id=key_id, signer=key.owner, created=float(created))


def sign_rfc9421(
    method: str,
    url: str,
    body: bytes,
    private_key: RSAPrivateKey | Ed25519PrivateKey,
    key_id: str,
    *,
    headers: Mapping[str, str] | None = None,
    created: float | None = None,
    expires: float | None = None,
) -> dict[str, str]:
    """Sign a request as Fedify does; return the headers to send.

    Covers @method, @target-uri, date, content-digest (unless a bodiless GET/HEAD) and any
    `headers` given, which are passed through. RSA keys sign rsa-v1_5-sha256.
    """
    if isinstance(private_key, RSAPrivateKey):
        algorithm: type[HTTPSignatureAlgorithm] = algorithms.RSA_V1_5_SHA256
    elif isinstance(private_key, Ed25519PrivateKey):
        algorithm = algorithms.ED25519
    else:
        raise ValueError(f"cannot sign with a {type(private_key).__name__}")
    when = time.time() if created is None else created
    out = {"Host": urlsplit(url).netloc, "Date": formatdate(when, usegmt=True)}
    add_headers(out, headers)
    covered = ["@method", "@target-uri", *(k.lower() for k in out if k.lower() != "host")]
    signer = HTTPMessageSigner(
        signature_algorithm=algorithm,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: private_key}),
    )
    signer.sign(
        _Message(method.upper(), url, out),
        key_id=key_id,
        created=datetime.fromtimestamp(when, UTC),
        expires=None if expires is None else datetime.fromtimestamp(expires, UTC),
        label="sig1",
        covered_component_ids=covered,
        body=body if body or method.upper() not in ("GET", "HEAD") else None,
        use_existing_digest=any(k.lower() == "content-digest" for k in out),
    )
    return out
