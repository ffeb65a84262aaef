"""Hash fetched media in memory: SHA-256 and MD5 of the bytes, PDQ of the picture,
vPDQ of the video.

``hash_media`` sniffs what the bytes are (``relay.media.sniff``), decodes a picture
within limits (``relay.media.decode``) and hashes its frames (``relay.hashing.pdq``),
or reads a video within limits (``relay.media.video``) and hashes one frame a second
(``relay.hashing.vpdq``). An animated GIF, APNG or WebP is both: its sampled frames
get PDQ, and the frame on screen at each whole second of its playback gets vPDQ, so
a GIF cut from a listed video is matched as a share of the video's frames.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.hashing import pdq
from relay.hashing.pdq import PdqHash
from relay.media.decode import (
    DENSE_ABOVE,
    MAX_PIXELS,
    MAX_PIXELS_PER_BYTE,
    Limits,
    decoded,
    opened,
)
from relay.media.sniff import Kind, sniff
from relay.media.video import VIDEO_TYPES, VideoLimits

if TYPE_CHECKING:  # imported when used: relay.hashing.vpdq imports relay.media
    from relay.hashing.vpdq import VpdqHash

__all__ = ["Hashes", "hash_file", "hash_media"]


@dataclass(frozen=True, slots=True)
class Hashes:
    """Everything the matcher needs to know about one fetched file."""

    sha256: str
    md5: str
    kind: Kind
    mime: str | None
    pdq: tuple[PdqHash, ...]
    """One per hashed frame, first frame first; empty when not an image."""
    pdq_dihedral: tuple[str, ...]
    """The first frame's hash as is, rotated 90, 180, 270, flipped x, flipped y,
    flipped on the main and the other diagonal (pdqhash's order); empty when not
    an image."""
    width: int | None
    height: int | None
    """As displayed (after EXIF orientation), before any shrinking."""
    frames: int
    """Frames in the file (1 for a still image, 0 when not an image)."""
    vpdq: VpdqHash | None = None
    """A video's or an animation's vPDQ hash; None when neither (or unreadable)."""

    @property
    def digests(self) -> dict[str, str]:
        """The digests computed beside the decoding, by hash kind name: the kinds take
        them from here rather than hash the bytes again (``HexDigestKind.hash``)."""
        return {"sha256": self.sha256, "md5": self.md5}


def hash_media(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    max_frames: int = 8,
    max_pixels_per_byte: float = MAX_PIXELS_PER_BYTE,
    dense_above: int = DENSE_ABOVE,
    video: VideoLimits | None = None,
) -> Hashes:
    """Hash ``data``; DecodeError if it is an image or a video that cannot be decoded
    (a video within ``video``'s limits).

    Decompression bombs (a frame of more than ``max_pixels``, or of more than
    ``dense_above`` pixels and more than ``max_pixels_per_byte`` of them per byte
    of ``data``) raise DecodeError before their pixels are decoded. A video of a
    container Sluice reads (``VIDEO_TYPES``) gets its vPDQ hash too. Other video,
    audio and unknown bytes get SHA-256 and MD5 only; the caller decides what
    unhashed media means. An animated image gets a vPDQ hash of its playback too,
    within the same pixel budget and ``video``'s limit of samples.
    """
    sha256 = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    kind, mime = sniff(data)
    video = video or VideoLimits()
    if kind == "video" and mime in VIDEO_TYPES:
        from relay.hashing.vpdq import hash_video

        vpdq = hash_video(data, video)
        return Hashes(sha256, md5, kind, mime, (), (), None, None, 0, vpdq)
    if kind != "image" or mime is None:
        return Hashes(sha256, md5, kind, mime, (), (), None, None, 0)
    limits = Limits(max_pixels, max_frames, max_pixels_per_byte, dense_above)
    with opened(data, mime, limits) as img:
        picture = decoded(img, len(data), limits, max_seconds=video.max_samples)
        hashed, dihedral, timeline = pdq.hash_frames(picture.chosen)
    width, height, frames = picture.width, picture.height, picture.frames
    played = _played(timeline, picture.reached == frames, video.max_samples)
    return Hashes(sha256, md5, "image", mime, hashed, dihedral, width, height, frames, played)


def _played(
    timeline: tuple[tuple[int, int, PdqHash], ...], whole: bool, max_samples: int
) -> VpdqHash | None:
    """An animation's vPDQ hash from its timeline; None for a still picture."""
    if not timeline:
        return None
    from relay.hashing.vpdq import VpdqFrame, VpdqHash

    frames = tuple(VpdqFrame(n, h.quality, h.hash, float(s)) for s, n, h in timeline)
    return VpdqHash(frames, complete=whole and len(frames) < max_samples)


def hash_file(path: str | Path) -> dict[str, Any]:
    """``sluice hash FILE``: the file's hashes, ready for JSON.

    ``pdq`` and ``quality`` are the first frame's, None when the file is not an
    image; an image that cannot be decoded raises DecodeError.
    """
    hashes = hash_media(Path(path).read_bytes())
    first = hashes.pdq[0] if hashes.pdq else None
    return {
        "file": str(path),
        "sha256": hashes.sha256,
        "md5": hashes.md5,
        "pdq": first.hash if first else None,
        "quality": first.quality if first else None,
    }
