"""What the receipts tests share: a Sluice with its own actor on loopback, a bank that
lists a benign photo (quarantined), and a peer's receipt about a benign picture."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.actor import Actor
from relay.banks import BankStore
from relay.evidence import EvidenceKey
from relay.media.hashes import hash_media
from relay.receipt import ContentHash, Receipt, content_hashes, context_url, timestamp
from tests.conftest import Running, free_port, wait_for

#: A bank listing the bridge photo (category test) and the rule that quarantines it.
BRIDGE_BANK = {
    "bank": [{"name": "test-known", "category": "test"}],
    "rule": [{"match": "category:test", "action": "quarantine"}],
}


async def speaking_sluice(
    tmp_path: Path, sluice_factory: Callable[..., Awaitable[Running]], **sections: Any
) -> tuple[Running, str]:
    """Sluice with its actor at http://127.0.0.1:PORT (the port it listens on), an
    evidence key, receipts under EU law unless ``sections`` say otherwise, and a quick
    outbox; its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    key = tmp_path / f"evidence-{port}.key"
    EvidenceKey.generate(key)
    sections.setdefault("receipts", {"jurisdictions": ["EU"]})
    sluice = await sluice_factory(
        port=port,
        actor={"base_url": base},
        evidence={"key_file": str(key)},
        outbox={"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2},
        **sections,
    )
    return sluice, base


async def bank_the_picture(sluice: Running, picture: bytes, *, pdq: bool = True) -> None:
    """``picture``'s MD5 (and PDQ) into BRIDGE_BANK's bank, loaded by Sluice."""
    store = BankStore(sluice.parts.pool)
    await store.ensure("test-known", category="test")
    hashes = hash_media(picture)
    entries = [("md5", hashes.md5, "bridge")]
    if pdq:
        entries.append(("pdq", hashes.pdq[0].hash, "bridge"))
    await store.add("test-known", entries)
    await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)


def peer_receipt(peer: Actor, number: int, about: str, picture: bytes) -> dict[str, Any]:
    """Receipt ``number`` of ``peer`` about the object ``about``: a fully automated
    terms-of-service removal (Sluice's "unwanted") listing ``picture``'s three hashes."""
    found = hash_media(picture)
    hashes = {"sha256": found.sha256, "md5": found.md5, "pdq": found.pdq[0].hash}
    return Receipt(
        id=f"{peer.receipts}/{number}",
        actor=peer.id,
        object=(about,),
        published=timestamp(datetime.now(UTC)),
        jurisdiction=("EU",),
        category="STATEMENT_CATEGORY_OTHER_VIOLATION_TC",
        category_specification=(),
        decision_ground="DECISION_GROUND_INCOMPATIBLE_CONTENT",
        legal_ground="The instance's terms of service",
        automated_detection=True,
        automated_decision="AUTOMATED_DECISION_FULLY",
        content_hash=tuple(ContentHash(**h) for h in content_hashes(hashes)),
        should_propagate=True,
        context=context_url(peer.base_url),
    ).to_json()
