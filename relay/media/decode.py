"""Opening pictures within limits: the decoded pixels PDQ is computed on.

Pictures are decoded the way the reference hashers read them, so our hashes land
within a few bits of the hashes in the lists we match against:

- EXIF orientation is applied first: what viewers show is what gets hashed.
- Every colour mode becomes 8-bit RGB. Alpha is dropped, not composited, as the
  C++ ``pdq-photo-hasher`` (it reads the first three channels) and
  python-threatexchange (it hashes ``np.asarray`` of the image) do, so a
  transparent image that went into a bank hashes the same when it comes back.
- Large images are shrunk before hashing (JPEGs while decoding, in draft mode,
  to as little as 1/8); each ``Frame`` says what full-size picture its pixels
  stand for, so that PDQ (``relay.hashing.pdq``) blurs as it would have on the
  full-size picture. PDQ downsamples to 64x64 in the end, so this keeps the hash
  within a few bits of the full-size hash and makes a 12 MP photo about twenty
  times cheaper.

Nothing here writes to disk: Pillow reads from a BytesIO, and only plugins that
decode in memory are enabled (no EPS/Ghostscript, no external decoders).

Decoding is the costly part and the sender chooses its size, so an image is
refused before its pixels are decoded when it has more than ``max_pixels``, or
when it is large and has far more pixels than its bytes could honestly carry
(``max_pixels_per_byte``). ``survey`` reads the same header to tell a caller what
decoding will cost (relay/media/hasher.py budgets by it).

An animation (GIF, APNG, animated WebP) is also a short video: asked for its
timeline, ``decoded`` walks its frames in order up to the last one hashed and
says which whole seconds of playback each is on screen at, so that vPDQ can hash
one frame a second of it as it hashes a video's. Walking costs no more than
reaching the last frame hashed did: each frame is drawn over the one before, so
reaching frame n decodes every frame before it anyway (the survey's price).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.ImageFile import ImageFile
from PIL.JpegImagePlugin import JpegImageFile

from relay.errors import DecodeError
from relay.media.sniff import sniff

__all__ = [
    "ANIMATED_FORMATS",
    "DENSE_ABOVE",
    "HASH_SIZE",
    "JPEG_HASH_SIZE",
    "MAX_PIXELS",
    "MAX_PIXELS_PER_BYTE",
    "Frame",
    "Limits",
    "Picture",
    "Survey",
    "decoded",
    "opened",
    "survey",
]

# JPEGs decode at 1/2, 1/4 or 1/8 scale with their short side kept >= this; other
# images are box-shrunk by a whole factor keeping it >= HASH_SIZE. PDQ then reads
# them as the full-size picture (see _taps). Against pdqhash at full size, on the
# corpus of bench/hashing.py: at most 6 bits off, where hashing the shrunk pixels
# as they were cost up to 20-46 bits. Smaller JPEG scales are where
# the time goes (a 1 MP JPEG decodes 1.5x faster at 1/2 scale); a smaller box
# shrink gains little, as a PNG's time is its full decode. Pillow shrinks while
# decoding only JPEG (draft); WebP, AVIF, PNG, GIF, TIFF and BMP decode in full
# (11-42 ms a megapixel, 4.4-17.6 bytes a pixel in RGB: see _BYTES_PER_PIXEL),
# which is what MAX_PIXELS and MAX_PIXELS_PER_BYTE below bound.
JPEG_HASH_SIZE = 256
HASH_SIZE = 512

# The most pixels an image (one frame; a whole animation's decoded frames) may
# have: 7680x4320, what Mastodon accepts of local and remote media alike
# (Attachmentable::MAX_MATRIX_LIMIT). Larger, Mastodon shows a link, not a picture.
MAX_PIXELS = 33_177_600
# Above 3840x2160 (the size Mastodon stores originals at, so nothing a Mastodon
# server serves), a frame needs a byte per MAX_PIXELS_PER_BYTE pixels. Screenshots
# of that size take 25-140 pixels a byte, photos under 10; a flat colour in RGB
# PNG, 300 (deflate's limit is 344), and far more as a palette PNG, GIF or WebP.
DENSE_ABOVE = 8_294_400
MAX_PIXELS_PER_BYTE = 256

#: Pillow formats whose frames are an animation played in time (a TIFF's pages and
#: an MPO's views are not).
ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
# What an animation's frame costs at the least, in pixels of decoding: seeking to it and
# loading it take 20-40 us however small it is (as long as decoding 64x64 pixels), so a
# file of many tiny frames is priced, and its frames reached, as if each had this many.
_MIN_FRAME_PIXELS = 4096
# Browsers show a frame of 10 ms or less (GIF's "as fast as you can") for 100 ms.
_FASTEST_MS = 10
_SHOWN_MS = 100


@dataclass(frozen=True, slots=True)
class Survey:
    """What hashing some bytes will cost, read from the image's header alone."""

    pixels: int
    """Pixels decoded: every frame decoded on the way to the last one hashed, a
    JPEG at the scale it is decoded at; 0 when not an image."""
    memory: int
    """Bytes held at once while decoding and hashing, estimated from the colour
    mode and format (measured, rounded up); 0 when not an image."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a picture may cost to decode (see hash_media's arguments)."""

    max_pixels: int
    max_frames: int
    max_pixels_per_byte: float
    dense_above: int


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame to hash: upright 8-bit RGB pixels (HxWx3), each pixel the average of
    a ``scale`` x ``scale`` block of a ``full`` (height, width) picture."""

    index: int
    """The frame's number in the file (0: the first, the one shown)."""
    pixels: np.ndarray
    full: tuple[int, int]
    scale: int
    seconds: tuple[int, ...] = ()
    """An animation's frame: the whole seconds of playback it is on screen at (vPDQ
    hashes the frame shown at each); empty otherwise."""
    hashed: bool = True
    """One of the frames hashed as PDQ; False: walked for the timeline alone."""


