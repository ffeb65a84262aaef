"""Video hashing speed: seconds of video per second per core, ours against decoding alone.

Runs, in one go and on this machine, for a 720p H.264 clip (30 fps, 30 s, 2.5 Mb/s) and a
short 360p one (30 fps, 6 s, 0.8 Mb/s), both in MP4, made at start from the tests' own
film (``tests.media.test_video.encode``: moving colour bands, nothing photographed):

- baseline, decoding alone: ``av.open`` of the bytes (FFmpeg probes the format), the
  first video stream's decoder given the threads Sluice gives it
  (``VideoLimits().threads``), every frame decoded and dropped: no colour conversion, no
  hashing, no limits. Every frame must be decoded to reach the one a second vPDQ hashes
  (H.264 frames refer to earlier ones), so this is the least that getting them costs;
- ours: ``MediaHasher(workers=1).hash(data)``, the path a fetched video takes: its survey
  (the header read, ``video.cost``), then on the pool's one worker ``hash_media`` (SHA-256,
  MD5, sniffing, ``hash_video``: decoding within ``VideoLimits``, one frame a second to
  RGB, shrunk by a whole factor only where its short side is 1024 or more, its PDQ);
- between the two, to show where the time goes: ``video.clip(...).samples()`` (decoding
  within limits and the sampled frames' RGB, no PDQ) and ``vpdq.hash_video`` alone.

"Per core": the process (the decoder's threads, the hasher's worker) is pinned to one CPU
with ``sched_setaffinity`` while timed, no worker pool; rates are seconds of video over
the median wall time of ``--reps`` passes (methods taking turns within each, after a
warm-up), and over the median CPU time (``process_time``, all threads) as a check on a
shared machine. A pass hashes a short clip several times over, at least 30 s of video.

Peak memory: each of baseline and ours decodes each clip once in a fresh child process
(the bytes sent through a pipe, the modules imported first), which then resets its peak RSS
(``/proc/self/clear_refs``) and reads it after decoding (``VmHWM`` in /proc/self/status;
``ru_maxrss`` would not do: a child starts with its parent's). Printed: that peak, and its
rise above the RSS before decoding (imports and the bytes: ~70 MiB), the decoding's own.

The 720p clip is a 5 s segment encoded once and repeated by stream copy (remuxed, not
re-encoded: drawing and x264 take 70 ms a 720p frame here), so the inputs are quick to
make; its decoding costs what any H.264 of a keyframe every 5 s costs.
The ratios are printed last.

    python bench/video.py [--reps 5] [--classes 720p,360p,1080p]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.hashing.vpdq import hash_video
from relay.media.hasher import MediaHasher
from relay.media.video import VideoLimits, clip, cost
from tests.media.test_video import encode

MIN_PASS = 30.0  # seconds of video per timed pass: short clips are hashed several times


@dataclass(frozen=True)
class Spec:
    """A class of video: H.264 in MP4, ``segment`` seconds encoded, repeated to ``seconds``."""

    size: tuple[int, int]
    fps: int
    seconds: int
    bit_rate: int
    segment: int


CLASSES = {
    "720p": Spec((1280, 720), 30, 30, 2_500_000, 5),
    "360p": Spec((640, 360), 30, 6, 800_000, 6),
    "1080p": Spec((1920, 1080), 30, 10, 5_000_000, 5),  # not run by default
}


@dataclass
class Klass:
    name: str
    spec: Spec
    data: bytes
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    """Wall milliseconds per clip, median."""
    peak: dict[str, tuple[int, int]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)


# -- the inputs -----------------------------------------------------------------------


def repeated(data: bytes, times: int) -> bytes:
    """The MP4 in ``data`` played ``times`` times over, by stream copy: the same packets
    with their times shifted, so a long clip costs one segment's encoding."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out, "w", format="mp4") as dst:
        stream = src.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        packets = [p for p in src.demux(stream) if p.size]
        start = min(p.pts for p in packets)
        span = max(p.pts + p.duration for p in packets) - start
        for k in range(times):
            for p in packets:
                q = av.Packet(bytes(p))
                q.pts, q.dts, q.duration = p.pts + k * span, p.dts + k * span, p.duration
                q.time_base, q.is_keyframe, q.stream = p.time_base, p.is_keyframe, copy
                dst.mux(q)
    return out.getvalue()


def build(name: str) -> Klass:
    spec = CLASSES[name]
    segment = encode(
        seed=1, seconds=spec.segment, fps=spec.fps, size=spec.size, bit_rate=spec.bit_rate
    )
    times = spec.seconds // spec.segment
    return Klass(name, spec, repeated(segment, times) if times > 1 else segment)


# -- the methods ------------------------------------------------------------------------


def decode_alone(data: bytes) -> int:
    """The baseline: every frame decoded with PyAV, nothing else."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = VideoLimits().threads
        return sum(1 for _ in container.decode(stream))


def clip_samples(data: bytes) -> int:
    """relay.media.video alone: decoding within limits, the sampled frames in RGB."""
    return sum(1 for _ in clip(data).samples())


def vpdq_alone(data: bytes) -> int:
    return len(hash_video(data).frames)


class Ours:
    """``MediaHasher.hash`` with one worker, on an event loop of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.hasher = MediaHasher(workers=1)

    def __call__(self, data: bytes) -> int:
        hashes = self.loop.run_until_complete(self.hasher.hash(data))
        assert hashes.vpdq is not None and hashes.vpdq.complete
        return len(hashes.vpdq.frames)

    def close(self) -> None:
        self.hasher.close()
        self.loop.close()


BASELINE, OURS = "decode alone", "MediaHasher"


