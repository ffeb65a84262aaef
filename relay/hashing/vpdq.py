"""vPDQ, Meta's video hash: PDQ of one frame a second, matched as shares of frames.

A video's vPDQ hash is a list of frames, each with its number among the decoded
frames, its PDQ quality, its PDQ hash and its time in seconds. Two videos match
when enough of each one's frames (of quality >= ``QUALITY``) have a frame within
``DISTANCE`` bits in the other: the "query match percent" and the "compared match
percent" must both reach ``THRESHOLD``. So a clip cut out of a known video matches
only if it is most of it, and a known video padded with other footage only if the
padding is short, in both directions.

These are the parameters and the file format of facebook/ThreatExchange's ``vpdq``
(``seconds_per_hash`` 1, ``quality_tolerance`` 50, ``distance_tolerance`` 31, 80%),
written from its documentation as remembered; they are not in Sluice's facts, so
check them against that repository before exchanging hashes with it. The file
format is one line per frame: ``frame_number,quality,pdq_hex,timestamp_seconds``,
the timestamp with three decimals.

Not a registered hash kind yet: a value is a list of frames, not one fixed-size
string, so ``bank_entry`` and the indexes cannot hold it as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from relay.errors import DecodeError
from relay.hashing.base import hex_string
from relay.hashing.pdq import hash_pixels
from relay.media.video import MAX_SAMPLES, VideoLimits, clip

__all__ = [
    "DISTANCE",
    "QUALITY",
    "THRESHOLD",
    "Match",
    "Vpdq",
    "VpdqFrame",
    "VpdqHash",
    "format_hash",
    "hash_video",
    "match",
    "parse",
]

#: Largest Hamming distance between two frames' PDQ that still matches.
DISTANCE = 31
#: Frames of lower PDQ quality (flat, dark, a title card's plain colour) are left out.
QUALITY = 50
#: Percent of each video's frames that must match for the videos to match.
THRESHOLD = 80.0

# The longest line parse reads: a frame number, quality, 64 hex digits, a time.
_MAX_LINE = 128


@dataclass(frozen=True, slots=True)
class VpdqFrame:
    """One sampled frame's PDQ hash (64 lowercase hex digits) and quality (0-100)."""

    number: int
    quality: int
    hash: str
    timestamp: float

    def line(self) -> str:
        """The frame as vpdq writes it."""
        return f"{self.number},{self.quality},{self.hash},{self.timestamp:.3f}"


@dataclass(frozen=True, slots=True)
class VpdqHash:
    """A video's vPDQ hash: its sampled frames in order."""

    frames: tuple[VpdqFrame, ...]
    complete: bool = True
    """False when a limit stopped the reading: the frames are the video's start."""

    def usable(self, quality: int = QUALITY) -> tuple[VpdqFrame, ...]:
        """The frames good enough to match on."""
        return tuple(f for f in self.frames if f.quality >= quality)


class Match(NamedTuple):
    """How much of each video the other contains, in percent, and whether they match."""

    query_percent: float
    compared_percent: float
    matched: bool


class Vpdq:
    """What a ``HashKind`` would say of vPDQ (see the module's docstring)."""

    name: ClassVar[str] = "vpdq"
    aliases: ClassVar[tuple[str, ...]] = ("video_vpdq",)
    exact: ClassVar[bool] = False
    threshold: ClassVar[int] = DISTANCE
    min_quality: ClassVar[int] = QUALITY
    match_percent: ClassVar[float] = THRESHOLD


def hash_video(data: bytes, limits: VideoLimits | None = None) -> VpdqHash:
    """vPDQ of the video in ``data``; DecodeError if it cannot be read within ``limits``.

    A video longer than the limits gets the hash of its start (``complete`` False);
    one with no frame at all raises DecodeError.
    """
    frames = []
    with closing(clip(data, limits)) as opened:
        for sample in opened.samples():
            f = sample.frame
            variants, quality = hash_pixels(f.pixels, dihedral=False, full=f.full, scale=f.scale)
            when = round(sample.timestamp, 3)
            frames.append(VpdqFrame(sample.number, quality, variants[0], when))
    if not frames:
        raise DecodeError(f"cannot decode {opened.mime}: no frame decoded")
    return VpdqHash(tuple(frames), complete=opened.complete)


