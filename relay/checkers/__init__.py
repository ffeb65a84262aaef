"""External checkers: services that look at a file and say whether it is known abuse material.

A checker is a ``relay.matcher.Matcher`` whose answer comes from a service over HTTP
rather than from Sluice's own banks: PhotoDNA Cloud (``photodna``), Arachnid Shield
(``arachnid``: the bytes, or only their PDQ hashes), or a classifier that scores the
bytes (``classifier``). Each is one module; what they share (a rate, a timeout, a bound
on the answer, a cache of answers by SHA-256, failures as one ``error`` signal) is
written once in ``base``. Their ``match`` signals are perceptual unless a service proves
an exact match of the very bytes, so the policy withholds irreversible effects on them
alone.
"""

from __future__ import annotations

from relay.checkers.arachnid import ArachnidShield
from relay.checkers.base import Checker, CheckFailed, Pace
from relay.checkers.classifier import Classifier
from relay.checkers.photodna import PhotoDna

__all__ = ["ArachnidShield", "CheckFailed", "Checker", "Classifier", "Pace", "PhotoDna"]
