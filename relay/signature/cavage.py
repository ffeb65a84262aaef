"""HTTP signatures as draft-cavage-http-signatures-12 defines and Mastodon speaks them.

    Signature: keyId="https://a.example/users/alice#main-key",algorithm="rsa-sha256",
               headers="(request-target) host date digest",signature="base64..."

This is the path every delivery takes, so it stays lean: one precompiled pattern, a
cached Date parse, and the RSA verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate, mktime_tz, parsedate_tz
from functools import lru_cache
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from relay.errors import SignatureError
from relay.signature.keys import KeyResolver, PublicKey, Verified, verify_with_key

__all__ = [
    "HeaderGetter",
    "add_headers",
    "check_expires",
    "check_key_id",
    "check_window",
    "header_getter",
    "parse_signature",
    "sign_cavage",
    "verify_cavage",
]

HeaderGetter = Callable[[str], str | None]

# One `name="value"` or `name=123` parameter and the comma after it; spaces tolerated.
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"([^"]*)"|([^\s",]*))\s*(?:,|$)')
_RSA_NAMES = frozenset({"rsa-sha256"})
# hs2019 means "look at the key": Mastodon verifies it as rsa-sha256 for RSA keys.
_KEYED_NAMES = frozenset({"hs2019", ""})
_ED25519_NAMES = frozenset({"ed25519"})
_KNOWN_NAMES = _RSA_NAMES | _KEYED_NAMES | _ED25519_NAMES
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


def header_getter(headers: Mapping[str, str]) -> HeaderGetter:
    """Case-insensitive lookup that joins repeated headers with ", " (draft-cavage 2.3)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:  # aiohttp's CIMultiDictProxy keeps every instance

        def get(name: str) -> str | None:
            values = getall(name, None)
            if not values:
                return None
            if len(values) == 1:
                return values[0].strip()
            return ", ".join(v.strip() for v in values)

        return get
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    return lowered.get


def add_headers(out: dict[str, str], headers: Mapping[str, str] | None) -> None:
    """Add the caller's headers to those a signer made, each replacing ours of any case."""
    for name, value in (headers or {}).items():
        for existing in [k for k in out if k.lower() == name.lower()]:
            del out[existing]
        out[name] = value


def parse_signature(value: str) -> dict[str, str]:
    """Parse the parameters of a Signature header (or an Authorization: Signature value)."""
    if value[:10].lower() == "signature ":
        value = value[10:]
    params: dict[str, str] = {}
    pos, end = 0, len(value)
    while pos < end:
        match = _PARAM.match(value, pos)
        if match is None or match.end() == pos:
            raise SignatureError("malformed Signature header")
        name = match.group(1).lower()
        if name in params:
            raise SignatureError(f"Signature header repeats `{name}`")
        params[name] = match.group(2) if match.group(2) is not None else match.group(3)
        pos = match.end()
    return params


def _span(seconds: float) -> str:
    """A duration for people: '13 hours', '1.5 hours', '40 minutes', '12 seconds'."""
    if seconds >= 3600:
        amount, unit = round(seconds / 3600, 1), "hour"
    elif seconds >= 60:
        amount, unit = round(seconds / 60, 1), "minute"
    else:
        amount, unit = round(seconds), "second"
    text = f"{amount:g}"
    return f"{text} {unit}" if text == "1" else f"{text} {unit}s"


def _limit(seconds: float) -> str:
    for size, unit in ((3600, "h"), (60, "m")):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def check_window(what: str, when: float, now: float, max_age: float, clock_skew: float) -> None:
    """Refuse a signing time too far in the past (replay) or in the future (bad clock)."""
    age = now - when
    if age > max_age:
        raise SignatureError(f"{what} is {_span(age)} old (limit {_limit(max_age)})")
    if -age > clock_skew:
        raise SignatureError(f"{what} is {_span(-age)} in the future (limit {_limit(clock_skew)})")


