"""Opening videos within limits: one frame a second, the pixels vPDQ hashes.

vPDQ (``relay.hashing.vpdq``) hashes a video as PDQ of one decoded frame every
``seconds_per_hash`` seconds. The sender chooses everything about the file, so
reading it is bounded: frames too large are refused before they are decoded, the
stream is read for at most ``max_duration`` seconds of video, ``max_samples``
sampled frames and ``max_decoded`` frames in all (an endless stream of tiny
frames, or one whose clock never moves), and for at most ``time_budget`` seconds
of wall-clock time. Past a count or duration limit the frames read so far are the
result (``Clip.complete`` is False); past the time budget, or on any error from
the demuxer or the decoder, DecodeError, whose message says why.

Nothing is written to disk: PyAV reads the bytes from a BytesIO. The demuxer is
the one the bytes' magic number names (``relay.media.sniff``), never one FFmpeg
guesses (its HLS, DASH and concat demuxers open further URLs and files), and only
the decoders of common video codecs are used. Animated WebP, which FFmpeg's WebP
decoder does not read, goes through Pillow.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from fractions import Fraction

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from relay.errors import DecodeError
from relay.media.decode import HASH_SIZE, Frame
from relay.media.sniff import sniff

__all__ = [
    "MAX_DURATION",
    "MAX_FRAME_PIXELS",
    "MAX_SAMPLES",
    "VIDEO_TYPES",
    "Clip",
    "Sample",
    "VideoLimits",
    "clip",
    "cost",
]

# The most pixels one video frame may have: 3840x2160, Mastodon's limit for video
# (MediaAttachment::MAX_VIDEO_MATRIX_LIMIT). A decoder keeps up to 16 reference
# frames, so this bounds what a stream holds at about 16 x 12 MiB.
MAX_FRAME_PIXELS = 8_294_400
# One hour at one frame a second.
MAX_SAMPLES = 3600
MAX_DURATION = 3600.0
# Above Mastodon's MAX_VIDEO_FRAME_RATE (120): a stream that decodes more frames
# than this per second of the duration allowed is read no further.
_MAX_RATE = 240


@dataclass(frozen=True, slots=True)
class VideoLimits:
    """What reading a video may cost."""

    seconds_per_hash: float = 1.0
    """One frame sampled every so many seconds (vpdq's ``seconds_per_hash``)."""
    max_samples: int = MAX_SAMPLES
    max_duration: float = MAX_DURATION
    """Seconds of video read; later frames are not."""
    max_frame_pixels: int = MAX_FRAME_PIXELS
    time_budget: float = 120.0
    """Wall-clock seconds for the whole reading, demuxing and decoding included."""
    threads: int = 2
    """Decoder threads (each holds frames of its own; the hasher's pool runs several)."""

    @classmethod
    def lasting(cls, max_duration: float, time_budget: float) -> VideoLimits:
        """At most ``max_duration`` seconds read within ``time_budget`` ([media]
        video_max_seconds, video_time_budget_seconds), and as many samples as they hold."""
        base = cls()
        samples = min(base.max_samples, math.ceil(max_duration / base.seconds_per_hash))
        return replace(
            base, max_samples=samples, max_duration=max_duration, time_budget=time_budget
        )

    @property
    def max_decoded(self) -> int:
        """Frames decoded in all, sampled or not."""
        return max(self.max_samples, int(self.max_duration * _MAX_RATE))


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled frame: its number among the decoded frames, its time, its pixels."""

    number: int
    timestamp: float
    frame: Frame


@dataclass(slots=True)
class Clip:
    """An opened video; ``samples()`` decodes it, and the counters say what was read."""

    mime: str
    width: int
    height: int
    decoded: int = 0
    """Frames decoded so far."""
    complete: bool = False
    """True once the whole stream was read; False while reading or when a limit
    stopped it (then ``stopped`` says which)."""
    stopped: str | None = None
    declared: float | None = None
    """Seconds of video the header says it holds (None: it does not say). The
    sender's claim, for estimates only: the limits bound what is read."""
    rate: float | None = None
    """Frames a second the header says."""
    count: int | None = None
    """Frames the header says (its frame count, else seconds x rate)."""
    _read: Callable[[Clip], Iterator[Sample]] | None = field(default=None, repr=False)
    _close: Callable[[], None] | None = field(default=None, repr=False)

    def samples(self) -> Iterator[Sample]:
        """The sampled frames, first first, decoded as they are read (once)."""
        read, self._read = self._read, None
        if read is None:
            raise RuntimeError("a clip's samples are read once")
        return read(self)

    def close(self) -> None:
        """Let go of the decoder (reading to the end or a failure does too)."""
        if self._close is not None:
            self._close()
        self._read = None


# sniff's MIME type -> FFmpeg's demuxer for it.
_DEMUXERS = {
    "video/mp4": "mov",
    "video/quicktime": "mov",
    "video/webm": "matroska",
    "video/x-matroska": "matroska",
    "video/ogg": "ogg",
    "video/x-msvideo": "avi",
    "video/mpeg": "mpeg",
    "video/mp2t": "mpegts",
    "image/gif": "gif",
    "image/png": "apng",
}
#: The video MIME types (as sniffed) Sluice reads frames of.
VIDEO_TYPES = frozenset(m for m in _DEMUXERS if m.startswith("video/"))
# FFmpeg decoders allowed to read untrusted video: the common codecs only.
_CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg1video", "mpeg2video", "theora"}
    | {"h263", "mjpeg", "gif", "apng", "png"}
)


