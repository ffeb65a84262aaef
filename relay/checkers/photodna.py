"""Microsoft's PhotoDNA Cloud Service: its ``Match`` operation, one image a request.

The image goes inline, base64 in JSON (``{"DataRepresentation": "inline", "Value": …}``,
as prostasia/rocketchatcsam sends it), with the key in ``Ocp-Apim-Subscription-Key``.
The service takes GIF, JPEG, PNG, BMP and TIFF of at least 160x160 pixels and at most
4 MB (status 3208 otherwise), so what it would refuse is made to fit first, in a thread:

- other formats (WebP, AVIF) are re-encoded as JPEG;
- larger than 4 MB: re-encoded as JPEG, and shrunk until it fits (PhotoDNA is made to
  find resized and recompressed copies, so this costs little);
- smaller than 160x160: upscaled until its short side is 160 (``small = "upscale"``;
  thumbnails of listed pictures are worth the try), or reported ``unchecked``
  (``small = "skip"``). A sliver (its long side would pass 4096) is always unchecked.

Every match is perceptual (``exact: False``): PhotoDNA compares robust hashes by
distance, so a match does not prove the same bytes, and collisions for it have been
made on purpose (Prokos et al., USENIX Security 2023). The policy then withholds
irreversible effects unless a rule says ``irreversible_on_perceptual``.

Statuses (the operation's page): 3000 OK; 3002 bad request parameters; 3004 unknown
error; 3206 not an image; 3208 image size out of range. Anything but 3000 is an error.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Unpack

import aiohttp
from PIL import Image, ImageOps

from relay.checkers.base import MAX_LIST, Checker, CheckerLimits, CheckFailed, text, texts
from relay.errors import DecodeError
from relay.media.decode import DENSE_ABOVE, MAX_PIXELS, MAX_PIXELS_PER_BYTE, Limits, opened
from relay.media.media import Media
from relay.signal import Signal

__all__ = ["DEFAULT_URL", "MAX_BYTES", "MIN_SIDE", "SUPPORTED", "PhotoDna", "Small", "fit"]

DEFAULT_URL = "https://api.microsoftmoderator.com/photodna/v1.0/Match"
#: What the Match operation accepts as it is.
SUPPORTED = frozenset({"image/gif", "image/jpeg", "image/png", "image/bmp", "image/tiff"})
MIN_SIDE = 160
#: "max 4 MB": read as 4,000,000 bytes, the smaller of the two readings.
MAX_BYTES = 4_000_000
#: An upscaled sliver would be a huge picture of nothing much.
_MAX_UPSCALED_SIDE = 4096
_OK = 3000

Small = Literal["upscale", "skip"]


class PhotoDna(Checker):
    """PhotoDNA's Match: a match is a ``match`` signal of ``category`` (perceptual)."""

    limits: ClassVar[CheckerLimits] = {
        "rate_per_second": 5.0,
        "timeout_seconds": 10.0,
        "max_answer_bytes": 65_536,
    }

    def __init__(
        self,
        session: aiohttp.ClientSession,
        key: str,
        *,
        name: str = "photodna",
        url: str = DEFAULT_URL,
        category: str = "csam",
        small: Small = "upscale",
        enhance: bool = False,
        **limits: Unpack[CheckerLimits],
    ) -> None:
        super().__init__(name, session, **limits)
        if small not in ("upscale", "skip"):
            raise ValueError(f'small must be "upscale" or "skip", not {small!r}')
        self.url = url
        self._key = key
        self.category = category
        self.small: Small = small
        self.enhance = enhance

    async def ask(self, media: Media) -> Sequence[Signal]:
        if media.kind != "image":
            return ()  # stills only; the inspector says video and audio went unchecked
        if media.data is None:
            raise CheckFailed("the file's bytes are not at hand (known from the media cache)")
        prepared = await asyncio.to_thread(fit, media.data, media.mime, self.small)
        if isinstance(prepared, str):
            detail = {"matcher": self.name, "reason": prepared}
            return (Signal("unchecked", self.name, detail),)
        image, sent = prepared
        answer = await self.post(
            self.url,
            headers={"Ocp-Apim-Subscription-Key": self._key},
            params={"enhance": "true" if self.enhance else "false"},
            json_body={"DataRepresentation": "inline", "Value": base64.b64encode(image).decode()},
        )
        document = answer.json()
        status = document.get("Status")
        code = status.get("Code") if isinstance(status, dict) else None
        if code != _OK:
            said = text(status.get("Description")) if isinstance(status, dict) else None
            raise CheckFailed(
                f"PhotoDNA status {code!r}" + (f": {said}" if said else ""),
                status_code=code if isinstance(code, int) else None,
            )
        is_match = document.get("IsMatch")
        if not isinstance(is_match, bool):
            raise CheckFailed("unreadable answer: IsMatch is not true or false")
        if not is_match:
            return ()
        return (Signal("match", self.name, self._found(document, sent)),)

    def _found(self, document: dict[str, Any], sent: str) -> dict[str, Any]:
        details = document.get("MatchDetails")
        flags = details.get("MatchFlags") if isinstance(details, dict) else None
        sources: list[str] = []
        violations: list[str] = []
        match_ids: list[str] = []
        for flag in flags[:MAX_LIST] if isinstance(flags, list) else ():
            if not isinstance(flag, dict):
                continue
            source = text(flag.get("Source"))
            if source:
                sources.append(source)
            violations += texts(flag.get("Violations"))
            info = flag.get("AdvancedInfo")
            for item in info[:MAX_LIST] if isinstance(info, list) else ():
                if isinstance(item, dict) and item.get("Key") == "MatchId":
                    value = text(item.get("Value"))
                    if value:
                        match_ids.append(value)
        return {
            "matcher": self.name,
            "category": self.category,
            "exact": False,
            "hash_kind": "photodna",
            "sources": sources,
            "violations": violations[:MAX_LIST],
            "match_ids": match_ids[:MAX_LIST],
            "tracking_id": text(document.get("TrackingId")),
            "sent": sent,
        }