def methods() -> dict[str, Callable[[bytes], int]]:
    return {
        BASELINE: decode_alone,
        "video.clip": clip_samples,
        "hash_video": vpdq_alone,
        OURS: Ours(),
    }


# -- timing -----------------------------------------------------------------------------


def pin() -> int:
    """Pin this process (threads to come included) to one CPU; which one."""
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def measure(klass: Klass, run: dict[str, Callable[[bytes], int]], reps: int) -> None:
    """Seconds of video per second of wall and of CPU time, from the median pass."""
    spec = klass.spec
    loops = max(1, math.ceil(MIN_PASS / spec.seconds))
    for name, method in run.items():  # warm-up, and the frame counts
        got = method(klass.data)
        want = spec.seconds * spec.fps if name == BASELINE else spec.seconds
        if got != want:
            klass.checks.append(f"{name} gave {got} frames, not {want}")
    walls: dict[str, list[float]] = {name: [] for name in run}
    cpus: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(reps):
        for name, method in run.items():
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(loops):
                method(klass.data)
            cpus[name].append(time.process_time() - cpu)
            walls[name].append(time.perf_counter() - started)
    video = loops * spec.seconds
    for name in run:
        klass.wall[name] = video / statistics.median(walls[name])
        klass.cpu[name] = video / statistics.median(cpus[name])
        klass.ms[name] = 1e3 * statistics.median(walls[name]) / loops
    surveys = []
    for _ in range(reps):  # MediaHasher's survey of a video: the header read, nothing decoded
        started = time.perf_counter()
        cost(klass.data, VideoLimits())
        surveys.append(time.perf_counter() - started)
    klass.ms["survey"] = 1e3 * statistics.median(surveys)


def peak_in_child(klass: Klass, method: str) -> tuple[int, int]:
    """(peak RSS, its rise while decoding), KiB, of a fresh process decoding once."""
    child = [sys.executable, __file__, "--peak", method]
    done = subprocess.run(child, input=klass.data, capture_output=True, check=True)
    found = json.loads(done.stdout)
    return found["peak"], found["peak"] - found["before"]


def memory() -> dict[str, int]:
    """This process's RSS now and its peak since the last reset, KiB."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith("Vm"))
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def child(method: str) -> None:
    """In the child: read the bytes, import and set up everything, then decode once."""
    import relay.hashing.vpdq  # noqa: F401  (hash_media imports it on its first video)

    data = sys.stdin.buffer.read()
    run = Ours() if method == OURS else decode_alone
    # The peak from here on (Linux >= 4.0); where refused, since the start, imports included.
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = memory()["VmRSS"]
    run(data)
    json.dump({"before": before, "peak": memory()["VmHWM"]}, sys.stdout)


# -- the run ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--classes", default="720p,360p")
    parser.add_argument("--peak", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        child(args.peak)
        return
    print(
        f"Python {sys.version.split()[0]}, PyAV {av.__version__}"
        f" (FFmpeg {'.'.join(map(str, av.library_versions['libavcodec']))} libavcodec),"
        f" numpy {np.__version__}, {os.cpu_count()} cores, {args.reps} reps,"
        f" decoder threads {VideoLimits().threads}, load average {os.getloadavg()[0]:.2f}"
    )
    started = time.perf_counter()
    classes = [build(name) for name in args.classes.split(",")]
    print(f"inputs built in {time.perf_counter() - started:.1f} s (on every core)")
    for k in classes:
        s = k.spec
        reserved = cost(k.data, VideoLimits())[1]
        print(
            f"  {k.name}: {s.size[0]}x{s.size[1]} H.264 MP4, {s.fps} fps, {s.seconds} s,"
            f" {len(k.data) / 1e6:.2f} MB ({len(k.data) * 8 / s.seconds / 1e6:.2f} Mb/s),"
            f" a {s.segment} s segment repeated; the survey reserves {reserved / 2**20:.0f} MiB"
        )
    cpu = pin()
    print(f"\npinned to CPU {cpu}; seconds of video per second, wall (per CPU-second):")
    run = methods()
    for k in classes:
        measure(k, run, args.reps)
        cells = "  ".join(f"{n} {k.wall[n]:6.1f} ({k.cpu[n]:6.1f})" for n in run)
        print(f"  {k.name:5} {cells}")
        cells = "  ".join(f"{n} {ms:6.1f}" for n, ms in k.ms.items())
        print(f"        ms per clip: {cells}", flush=True)
        for line in k.checks:
            print(f"    CHECK FAILED: {line}")
    for method in run.values():
        if isinstance(method, Ours):
            method.close()
    print("\npeak RSS of a fresh process decoding once (rise while decoding):")
    for k in classes:
        for name in (BASELINE, OURS):
            k.peak[name] = peak_in_child(k, name)
        cells = "  ".join(
            f"{n} {k.peak[n][0] / 1024:5.0f} MiB ({k.peak[n][1] / 1024:+4.0f})"
            for n in (BASELINE, OURS)
        )
        print(f"  {k.name:5} {cells}", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    print("\nRatios, ours (MediaHasher) / decoding alone, speed on one core (CPU time):")
    for k in classes:
        wall, cpu_ = (r[OURS] / r[BASELINE] for r in (k.wall, k.cpu))
        rise = k.peak[OURS][1] - k.peak[BASELINE][1]
        print(
            f"  {k.name:5} x{wall:.2f} (x{cpu_:.2f}): {k.wall[OURS]:.1f} s of video a second"
            f" against {k.wall[BASELINE]:.1f}; peak RSS {rise / 1024:+.0f} MiB"
        )


if __name__ == "__main__":
    main()
