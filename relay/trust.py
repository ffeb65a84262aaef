"""Whose moderation receipts Sluice honours: the admin's ``[[trust]]`` entries.

A receipt is a peer's word that it removed something, and why. Honouring it puts the
receipt's hashes into that peer's own bank, so Sluice's rules act on the same media
from anywhere. The peer is the host of the receipt's actor, proven by the receipt's
proof (relay.receipt); nothing in the receipt can name another peer or another bank.

The judge is pure: an entry for the peer's own domain wins over ``"*"``, and the
entry must cover the receipt's category and one of its jurisdictions; a fully automated
decision needs ``automated = true``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.config.sluice import TrustConfig

__all__ = ["FULLY_AUTOMATED", "Judgement", "TrustRule", "bank_for", "is_peer_bank", "judge"]

#: The DSA's value for a decision no human took part in.
FULLY_AUTOMATED = "AUTOMATED_DECISION_FULLY"
_ANY = "*"
_PEER_BANK = re.compile(r"receipts:[a-z0-9.-]+(:[A-Za-z0-9_.-]+)?")


@dataclass(frozen=True, slots=True)
class TrustRule:
    """One ``[[trust]]`` entry."""

    peer: str  # a domain, or "*"
    categories: tuple[str, ...] = (_ANY,)
    jurisdictions: tuple[str, ...] = (_ANY,)
    automated: bool = False
    hashes: bool = True

    @classmethod
    def from_config(cls, entries: Iterable[TrustConfig]) -> tuple[TrustRule, ...]:
        """The configured entries, as rules."""
        return tuple(
            cls(e.peer.lower(), e.categories, e.jurisdictions, e.automated, e.hashes)
            for e in entries
        )


@dataclass(frozen=True, slots=True)
class Judgement:
    """Whether a receipt is honoured; ``reason`` says why not (or which entry took it)."""

    honoured: bool
    reason: str
    rule: TrustRule | None = None

    @property
    def hashes(self) -> bool:
        """Whether the receipt's hashes go into the peer's bank."""
        return self.honoured and self.rule is not None and self.rule.hashes


def judge(
    rules: Sequence[TrustRule],
    *,
    peer: str,
    category: str,
    jurisdictions: Sequence[str],
    automated_decision: str,
) -> Judgement:
    """The admin's decision about one verified receipt from ``peer`` (a host)."""
    peer = peer.lower()
    own = [r for r in rules if r.peer == peer]
    chosen = own or [r for r in rules if r.peer == _ANY]
    if not chosen:
        return Judgement(False, f"no [[trust]] entry covers {peer}")
    why = ""
    for rule in chosen:
        if _ANY not in rule.categories and category not in rule.categories:
            why = why or f"category {category} is not trusted from {peer}"
            continue
        if _ANY not in rule.jurisdictions and not set(jurisdictions) & set(rule.jurisdictions):
            named = ", ".join(jurisdictions) or "none"
            why = why or f"jurisdiction {named} is not trusted from {peer}"
            continue
        if automated_decision == FULLY_AUTOMATED and not rule.automated:
            why = why or f"a fully automated decision is not enough from {peer}"
            continue
        return Judgement(True, f"trusted by the [[trust]] entry for {rule.peer}", rule)
    return Judgement(False, why)


def bank_for(peer: str, category: str) -> str:
    """The bank a peer's honoured receipts of one category write into: a peer writes
    only into its own. A bank has one category, and rules act on categories, so the
    child sexual abuse receipts (the ones that matter most) fill ``receipts:PEER`` and
    any other category ``receipts:PEER:CATEGORY``."""
    peer = peer.lower()
    return f"receipts:{peer}" if category == "csam" else f"receipts:{peer}:{category}"


def is_peer_bank(name: str) -> bool:
    """A bank only honoured receipts write into (no [[bank]] may be named so)."""
    return _PEER_BANK.fullmatch(name) is not None
