"""A peer's moderation receipt about a benign picture, as another Sluice would issue it
(unsigned: the caller signs it, or tampers with it first)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from relay.actor import Actor
from relay.media.hashes import hash_media
from relay.receipt import ContentHash, Receipt, content_hashes, context_url, timestamp


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
