"""Animated pictures hashed as short videos, against decoding their frames alone.

An animated GIF, APNG or WebP gets PDQ of its sampled frames and vPDQ of the frame on
screen at each second (relay.media.decode's timeline). Both need every frame up to the
last one hashed decoded, which is the baseline here: Pillow seeking through the same
frames and loading each, nothing converted or hashed. Ours is ``hash_media``, the
whole path (exact digests, sniffing, the timeline, RGB, PDQ). One process, one thread;
the median of ``--reps`` passes, taking turns.

    .venv/bin/python bench/animation.py [--reps 9]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

from PIL import Image

from relay.media.hashes import hash_media
from tests.media.test_video import film

# (format, frames, milliseconds a frame, width, height)
CASES = (
    ("GIF", 60, 100, 320, 240),
    ("GIF", 30, 500, 480, 360),
    ("PNG", 60, 100, 320, 240),
    ("PNG", 30, 500, 480, 360),
    ("WEBP", 60, 100, 320, 240),
    ("WEBP", 30, 500, 480, 360),
)


def animation(fmt: str, frames: int, ms: int, width: int, height: int) -> bytes:
    pictures = [Image.fromarray(film(0, i * ms / 1000, width, height)) for i in range(frames)]
    buf = io.BytesIO()
    pictures[0].save(buf, fmt, save_all=True, append_images=pictures[1:], duration=ms, loop=0)
    return buf.getvalue()


def tiny_frames(count: int) -> bytes:
    """A hostile GIF: ``count`` frames of 2x2 pixels, 27 bytes each."""
    frames = [Image.new("P", (2, 2), i % 256) for i in range(count)]
    buf = io.BytesIO()
    frames[0].save(
        buf, "GIF", save_all=True, append_images=frames[1:], duration=20, loop=0, optimize=False
    )
    return buf.getvalue()


def count_frames(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as img:
        return int(getattr(img, "n_frames", 1))


def decode_alone(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        for index in range(getattr(img, "n_frames", 1)):
            img.seek(index)
            img.load()


def median_ms(work: Callable[[], object], reps: int) -> list[float]:
    taken = []
    for _ in range(reps):
        started = time.perf_counter()
        work()
        taken.append((time.perf_counter() - started) * 1000)
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    ratios = []
    print("case | decoding alone ms | ours ms | PDQ frames | vPDQ frames | ours / alone")
    for fmt, frames, ms, width, height in CASES:
        data = animation(fmt, frames, ms, width, height)
        hashed = hash_media(data)  # warm
        alone: list[float] = []
        ours: list[float] = []
        for _ in range(args.reps):  # taking turns, so load spikes fall on both
            alone += median_ms(lambda d=data: decode_alone(d), 1)
            ours += median_ms(lambda d=data: hash_media(d), 1)
        a, o = statistics.median(alone), statistics.median(ours)
        ratios.append(o / a)
        played = len(hashed.vpdq.frames) if hashed.vpdq else 0
        case = f"{fmt} {frames}x{ms} ms {width}x{height}"
        print(f"{case} | {a:.1f} | {o:.1f} | {len(hashed.pdq)} | {played} | x{o / a:.2f}")
    hostile = tiny_frames(100_000)
    counted = statistics.median(median_ms(lambda: count_frames(hostile), 3))
    hashed_ms = statistics.median(median_ms(lambda: hash_media(hostile), 3))
    print(
        f"hostile GIF of 100,000 2x2 frames ({len(hostile)} bytes): Pillow counting its frames "
        f"{counted:.0f} ms, ours {hashed_ms:.0f} ms (frames reached: at most "
        "max_pixels / 4096, each priced as 64x64)"
    )
    print(f"ours / decoding alone, median over the cases: x{statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
