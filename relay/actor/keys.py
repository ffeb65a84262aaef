"""Sluice's own signing keys: made once, kept private, rotated without breaking peers.

An RSA key signs HTTP requests (what every fediverse server verifies) and an Ed25519
key signs objects (FEP-8b32 proofs by a FEP-521a Multikey). Whoever holds them speaks
as Sluice, so they live as PEM files under the key directory, mode 0600 in a 0700
directory, each written whole or not at all; a key file others may read is refused,
as ssh refuses one.

``keys.json`` in the same directory is the one commit point: it names the current key
files and their key id fragments, and the retired public keys with the time they stop
being published. A rotation writes the new keys under new file names first and then
replaces ``keys.json``, so a process killed at any step leaves either the old keys or
the new ones in force, never half of each. New keys get new ids: a peer that cached
the old key under its id, or verifies a proof made before the rotation, still finds
the old key at that id until the keep period ends.
"""

from __future__ import annotations

import json
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from relay.errors import SluiceError
from relay.outbound.ca import _write_atomically
from relay.signature.proof import b58encode

__all__ = [
    "ED25519_FRAGMENT",
    "RSA_FRAGMENT",
    "ActorKeyError",
    "ActorKeys",
    "Retired",
    "load_keys",
    "multibase_ed25519",
    "public_pem",
    "rotate_keys",
]

RSA_FRAGMENT = "main-key"
ED25519_FRAGMENT = "ed25519-key"
_INDEX = "keys.json"
_RSA_BITS = 3072
_ED25519_MULTICODEC = b"\xed\x01"


class ActorKeyError(SluiceError):
    """A key file is unreadable, exposed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Retired:
    """An old public key, still published at its old id until ``until`` (epoch seconds)."""

    fragment: str
    kind: str  # "rsa" or "ed25519"
    public_pem: str
    until: float

    def to_json(self) -> dict[str, Any]:
        return {
            "fragment": self.fragment,
            "kind": self.kind,
            "publicKeyPem": self.public_pem,
            "until": self.until,
        }


@dataclass(frozen=True)
class ActorKeys:
    """The keys in force, with the fragments of their ids, and the retired public keys."""

    rsa: rsa.RSAPrivateKey
    ed25519: ed25519.Ed25519PrivateKey
    rsa_fragment: str = RSA_FRAGMENT
    ed25519_fragment: str = ED25519_FRAGMENT
    retired: tuple[Retired, ...] = ()

    def published(self, now: float | None = None) -> tuple[Retired, ...]:
        """The retired keys whose keep period has not ended."""
        moment = time.time() if now is None else now
        return tuple(r for r in self.retired if r.until > moment)


def public_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def multibase_ed25519(key: ed25519.Ed25519PublicKey) -> str:
    """FEP-521a publicKeyMultibase: base58btc of the multicodec 0xed01 and the raw key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "z" + b58encode(_ED25519_MULTICODEC + raw)


def _private_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read_private(path: Path) -> Any:
    """The private key in ``path``, refused when others may read the file."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ActorKeyError(
                f"{path} is mode {oct(stat.S_IMODE(mode))}: a private key must not be readable "
                f"by group or others (chmod 600 {path})"
            )
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ActorKeyError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ActorKeyError(f"{path} is not a PEM private key") from exc


def _make_dir(key_dir: Path) -> None:
    try:
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ActorKeyError(f"cannot create {key_dir}: {exc.strerror or exc}") from exc


def _write_keys(
    key_dir: Path, stamp: str, rsa_fragment: str, ed_fragment: str, retired: tuple[Retired, ...]
) -> ActorKeys:
    """Make a key pair under new file names, then commit them by writing the index."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_file, ed_file = f"rsa-{stamp}.pem", f"ed25519-{stamp}.pem"
    _write_atomically(key_dir / rsa_file, _private_pem(rsa_key), 0o600)
    _write_atomically(key_dir / ed_file, _private_pem(ed_key), 0o600)
    index = {
        "rsa": {"file": rsa_file, "fragment": rsa_fragment},
        "ed25519": {"file": ed_file, "fragment": ed_fragment},
        "retired": [r.to_json() for r in retired],
    }
    _write_atomically(key_dir / _INDEX, json.dumps(index, indent=2).encode(), 0o600)
    return ActorKeys(rsa_key, ed_key, rsa_fragment, ed_fragment, retired)


