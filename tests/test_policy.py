"""The policy's rules: dispositions, effects, and the guards against the tool's own harm."""

from __future__ import annotations

import pytest

from relay.config import load_config
from relay.policy import Policy, Rule
from relay.signal import Signal
from relay.verdict import Disposition


def match(
    hash_kind: str, distance: int, *, bank: str = "test-bank", matcher: str = "banks"
) -> Signal:
    return Signal(
        "match",
        bank,
        {
            "category": "test",
            "hash_kind": hash_kind,
            "distance": distance,
            "matcher": matcher,
            "url": "https://remote.example/a.png",
        },
    )


PDQ = match("pdq", 12)
PDQ_OTHER_BANK = match("pdq", 3, bank="other-bank")
MD5 = match("md5", 0)
REPORT = frozenset({"report"})


def test_the_strongest_disposition_wins_and_every_firing_rule_adds_its_effects() -> None:
    policy = Policy(
        (
            Rule("category:test", Disposition.REVIEW, ("notify",)),
            Rule("test-bank", Disposition.QUARANTINE, ("report",)),
            Rule("category:other", Disposition.REJECT, ("ban",)),
        )
    )
    verdict = policy.decide([PDQ])
    assert verdict.disposition is Disposition.QUARANTINE
    assert verdict.rule == "rule[1] test-bank -> quarantine"
    assert verdict.effects == ("notify", "report")
    assert verdict.as_json()["effects"] == ["notify", "report"]


def test_match_kind_counts_only_exact_or_only_perceptual_matches() -> None:
    exact_only = Policy((Rule("category:test", Disposition.QUARANTINE, match_kind="exact"),))
    assert exact_only.decide([PDQ]).disposition is Disposition.DELIVER
    assert exact_only.decide([MD5]).disposition is Disposition.QUARANTINE
    perceptual = Policy((Rule("category:test", Disposition.REVIEW, match_kind="perceptual"),))
    assert perceptual.decide([MD5]).disposition is Disposition.DELIVER
    assert perceptual.decide([PDQ]).disposition is Disposition.REVIEW


def test_the_detail_s_exact_flag_wins_over_the_hash_kind() -> None:
    """A matcher says whether its own match is exact (an external checker's kind is
    not one of ours)."""
    fuzzy = Signal("match", "checker", {"category": "test", "exact": False, "distance": 0})
    rule = Rule("category:test", Disposition.REVIEW, match_kind="exact")
    assert not Policy((rule,)).decide([fuzzy]).effects
    assert Policy((rule,)).decide([fuzzy]).disposition is Disposition.DELIVER


def test_max_distance_drops_far_matches() -> None:
    policy = Policy((Rule("category:test", Disposition.QUARANTINE, max_distance=10),))
    assert policy.decide([PDQ]).disposition is Disposition.DELIVER  # 12 > 10
    assert policy.decide([PDQ_OTHER_BANK]).disposition is Disposition.QUARANTINE  # 3
    assert policy.decide([MD5]).disposition is Disposition.QUARANTINE


def test_min_signals_counts_independent_matches_only() -> None:
    policy = Policy((Rule("category:test", Disposition.QUARANTINE, min_signals=2),))
    # Two banks listing PDQ hashes near one picture: one piece of evidence.
    assert policy.decide([PDQ, PDQ_OTHER_BANK]).disposition is Disposition.DELIVER
    # PDQ and MD5 agree, or PDQ and another matcher: two.
    assert policy.decide([PDQ, MD5]).disposition is Disposition.QUARANTINE
    checker = match("classifier", 0, matcher="classifier")
    assert policy.decide([PDQ, checker]).disposition is Disposition.QUARANTINE


def test_irreversible_effects_never_rest_on_perceptual_matches_alone() -> None:
    rule = Rule("category:test", Disposition.QUARANTINE, ("notify", "report"))
    policy = Policy((rule,), irreversible=REPORT)
    verdict = policy.decide([PDQ])
    # The disposition stands (quarantine is reversible); the report is withheld.
    assert verdict.disposition is Disposition.QUARANTINE
    assert verdict.effects == ("notify",)
    assert verdict.withheld == ("report",)
    assert verdict.as_json()["withheld"] == ["report"]
    # An exact match beside it: the report goes.
    assert policy.decide([PDQ, MD5]).effects == ("notify", "report")
    # The admin may say so explicitly.
    allowed = Policy(
        (
            Rule(
                "category:test",
                Disposition.QUARANTINE,
                ("report",),
                irreversible_on_perceptual=True,
            ),
        ),
        irreversible=REPORT,
    )
    assert allowed.decide([PDQ]).effects == ("report",)


def test_effects_of_a_disposition_run_with_whatever_rule_chose_it() -> None:
    policy = Policy(
        (Rule("category:test", Disposition.QUARANTINE),),
        effects_on={Disposition.QUARANTINE: ("notify", "report")},
        irreversible=REPORT,
    )
    assert policy.decide([]).effects == ()
    perceptual = policy.decide([PDQ])
    assert (perceptual.effects, perceptual.withheld) == (("notify",), ("report",))
    assert policy.decide([MD5]).effects == ("notify", "report")
    on_error = Policy(effects_on={Disposition.REVIEW: ("notify",)})
    assert on_error.decide([Signal("error", "media")]).effects == ("notify",)


def test_rules_from_the_configuration(tmp_path) -> None:
    path = tmp_path / "sluice.toml"
    key = tmp_path / "evidence.key"
    key.write_bytes(b"k" * 32)
    path.write_text(
        f"""
[evidence]
key_file = "{key}"

[notify]
webhooks = ["https://admin.example/hook"]

[[bank]]
name = "test-bank"
category = "test"

[[rule]]
match = "category:test"
action = "quarantine"
effects = ["notify"]
match_kind = "exact"
max_distance = 4
min_signals = 2
irreversible_on_perceptual = true

[[rule]]
match = "test-bank"
action = "review"
"""
    )
    config = load_config(path)
    policy = Policy.from_config(config.rule, config.hold.on_error, config.hold.on_timeout)
    first, second = policy.rules
    assert first == Rule("category:test", Disposition.QUARANTINE, ("notify",), "exact", 4, 2, True)
    assert second == Rule("test-bank", Disposition.REVIEW)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('match_kind = "fuzzy"', "match_kind"),
        ("min_signals = 0", "min_signals"),
        ('effects = "notify"', "effects"),
        ('effects = ["fax"]', "no effect `fax`"),  # "report" exists since issue 16
        ('effects = ["report"]', r"acts through the instance's admin API"),
        ('effects = ["notify"]', r"set \[notify\] webhooks"),
    ],
)
def test_bad_rule_keys_are_named(tmp_path, line: str, problem: str) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text(
        '[[bank]]\nname = "b"\ncategory = "test"\n\n'
        f'[[rule]]\nmatch = "b"\naction = "review"\n{line}\n'
    )
    with pytest.raises(Exception, match=problem):
        load_config(path)


def test_a_rule_may_name_the_banks_matcher(tmp_path) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text('[[rule]]\nmatch = "banks"\naction = "review"\n')
    [rule] = Policy.from_config(load_config(path).rule, "review").rules
    verdict = Policy((rule,)).decide([PDQ])
    assert (verdict.disposition, verdict.rule) == (Disposition.REVIEW, "rule[0] banks -> review")
