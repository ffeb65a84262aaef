"""Hashing fetched media off the event loop, within the machine's means.

Decoding costs what the sender chooses: a 5760x5760 PNG of one colour with a
little noise is 270 kB to send, 0.5 CPU-s and 130 MiB to decode, and within the
limits of hash_media; a video costs its every frame decoded. So every file is first
surveyed (its header read, nothing decoded; bombs refused there), then:

- a sender past its budget of decoded pixels a minute gets OverBudget, and
  nothing more is spent on it: the caller sends the activity to review;
- it waits until the memory its decoding will take is free, so that many large
  images decode a few at a time instead of all at once;
- it is decoded on a thread pool of its own: the event loop's default executor
  stays free for the database, the evidence store and the rest; videos, which hold
  a worker for up to their time budget, take at most all workers but one, so that
  pictures are still hashed while they are read.

A video's header may lie about its length (the survey charges what it says): what
bounds a liar is the video limits' time budget and the workers videos may take.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from typing import TypeVar

from relay.errors import DecodeError
from relay.media.decode import DENSE_ABOVE, MAX_PIXELS, MAX_PIXELS_PER_BYTE, Survey, survey
from relay.media.hashes import Hashes, hash_media
from relay.media.sniff import sniff
from relay.media.video import VIDEO_TYPES, VideoLimits, cost
from relay.rate import TokenBuckets

__all__ = ["MediaHasher", "OverBudget", "default_workers"]

_T = TypeVar("_T")


class OverBudget(DecodeError):
    """The sender has had its share of decoding for now; the file was not decoded.

    A DecodeError, so that code which knows nothing of budgets still treats the
    file as unhashed (exact hashes only, nothing cached as clean)."""

    def __init__(self, sender: str, budget: int, pixels: int) -> None:
        super().__init__(
            f"{sender} is over its budget of {budget} decoded pixels a minute: "
            f"this image of {pixels} pixels was not decoded"
        )
        self.sender = sender
        self.budget = budget
        self.pixels = pixels


class MediaHasher:
    """``hash_media`` on a pool of ``workers`` threads, at most ``memory`` bytes of
    decoding at once, at most ``sender_pixels_per_minute`` decoded per sender."""

    def __init__(
        self,
        *,
        max_pixels: int = MAX_PIXELS,
        max_frames: int = 8,
        max_pixels_per_byte: float = MAX_PIXELS_PER_BYTE,
        dense_above: int = DENSE_ABOVE,
        workers: int | None = None,
        memory: int = 512 << 20,
        sender_pixels_per_minute: int = 400_000_000,
        clock: Callable[[], float] = time.monotonic,
        video: VideoLimits | None = None,
    ) -> None:
        limits = (max_pixels, max_frames, max_pixels_per_byte, dense_above)
        self.video = video or VideoLimits()
        self._survey = partial(_survey, limits=limits, video=self.video)
        self._hash = partial(_hash, limits=limits, video=self.video)
        self.workers = workers or default_workers()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sluice-hash")
        # Videos read at once: never every worker (one pool of one worker aside).
        self._videos = asyncio.Semaphore(max(1, self.workers - 1))
        self._memory = _MemoryGate(memory)
        self._budget = _SenderBudget(sender_pixels_per_minute, clock)
        self.decoding = 0
        """Images being decoded now (or queued on the pool), their memory reserved."""
        self.decoded = 0
        """Images handed to decoding since start (surveys and refusals aside)."""

    @property
    def waiting(self) -> int:
        """Images waiting for memory to decode in."""
        return len(self._memory.queue)

    @property
    def reserved(self) -> int:
        """Bytes of memory the images being decoded are estimated to hold."""
        return self._memory.in_use

    async def hash(self, data: bytes, *, sender: str | None = None) -> Hashes:
        """``hash_media(data)``; DecodeError as it raises it, OverBudget when
        ``sender`` (None: nobody's budget) has had its share of decoding."""
        cost: Survey = await self._run(self._survey, data)
        if sender is not None:
            self._budget.take(sender, cost.pixels)
        video = _is_video(data)
        if video:
            await self._videos.acquire()
        try:
            granted = await self._memory.acquire(cost.memory)
        except BaseException:
            if video:
                self._videos.release()
            raise
        self.decoded += 1
        self.decoding += 1
        return await self._run(self._decode, data, lambda: self._decoded(granted, video))

    def close(self) -> None:
        """Stop the pool; images queued on it are dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _decode(self, data: bytes) -> Hashes:
        """In a pool thread (a test may hold it there)."""
        return self._hash(data)

    def _decoded(self, granted: int, video: bool = False) -> None:
        self.decoding -= 1
        self._memory.release(granted)
        if video:
            self._videos.release()

    async def _run(
        self, call: Callable[[bytes], _T], data: bytes, done: Callable[[], None] | None = None
    ) -> _T:
        """``call(data)`` on the pool; ``done()`` on the event loop once it has
        finished, even if the caller stopped waiting for it."""
        loop = asyncio.get_running_loop()
        try:
            job: Future[_T] = self._pool.submit(call, data)
        except BaseException:
            if done is not None:
                done()
            raise
        if done is not None:

            def finished(_: Future[_T]) -> None:
                with suppress(RuntimeError):  # the loop is closed: nothing waits any more
                    loop.call_soon_threadsafe(done)

            job.add_done_callback(finished)
        return await asyncio.wrap_future(job)


_Limits = tuple[int, int, float, int]


def _is_video(data: bytes) -> bool:
    kind, mime = sniff(data)
    return kind == "video" and mime in VIDEO_TYPES


def _survey(data: bytes, limits: _Limits, video: VideoLimits) -> Survey:
    if _is_video(data):
        return Survey(*cost(data, video))
    max_pixels, max_frames, per_byte, dense_above = limits
    return survey(
        data,
        max_pixels=max_pixels,
        max_frames=max_frames,
        max_pixels_per_byte=per_byte,
        dense_above=dense_above,
    )


def _hash(data: bytes, limits: _Limits, video: VideoLimits) -> Hashes:
    max_pixels, max_frames, per_byte, dense_above = limits
    return hash_media(
        data,
        max_pixels=max_pixels,
        max_frames=max_frames,
        max_pixels_per_byte=per_byte,
        dense_above=dense_above,
        video=video,
    )


def default_workers() -> int:
    """The CPUs this process may use, at most 4: decoding is CPU-bound (Pillow
    lets go of the GIL), and more threads than CPUs only hold more memory."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


class _MemoryGate:
    """A weighted semaphore, first come first served: ``acquire(n)`` waits until
    ``n`` more bytes fit in ``total``. A request for more than ``total`` asks for
    all of it, so it runs alone instead of never."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.in_use = 0
        self.queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, n: int) -> int:
        """Wait for ``n`` bytes (at most ``total``); the amount granted, to release."""
        n = min(n, self.total)
        if n <= 0:
            return 0
        if not self.queue and self.in_use + n <= self.total:
            self.in_use += n
            return n
        entry = (n, asyncio.get_running_loop().create_future())
        self.queue.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry in self.queue:
                self.queue.remove(entry)
                self._grant()  # whoever was behind it may fit now
            elif entry[1].done() and not entry[1].cancelled():
                self.release(n)  # granted as it was cancelled
            raise
        return n

    def release(self, n: int) -> None:
        if n > 0:
            self.in_use -= n
            self._grant()

    def _grant(self) -> None:
        while self.queue and self.in_use + self.queue[0][0] <= self.total:
            n, waiter = self.queue.popleft()
            if waiter.done():  # cancelled, its task not yet woken
                continue
            self.in_use += n
            waiter.set_result(None)


class _SenderBudget:
    """Decoded pixels per sender: ``per_minute`` of them, as a token bucket."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.per_minute = per_minute
        self._buckets = TokenBuckets(per_minute, clock=clock)

    def take(self, sender: str, pixels: int) -> None:
        """Spend ``pixels`` of ``sender``'s budget, or raise OverBudget spending none.
        An image larger than the whole budget is allowed when the bucket is full."""
        if pixels > 0 and self._buckets.take(sender, pixels):
            raise OverBudget(sender, self.per_minute, pixels)
