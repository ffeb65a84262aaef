"""Hash fetched media in memory: SHA-256 and MD5 of the bytes, PDQ of the picture.

The kind of media is decided from the bytes (magic numbers), never from the URL or
the Content-Type the origin sent: both are the sender's to choose.

PDQ is computed the way the reference hashers do, so our hashes land within a few
bits of the hashes in the lists we match against:

- EXIF orientation is applied first: what viewers show is what gets hashed.
- Every colour mode becomes 8-bit RGB. Alpha is dropped, not composited, as the
  C++ ``pdq-photo-hasher`` (it reads the first three channels) and
  python-threatexchange (it hashes ``np.asarray`` of the image) do, so a
  transparent image that went into a bank hashes the same when it comes back.
- Large images are shrunk before hashing (JPEGs while decoding, in draft mode,
  to as little as 1/8), and PDQ's blur is then computed as it would have run on
  the full-size picture: each shrunk pixel stands for the block it averages.
  PDQ downsamples to 64x64 in the end, so this keeps the hash within a few bits
  of the full-size hash and makes a 12 MP photo about twenty times cheaper.

Nothing here writes to disk: Pillow reads from a BytesIO, and only plugins that
decode in memory are enabled (no EPS/Ghostscript, no external decoders).

Decoding is the costly part and the sender chooses its size, so an image is
refused before its pixels are decoded when it has more than ``max_pixels``, or
when it is large and has far more pixels than its bytes could honestly carry
(``max_pixels_per_byte``). ``survey`` reads the same header to tell a caller what
decoding will cost (relay/media/hasher.py budgets by it).
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pdqhash
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.ImageFile import ImageFile
from PIL.JpegImagePlugin import JpegImageFile

from relay.errors import DecodeError

__all__ = [
    "DENSE_ABOVE",
    "HASH_SIZE",
    "JPEG_HASH_SIZE",
    "MAX_PIXELS",
    "MAX_PIXELS_PER_BYTE",
    "Hashes",
    "Kind",
    "PdqHash",
    "Survey",
    "hash_file",
    "hash_media",
    "sniff",
    "survey",
]

Kind = Literal["image", "video", "audio", "unknown"]

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


@dataclass(frozen=True, slots=True)
class PdqHash:
    """One frame's PDQ hash (64 lowercase hex digits) and quality (0-100)."""

    hash: str
    quality: int


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


@dataclass(frozen=True, slots=True)
class Survey:
    """What hashing some bytes will cost, read from the image's header alone."""

    pixels: int
    """Pixels decoded: every frame decoded on the way to the last one hashed, a
    JPEG at the scale it is decoded at; 0 when not an image."""
    memory: int
    """Bytes held at once while decoding and hashing, estimated from the colour
    mode and format (measured, rounded up); 0 when not an image."""


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
    limits = _Limits(max_pixels, max_frames, max_pixels_per_byte, dense_above)
    with _opened(data, mime, limits) as img:
        pdq, dihedral, width, height, frames = _hash_frames(img, len(data), limits)
    return Hashes(sha256, md5, "image", mime, pdq, dihedral, width, height, frames)


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
    limits = _Limits(max_pixels, max_frames, max_pixels_per_byte, dense_above)
    with _opened(data, mime, limits) as img:
        plan = _plan(img, len(data), limits)
    return Survey(plan.pixels, plan.memory)


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


# -- sniffing -----------------------------------------------------------------