@dataclass(frozen=True, slots=True)
class Picture:
    """An opened image as displayed (after EXIF orientation, before any shrinking),
    and the frames chosen to hash, decoded one at a time as they are read."""

    width: int
    height: int
    frames: int
    """Frames in the file (1 for a still image)."""
    chosen: Iterator[Frame]
    reached: int = 1
    """Frames decoded to reach the last one hashed: fewer than ``frames`` when the
    pixel budget sampled an animation's start only."""


def survey(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    max_frames: int = 8,
    max_pixels_per_byte: float = MAX_PIXELS_PER_BYTE,
    dense_above: int = DENSE_ABOVE,
) -> Survey:
    """What ``hash_media(data, ...)`` with the same limits will decode, from the
    header alone; DecodeError where hash_media would refuse ``data`` before
    decoding it (a bomb, no decoder, an unreadable header)."""
    kind, mime = sniff(data)
    if kind != "image" or mime is None:
        return Survey(0, 0)
    limits = Limits(max_pixels, max_frames, max_pixels_per_byte, dense_above)
    with opened(data, mime, limits) as img:
        plan = _plan(img, len(data), limits)
    return Survey(plan.pixels, plan.memory)


# The Pillow plugins allowed to read untrusted bytes; each decodes in memory.
# ("JPEG" also opens MPO, multi-picture JPEGs from cameras.)
_PILLOW_FORMATS: dict[str, tuple[str, ...]] = {
    "image/jpeg": ("JPEG",),
    "image/png": ("PNG",),
    "image/gif": ("GIF",),
    "image/webp": ("WEBP",),
    "image/avif": ("AVIF",),
    "image/bmp": ("BMP",),
    "image/tiff": ("TIFF",),
}


@contextmanager
def opened(data: bytes, mime: str, limits: Limits) -> Iterator[ImageFile]:
    """The image, opened lazily (header read, nothing decoded); whatever goes
    wrong inside, opening or decoding, comes out as DecodeError."""
    formats = _PILLOW_FORMATS.get(mime)
    if formats is None:
        raise DecodeError(f"cannot decode {mime}: no decoder for it")
    max_pixels = limits.max_pixels
    # What a warning does depends on the process's filters; here it must not.
    # Pillow reports images above its process-wide Image.MAX_IMAGE_PIXELS with a
    # DecompressionBombWarning (an error above twice that): make it an exception.
    # Its UserWarnings are about the sender's broken file (corrupt EXIF, bad MPO
    # header) and must neither fail nor fill the log: ignore them. Python 3.11's
    # catch_warnings is process-wide: a thread racing this one can at worst lose
    # these filters for a moment, and our own size check below still holds.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=formats) as img:
                yield img
        except DecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            pixels = _bomb_size(exc, data, formats)
            raise DecodeError(f"decompression bomb: {pixels} exceeds {max_pixels}") from exc
        except UnidentifiedImageError as exc:
            raise DecodeError(f"cannot decode {mime}: not a readable {mime} file") from exc
        except Exception as exc:
            # Pillow's plugins report broken input as OSError, SyntaxError,
            # ValueError, EOFError, struct.error, IndexError... (and MemoryError).
            # Some quote bytes from the file (b'...'): those stay out of the logs.
            reason = _BYTES_LITERAL.sub("<bytes>", f"{type(exc).__name__}: {exc}")[:200]
            raise DecodeError(f"cannot decode {mime}: {reason}") from exc