def _read_index(key_dir: Path) -> dict[str, Any] | None:
    path = key_dir / _INDEX
    try:
        index = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ActorKeyError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ActorKeyError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(index, dict):
        raise ActorKeyError(f"{path} is not a JSON object")
    return index


def _entry(index: dict[str, Any], kind: str, path: Path) -> tuple[str, str]:
    entry = index.get(kind)
    if not isinstance(entry, dict):
        raise ActorKeyError(f"{path} names no {kind} key")
    file, fragment = entry.get("file"), entry.get("fragment")
    if not isinstance(file, str) or "/" in file or not isinstance(fragment, str):
        raise ActorKeyError(f"{path}: the {kind} entry needs a file name and a fragment")
    return file, fragment


def _retired(index: dict[str, Any], path: Path) -> tuple[Retired, ...]:
    found = []
    for entry in index.get("retired") or []:
        try:
            found.append(
                Retired(
                    fragment=str(entry["fragment"]),
                    kind=str(entry["kind"]),
                    public_pem=str(entry["publicKeyPem"]),
                    until=float(entry["until"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ActorKeyError(f"{path}: a retired key entry is malformed ({exc})") from exc
    return tuple(found)


def load_keys(key_dir: Path) -> ActorKeys:
    """The keys under ``key_dir``, made there on the first start."""
    index = _read_index(key_dir)
    if index is None:
        _make_dir(key_dir)
        return _write_keys(key_dir, _stamp(), RSA_FRAGMENT, ED25519_FRAGMENT, ())
    path = key_dir / _INDEX
    rsa_file, rsa_fragment = _entry(index, "rsa", path)
    ed_file, ed_fragment = _entry(index, "ed25519", path)
    rsa_key, ed_key = _read_private(key_dir / rsa_file), _read_private(key_dir / ed_file)
    if not isinstance(rsa_key, rsa.RSAPrivateKey):
        raise ActorKeyError(f"{key_dir / rsa_file} is not an RSA key")
    if not isinstance(ed_key, ed25519.Ed25519PrivateKey):
        raise ActorKeyError(f"{key_dir / ed_file} is not an Ed25519 key")
    _remove_orphans(key_dir, {rsa_file, ed_file})
    return ActorKeys(rsa_key, ed_key, rsa_fragment, ed_fragment, _retired(index, path))


def _remove_orphans(key_dir: Path, kept: set[str]) -> None:
    """Private keys no index names (a start or rotation killed before its commit, or the
    temporaries of a write killed midway): nothing may sign with them, so they go."""
    patterns = ("rsa-*.pem", "ed25519-*.pem", ".rsa-*", ".ed25519-*", f".{_INDEX}.*")
    for pattern in patterns:
        for path in key_dir.glob(pattern):
            if path.name not in kept:
                path.unlink(missing_ok=True)


def rotate_keys(key_dir: Path, *, keep_days: float = 7, now: float | None = None) -> ActorKeys:
    """Replace the keys in force; the old public keys stay published for ``keep_days``."""
    moment = time.time() if now is None else now
    old = load_keys(key_dir)
    until = moment + keep_days * 86400
    retired = (
        *old.published(moment),
        Retired(old.rsa_fragment, "rsa", public_pem(old.rsa), until),
        Retired(old.ed25519_fragment, "ed25519", public_pem(old.ed25519), until),
    )
    stamp = _stamp(moment)
    index = _read_index(key_dir) or {}
    new = _write_keys(
        key_dir, stamp, f"{RSA_FRAGMENT}-{stamp}", f"{ED25519_FRAGMENT}-{stamp}", retired
    )
    # The old private keys are no longer named by the index: nothing may sign with them.
    for kind in ("rsa", "ed25519"):
        file, _ = _entry(index, kind, key_dir / _INDEX)
        (key_dir / file).unlink(missing_ok=True)
    return new


def _stamp(moment: float | None = None) -> str:
    """A sortable, unique-enough name part for a key generation (UTC, to the microsecond)."""
    seconds = time.time() if moment is None else moment
    micros = int(seconds * 1_000_000) % 1_000_000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f"{micros:06d}Z"