def fit(data: bytes, mime: str | None, small: Small = "upscale") -> tuple[bytes, str] | str:
    """``data`` as the Match operation takes it, and how it was changed ("as is",
    "upscaled…", "re-encoded…"); or why it cannot be checked (a string). CheckFailed
    when the picture cannot be decoded."""
    if mime in SUPPORTED and len(data) <= MAX_BYTES:
        try:
            with opened(data, mime, _LIMITS) as img:
                width, height = img.size
        except DecodeError as exc:
            raise CheckFailed(f"cannot prepare the image: {exc}") from exc
        if min(width, height) >= MIN_SIDE:
            return data, "as is"
    if mime is None:
        raise CheckFailed("cannot prepare the image: its type is unknown")
    try:
        with opened(data, mime, _LIMITS) as img:
            if img.width * img.height > MAX_PIXELS:
                raise CheckFailed(f"cannot prepare the image: over {MAX_PIXELS} pixels")
            img.seek(0)
            picture = ImageOps.exif_transpose(img).convert("RGB")
    except DecodeError as exc:
        raise CheckFailed(f"cannot prepare the image: {exc}") from exc
    width, height = picture.size
    why = []
    if mime not in SUPPORTED:
        why.append(f"{mime} is not taken")
    if len(data) > MAX_BYTES:
        why.append(f"{len(data)} bytes > {MAX_BYTES}")
    if min(width, height) < MIN_SIDE:
        if small == "skip":
            return f"{width}x{height} is smaller than {MIN_SIDE}x{MIN_SIDE} (small = skip)"
        scale = MIN_SIDE / min(width, height)
        size = (math.ceil(width * scale), math.ceil(height * scale))
        if max(size) > _MAX_UPSCALED_SIDE:
            return (
                f"{width}x{height} cannot reach {MIN_SIDE}x{MIN_SIDE} within {_MAX_UPSCALED_SIDE}"
            )
        picture = picture.resize(size, Image.Resampling.LANCZOS)
        why.append(f"upscaled from {width}x{height} to {size[0]}x{size[1]}")
    encoded = _jpeg(picture)
    shrunk = False
    for _ in range(8):  # each step 3/4 the sides: 8 steps is a tenth of them
        if len(encoded) <= MAX_BYTES:
            break
        size = (math.floor(picture.width * 0.75), math.floor(picture.height * 0.75))
        if min(size) < MIN_SIDE:
            break
        picture = picture.resize(size, Image.Resampling.LANCZOS)
        encoded = _jpeg(picture)
        shrunk = True
    if len(encoded) > MAX_BYTES:
        raise CheckFailed(f"cannot prepare the image: still {len(encoded)} bytes as JPEG")
    if shrunk:
        why.append(f"shrunk to {picture.width}x{picture.height}")
    return encoded, "re-encoded as JPEG: " + "; ".join(why)


def _jpeg(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=90)
    return out.getvalue()


# The hasher's own limits: what it decoded, this may decode again.
_LIMITS = Limits(MAX_PIXELS, 1, MAX_PIXELS_PER_BYTE, DENSE_ABOVE)