def clip(data: bytes, limits: VideoLimits | None = None) -> Clip:
    """The video ``data`` holds, opened (its header read); DecodeError if it is not a
    video Sluice reads, cannot be opened, or its frames are too large."""
    limits = limits or VideoLimits()
    kind, mime = sniff(data)
    if mime == "image/webp":
        return _webp(data, limits)
    demuxer = _DEMUXERS.get(mime or "")
    if mime is None or demuxer is None:
        raise DecodeError(f"cannot decode {mime or kind} as video: no demuxer for it")
    deadline = time.monotonic() + limits.time_budget
    container = _open(data, mime, demuxer, limits)
    try:
        stream = _stream(container, mime, limits)
    except BaseException:
        container.close()
        raise
    found = Clip(mime, stream.codec_context.width, stream.codec_context.height)
    found.declared, found.rate = _declared(container, stream)
    if stream.frames > 0:
        found.count = stream.frames
    elif found.declared is not None and found.rate is not None:
        found.count = math.ceil(min(found.declared, MAX_DURATION * 24) * found.rate)
    found._read = lambda c: _decode(c, container, stream, limits, deadline)
    found._close = container.close
    return found


# Bytes held per pixel of a frame while a video is read: up to 16 reference frames and
# one per decoder thread in YUV 4:2:0 (1.5 bytes a pixel), the RGB sample, slack.
_BYTES_PER_PIXEL = 40


def cost(data: bytes, limits: VideoLimits | None = None) -> tuple[int, int]:
    """What reading the video in ``data`` will cost, from its header alone: (pixels
    decoded, as many frames as the header says within the limits, every frame the
    limits allow when it says nothing; bytes held at once). DecodeError as ``clip``."""
    limits = limits or VideoLimits()
    with closing(clip(data, limits)) as found:
        area = found.width * found.height
        frames = min(found.count or limits.max_decoded, limits.max_decoded)
    return area * max(frames, 1), area * (_BYTES_PER_PIXEL + limits.threads * 2) + len(data)


def _open(data: bytes, mime: str, demuxer: str, limits: VideoLimits) -> InputContainer:
    try:
        return av.open(
            io.BytesIO(data),
            mode="r",
            format=demuxer,
            # Only this demuxer, no nested files or URLs (mov's drefs are off by default).
            options={"format_whitelist": demuxer, "protocol_whitelist": "none"},
            timeout=limits.time_budget,
        )
    except Exception as exc:
        raise DecodeError(f"cannot decode {mime}: {_reason(exc)}") from exc


def _declared(container: InputContainer, stream: VideoStream) -> tuple[float | None, float | None]:
    """(seconds, frames a second) as the header has them, None where it does not."""
    seconds: float | None = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    given = stream.average_rate or stream.guessed_rate
    rate = float(given) if given else None
    good = seconds is not None and math.isfinite(seconds) and seconds >= 0
    return (seconds if good else None), (rate if rate and math.isfinite(rate) else None)


def _stream(container: InputContainer, mime: str, limits: VideoLimits) -> VideoStream:
    """The first video stream, its decoder checked and set up; DecodeError otherwise."""
    if not container.streams.video:
        raise DecodeError(f"cannot decode {mime}: no video stream")
    stream = container.streams.video[0]
    context = stream.codec_context
    if context.name not in _CODECS:
        raise DecodeError(f"cannot decode {mime}: codec {context.name!r} is not read")
    if context.width < 1 or context.height < 1:
        raise DecodeError(f"cannot decode {mime}: no frame size (its header was refused)")
    _check_size(context.width, context.height, limits)
    context.thread_count = max(1, limits.threads)
    # FFmpeg's own guard too: it refuses larger frames inside the decoder.
    context.options = {"max_pixels": str(limits.max_frame_pixels)}
    return stream


