"""A classifier over HTTP: POST the file's bytes, read a score from the JSON answer.

For a model served next to Sluice (a CLIP check like horde-safety's, which fedi-safety
runs; a vendor's classifier): the bytes go as the body with ``Content-Type`` their
type, an optional token in a header, and the answer's ``score_key`` is a dotted path
into it (``"score"``, ``"predictions.csam"``, ``"results.0.score"``). A number is the
score; ``true``/``false`` count as 1 and 0, so a service answering fedi-safety's
``is_csam`` works with ``score_key = "is_csam"``.

- score >= ``match_at``: a ``match`` signal of ``category``, never exact: a classifier
  guesses (fedi-safety's README: it "will mark a lot of false positives"), so the
  policy withholds irreversible effects on it alone;
- score >= ``review_at`` (when set): a ``suspect`` signal, which a rule names as
  ``signal:suspect``, for what deserves a look but no more;
- below: nothing. An answer without a finite score at ``score_key`` is an error: a
  checker that cannot say is not a checker that said no.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Unpack

import aiohttp

from relay.checkers.base import Checker, CheckerLimits, CheckFailed, number
from relay.media.media import Media
from relay.signal import Signal

__all__ = ["SUSPECT", "Classifier", "score_at"]

#: The signal of a score between ``review_at`` and ``match_at``.
SUSPECT = "suspect"


def score_at(document: Any, path: str) -> float | None:
    """The finite number at dotted ``path`` (list items by index), booleans as 1 and 0;
    None when there is none."""
    found = document
    for part in path.split("."):
        if isinstance(found, dict):
            found = found.get(part)
        elif isinstance(found, list) and part.isdigit() and int(part) < len(found):
            found = found[int(part)]
        else:
            return None
    if isinstance(found, bool):
        return 1.0 if found else 0.0
    return number(found)


class Classifier(Checker):
    """A score from a service; above the thresholds, a signal (perceptual, never exact)."""

    limits: ClassVar[CheckerLimits] = {
        "rate_per_second": 10.0,
        "timeout_seconds": 10.0,
        "max_answer_bytes": 65_536,
    }

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        name: str = "classifier",
        token: str | None = None,
        token_header: str = "Authorization",
        token_prefix: str = "Bearer ",
        score_key: str = "score",
        match_at: float = 0.9,
        review_at: float | None = None,
        category: str = "csam",
        kinds: Sequence[str] = ("image",),
        **limits: Unpack[CheckerLimits],
    ) -> None:
        super().__init__(name, session, **limits)
        if not score_key or any(not part for part in score_key.split(".")):
            raise ValueError(f"score_key must be a dotted path of keys, not {score_key!r}")
        if review_at is not None and review_at > match_at:
            raise ValueError("review_at must not be above match_at")
        self.url = url
        self._headers = {token_header: token_prefix + token} if token else {}
        self.score_key = score_key
        self.match_at = match_at
        self.review_at = review_at
        self.category = category
        self.kinds = frozenset(kinds)

    async def ask(self, media: Media) -> Sequence[Signal]:
        if media.kind not in self.kinds:
            return ()
        if media.data is None:
            raise CheckFailed("the file's bytes are not at hand (known from the media cache)")
        answer = await self.post(
            self.url,
            headers={**self._headers, "Content-Type": media.mime or "application/octet-stream"},
            data=media.data,
        )
        score = score_at(answer.json(), self.score_key)
        if score is None:
            raise CheckFailed(f"unreadable answer: no number at {self.score_key!r}")
        detail = {"matcher": self.name, "category": self.category, "score": score}
        if score >= self.match_at:
            detail.update(exact=False, match_at=self.match_at)
            return (Signal("match", self.name, detail),)
        if self.review_at is not None and score >= self.review_at:
            detail.update(review_at=self.review_at)
            return (Signal(SUSPECT, self.name, detail),)
        return ()