def format_hash(value: VpdqHash) -> str:
    """vpdq's file format: a line per frame, each ended by a newline."""
    return "".join(f.line() + "\n" for f in value.frames)


def parse(text: str, *, max_frames: int = 4 * MAX_SAMPLES) -> VpdqHash:
    """A hash in vpdq's file format (blank lines skipped); ValueError naming the line
    if one is not ``frame_number,quality,pdq_hex,timestamp``, or past ``max_frames``."""
    frames: list[VpdqFrame] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if len(raw) > _MAX_LINE:
            raise ValueError(f"vPDQ line {n}: longer than {_MAX_LINE} characters")
        line = raw.strip()
        if not line:
            continue
        if len(frames) >= max_frames:
            raise ValueError(f"vPDQ hash: more than {max_frames} frames")
        frames.append(_frame(line, n))
    return VpdqHash(tuple(frames))


def _frame(line: str, n: int) -> VpdqFrame:
    fields = line.split(",")
    if len(fields) != 4:
        raise ValueError(f"vPDQ line {n}: want frame_number,quality,pdq_hex,timestamp")
    number, quality, digits, when = (f.strip() for f in fields)
    if not (number.isascii() and number.isdigit() and len(number) <= 12):
        raise ValueError(f"vPDQ line {n}: frame number {number[:20]!r} is not a count")
    if not (quality.isascii() and quality.isdigit() and int(quality) <= 100):
        raise ValueError(f"vPDQ line {n}: quality {quality[:20]!r} is not 0-100")
    try:
        pdq = hex_string(digits, 64, "PDQ")
        timestamp = float(when) if len(when) <= 24 else math.nan
    except ValueError as exc:
        raise ValueError(f"vPDQ line {n}: {exc}") from None
    if not (math.isfinite(timestamp) and timestamp >= 0):
        raise ValueError(f"vPDQ line {n}: timestamp {when[:24]!r} is not seconds")
    return VpdqFrame(int(number), int(quality), pdq, timestamp)


def match(
    query: VpdqHash,
    candidate: VpdqHash,
    distance: int = DISTANCE,
    quality: int = QUALITY,
    threshold: float = THRESHOLD,
) -> Match:
    """vpdq's brute-force match: of each video's frames of quality >= ``quality``,
    the percent that have a frame within ``distance`` bits in the other's; a match
    when both reach ``threshold``. A video with no such frame matches nothing.

    Costs len(query) x len(candidate) comparisons (3600 x 3600 frames: 0.3 s here).
    """
    ours, theirs = _bits(query.usable(quality)), _bits(candidate.usable(quality))
    if not len(ours) or not len(theirs):
        return Match(0.0, 0.0, False)
    found_ours = np.zeros(len(ours), dtype=bool)
    found_theirs = np.zeros(len(theirs), dtype=bool)
    step = max(1, (1 << 22) // (len(theirs) * 32))  # 4 MiB of XOR at a time
    for at in range(0, len(ours), step):
        near = _distances(ours[at : at + step], theirs) <= distance
        found_ours[at : at + step] = near.any(axis=1)
        found_theirs |= near.any(axis=0)
    query_percent = 100.0 * float(found_ours.mean())
    compared_percent = 100.0 * float(found_theirs.mean())
    matched = query_percent >= threshold and compared_percent >= threshold
    return Match(query_percent, compared_percent, matched)


def _bits(frames: Iterable[VpdqFrame]) -> np.ndarray:
    """(N, 4) uint64: each frame's hash as four words."""
    rows = [bytes.fromhex(f.hash) for f in frames]
    return np.frombuffer(b"".join(rows), dtype=np.uint64).reshape(len(rows), 4)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Hamming distances between rows of words."""
    xor = a[:, None, :] ^ b[None, :, :]
    # numpy >= 2.0 counts bits itself; older numpy through a table of bytes.
    fast = hasattr(np, "bitwise_count")
    bits = np.bitwise_count(xor) if fast else _POPCOUNT[xor.view(np.uint8)]
    counts: np.ndarray = bits.sum(axis=2, dtype=np.int32)
    return counts