def _decode(
    found: Clip,
    container: InputContainer,
    stream: VideoStream,
    limits: VideoLimits,
    deadline: float,
) -> Iterator[Sample]:
    """Decode every frame up to the limits; yield one every ``seconds_per_hash``."""
    rate = stream.average_rate or stream.guessed_rate
    period = limits.seconds_per_hash
    taken, slot = 0, 0
    start: float | None = None
    try:
        for frame in container.decode(stream):
            if time.monotonic() > deadline:
                raise DecodeError(
                    f"cannot decode {found.mime}: not read within {limits.time_budget:g} s "
                    f"({found.decoded} frames decoded)"
                )
            number = found.decoded
            found.decoded += 1
            when = _time(frame, number, rate)
            # From the first frame: a stream may start at any time (MPEG-TS rarely at 0).
            start = when if start is None else start
            when = max(0.0, when - start)
            if when >= limits.max_duration:
                found.stopped = f"longer than {limits.max_duration:g} s"
                return
            # The first frame whose time reaches the next multiple of the period.
            if when >= slot * period:
                _check_size(frame.width, frame.height, limits)
                yield Sample(number, when, _pixels(frame))
                taken, slot = taken + 1, int(when // period) + 1
                if taken >= limits.max_samples:
                    found.stopped = f"{limits.max_samples} frames sampled"
                    return
            if found.decoded >= limits.max_decoded:
                found.stopped = f"{limits.max_decoded} frames decoded"
                return
        found.complete = True
    except DecodeError:
        raise
    except Exception as exc:
        if time.monotonic() > deadline:  # the read timeout interrupted the demuxer
            raise DecodeError(
                f"cannot decode {found.mime}: not read within {limits.time_budget:g} s"
            ) from exc
        raise DecodeError(f"cannot decode {found.mime}: {_reason(exc)}") from exc
    finally:
        container.close()


def _time(frame: VideoFrame, number: int, rate: Fraction | None) -> float:
    """Seconds from the start: the frame's own timestamp, else its number / rate."""
    when = frame.time
    if when is not None and when == when and when >= 0:  # not NaN, not before the start
        return float(when)
    return number / float(rate) if rate else float(number)


def _pixels(frame: VideoFrame) -> Frame:
    """RGB pixels, shrunk by a whole factor keeping the short side >= HASH_SIZE (as
    relay.media.decode shrinks pictures); PDQ reads them as the full-size frame."""
    width, height = frame.width, frame.height
    factor = max(min(width, height) // HASH_SIZE, 1)
    if factor == 1:
        pixels = frame.to_ndarray(format="rgb24")
    else:
        # FFmpeg's area scaler: each pixel the average of (nearly) a factor-square block.
        small = frame.reformat(
            width=-(-width // factor),
            height=-(-height // factor),
            format="rgb24",
            interpolation="AREA",
        )
        pixels = small.to_ndarray(format="rgb24")
    return Frame(0, np.ascontiguousarray(pixels, dtype=np.uint8), (height, width), factor)


def _check_size(width: int, height: int, limits: VideoLimits) -> None:
    if width < 1 or height < 1:
        raise DecodeError(f"cannot decode video: its frames are {width}x{height} pixels")
    if width * height > limits.max_frame_pixels:
        raise DecodeError(
            f"decompression bomb: video frames of {width}x{height} pixels exceed "
            f"{limits.max_frame_pixels}"
        )


def _reason(exc: Exception) -> str:
    """A short reason, without the bytes or paths some messages quote."""
    if isinstance(exc, av.error.FFmpegError):
        return f"{type(exc).__name__}: {exc.strerror or 'FFmpeg error'}"[:200]
    return f"{type(exc).__name__}"[:200]


# -- animated WebP, through Pillow ---------------------------------------------------


def _webp(data: bytes, limits: VideoLimits) -> Clip:
    try:
        img = Image.open(io.BytesIO(data), formats=("WEBP",))
    except Exception as exc:
        raise DecodeError(f"cannot decode image/webp: {_reason(exc)}") from exc
    _check_size(img.width, img.height, limits)
    found = Clip("image/webp", img.width, img.height)
    found.count = getattr(img, "n_frames", 1)  # read from the header's chunks
    found._read = lambda c: _webp_frames(c, img, limits)
    found._close = img.close
    return found


def _webp_frames(found: Clip, img: Image.Image, limits: VideoLimits) -> Iterator[Sample]:
    deadline = time.monotonic() + limits.time_budget
    period = limits.seconds_per_hash
    taken, slot, when = 0, 0, 0.0
    try:
        with img:
            for number in range(getattr(img, "n_frames", 1)):
                if time.monotonic() > deadline:
                    raise DecodeError(
                        f"cannot decode image/webp: not read within {limits.time_budget:g} s"
                    )
                if when >= limits.max_duration:
                    found.stopped = f"longer than {limits.max_duration:g} s"
                    return
                if number >= limits.max_decoded:
                    found.stopped = f"{limits.max_decoded} frames decoded"
                    return
                img.seek(number)
                img.load()  # sets the frame's duration
                found.decoded += 1
                if when >= slot * period:
                    pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
                    yield Sample(number, when, Frame(0, pixels, pixels.shape[:2], 1))
                    taken, slot = taken + 1, int(when // period) + 1
                    if taken >= limits.max_samples:
                        found.stopped = f"{limits.max_samples} frames sampled"
                        return
                when += max(0, int(img.info.get("duration", 0) or 0)) / 1000
        found.complete = True
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"cannot decode image/webp: {_reason(exc)}") from exc
