"""Hash fetched media in memory: SHA-256 and MD5 of the bytes, PDQ of the picture.

``hash_media`` sniffs what the bytes are (``relay.media.sniff``), decodes a picture
within limits (``relay.media.decode``) and hashes its frames (``relay.hashing.pdq``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
) -> Hashes:
    """Hash ``data``; DecodeError if it is an image that cannot be decoded.

    Decompression bombs (a frame of more than ``max_pixels``, or of more than
    ``dense_above`` pixels and more than ``max_pixels_per_byte`` of them per byte
    of ``data``) raise DecodeError before their pixels are decoded. Video, audio
    and unknown bytes get SHA-256 and MD5 only; the caller decides what unhashed
    media means.
    """
    sha256 = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    kind, mime = sniff(data)
    if kind != "image" or mime is None:
        return Hashes(sha256, md5, kind, mime, (), (), None, None, 0)
    limits = Limits(max_pixels, max_frames, max_pixels_per_byte, dense_above)
    with opened(data, mime, limits) as img:
        picture = decoded(img, len(data), limits)
        hashed, dihedral = pdq.hash_frames(picture.chosen)
    width, height, frames = picture.width, picture.height, picture.frames
    return Hashes(sha256, md5, "image", mime, hashed, dihedral, width, height, frames)


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
