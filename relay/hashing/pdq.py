"""PDQ, Meta's perceptual photo hash: 256 bits, compared by Hamming distance.

Written as 64 lowercase hex digits, most significant bit first, as ThreatExchange,
the C++ ``pdq-photo-hasher`` and the hash lists exchanged between platforms do.

``Pdq`` is the hash kind; ``hash_frames`` computes it, with its dihedral variants and
quality, on the frames ``relay.media.decode`` decodes (in the hasher's workers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pdqhash

from relay.hashing.base import HashKind, KindIndex, hex_string

if TYPE_CHECKING:
    from relay.media.decode import Frame
    from relay.media.hashes import Hashes

__all__ = ["Pdq", "PdqHash", "hash_frames", "hash_pixels"]


class Pdq(HashKind):
    name = "pdq"
    exact = False
    bits: ClassVar[int] = 256
    hex_length = 64
    aliases = ("hash_pdq",)
    examples = (
        "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22",
        "b0a10efd71cc3f429413d48d0ffffe12e34e0e17ada952a9d29684210aa9e5af",
    )
    # ThreatExchange's PDQ match threshold: edits of one photo (blur, resize,
    # recompression) stay within it; unrelated photos are ~128 bits apart.
    threshold = 31
    # Hashes of images below this PDQ quality are too flat to match on.
    min_quality: ClassVar[int] = 50

    @classmethod
    def validate(cls, value: str) -> str:
        return hex_string(value, cls.bits // 4, "PDQ")

    @classmethod
    def distance(cls, a: str, b: str) -> int:
        return (int(cls.validate(a), 16) ^ int(cls.validate(b), 16)).bit_count()

    @classmethod
    def hash(cls, data: bytes, decoded: Hashes | None) -> tuple[str, ...]:
        """Every hashed frame of quality >= ``min_quality`` (flatter images collide);
        the pixel work was done in the hasher's workers."""
        if decoded is None:
            return ()
        return tuple(f.hash for f in decoded.pdq if f.quality >= cls.min_quality)

    @classmethod
    def variants(cls, decoded: Hashes | None) -> tuple[str, ...]:
        """The first frame rotated and flipped (pdqhash's order), if it is good enough."""
        if decoded is None or not decoded.pdq or decoded.pdq[0].quality < cls.min_quality:
            return ()
        return decoded.pdq_dihedral

    @classmethod
    def missing(cls, quality: int | None) -> str | None:
        return f"PDQ quality {quality} is too low for a perceptual match (needs {cls.min_quality})"

    @classmethod
    def index(cls, hashes: np.ndarray, ids: np.ndarray, radius: int) -> KindIndex:
        from relay.hashing.pdq_index import PdqIndex

        return PdqIndex.build(hashes, ids, radius=radius)


@dataclass(frozen=True, slots=True)
class PdqHash:
    """One frame's PDQ hash (64 lowercase hex digits) and quality (0-100)."""

    hash: str
    quality: int


def hash_frames(
    frames: Iterable[Frame],
) -> tuple[tuple[PdqHash, ...], tuple[str, ...], tuple[tuple[int, int, PdqHash], ...]]:
    """Each hashed frame's hash, the first frame's variants (from the same pass), and
    an animation's timeline: (second, frame number, hash) for each whole second of
    playback (``Frame.seconds``), each frame hashed once whatever it is used for."""
    hashes: list[PdqHash] = []
    dihedral: tuple[str, ...] = ()
    timeline: list[tuple[int, int, PdqHash]] = []
    for frame in frames:
        first = frame.index == 0
        variants, quality = hash_pixels(
            frame.pixels, dihedral=first, full=frame.full, scale=frame.scale
        )
        if first:
            dihedral = variants
        value = PdqHash(variants[0], quality)
        if frame.hashed:
            hashes.append(value)
        timeline.extend((second, frame.index, value) for second in frame.seconds)
    return tuple(hashes), dihedral, tuple(timeline)


# -- computing PDQ ------------------------------------------------------------------
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


def hash_pixels(
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
