"""vPDQ of videos: decoding within limits (relay.media.video) and hashing and
matching (relay.hashing.vpdq).

The videos are drawn here and encoded with PyAV in memory: moving colour bands and
stripes, drawn in coordinates relative to the frame so that the same film at
another size is the same picture. Hostile files are made from them by cutting and
patching bytes.
"""

from __future__ import annotations

import functools
import io
import os
import random
import re
import tempfile
import time

import av
import numpy as np
import pytest
from PIL import Image

from relay.errors import DecodeError
from relay.hashing.pdq import Pdq
from relay.hashing.vpdq import (
    VpdqFrame,
    VpdqHash,
    format_hash,
    hash_video,
    match,
    parse,
)
from relay.media.video import VideoLimits, clip


def film(seed: int, t: float, width: int, height: int) -> np.ndarray:
    """Frame at ``t`` seconds of film ``seed``: bands and rings that move, HxWx3."""
    x = np.arange(width)[None, :] * 320 / width
    y = np.arange(height)[:, None] * 240 / height
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (np.sin((x + 40 * t) / (9 + seed * 3)) + 1) * 120
    img[..., 1] = (np.cos((y - 25 * t) / (13 + seed)) + 1) * 120
    img[..., 2] = ((x * y) // (50 + seed * 7) + int(t * 30)) % 255
    return img


def encode(
    seed: int = 0,
    seconds: float = 6,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    codec: str = "libx264",
    container: str = "mp4",
    bit_rate: int | None = None,
    pix_fmt: str = "yuv420p",
) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        if bit_rate:
            stream.bit_rate = bit_rate
        for i in range(round(seconds * fps)):
            pixels = film(seed, i / fps, *size)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def animation(fmt: str, seed: int = 0, frames: int = 6, ms: int = 500) -> bytes:
    """An animated GIF, APNG or WebP of the film, a frame every ``ms``."""
    pictures = [Image.fromarray(film(seed, i * ms / 1000, 160, 120)) for i in range(frames)]
    buf = io.BytesIO()
    pictures[0].save(buf, fmt, save_all=True, append_images=pictures[1:], duration=ms, loop=0)
    return buf.getvalue()


@functools.cache
def mp4() -> bytes:
    return encode()


@functools.cache
def reencoded() -> bytes:
    """The same film, larger, as VP9 in WebM at a low bitrate."""
    return encode(size=(480, 360), codec="libvpx-vp9", container="webm", bit_rate=150_000)


@functools.cache
def other() -> bytes:
    return encode(seed=3)


@functools.cache
def mjpeg() -> bytes:
    """Motion JPEG in QuickTime: each frame a JPEG whose header gives its size."""
    return encode(codec="mjpeg", container="mov", pix_fmt="yuvj420p", seconds=2, fps=5)


# -- hashing and matching -------------------------------------------------------------


def test_one_frame_a_second_is_hashed() -> None:
    value = hash_video(mp4())
    assert value.complete
    assert [f.number for f in value.frames] == [0, 10, 20, 30, 40, 50]
    assert [f.timestamp for f in value.frames] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(f.quality >= 50 and re.fullmatch(r"[0-9a-f]{64}", f.hash) for f in value.frames)


def test_the_same_video_reencoded_matches() -> None:
    ours, theirs = hash_video(mp4()), hash_video(reencoded())
    assert len(ours.frames) == len(theirs.frames) == 6
    result = match(ours, theirs)
    assert result.query_percent >= 80 and result.compared_percent >= 80
    assert result.matched
    assert match(theirs, ours).matched


def test_a_different_video_does_not_match() -> None:
    ours, theirs = hash_video(mp4()), hash_video(other())
    result = match(ours, theirs)
    assert result.query_percent < 80 and result.compared_percent < 80
    assert not result.matched
    # Unrelated pictures, far beyond PDQ's threshold.
    assert min(Pdq.distance(a.hash, b.hash) for a in ours.frames for b in theirs.frames) > 31


def test_a_clip_of_a_video_matches_only_one_way() -> None:
    # A video of 12 s whose first 6 are the clip and the rest another film.
    clip_, rest = hash_video(mp4()), hash_video(other())
    whole = VpdqHash((*clip_.frames, *rest.frames))
    result = match(clip_, whole)
    assert result == (100.0, 50.0, False)
    assert match(whole, clip_) == (50.0, 100.0, False)
    assert match(clip_, whole, threshold=50).matched


def test_flat_frames_are_left_out_of_the_shares() -> None:
    good = hash_video(mp4())
    flat = VpdqFrame(99, 0, "0" * 64, 9.0)
    padded = VpdqHash((*good.frames, flat, flat, flat))
    assert match(padded, good) == (100.0, 100.0, True)
    nothing = VpdqHash((flat,))
    assert match(nothing, nothing) == (0.0, 0.0, False)
    assert match(nothing, nothing, quality=0).matched


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_pictures_are_short_videos(fmt: str) -> None:
    # Six frames, half a second each: three seconds, sampled at 0, 1 and 2 s.
    value = hash_video(animation(fmt))
    assert [(f.number, f.timestamp) for f in value.frames] == [(0, 0.0), (2, 1.0), (4, 2.0)]
    assert value.complete
    assert match(value, hash_video(animation(fmt, seed=3))).matched is False


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_animation_made_of_a_video_matches_the_video(fmt: str) -> None:
    # 160x120 at 2 frames a second, lossless (APNG) or lossy (WebP). A GIF of this
    # film is 26-46 bits off a frame: 256 colours are too few for its gradients.
    animated = hash_video(animation(fmt, frames=12))
    assert match(animated, hash_video(mp4())).matched


def test_the_file_format_round_trips() -> None:
    value = hash_video(mp4())
    text = format_hash(value)
    lines = text.splitlines()
    assert len(lines) == 6
    assert lines[1] == f"10,{value.frames[1].quality},{value.frames[1].hash},1.000"
    assert parse(text) == VpdqHash(value.frames)
    assert parse("\n" + text.upper().replace("\n", "\r\n")) == VpdqHash(value.frames)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("0,100," + "a" * 64, "want frame_number"),
        ("x,100," + "a" * 64 + ",0.0", "frame number"),
        ("0,101," + "a" * 64 + ",0.0", "quality"),
        ("0,-1," + "a" * 64 + ",0.0", "quality"),
        ("0,100," + "g" * 64 + ",0.0", "not a PDQ hash"),
        ("0,100," + "a" * 63 + ",0.0", "not a PDQ hash"),
        ("0,100," + "a" * 64 + ",-1", "timestamp"),
        ("0,100," + "a" * 64 + ",nan", "timestamp"),
        ("0,100," + "a" * 64 + ",1e999", "timestamp"),
        ("0,100," + "a" * 64 + ",0" + "0" * 200, "longer than"),
        ("٣,100," + "a" * 64 + ",0.0", "frame number"),
    ],
)
def test_the_file_format_is_validated(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse("0,100," + "b" * 64 + ",0.000\n" + text)


def test_a_file_of_too_many_frames_is_refused() -> None:
    line = "0,100," + "a" * 64 + ",0.000\n"
    assert len(parse(line * 10, max_frames=10).frames) == 10
    with pytest.raises(ValueError, match="more than 10 frames"):
        parse(line * 11, max_frames=10)


# -- hostile files ---------------------------------------------------------------------


def refused(data: bytes, limits: VideoLimits | None = None, within: float = 2.0) -> str:
    """The DecodeError's message, checked to come within ``within`` seconds."""
    start = time.monotonic()
    with pytest.raises(DecodeError) as caught:
        hash_video(data, limits)
    assert time.monotonic() - start < within
    return str(caught.value)


def test_a_truncated_video_is_refused() -> None:
    data = mp4()
    assert refused(data[: len(data) // 2]).startswith("cannot decode video/mp4: ")
    assert refused(data[:-200]).startswith("cannot decode video/mp4: ")


def test_random_bytes_behind_a_video_header_are_refused() -> None:
    noise = random.Random(7).randbytes(200_000)
    assert refused(mp4()[:32] + noise).startswith("cannot decode video/mp4: ")
    webm = b"\x1a\x45\xdf\xa3\x01\x00\x00\x00\x00\x00\x00\x1fB\x82\x84webm" + noise
    assert refused(webm).startswith("cannot decode video/webm: ")


def test_absurd_dimensions_are_refused_before_decoding() -> None:
    gif = bytearray(animation("GIF"))
    gif[6:10] = (20000).to_bytes(2, "little") * 2  # the logical screen's size
    assert refused(bytes(gif)).startswith("cannot decode image/gif: ")
    # Frames above the limit (3840x2160 by default) are refused, not decoded.
    assert refused(mp4(), VideoLimits(max_frame_pixels=320 * 200)) == (
        "decompression bomb: video frames of 320x240 pixels exceed 64000"
    )


@pytest.mark.parametrize(("side", "first"), [(60000, 0), (5000, 0), (3000, 3)])
def test_frames_that_grow_in_the_stream_are_refused(side: int, first: int) -> None:
    # Motion JPEG: every frame's JPEG header gives its size; from frame ``first`` on it
    # says ``side`` x ``side``, beyond the limit, with 320x240's bytes behind it.
    data = bytearray(mjpeg())
    assert len(hash_video(bytes(data)).frames) == 2
    at, frame = 0, 0
    while (at := data.find(b"\xff\xc0", at)) >= 0:
        if frame >= first:
            data[at + 5 : at + 9] = side.to_bytes(2, "big") * 2
        frame, at = frame + 1, at + 2
    assert frame == 10
    assert refused(bytes(data)).startswith("cannot decode video/quicktime: ")


@functools.cache
def long_video() -> bytes:
    """A minute at 5 frames a second, 64x64."""
    return encode(seconds=60, fps=5, size=(64, 64))


def test_a_video_beyond_the_frame_cap_gives_its_start() -> None:
    start = time.monotonic()
    value = hash_video(long_video(), VideoLimits(max_samples=10))
    assert time.monotonic() - start < 2
    assert not value.complete
    assert [f.timestamp for f in value.frames] == [float(s) for s in range(10)]
    opened = clip(long_video(), VideoLimits(max_samples=10))
    assert len(list(opened.samples())) == 10
    assert opened.stopped == "10 frames sampled" and opened.decoded == 46


def test_a_video_beyond_the_duration_gives_its_start() -> None:
    value = hash_video(long_video(), VideoLimits(max_duration=5))
    assert not value.complete
    assert [f.timestamp for f in value.frames] == [0.0, 1.0, 2.0, 3.0, 4.0]
    opened = clip(long_video(), VideoLimits(max_duration=5))
    list(opened.samples())
    assert opened.stopped == "longer than 5 s" and opened.decoded == 26


def test_a_frame_rate_beyond_reason_stops_the_reading() -> None:
    # 240 frames a second of video allowed: with 2 s allowed, 480 frames in all.
    value = hash_video(encode(seconds=2, fps=480, size=(32, 32)), VideoLimits(max_duration=1.9))
    assert not value.complete


def test_the_time_budget_bounds_the_reading() -> None:
    message = refused(long_video(), VideoLimits(time_budget=0.01), within=1.0)
    assert re.fullmatch(r"cannot decode video/mp4: not read within 0\.01 s.*", message)


def test_audio_and_unknown_bytes_are_not_videos() -> None:
    assert refused(b"ID3" + bytes(100)) == "cannot decode audio/mpeg as video: no demuxer for it"
    assert refused(b"hello") == "cannot decode unknown as video: no demuxer for it"


def test_nothing_is_written_to_disk() -> None:
    folders = [tempfile.gettempdir(), os.getcwd()]
    before = {d: set(os.listdir(d)) for d in folders}
    hash_video(mp4())
    hash_video(reencoded())
    hash_video(animation("WEBP"))
    hash_video(animation("PNG"))
    with pytest.raises(DecodeError):
        hash_video(mp4()[:5000])
    assert {d: set(os.listdir(d)) for d in folders} == before
