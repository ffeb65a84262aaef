"""The trust judge: which verified receipts the admin's [[trust]] entries honour."""

from __future__ import annotations

from relay.config import load_config
from relay.trust import FULLY_AUTOMATED, TrustRule, bank_for, judge

MINORS = "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"
SCOPE = "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE"
HUMAN = "AUTOMATED_DECISION_NOT_AUTOMATED"


def _judge(rules, peer="peer.example", category=MINORS, where=("DE",), decision=HUMAN):
    return judge(
        rules, peer=peer, category=category, jurisdictions=where, automated_decision=decision
    )


def test_an_entry_for_the_peer_honours_its_receipts():
    rules = (TrustRule("peer.example", categories=(MINORS,)),)
    judged = _judge(rules)
    assert judged.honoured and judged.hashes
    assert judged.rule == rules[0]
    assert not _judge(rules, peer="other.example").honoured
    assert _judge(rules, peer="other.example").reason == "no [[trust]] entry covers other.example"


def test_category_jurisdiction_and_automation_each_refuse():
    rules = (TrustRule("peer.example", categories=(MINORS,), jurisdictions=("FR", "EU")),)
    assert _judge(rules, where=("EU",)).honoured
    by_category = _judge(rules, category=SCOPE, where=("EU",))
    assert (by_category.honoured, by_category.reason) == (
        False,
        f"category {SCOPE} is not trusted from peer.example",
    )
    by_place = _judge(rules, where=("DE", "US"))
    assert by_place.reason == "jurisdiction DE, US is not trusted from peer.example"
    automated = _judge(rules, where=("FR",), decision=FULLY_AUTOMATED)
    assert automated.reason == "a fully automated decision is not enough from peer.example"
    trusting = (TrustRule("peer.example", automated=True),)
    assert _judge(trusting, decision=FULLY_AUTOMATED).honoured


def test_the_peers_own_entry_wins_over_the_wildcard():
    rules = (TrustRule("*", automated=True), TrustRule("peer.example", categories=(SCOPE,)))
    assert _judge(rules, peer="else.example", decision=FULLY_AUTOMATED).honoured
    assert not _judge(rules, peer="Peer.Example").honoured  # its own entry: scope only
    assert _judge(rules, peer="peer.example", category=SCOPE).honoured


def test_hashes_false_honours_without_writing_a_bank():
    judged = _judge((TrustRule("peer.example", hashes=False),))
    assert judged.honoured and not judged.hashes


def test_a_peer_writes_only_into_its_own_bank():
    assert bank_for("Peer.Example", "csam") == "receipts:peer.example"
    assert bank_for("peer.example", "terrorism") == "receipts:peer.example:terrorism"


def test_rules_from_the_configuration(tmp_path):
    path = tmp_path / "sluice.toml"
    path.write_text(
        '[[trust]]\npeer = "Peer.Example"\njurisdictions = ["EU"]\nautomated = true\n',
        encoding="utf-8",
    )
    [rule] = TrustRule.from_config(load_config(path, environ={}).trust)
    assert rule == TrustRule("peer.example", ("*",), ("EU",), True, True)