def check_key_id(key_id: str) -> None:
    """Refuse a key id that no URL parser takes ("https://[") before anyone fetches it."""
    try:
        urlsplit(key_id).hostname  # noqa: B018  (parsing is the check)
    except ValueError:
        raise SignatureError(f"key id {key_id[:200]!r} is not a URL") from None


def check_expires(what: str, expires: float, now: float) -> None:
    if expires < now:
        raise SignatureError(f"signature expired {_span(now - expires)} ago ({what})")


@lru_cache(maxsize=256)
def _parse_date(value: str) -> float | None:
    """Parse an HTTP Date; cached because every delivery in the same second repeats it."""
    parts = parsedate_tz(value)
    if parts is None:
        return None
    if parts[9] is None:
        parts = (*parts[:9], 0)
    try:
        return float(mktime_tz(parts))
    except (ValueError, OverflowError):  # a year past 9999 parses, then cannot be a time
        return None


def _number_param(params: Mapping[str, str], name: str) -> float:
    value = params.get(name)
    if value is None:
        raise SignatureError(f"signature covers `({name})` but has no `{name}`")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):  # "nan" would pass every comparison with the clock
        raise SignatureError(f"`{name}` is not a number")
    return number


def _check_coverage(covered: list[str], needs_digest: bool) -> None:
    """Mastodon's minimum, plus (request-target) and host so nothing can be replayed elsewhere."""
    for name in ("(request-target)", "host"):
        if name not in covered:
            raise SignatureError(f"signature does not cover `{name}`")
    if "date" not in covered and "(created)" not in covered:
        raise SignatureError("signature does not cover `date` or `(created)`")
    if needs_digest and "digest" not in covered:
        raise SignatureError("signature does not cover `digest`")


def _check_digest(header: str, body: bytes) -> None:
    """Check a Digest header (RFC 3230): every SHA-256/SHA-512 value it lists must match."""
    checked = False
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        algorithm = _DIGESTS.get(name.strip().lower())
        if algorithm is None:
            continue
        try:
            claimed = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            raise SignatureError("Digest is not valid base64") from None
        if not hmac.compare_digest(claimed, algorithm(body).digest()):
            raise SignatureError("Digest does not match the body")
        checked = True
    if not checked:
        raise SignatureError("Digest has no SHA-256 or SHA-512 value")


def _signing_string(
    covered: list[str], method: str, target: str, get: HeaderGetter, params: Mapping[str, str]
) -> bytes:
    lines = []
    for name in covered:
        value: str | None
        if name == "(request-target)":
            value = f"{method.lower()} {target}"
        elif name in ("(created)", "(expires)"):
            value = params.get(name[1:-1])
            if value is None:
                raise SignatureError(f"signature covers `{name}` but has no `{name[1:-1]}`")
        else:
            value = get(name)
            if value is None:
                raise SignatureError(f"signed header `{name}` is missing")
        lines.append(f"{name}: {value}")
    try:
        return "\n".join(lines).encode("utf-8")
    except UnicodeEncodeError:  # aiohttp keeps bytes that are no UTF-8 as surrogates
        raise SignatureError("a signed header or the target is not UTF-8 text") from None


def _checker(
    algorithm: str, message: bytes, signature: bytes, key_id: str
) -> Callable[[PublicKey], str | None]:
    def check(key: PublicKey) -> str | None:
        public = key.key
        try:
            if isinstance(public, RSAPublicKey) and algorithm not in _ED25519_NAMES:
                public.verify(signature, message, _PKCS1, _SHA256)
            elif isinstance(public, Ed25519PublicKey) and algorithm not in _RSA_NAMES:
                public.verify(signature, message)
            else:
                return f"algorithm {algorithm} does not match key {key_id}"
        except InvalidSignature:
            return f"signature does not verify with key {key_id}"
        return None

    return check


