"""What the signature tests share: Alice, keys to sign with, key resolvers, a fake origin.

The key fixtures are named ``*_fixture`` and registered under the short names; a test
module imports them (``# noqa: F401``) and gets its own keys, generated once per module.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from relay.errors import FetchError, KeyFetchError
from relay.signature import PublicKey
from tests.conftest import public_pem

ALICE = "https://a.example/users/alice"
KEY_ID = f"{ALICE}#main-key"
INBOX = "https://relay.example/inbox"
BODY = b'{"type":"Create","actor":"https://a.example/users/alice"}'


@pytest.fixture(scope="module", name="rsa_key")
def rsa_key_fixture() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module", name="rsa_key2")
def rsa_key2_fixture() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module", name="ed_key")
def ed_key_fixture() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


class Keys:
    """A KeyResolver over fixed keys that records how it was asked."""

    def __init__(self, *keys: PublicKey) -> None:
        self.keys = {k.id: k for k in keys}
        self.calls: list[tuple[str, bool]] = []

    async def resolve(self, key_id: str, *, refresh: bool = False) -> PublicKey:
        self.calls.append((key_id, refresh))
        if key_id not in self.keys:
            raise KeyFetchError(f"no key {key_id}")
        return self.keys[key_id]


def one_key(key: Any, key_id: str = KEY_ID, owner: str = ALICE) -> Keys:
    """A resolver that knows one public key, Alice's main key unless told otherwise."""
    return Keys(PublicKey(id=key_id, owner=owner, key=key))


class Origin:
    """A fake remote server: documents by URL, an int stands for an HTTP error status."""

    def __init__(self, docs: dict[str, Any] | None = None) -> None:
        self.docs: dict[str, Any] = docs or {}
        self.fetches: list[str] = []

    async def fetch_json(self, url: str) -> dict:
        self.fetches.append(url)
        await asyncio.sleep(0)  # let concurrent resolvers pile up
        doc = self.docs.get(url, 404)
        if isinstance(doc, int):
            raise FetchError(f"{url} answered {doc}", status=doc)
        return copy.deepcopy(doc)


def actor_doc(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> dict[str, Any]:
    """Alice's actor document, with ``key`` as her main key."""
    return {
        "id": ALICE,
        "type": "Person",
        "publicKey": {"id": KEY_ID, "owner": ALICE, "publicKeyPem": public_pem(key)},
    }
