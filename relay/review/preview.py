"""Previews: what a moderator's browser gets of a held file until they reveal it.

A preview is made here, on the server, from the sealed bytes: small (at most
``SIZE`` pixels on its longer side), blurred and in greyscale as the moderator's
settings say, re-encoded as a fresh JPEG with no metadata. So the original never
reaches the browser before a reveal; blurring with CSS would send it whole.

The bytes were decoded once already when they were hashed, but they are still a
stranger's: they are opened with the hashing's own limits (``relay.media.decode``),
and JPEGs are decoded at a reduced scale (``draft``), which is most of the speed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageOps

from relay.media.decode import (
    DENSE_ABOVE,
    MAX_PIXELS,
    MAX_PIXELS_PER_BYTE,
    Limits,
    opened,
)
from relay.media.sniff import sniff

__all__ = ["SIZE", "Look", "NoPreview", "preview"]

#: The longer side of a preview, in pixels.
SIZE = 320

_LIMITS = Limits(MAX_PIXELS, 1, MAX_PIXELS_PER_BYTE, DENSE_ABOVE)


class NoPreview(Exception):
    """No picture can be made of these bytes (a video, a broken file); the reason
    says which, for the page."""


@dataclass(frozen=True, slots=True)
class Look:
    """How a moderator wants previews: blur radius (0: none), greyscale or not."""

    blur: int
    greyscale: bool


def preview(data: bytes, look: Look) -> bytes:
    """A JPEG of at most SIZE x SIZE, blurred and greyscale as ``look`` says;
    NoPreview when the bytes are not a picture this can open."""
    kind, mime = sniff(data)
    if kind != "image" or mime is None:
        raise NoPreview(f"no preview of {mime or kind} files: reveal it to see it")
    try:
        with opened(data, mime, _LIMITS) as img:
            if img.format == "JPEG":
                img.draft("RGB", (SIZE, SIZE))  # decode at 1/2, 1/4 or 1/8 scale
            img.seek(0)
            img.thumbnail((SIZE, SIZE), Image.Resampling.BILINEAR)
            picture = ImageOps.exif_transpose(img) or img
            picture = picture.convert("L" if look.greyscale else "RGB")
    except Exception as exc:  # DecodeError, or a frame Pillow cannot read
        raise NoPreview(f"no preview: {exc}") from exc
    if look.blur > 0:
        picture = picture.filter(ImageFilter.GaussianBlur(look.blur))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=70)
    return out.getvalue()
