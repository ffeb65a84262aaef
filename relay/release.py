"""Releasing a quarantined activity a moderator found to be a false positive.

A quarantined row keeps only a pointer to its evidence: its body, headers and
sender address were cleared when the evidence was recorded. Releasing reads them
back from the evidence on the record (the audit log names the moderator and the
reason), restores them on the row and queues it, so it is delivered as usual,
byte for byte under the sender's signature. If that signature has expired
meanwhile, the instance refuses it and the row ends ``refused``, recorded like any
other refusal. The evidence stays, and so does the row's pointer to it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from relay.errors import SluiceError
from relay.evidence import EvidenceError, EvidenceStore
from relay.state import State
from relay.store.activities import ActivityStore

__all__ = ["ReleaseError", "release"]


class ReleaseError(SluiceError):
    """The release was not done; ``kind`` says why: ``missing`` (no such row),
    ``conflict`` (not quarantined, or its evidence cannot give the activity back),
    ``evidence`` (the evidence could not be read)."""

    def __init__(self, message: str, kind: Literal["missing", "conflict", "evidence"]) -> None:
        super().__init__(message)
        self.kind = kind


async def release(
    store: ActivityStore,
    evidence: EvidenceStore | None,
    row: int,
    *,
    moderator: str,
    reason: str,
) -> str:
    """Queue quarantined row ``row`` for delivery again; the new state (``queued``).

    ``moderator`` and ``reason`` are required: they go into the evidence's audit log
    (reading it) and the row's verdict. Raises ReleaseError.
    """
    if not moderator.strip() or not reason.strip():
        raise ReleaseError("a release needs a moderator and a reason", "conflict")
    record = await store.get(row)
    if record is None:
        raise ReleaseError(f"no activity row {row}", "missing")
    if record["state"] != State.QUARANTINED or record.get("evidence_id") is None:
        raise ReleaseError(
            f"row {row} is {record['state']}, not quarantined with evidence: nothing to release",
            "conflict",
        )
    evidence_id = int(record["evidence_id"])
    if evidence is None:
        raise ReleaseError(
            "no evidence store: set [evidence] key_file to read what a release needs", "evidence"
        )
    try:
        kept = await evidence.read_facts(
            evidence_id, who=moderator, why=reason, what=f"release activity row {row}"
        )
    except EvidenceError as exc:
        raise ReleaseError(f"cannot release row {row}: {exc}", "evidence") from exc
    facts = kept.facts
    try:
        body = base64.b64decode(facts["body_base64"], validate=True)
        headers = [(str(name), str(value)) for name, value in facts["headers"]]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ReleaseError(
            f"evidence {evidence_id} does not keep row {row}'s exact body and headers "
            "(sealed before releases were possible): it cannot be delivered as sent",
            "conflict",
        ) from exc
    state = await store.release_quarantined(
        row,
        evidence_id=evidence_id,
        body=body,
        headers=headers,
        remote=facts.get("remote"),
        moderator=moderator,
        reason=reason,
    )
    if state is None:
        raise ReleaseError(f"row {row} left quarantine meanwhile", "conflict")
    return state
