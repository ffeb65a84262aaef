"""Sluice's own ActivityPub actor: who it is, what it publishes, and how it signs.

A ``Service`` (Lemmy refuses Flags from an ``Application``), fetchable without a
signature as Mastodon's instance actor is, so servers in authorized-fetch mode can
still fetch the key that verifies Sluice's own signed fetches.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yarl

from relay.actor.keys import ActorKeys, load_keys, multibase_ed25519, public_pem
from relay.errors import SluiceError
from relay.network import FetchSigner
from relay.signature import sign_cavage, sign_proof

if TYPE_CHECKING:
    from relay.config import Config

__all__ = ["ACTOR_CONTEXT", "Actor", "ActorError", "parse_base_url"]

ACTOR_CONTEXT: list[Any] = [
    "https://www.w3.org/ns/activitystreams",
    "https://w3id.org/security/v1",
    "https://w3id.org/security/data-integrity/v1",
    "https://w3id.org/security/multikey/v1",
    "https://purl.archive.org/socialweb/webfinger",  # FEP-2c59
    "https://w3id.org/fep/bc20",  # moderation receipts: defines ``receipts``
    {
        "manuallyApprovesFollowers": "as:manuallyApprovesFollowers",
        "toot": "http://joinmastodon.org/ns#",
        "discoverable": "toot:discoverable",
        "assertionMethod": {
            "@id": "https://w3id.org/security#assertionMethod",
            "@type": "@id",
            "@container": "@set",
        },
    },
]

_SUMMARY = (
    "Sluice, an ActivityPub filtering relay: it checks what arrives for this server "
    "against hash lists and rules, and says what it removed and why."
)


class ActorError(SluiceError):
    """The actor cannot be set up as configured; the message says what to fix."""


def parse_base_url(base_url: str) -> yarl.URL:
    """``base_url`` as an absolute http(s) URL without a trailing slash; ActorError if not."""
    try:
        url = yarl.URL(base_url.strip())
    except (TypeError, ValueError):
        raise ActorError(f"[actor] base_url {base_url!r} is not a URL") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise ActorError(f"[actor] base_url {base_url!r} must be an absolute https URL")
    if url.query_string or url.fragment or url.user:
        raise ActorError(f"[actor] base_url {base_url!r} must have no query, fragment or user name")
    return url.with_path(url.path.rstrip("/"))


class Actor:
    """Sluice's actor at ``base_url``: its ids, its document, its signatures."""

    def __init__(
        self,
        base_url: str,
        keys: ActorKeys,
        *,
        name: str = "sluice",
        manually_approves_followers: bool = False,
        key_dir: Path | None = None,
        extra_context: Sequence[str | Mapping[str, Any]] = (),
    ) -> None:
        url = parse_base_url(base_url)
        self.base_url = str(url).rstrip("/")
        self.prefix = url.path.rstrip("/")  # "" or "/sluice": where the routes live
        self.host = url.host if url.is_default_port() else f"{url.host}:{url.port}"
        self.name = name
        self.manually_approves_followers = manually_approves_followers
        self.key_dir = key_dir
        self.keys = keys
        # Terms of later extensions, after the actor's own contexts.
        self.context = [*ACTOR_CONTEXT, *extra_context]
        self.id = f"{self.base_url}/actor"
        self.inbox = f"{self.base_url}/inbox"
        self.outbox = f"{self.base_url}/outbox"
        self.followers = f"{self.base_url}/followers"
        self.receipts = f"{self.base_url}/receipts"

    @classmethod
    def load(
        cls,
        base_url: str | None,
        name: str = "sluice",
        key_dir: Path | None = None,
        *,
        data_dir: Path | None = None,
        manually_approves_followers: bool = False,
        extra_context: Sequence[str | Mapping[str, Any]] = (),
    ) -> Actor | None:
        """The actor, its keys made under ``key_dir`` (default ``data_dir``/actor) on first
        start; None when ``base_url`` is None or empty (no actor, no routes)."""
        if not base_url:
            return None
        if key_dir is None:
            if data_dir is None:
                raise ActorError("[actor] key_dir is not set and there is no data directory")
            key_dir = data_dir / "actor"
        return cls(
            base_url,
            load_keys(key_dir),
            name=name,
            manually_approves_followers=manually_approves_followers,
            key_dir=key_dir,
            extra_context=extra_context,
        )

    @classmethod
    def configured(cls, config: Config) -> Actor | None:
        """The actor as ``[actor]`` and ``[storage] data_dir`` set it up, or None."""
        section = config.actor
        return cls.load(
            section.base_url,
            section.name,
            section.key_dir,
            data_dir=config.storage.data_dir,
        )

    @property
    def key_id(self) -> str:
        """The id of the RSA key that signs requests now."""
        return f"{self.id}#{self.keys.rsa_fragment}"

    @property
    def ed25519_key_id(self) -> str:
        """The id of the Ed25519 key that signs objects now."""
        return f"{self.id}#{self.keys.ed25519_fragment}"

    @property
    def handle(self) -> str:
        """The WebFinger handle, ``NAME@HOST``."""
        return f"{self.name}@{self.host}"

    def owns(self, url: str) -> bool:
        """Is ``url`` on this actor's own origin? Sluice never signs requests to itself."""
        try:
            other = yarl.URL(url)
        except (TypeError, ValueError):
            return False
        mine = yarl.URL(self.base_url)
        return (other.scheme, other.host, other.port) == (mine.scheme, mine.host, mine.port)

    def sign_request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> dict[str, str]:
        """The headers to send: the caller's plus Date, Host, Digest and a draft-cavage
        rsa-sha256 Signature by the actor's current key."""
        return sign_cavage(method, url, body or b"", self.keys.rsa, self.key_id, headers=headers)

    def fetch_signer(self, **kwargs: Any) -> FetchSigner:
        """What signs Sluice's GETs as this actor (never to its own host); ``kwargs`` go to
        ``relay.network.FetchSigner`` (``remember_seconds``, ``max_hosts``)."""
        return FetchSigner(self.sign_request, own=self.owns, **kwargs)

    def sign_object(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``document`` with a FEP-8b32 eddsa-jcs-2022 proof by the Ed25519 key."""
        return sign_proof(document, self.keys.ed25519, self.ed25519_key_id)

    def document(self, now: float | None = None) -> dict[str, Any]:
        """The actor document; retired keys stay listed at their old ids until they expire."""
        moment = time.time() if now is None else now
        main = {"id": self.key_id, "owner": self.id, "publicKeyPem": public_pem(self.keys.rsa)}
        ed_key = {
            "id": self.ed25519_key_id,
            "type": "Multikey",
            "controller": self.id,
            "publicKeyMultibase": multibase_ed25519(self.keys.ed25519.public_key()),
        }
        rsa_keys: list[dict[str, Any]] = [main]
        ed_keys: list[dict[str, Any]] = [ed_key]
        for old in self.keys.published(moment):
            old_id = f"{self.id}#{old.fragment}"
            if old.kind == "rsa":
                rsa_keys.append({"id": old_id, "owner": self.id, "publicKeyPem": old.public_pem})
            elif old.kind == "ed25519":
                ed_keys.append(
                    {
                        "id": old_id,
                        "type": "Multikey",
                        "controller": self.id,
                        "publicKeyMultibase": _multibase_from_pem(old.public_pem),
                    }
                )
        return {
            "@context": self.context,
            "id": self.id,
            "type": "Service",
            "preferredUsername": self.name,
            "name": "Sluice",
            "summary": _SUMMARY,
            "webfinger": self.handle,
            "inbox": self.inbox,
            "outbox": self.outbox,
            "followers": self.followers,
            "receipts": self.receipts,
            "endpoints": {"sharedInbox": self.inbox},
            "url": self.id,
            "manuallyApprovesFollowers": self.manually_approves_followers,
            "discoverable": False,
            # The current key first: Mastodon reads only the first of a list.
            "publicKey": main if len(rsa_keys) == 1 else rsa_keys,
            "assertionMethod": ed_keys,
        }


def _multibase_from_pem(pem: str) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    return multibase_ed25519(key)