def sniff(data: bytes) -> tuple[Kind, str | None]:
    """``(kind, mime)`` from the first bytes; ``("unknown", None)`` if unrecognised."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "image/png"  # APNG too
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "image/gif"
    if head[:4] == b"RIFF" and len(head) >= 12:
        return _RIFF.get(head[8:12], ("unknown", None))
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image", "image/tiff"  # classic and BigTIFF
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "image", "image/bmp"
    if head[4:8] == b"ftyp":
        return _iso_media(data)
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "video", "video/quicktime"  # QuickTime from before the ftyp box
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "image", "image/jxl"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML; its DocType says which flavour
        return ("video", "video/webm") if b"webm" in head else ("video", "video/x-matroska")
    if head[:4] == b"OggS":
        # The first page holds the first stream's identification header.
        if any(codec in head for codec in (b"\x80theora", b"OVP80", b"BBCD\x00", b"\x01video")):
            return "video", "video/ogg"
        return "audio", "audio/ogg"
    if head[:4] == b"fLaC":
        return "audio", "audio/flac"
    if head[:3] == b"ID3":
        return "audio", "audio/mpeg"
    if head[:4] == b"\x00\x00\x01\xba":
        return "video", "video/mpeg"
    if len(data) > 376 and data[0] == data[188] == data[376] == 0x47:
        return "video", "video/mp2t"  # a sync byte every 188 bytes
    return _mpeg_audio(head)


_RIFF: dict[bytes, tuple[Kind, str | None]] = {
    b"WEBP": ("image", "image/webp"),
    b"WAVE": ("audio", "audio/wav"),
    b"AVI ": ("video", "video/x-msvideo"),
}

# "BM" alone starts too much text; the DIB header's size pins a bitmap down.
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}

# ISO base media file brands (ftyp box), https://mp4ra.org/registered-types/brands.
# mif1/msf1 only say "HEIF"; a compatible avif or heic brand says which codec.
_IMAGE_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
    b"hevc": "image/heic-sequence",
    b"hevx": "image/heic-sequence",
    b"mif1": "image/heif",
    b"msf1": "image/heif-sequence",
}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}


def _iso_media(data: bytes) -> tuple[Kind, str | None]:
    size = int.from_bytes(data[:4], "big")
    major = data[8:12]
    listed = data[16 : min(max(size, 16), 256)]
    brands = {major} | {listed[i : i + 4] for i in range(0, len(listed) - 3, 4)}
    for brand in (b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"):
        if brand in brands:
            return "image", _IMAGE_BRANDS[brand]
    if major in _IMAGE_BRANDS:
        return "image", _IMAGE_BRANDS[major]
    if major in _AUDIO_BRANDS:
        return "audio", "audio/mp4"
    if major == b"qt  ":
        return "video", "video/quicktime"
    return "video", "video/mp4"  # isom, iso2-6, mp41, mp42, avc1, dash, 3gp*, M4V...


def _mpeg_audio(head: bytes) -> tuple[Kind, str | None]:
    """An MPEG audio frame header (MP3 without ID3 tag) or an ADTS one (raw AAC)."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return "unknown", None
    if head[1] & 0xF6 == 0xF0:  # ADTS: 12-bit sync, then layer 00
        return "audio", "audio/aac"
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    if version != 1 and layer != 0 and bitrate != 15 and rate != 3:  # none reserved
        return "audio", "audio/mpeg"
    return "unknown", None


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


# -- decoding and hashing -----------------------------------------------------

_Result = tuple[tuple[PdqHash, ...], tuple[str, ...], int, int, int]


@dataclass(frozen=True, slots=True)
class _Limits:
    max_pixels: int
    max_frames: int
    max_pixels_per_byte: float
    dense_above: int


@contextmanager
def _opened(data: bytes, mime: str, limits: _Limits) -> Iterator[ImageFile]:
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


def _plan(img: ImageFile, size: int, limits: _Limits) -> _Plan:
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
    chosen = _frames_to_hash(frames, width * height, limits.max_pixels, limits.max_frames)
    # Reaching a frame decodes the ones before it (a TIFF page is the exception).
    pixels = (chosen[-1] + 1) * width * height
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


def _hash_frames(img: ImageFile, size: int, limits: _Limits) -> _Result:
    width, height = img.size
    plan = _plan(img, size, limits)
    frames, chosen, scale = plan.frames, plan.chosen, plan.scale
    # Decode now, so that a broken file fails here: getexif() would otherwise
    # load a PNG itself, inside _orientation's guard against broken EXIF.
    img.load()
    orientation = _orientation(img)
    if orientation in (5, 6, 7, 8):  # shown on its side
        width, height = height, width
    hashes: list[PdqHash] = []
    dihedral: tuple[str, ...] = ()
    for index in chosen:
        if index:
            img.seek(index)
            _check_size(img, size, limits)  # a TIFF's pages can each have their own
        pixels, full, shrunk = _pixels(img, orientation)
        if scale > 1:  # drafted: the frame's pixels already stand for blocks of the file's
            full, shrunk = (height, width), scale * shrunk
        # The first frame's variants come from the same pass as its hash.
        variants, quality = _pdq(pixels, dihedral=index == 0, full=full, scale=shrunk)
        if index == 0:
            dihedral = variants
        hashes.append(PdqHash(variants[0], quality))
    return tuple(hashes), dihedral, width, height, frames


