"""The admin's policy: turns the signals the hold gathered into a verdict.

``[[rule]]`` entries name a bank, ``category:NAME``, a matcher or ``signal:KIND``, a
disposition (``action``) and effects. The strongest disposition among the rules
that fire wins (quarantine > reject > review > deliver); the effects of every rule
that fires are run, with those the configuration attaches to the winning
disposition (``[notify] on``). When media could not be fetched or decoded,
``[hold] on_error`` competes too, and when the hold stopped waiting for its checks,
``[hold] on_timeout``: what was found before the timeout counts, so a bank match is
never erased by a slow URL. No rule fired, no error and no timeout: deliver.

A rule protects against the tool's own harm: it may count only exact or only
perceptual matches (``match_kind``), only matches within ``max_distance``, and
fire only on ``min_signals`` independent signals (found by different matchers or
hash kinds: one crafted PDQ collision is one signal, however many banks list its
target). And whatever a rule asks, an irreversible effect (a report to authorities,
a receipt to peers, a ban) is withheld when the rule fired on perceptual matches
only, unless the rule sets ``irreversible_on_perceptual``: PDQ collisions can be
crafted to frame an innocent image.

One thing is never delivered unseen, whatever ``on_error`` says: media left
undecoded because its sender spent its decoding budget (``over_budget``), since a
sender could otherwise buy its way past the checks by sending more.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from relay.hashing import KINDS
from relay.signal import Signal
from relay.verdict import Disposition, Verdict

__all__ = ["MATCH_KINDS", "OVER_BUDGET", "TIMEOUT", "MatchKind", "Policy", "Rule", "exact"]

#: The signal of media not decoded because its sender is over budget: at least review.
OVER_BUDGET = "over_budget"
#: The hold's signal that it stopped waiting for its checks: ``on_timeout`` competes.
TIMEOUT = "timeout"
#: What ``[[rule]] match_kind`` may say.
MATCH_KINDS = ("any", "exact", "perceptual")

MatchKind = Literal["any", "exact", "perceptual"]


def exact(signal: Signal) -> bool:
    """Whether a match signal is an exact one (equal digests), not a perceptual one."""
    if "exact" in signal.detail:
        return bool(signal.detail["exact"])
    kind = KINDS.get(str(signal.detail.get("hash_kind")))
    return kind is not None and kind.exact


def _independent(signal: Signal) -> tuple[Any, ...]:
    """Signals with equal keys are one piece of evidence, not several."""
    if signal.kind == "match":
        return (
            "match",
            signal.detail.get("matcher", signal.source),
            signal.detail.get("hash_kind"),
        )
    return (signal.kind, signal.source, signal.detail.get("url"))


@dataclass(frozen=True, slots=True)
class Rule:
    match: str
    disposition: Disposition
    effects: tuple[str, ...] = ()
    match_kind: MatchKind = "any"
    #: Matches farther than this do not count (None: the bank's own threshold).
    max_distance: int | None = None
    min_signals: int = 1
    irreversible_on_perceptual: bool = False

    def admits(self, signal: Signal) -> bool:
        """Whether ``signal`` counts for this rule."""
        if self.match not in signal.targets:
            return False
        if signal.kind != "match":
            return True
        if self.match_kind != "any" and (self.match_kind == "exact") != exact(signal):
            return False
        distance = signal.detail.get("distance")
        return (
            self.max_distance is None
            or not isinstance(distance, int)
            or (distance <= self.max_distance)
        )

    def support(self, signals: Sequence[Signal]) -> list[Signal]:
        """The signals the rule fires on; empty when it does not fire."""
        counted = [s for s in signals if self.admits(s)]
        if len({_independent(s) for s in counted}) < max(1, self.min_signals):
            return []
        return counted

    @property
    def label(self) -> str:
        return f"{self.match} -> {self.disposition}"


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    on_error: Disposition = Disposition.REVIEW
    on_timeout: Disposition = Disposition.REVIEW
    #: Effects every verdict with that disposition runs (``[notify] on``).
    effects_on: Mapping[Disposition, tuple[str, ...]] = field(default_factory=dict)
    #: The effects that cannot be taken back (``relay.effects``): withheld when they
    #: rest on perceptual matches only.
    irreversible: frozenset[str] = frozenset()

    @classmethod
    def from_config(
        cls,
        rules: Sequence[Any],
        on_error: str,
        on_timeout: str = "review",
        *,
        effects_on: Mapping[str, Collection[str]] | None = None,
        irreversible: Collection[str] = (),
    ) -> Policy:
        """From ``[[rule]]`` entries (``relay.config.RuleConfig``) and ``[hold]``."""
        return cls(
            tuple(
                Rule(
                    r.match,
                    Disposition(r.action),
                    tuple(getattr(r, "effects", ())),
                    getattr(r, "match_kind", "any"),
                    None if getattr(r, "max_distance", -1) < 0 else r.max_distance,
                    getattr(r, "min_signals", 1),
                    getattr(r, "irreversible_on_perceptual", False),
                )
                for r in rules
            ),
            Disposition(on_error),
            Disposition(on_timeout),
            {Disposition(d): tuple(e) for d, e in (effects_on or {}).items()},
            frozenset(irreversible),
        )

    def decide(self, signals: Sequence[Signal]) -> Verdict:
        best: tuple[Disposition, str] = (Disposition.DELIVER, "default")
        winning: list[Signal] = []
        effects: list[str] = []
        withheld: list[str] = []
        for index, rule in enumerate(self.rules):
            support = rule.support(signals)
            if not support:
                continue
            self._effects(rule.effects, support, rule.irreversible_on_perceptual, effects, withheld)
            if rule.disposition.strength > best[0].strength:
                best = (rule.disposition, f"rule[{index}] {rule.label}")
                winning = support
        if self.on_error.strength > best[0].strength and any(s.kind == "error" for s in signals):
            best = (self.on_error, "hold.on_error")
        if any(s.kind == TIMEOUT for s in signals) and (
            # Named even when it delivers: the admin chose to deliver what went unchecked.
            self.on_timeout.strength > best[0].strength or best[1] == "default"
        ):
            best = (self.on_timeout, "hold.on_timeout")
        if Disposition.REVIEW.strength > best[0].strength and any(
            s.kind == OVER_BUDGET for s in signals
        ):
            best = (Disposition.REVIEW, "media.over_budget")
        default = self.effects_on.get(best[0], ())
        self._effects(default, winning or list(signals), False, effects, withheld)
        return Verdict(
            best[0],
            best[1],
            tuple(signals),
            effects=tuple(dict.fromkeys(effects)),
            withheld=tuple(e for e in dict.fromkeys(withheld) if e not in effects),
        )

    def _effects(
        self,
        asked: Sequence[str],
        support: Sequence[Signal],
        allow_perceptual: bool,
        effects: list[str],
        withheld: list[str],
    ) -> None:
        matches = [s for s in support if s.kind == "match"]
        perceptual_only = bool(matches) and not any(exact(s) for s in matches)
        for effect in asked:
            if effect in self.irreversible and perceptual_only and not allow_perceptual:
                withheld.append(effect)
            else:
                effects.append(effect)