_BYTES_LITERAL = re.compile(r"\bb'(?:[^'\\]|\\.)*'" + r'|\bb"(?:[^"\\]|\\.)*"')


def _bomb_size(exc: Exception, data: bytes, formats: tuple[str, ...]) -> str:
    """The size of an image Image.open refused as a bomb, worded as our own check words it.

    The plugin's class reads the header without Image.open's pixel check; failing
    that, Pillow's message has the pixel count.
    """
    try:
        factory, _ = Image.OPEN[formats[0]]
        with factory(io.BytesIO(data), "") as img:
            return f"{img.size[0]}x{img.size[1]} pixels"
    except Exception:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return f"{found[1]} pixels" if found else "too many pixels"


@dataclass(frozen=True, slots=True)
class _Plan:
    frames: int
    chosen: list[int]
    """The frames hashed, first first."""
    scale: int
    """What a JPEG is shrunk by while decoding (1, 2, 4 or 8)."""
    pixels: int
    memory: int
    """As in Survey."""


def _plan(img: ImageFile, size: int, limits: Limits) -> _Plan:
    """What will be decoded, from the header of an image of ``size`` bytes; a JPEG
    is set to decode in draft mode. Refuses a bomb."""
    width, height = img.size
    _check_size(img, size, limits)
    if width < 1 or height < 1:
        raise DecodeError(f"cannot decode image: it is {width}x{height} pixels")
    frames = getattr(img, "n_frames", 1)
    if isinstance(img, JpegImageFile):
        # libjpeg decodes straight to 1/2, 1/4 or 1/8 scale (both sides kept >=
        # JPEG_HASH_SIZE), each pixel the block's average, near enough.
        # Only the first picture of an MPO is hashed: it is the one shown.
        img.draft("RGB", (JPEG_HASH_SIZE, JPEG_HASH_SIZE))
        pixels = img.width * img.height
        memory = _memory(img, pixels, animated=False)
        if img.info.get("progressive"):
            # Decoding a progressive JPEG keeps all its coefficients, drafted or not.
            memory += int(width * height * _coefficient_bytes(img))
        scale = _draft_scale((width, height), img.size)
        return _Plan(frames, [0], scale, pixels, memory)
    frame_pixels = width * height if frames == 1 else max(width * height, _MIN_FRAME_PIXELS)
    chosen = _frames_to_hash(frames, frame_pixels, limits.max_pixels, limits.max_frames)
    # Reaching a frame decodes the ones before it (a TIFF page is the exception).
    pixels = (chosen[-1] + 1) * frame_pixels
    return _Plan(frames, chosen, 1, pixels, _memory(img, width * height, animated=frames > 1))


# Bytes held per pixel of a frame while it is decoded, made RGB and hashed, by
# colour mode (Pillow keeps RGB as 4 bytes; P goes through RGBA; 16-bit and float
# grey through numpy), measured at 12 MP and rounded up: RGB 4.4, L 5.4, P 9.1,
# RGBA 8.4, I;16 9.1, F 32.9.
_BYTES_PER_PIXEL = {"1": 6, "L": 6, "P": 10, "PA": 10, "LA": 9, "La": 9, "RGB": 5}
_BYTES_PER_PIXEL.update({"RGBA": 9, "RGBa": 9, "CMYK": 9, "YCbCr": 9, "I;16": 10})
_BYTES_PER_PIXEL.update({"I;16B": 10, "I;16L": 10, "I;16N": 10, "I": 34, "F": 34})
# Decoders that hold copies of their own (WebP 17.6 for RGB, AVIF 9.6).
_DECODER_BYTES_PER_PIXEL = {"WEBP": 13, "AVIF": 6}
# Animations keep the previous frame and a canvas (GIF, APNG 15.7-18.4 for RGB; WebP 38).
_ANIMATION_BYTES_PER_PIXEL = {"WEBP": 21}
_FIXED_BYTES = 4 << 20  # PDQ's arrays, libjpeg's buffers, Python's objects