def _draft_scale(full: tuple[int, int], drafted: tuple[int, int]) -> int:
    """The factor draft mode shrank by: libjpeg rounds the scaled sides up."""
    for scale in (8, 4, 2):
        if all(-(-side // scale) == got for side, got in zip(full, drafted, strict=True)):
            return scale
    return 1


def _check_size(img: Image.Image, size: int, limits: _Limits) -> None:
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


# -- PDQ ----------------------------------------------------------------------------
#
# PDQ as pdqhash (Meta's C++ reference code, wrapped) computes it, but only what the
# hash reads. The reference blurs the whole luma image with two box-filter passes along
# each axis (the Jarosz tent), then keeps 64x64 of its pixels: at 1 MP that is 13 ms of
# the 16 ms hash_media took, all of it holding the GIL. The blur is linear, so each of
# the 64 kept rows is a weighted sum of a few dozen input rows, and each kept column of
# a few dozen columns: numpy computes just those (1.5 ms at 1 MP), then the same 16x16
# DCT, median threshold and quality metric.
#
# Same sums, another order: the coefficients land within 0.005 of pdqhash's (0.0007
# typically; 200 arrays from the reference photos, 64 to 4096 px a side). Even taken as
# they are, no bit differed over 480 photo arrays at hashing sizes, nor any quality over
# 280; bits did differ on flat pictures (quality <= 6) and on pictures without detail in
# one direction (stripes, a gradient, a flat colour), whose coefficients are rounding
# noise that only pdqhash's own order reproduces (another order puts such hashes 110-136
# bits away). So where a coefficient sits near the median, or a gradient step near a
# whole number, pdqhash itself decides: about 1 photo in 50, 1 in 10 of quality below
# 100, and all of those pictures. With that, all 331 arrays tried (photos at 5-3000 px,
# flat, striped, random) hash exactly as pdqhash hashes them.

# Below this gap between the 128th and 129th coefficient (the median and the next one
# up), in any of the eight variants, pdqhash decides the bits.
_PDQ_MARGIN = 0.002
# The same for the quality's gradient steps (in its units: 100/255 per grey level).
_QUALITY_MARGIN = 0.001
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# pdqhash's DCT matrix, rows for frequencies 1-16 (float32 as its C++ stores it).
_DCT = (
    np.float32(np.sqrt(2.0 / 64))
    * np.cos((np.pi / 2.0 / 64) * np.arange(1, 17)[:, None] * (2 * np.arange(64) + 1))
).astype(np.float32)
_ODD_COLUMN = np.where(np.arange(16) % 2 == 1, 1, -1).astype(np.float32)[None, :]
_ODD_ROW = _ODD_COLUMN.T
_CHECKER = np.where(np.add.outer(np.arange(16), np.arange(16)) % 2 == 1, -1, 1).astype(np.float32)


def _pdq(
    pixels: np.ndarray, dihedral: bool, full: tuple[int, int] | None = None, scale: int = 1
) -> tuple[tuple[str, ...], int]:
    """PDQ of an HxWx3 uint8 array, as pdqhash computes it: the hash, then (if
    ``dihedral``) its turns and flips in pdqhash's order; and the quality.

    ``pixels`` may be a picture of ``full`` (height, width) shrunk by ``scale``, each
    pixel the average of a scale x scale block: the hash is then pdqhash's of the
    full-size picture, as near as the blocks allow.
    """
    if scale == 1:
        full = pixels.shape[:2]
    if full is None:
        raise ValueError("a shrunk picture needs its full size")
    if min(full) < 5:  # the reference's minimum: zero hash, quality 0
        return _pdqhash(pixels, dihedral)
    blurred = _jarosz_64x64(pixels, full, scale)
    quality, steady = _quality(blurred)
    dct = _DCT @ blurred @ _DCT.T
    variants = [dct]
    if dihedral:  # pdqhash's order: rotated 90, 180, 270, flipped x, y, +1, -1 diagonal
        variants += [
            (dct * _ODD_COLUMN).T,
            dct * _CHECKER,
            (dct * _ODD_ROW).T,
            dct * _ODD_ROW,
            dct * _ODD_COLUMN,
            dct.T,
            (dct * _CHECKER).T,
        ]
    flat = np.stack(variants).reshape(len(variants), 256)
    middle = np.partition(flat, (127, 128), axis=1)
    median, above = middle[:, 127:128], middle[:, 128:129]
    steady = steady and bool((above - median >= _PDQ_MARGIN).all())
    # Bit i*16+j is coefficient (i, j) > median; written most significant first.
    hashes = [row.tobytes().hex() for row in np.packbits(flat[:, ::-1] > median, axis=1)]
    if not steady and scale == 1:
        # pdqhash's own summation decides. On shrunk pixels it would hash another
        # picture than the full-size one, further off than these bits.
        return _pdqhash(pixels, dihedral)
    return tuple(hashes), quality


def _pdqhash(pixels: np.ndarray, dihedral: bool) -> tuple[tuple[str, ...], int]:
    if dihedral:
        vectors, quality = pdqhash.compute_dihedral(pixels)
        return tuple(_hex(v) for v in vectors), int(quality)
    vector, quality = pdqhash.compute(pixels)
    return (_hex(vector),), int(quality)


def _jarosz_64x64(pixels: np.ndarray, full: tuple[int, int], scale: int) -> np.ndarray:
    """The 64x64 luma pixels PDQ keeps of its blurred full-size image, float32."""
    rows, row_weights = _taps(pixels.shape[0], full[0], scale)
    columns, column_weights = _taps(pixels.shape[1], full[1], scale)
    kept_rows = np.einsum(
        "kl,klwc->kwc", row_weights, pixels[rows], dtype=np.float32, casting="unsafe"
    )
    luma = kept_rows[..., 0] * _LUMA[0] + kept_rows[..., 1] * _LUMA[1]
    luma += kept_rows[..., 2] * _LUMA[2]
    kept: np.ndarray = np.einsum("kl,ikl->ik", column_weights, luma[:, columns])
    return kept


@lru_cache(maxsize=256)
def _taps(n: int, full: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Along a side of ``n`` pixels that stand for ``full`` pixels, ``scale`` each
    (the last block may be cut short): which pixels each of PDQ's 64 samples reads
    (64xL indices) and with what weight (64xL float32), for its two box-filter passes.

    The full-size weights of a block are summed onto the pixel that averages it:
    exact where a weight is even across its block, off by the block's detail times
    the change of weight across it elsewhere (at a window's ends). Cached: photo
    sizes repeat, and the arrays are never written to.
    """
    if scale == 1:
        return tuple(map(_frozen, _full_taps(n)))  # type: ignore[return-value]
    p, w = _full_taps(full)
    q = np.minimum(p // scale, n - 1)
    start = q[:, 0]
    span = int((q[:, -1] - start).max()) + 1
    start = np.minimum(start, n - span)
    weights = np.zeros((64, span), dtype=np.float64)
    samples = np.repeat(np.arange(64), p.shape[1])
    np.add.at(weights, (samples, (q - start[:, None]).ravel()), w.ravel())
    return _frozen(start[:, None] + np.arange(span)), _frozen(weights.astype(np.float32))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _full_taps(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``_taps`` of a side of ``n`` pixels at full size.

    The reference's box filter (``box1DFloat``) of window ``full`` averages pixels
    x - (full - half) to x + half - 1, fewer at the edges; the sample k is pixel
    int((k + 0.5) * n / 64) of the second pass.
    """
    full = (n + 127) // 128  # computeJaroszFilterWindowSize(n, 64)
    half = (full + 2) // 2
    x = np.arange(n)
    low = np.maximum(0, x - (full - half))
    high = np.minimum(n - 1, x + half - 1)
    count = high - low + 1
    centre = ((np.arange(64) + 0.5) * n / 64).astype(np.intp)
    # The second pass averages the first pass's pixels j around the centre...
    j = low[centre, None] + np.arange(full)
    j_inside = j <= high[centre, None]
    j = np.minimum(j, n - 1)
    # ...and each of those averages the input pixels p around j.
    start = low[low[centre]]
    span = int((high[high[centre]] - start).max()) + 1
    start = np.minimum(start, n - span)
    p = start[:, None] + np.arange(span)
    read = (low[j][:, :, None] <= p[:, None, :]) & (p[:, None, :] <= high[j][:, :, None])
    weights = j_inside[:, :, None] * read / (count[j][:, :, None] * count[centre, None, None])
    return p, weights.sum(axis=1).astype(np.float32)


def _quality(blurred: np.ndarray) -> tuple[int, bool]:
    """pdqhash's quality metric, and whether rounding elsewhere could have changed it."""
    steps = np.concatenate(
        [
            ((blurred[:-1, :] - blurred[1:, :]) * np.float32(100) / np.float32(255)).ravel(),
            ((blurred[:, :-1] - blurred[:, 1:]) * np.float32(100) / np.float32(255)).ravel(),
        ]
    )
    total = int(np.abs(steps.astype(np.int32)).sum())  # C's int(): toward zero
    size = np.abs(steps)
    fraction = size % 1  # a step that could round to the next whole number or back
    close = (size > 1 - _QUALITY_MARGIN) & (
        (fraction < _QUALITY_MARGIN) | (fraction > 1 - _QUALITY_MARGIN)
    )
    near = int(close.sum())
    quality = min(total // 90, 100)
    return quality, min((total - near) // 90, 100) == min((total + near) // 90, 100)


def _hex(vector: np.ndarray) -> str:
    """pdqhash's 256 bits, most significant first, as 64 hex digits."""
    return np.packbits(np.asarray(vector, dtype=np.uint8)).tobytes().hex()
