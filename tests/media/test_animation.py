"""Animated GIF, APNG and WebP as short videos: their sampled frames keep their PDQ,
and the frame on screen at each whole second of playback gets vPDQ, as a video's
(relay.media.decode's timeline, relay.media.hashes), matched by share against the
PDQ banks (relay.banks.matcher).

The animations are the moving bands of tests/media/test_video.py, drawn with Pillow.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from relay.banks import BankIndex
from relay.hashing.pdq import Pdq
from relay.hashing.vpdq import hash_video, match
from relay.media.decode import survey
from relay.media.hasher import MediaHasher
from relay.media.hashes import hash_media
from relay.media.inspect import Inspector
from relay.media.media import Media
from relay.media.video import VideoLimits
from relay.signal import Signal
from tests.media.test_video import animation, film, mp4
from tests.media.test_video_match import known, vpdq_file  # noqa: F401 (fixtures)


def gif(durations: list[int], size: tuple[int, int] = (160, 120), first: str = "") -> bytes:
    """A GIF of the film, a frame per duration (ms); ``first`` "black": a title card."""
    pictures = [
        Image.fromarray(film(0, i / 2, *size)).quantize(256, dither=Image.Dither.NONE)
        for i in range(len(durations))
    ]
    if first == "black":
        pictures[0] = Image.new("RGB", size).quantize(256)
    buf = io.BytesIO()
    pictures[0].save(
        buf, "GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0
    )
    return buf.getvalue()


def seconds(data: bytes) -> list[tuple[int, float]]:
    value = hash_media(data).vpdq
    assert value is not None
    return [(f.number, f.timestamp) for f in value.frames]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_an_animation_is_hashed_one_frame_a_second_as_ffmpeg_reads_it(fmt: str) -> None:
    """Six frames of half a second: the frames on screen at 0, 1 and 2 s, the same
    frames (and within a few bits the same hashes) as the video decoder's."""
    data = animation(fmt)
    hashes = hash_media(data)
    assert hashes.kind == "image" and hashes.frames == 6
    assert len(hashes.pdq) == 6  # the sampled frames keep their own PDQ
    ours = hashes.vpdq
    assert ours is not None and ours.complete
    assert [(f.number, f.timestamp) for f in ours.frames] == [(0, 0.0), (2, 1.0), (4, 2.0)]
    theirs = hash_video(data)
    assert [(f.number, f.timestamp) for f in theirs.frames] == [(0, 0.0), (2, 1.0), (4, 2.0)]
    for a, b in zip(ours.frames, theirs.frames, strict=True):
        assert Pdq.distance(a.hash, b.hash) <= 8
    # A frame hashed for both is hashed once: the same value.
    assert ours.frames[1].hash == hashes.pdq[2].hash
    assert match(ours, hash_video(animation(fmt, seed=3))).matched is False


def test_frames_are_timed_as_browsers_show_them() -> None:
    # 10 ms or less is shown for 100 ms: twenty such frames make two seconds.
    assert seconds(gif([10] * 20)) == [(0, 0.0), (10, 1.0)]
    # A frame on screen for 3.5 s is sampled at each second it is shown.
    timeline = [(0, 0.0), (1, 1.0), (1, 2.0), (1, 3.0), (2, 4.0)]  # 0-0.5, 0.5-4, 4-4.5 s
    assert seconds(gif([500, 3500, 500])) == timeline


def test_a_still_picture_and_a_tiffs_pages_are_no_video() -> None:
    buf = io.BytesIO()
    Image.fromarray(film(0, 0, 160, 120)).save(buf, "PNG")
    assert hash_media(buf.getvalue()).vpdq is None
    pages = [Image.fromarray(film(0, t, 160, 120)) for t in (0, 1, 2)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    tiff = hash_media(buf.getvalue())
    assert tiff.frames == 3 and tiff.vpdq is None


def test_the_playback_is_bounded_by_the_pixels_and_the_samples() -> None:
    """A hostile animation (hours of 655 s frames, or thousands of frames) costs no
    more than before: the pixel budget and the video limits' samples bound it."""
    endless = gif([655_350] * 4)  # GIF's longest delay, four times: 43 minutes
    value = hash_media(endless, video=VideoLimits(max_samples=5)).vpdq
    assert value is not None and len(value.frames) == 5 and not value.complete
    assert [f.number for f in value.frames] == [0] * 5
    many = gif([1000] * 40, size=(100, 100))
    cut = hash_media(many, max_pixels=100 * 100 * 10).vpdq
    assert cut is not None and not cut.complete  # the start only: 10 frames decoded
    assert [f.number for f in cut.frames] == list(range(10))
    whole = hash_media(many).vpdq
    assert whole is not None and whole.complete and len(whole.frames) == 40


async def _signals(index: BankIndex, data: bytes, **limits: int) -> list[Signal]:
    from relay.banks.matcher import BankMatcher

    hasher = MediaHasher(workers=2, **limits)
    try:
        media = Media.of(data, await hasher.hash(data, sender="https://a.example/actor"))
    finally:
        hasher.close()
    return await Inspector([BankMatcher(lambda: index)]).inspect(media)


async def test_an_animation_cut_from_a_listed_video_matches_once(known: BankIndex) -> None:  # noqa: F811
    """An APNG of the listed film's frames: its sampled frames match the bank, and the
    bank says so once (not once per frame nor again for the playback)."""
    played = hash_media(animation("PNG", frames=12)).vpdq
    assert played is not None and match(played, hash_video(mp4())).matched
    signals = await _signals(known, animation("PNG", frames=12))
    found = [s for s in signals if s.kind == "match"]
    assert [s.source for s in found] == ["known-videos"]
    hashed = next(s for s in signals if s.kind == "hashed")
    assert hashed.detail["vpdq_frames"] == 6 and hashed.detail["vpdq_complete"] is True


async def test_an_animation_whose_hashed_frames_are_title_cards_matches_by_its_playback(
    known: BankIndex,  # noqa: F811
) -> None:
    """Two frames hashed as PDQ (the first and the last, max_frames = 2), both black
    cards: no frame matches alone, but the playback between them is the listed film."""
    data = animation("PNG", frames=12)
    first = Image.open(io.BytesIO(data))
    frames = []
    for n in range(12):
        first.seek(n)
        frames.append(first.convert("RGB") if 0 < n < 11 else Image.new("RGB", first.size))
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], duration=500, loop=0)
    signals = await _signals(known, buf.getvalue(), max_frames=2)
    [found] = [s for s in signals if s.kind == "match"]
    detail = found.detail
    assert found.source == "known-videos" and detail["hash_kind"] == "vpdq"
    assert detail["exact"] is False and detail["query_percent"] >= 80
    assert detail["usable_frames"] == 5  # the card at 0 s is too flat to count


def test_many_tiny_frames_are_priced_as_frames_not_pixels() -> None:
    """Seeking to a frame costs as much as decoding 64x64 pixels however small it is: a
    GIF of thousands of 2x2 frames is priced and reached as if each had 4096 pixels."""
    tiny = [Image.new("P", (2, 2), i % 256) for i in range(3000)]
    buf = io.BytesIO()
    tiny[0].save(
        buf, "GIF", save_all=True, append_images=tiny[1:], duration=20, loop=0, optimize=False
    )
    data = buf.getvalue()
    assert survey(data).pixels == 3000 * 4096  # not 3000 x 4
    value = hash_media(data, max_pixels=100 * 4096).vpdq
    assert value is not None and not value.complete
    assert max(f.number for f in value.frames) < 100  # the start only: 100 frames reached
