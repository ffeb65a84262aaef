"""What hash_media refuses to decode: too many pixels, or too many for the bytes.

The images are flat colours and blank screens drawn with Pillow. A refusal is
shown to come before decoding by damaging the compressed pixels: decoding them
would fail with another message.
"""

from __future__ import annotations

import functools
import random
import struct

import pytest
from PIL import Image, ImageDraw, ImageFont

from relay.errors import DecodeError
from relay.media.hashes import hash_media
from tests.media.test_image import bomb_png, encode


@functools.cache
def solid_7000() -> bytes:
    """The review's image: 7000x7000 of one colour, about 160 kB as PNG."""
    return encode(Image.new("RGB", (7000, 7000), (30, 120, 200)), "PNG")


def damaged(png: bytes) -> bytes:
    """The same PNG with the middle of its compressed pixels scrambled: its header
    reads as before, and decoding it fails."""
    at = png.index(b"IDAT") + 4
    length = struct.unpack(">I", png[at - 8 : at - 4])[0]
    middle = at + length // 2
    noise = bytes(random.Random(1).randrange(256) for _ in range(64))
    return png[:middle] + noise + png[middle + 64 :]


def test_the_default_limit_is_what_mastodon_accepts() -> None:
    # Mastodon refuses images of more than 7680x4320 pixels; so do we, by default.
    with pytest.raises(
        DecodeError, match=r"^decompression bomb: 7680x4321 pixels exceeds 33177600$"
    ):
        hash_media(bomb_png(7680, 4321))


def test_the_flat_7000_square_is_refused_before_decoding() -> None:
    data = solid_7000()
    with pytest.raises(
        DecodeError, match=r"^decompression bomb: 7000x7000 pixels exceeds 33177600$"
    ):
        hash_media(damaged(data))
    # Where the pixel limit lets it through, its size is absurd for its bytes.
    size = len(data)
    expected = (
        f"decompression bomb: 7000x7000 pixels from {size} bytes "
        f"({49_000_000 // size} pixels a byte; above 8294400 pixels, at most 256)"
    )
    with pytest.raises(DecodeError) as caught:
        hash_media(damaged(data), max_pixels=50_000_000)
    assert str(caught.value) == expected
    with pytest.raises(DecodeError) as caught:
        hash_media(data, max_pixels=50_000_000)
    assert str(caught.value) == expected


def grey(size: tuple[int, int]) -> Image.Image:
    return Image.new("L", size, 128)


# 4000x3000: below the pixel limit, above 3840x2160. Each is a few kB.
DENSE = {
    "1-bit PNG": lambda: bomb_png(4000, 3000),
    "palette PNG": lambda: encode(grey((4000, 3000)).convert("P"), "PNG"),
    "GIF": lambda: encode(grey((4000, 3000)).convert("P"), "GIF"),
    "lossless WebP": lambda: encode(grey((4000, 3000)).convert("RGB"), "WEBP", lossless=True),
    "deflated TIFF": lambda: encode(grey((4000, 3000)), "TIFF", compression="tiff_adobe_deflate"),
}


@pytest.mark.parametrize("kind", DENSE)
def test_a_file_with_far_too_few_bytes_for_its_pixels_is_refused(kind: str) -> None:
    data = DENSE[kind]()
    assert len(data) < 50_000
    with pytest.raises(DecodeError, match=r"^decompression bomb: 4000x3000 pixels from \d+ bytes"):
        hash_media(data)


def screenshot(size: tuple[int, int], lines: int) -> bytes:
    """A dark desktop: a title bar, a sidebar and some lines of text."""
    img = Image.new("RGB", size, (30, 30, 36))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, size[0], 48), fill=(50, 50, 60))
    draw.rectangle((0, 48, 300, size[1]), fill=(40, 40, 48))
    font = ImageFont.load_default(size=16)
    words = random.Random(2).choices(["sluice", "relay", "inbound", "door", "hash", "a"], k=400)
    for i in range(lines):
        text = " ".join(words[i * 15 : i * 15 + 15])
        draw.text((320, 60 + 22 * i), text, fill=(220, 220, 220), font=font)
    return encode(img, "PNG")


def test_a_large_flat_screenshot_is_hashed() -> None:
    data = screenshot((4096, 2304), lines=20)
    pixels = 4096 * 2304
    assert 64 < pixels / len(data) < 256  # flat, but real: measured 100
    got = hash_media(data)
    assert (got.width, got.height) == (4096, 2304) and got.pdq


def test_a_blank_screen_no_larger_than_3840x2160_is_hashed() -> None:
    # 7500 pixels a byte, but small enough that decoding it costs little.
    data = encode(Image.new("P", (3840, 2160), 0), "PNG")
    assert 3840 * 2160 / len(data) > 1000
    got = hash_media(data)
    assert (got.width, got.height) == (3840, 2160) and got.pdq[0].quality == 0