def _memory(img: ImageFile, frame_pixels: int, animated: bool) -> int:
    per_pixel = _BYTES_PER_PIXEL.get(img.mode, 34) + _DECODER_BYTES_PER_PIXEL.get(
        img.format or "", 0
    )
    if animated:
        per_pixel += _ANIMATION_BYTES_PER_PIXEL.get(img.format or "", 14)
    if "exif" in img.info:
        per_pixel += 4  # the upright copy, if EXIF turns it
    return _FIXED_BYTES + frame_pixels * per_pixel


def _coefficient_bytes(img: JpegImageFile) -> float:
    """Bytes per (full-size) pixel of a JPEG's coefficients: two per sample."""
    layers = img.layer[-img.layers :] if img.layers else []  # the last frame header's
    across = max((max(h, 1) for _, h, _, _ in layers), default=1)
    down = max((max(v, 1) for _, _, v, _ in layers), default=1)
    return 2 * sum(max(h, 1) * max(v, 1) for _, h, v, _ in layers) / (across * down)


def decoded(img: ImageFile, size: int, limits: Limits, max_seconds: int = 0) -> Picture:
    """The picture ``img`` (of ``size`` bytes) shows, its pixels decoded now (a broken
    file fails here) and its frames as they are read; DecodeError for a bomb.

    ``max_seconds`` > 0: an animation's frames come with its timeline (``Frame.seconds``,
    at most that many seconds in all), every frame on screen at a whole second among
    them."""
    width, height = img.size
    plan = _plan(img, size, limits)
    # Decode now, so that a broken file fails here: getexif() would otherwise
    # load a PNG itself, inside _orientation's guard against broken EXIF.
    img.load()
    orientation = _orientation(img)
    if orientation in (5, 6, 7, 8):  # shown on its side
        width, height = height, width
    upright = (height, width)
    reached = plan.chosen[-1] + 1
    if max_seconds > 0 and plan.frames > 1 and img.format in ANIMATED_FORMATS:
        timeline = _timeline(img, size, limits, plan, orientation, max_seconds)
        return Picture(width, height, plan.frames, timeline, reached)
    chosen = _frames(img, size, limits, plan, orientation, upright)
    return Picture(width, height, plan.frames, chosen, reached)


def _frames(
    img: ImageFile,
    size: int,
    limits: Limits,
    plan: _Plan,
    orientation: int,
    upright: tuple[int, int],
) -> Iterator[Frame]:
    for index in plan.chosen:
        if index:
            img.seek(index)
            _check_size(img, size, limits)  # a TIFF's pages can each have their own
        pixels, full, shrunk = _pixels(img, orientation)
        if plan.scale > 1:  # drafted: the frame's pixels already stand for blocks of the file's
            full, shrunk = upright, plan.scale * shrunk
        yield Frame(index, pixels, full, shrunk)


def _timeline(
    img: ImageFile, size: int, limits: Limits, plan: _Plan, orientation: int, max_seconds: int
) -> Iterator[Frame]:
    """Every frame up to the last one hashed, in order; those hashed or on screen at a
    whole second of playback are yielded, each with those seconds."""
    hashed = set(plan.chosen)
    clock = 0.0  # milliseconds of playback before this frame
    left = max_seconds
    for index in range(plan.chosen[-1] + 1):
        if index:
            img.seek(index)
            _check_size(img, size, limits)
        img.load()  # WebP reads a frame's duration as it decodes it
        start = math.ceil(clock / 1000)
        clock += _shown_for(img)
        seconds = tuple(range(start, min(math.ceil(clock / 1000), start + left)))
        left -= len(seconds)
        if seconds or index in hashed:  # not an animation's JPEG: never drafted
            pixels, full, shrunk = _pixels(img, orientation)
            yield Frame(index, pixels, full, shrunk, seconds, index in hashed)