def _header_params(get: HeaderGetter) -> dict[str, str]:
    """The Signature header's parameters, from Signature or Authorization: Signature."""
    header = get("signature")
    if header is None:
        header = get("authorization") or ""
        if header[:10].lower() != "signature ":
            raise SignatureError("no Signature header")
    params = parse_signature(header)
    if not params.get("keyid"):
        raise SignatureError("Signature has no keyId")
    check_key_id(params["keyid"])
    if not params.get("signature"):
        raise SignatureError("Signature has no signature value")
    return params


def _signing_time(
    params: Mapping[str, str],
    covered: list[str],
    get: HeaderGetter,
    now: float,
    max_age: float,
    clock_skew: float,
) -> float:
    """Check (created), (expires) and Date against the window; return when it was signed."""
    created = None
    if "(created)" in covered or "created" in params:
        created = _number_param(params, "created")
        check_window("`created`", created, now, max_age, clock_skew)
    if "(expires)" in covered or "expires" in params:
        check_expires("`expires`", _number_param(params, "expires"), now)
    if "date" in covered:
        date = _parse_date(get("date") or "")
        if date is None:
            raise SignatureError("Date is missing or not an HTTP date")
        check_window("Date", date, now, max_age, clock_skew)
        created = date if created is None else created
    assert created is not None  # _check_coverage demands date or (created)
    return created


async def verify_cavage(
    method: str,
    target: str,
    get: HeaderGetter,
    body: bytes,
    keys: KeyResolver,
    *,
    now: float,
    max_age: float,
    clock_skew: float,
) -> Verified:
    """Verify a draft-cavage Signature; the cheap checks run before any key is fetched."""
    params = _header_params(get)
    algorithm = params.get("algorithm", "").lower()
    if algorithm not in _KNOWN_NAMES:
        raise SignatureError(f"unsupported algorithm {algorithm[:40]}")
    covered = params.get("headers", "date").lower().split()
    _check_coverage(covered, needs_digest=bool(body))
    created = _signing_time(params, covered, get, now, max_age, clock_skew)

    digest = get("digest")
    if digest is not None:
        _check_digest(digest, body)
    elif body:
        raise SignatureError("no Digest header")

    try:
        signature = base64.b64decode(params["signature"], validate=True)
    except ValueError:
        raise SignatureError("signature is not valid base64") from None
    message = _signing_string(covered, method, target, get, params)
    key_id = params["keyid"]
    key = await verify_with_key(keys, key_id, _checker(algorithm, message, signature, key_id))
    return Verified(scheme="cavage", key_id=key_id, signer=key.owner, created=created)


def sign_cavage(
    method: str,
    url: str,
    body: bytes,
    private_key: RSAPrivateKey | Ed25519PrivateKey,
    key_id: str,
    *,
    headers: Mapping[str, str] | None = None,
    algorithm: str = "rsa-sha256",
    now: float | None = None,
) -> dict[str, str]:
    """Sign a request the way Mastodon does; return the headers to send.

    Covers (request-target), host, date, digest (unless a bodiless GET/HEAD) and any
    `headers` given, which are passed through (Content-Type, Accept).
    """
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    date = formatdate(time.time() if now is None else now, usegmt=True)
    out = {"Host": parts.netloc, "Date": date}
    if body or method.upper() not in ("GET", "HEAD"):
        out["Digest"] = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
    add_headers(out, headers)
    covered = ["(request-target)", *(k.lower() for k in out)]
    message = _signing_string(covered, method, target, header_getter(out), {})
    if isinstance(private_key, RSAPrivateKey) and algorithm.lower() not in _ED25519_NAMES:
        signature = private_key.sign(message, _PKCS1, _SHA256)
    elif isinstance(private_key, Ed25519PrivateKey) and algorithm.lower() not in _RSA_NAMES:
        signature = private_key.sign(message)
    else:
        raise ValueError(f"algorithm {algorithm} does not fit a {type(private_key).__name__}")
    out["Signature"] = (
        f'keyId="{key_id}",algorithm="{algorithm}",headers="{" ".join(covered)}",'
        f'signature="{base64.b64encode(signature).decode()}"'
    )
    return out