def _shown_for(img: Image.Image) -> float:
    """How long a browser shows the current frame, in milliseconds."""
    duration = img.info.get("duration")
    if not isinstance(duration, int | float) or not math.isfinite(duration):
        return _SHOWN_MS
    return _SHOWN_MS if duration <= _FASTEST_MS else float(duration)


def _draft_scale(full: tuple[int, int], drafted: tuple[int, int]) -> int:
    """The factor draft mode shrank by: libjpeg rounds the scaled sides up."""
    for scale in (8, 4, 2):
        if all(-(-side // scale) == got for side, got in zip(full, drafted, strict=True)):
            return scale
    return 1


def _check_size(img: Image.Image, size: int, limits: Limits) -> None:
    """Refuse a frame of more than ``max_pixels``, or a large one of more pixels
    than ``size`` bytes carry, before it is decoded."""
    pixels = img.width * img.height
    if pixels > limits.max_pixels:
        raise DecodeError(
            f"decompression bomb: {img.width}x{img.height} pixels exceeds {limits.max_pixels}"
        )
    if pixels > limits.dense_above and pixels > limits.max_pixels_per_byte * size:
        raise DecodeError(
            f"decompression bomb: {img.width}x{img.height} pixels from {size} bytes "
            f"({pixels // max(size, 1)} pixels a byte; above {limits.dense_above} pixels, "
            f"at most {limits.max_pixels_per_byte:g})"
        )


def _frames_to_hash(frames: int, frame_pixels: int, max_pixels: int, max_frames: int) -> list[int]:
    """Up to ``max_frames`` frame numbers spread evenly, the first always among them.

    Reaching frame n decodes every frame before it (animation frames are drawn
    over the previous ones), so only the frames reachable within ``max_pixels``
    decoded in all are considered: a long animation is sampled from its start.
    """
    reachable = max(1, min(frames, max_pixels // max(frame_pixels, 1)))
    count = max(1, min(max_frames, reachable))
    if count == 1:
        return [0]
    return sorted({round(i * (reachable - 1) / (count - 1)) for i in range(count)})


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is ignored, as viewers ignore it
        return 1


def _pixels(img: ImageFile, orientation: int) -> tuple[np.ndarray, tuple[int, int], int]:
    """The current frame, upright, in RGB, shrunk: the HxWx3 uint8 array PDQ wants;
    its height and width before shrinking, and the factor it was shrunk by."""
    img.load()
    frame: Image.Image = img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        frame = ImageOps.exif_transpose(img)
    frame = _to_rgb(frame)
    # Shrink by a whole factor, box-filtered (each pixel its block's average, as
    # _taps assumes), keeping the short side >= HASH_SIZE (and the long side <=
    # 8 * HASH_SIZE for panoramas).
    full = (frame.height, frame.width)
    factor = max(min(frame.size) // HASH_SIZE, -(-max(frame.size) // (8 * HASH_SIZE)))
    if factor < 2:
        return np.asarray(frame, dtype=np.uint8), full, 1
    return np.asarray(frame.reduce(factor), dtype=np.uint8), full, factor


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB, alpha dropped; deeper greys scaled down, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        # 16-bit grey keeps its top byte; Pillow's own I;16 -> L clips at 255.
        grey = np.asarray(img).astype(np.uint16) >> 8
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_grey_to_bytes(np.asarray(img))).convert("RGB")
    if mode in ("P", "PA", "RGBa", "La"):
        # Palette transparency and premultiplied alpha go through straight alpha
        # (Pillow warns when a palette with transparency goes straight to RGB).
        img = img.convert("LA" if mode == "La" else "RGBA")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise DecodeError(f"cannot decode image: unsupported colour mode {mode}") from exc


def _grey_to_bytes(values: np.ndarray) -> np.ndarray:
    """32-bit integer or float grey to 0-255, from the range its values suggest.

    Integers above 255 are taken as 16-bit (what 16-bit PNG and TIFF hold),
    floats no larger than 1.0 as 0-1 (TIFF's convention), anything else as 0-255.
    """
    floating = np.issubdtype(values.dtype, np.floating)
    grey = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(grey.max())
    if floating and 0.0 < top <= 1.0:
        grey = grey * 255.0
    elif top > 255.0:
        grey = grey / 257.0
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
