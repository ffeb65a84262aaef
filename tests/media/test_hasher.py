"""MediaHasher: hash_media's results, on its own pool, within memory and per-sender budgets.

Concurrency is observed, not timed: a hasher whose decoding waits for the test
shows how many images it lets decode at once and how many it holds back.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Iterator

import pytest
from PIL import Image

from relay.errors import DecodeError
from relay.media.decode import Survey, survey
from relay.media.hasher import MediaHasher, OverBudget, _MemoryGate, default_workers
from relay.media.hashes import Hashes, hash_media
from tests.media.test_decoding_limits import solid_7000
from tests.media.test_image import BRIDGE, FIXTURES, encode


@functools.cache
def bridge() -> Image.Image:
    with Image.open(FIXTURES / BRIDGE) as img:
        return img.convert("RGB")


@functools.cache
def picture(n: int) -> bytes:
    """The n-th of some different 1000x1000 PNGs, cut from the bridge."""
    cut = bridge().crop((20 * n, 0, 20 * n + 600, 600)).resize((1000, 1000))
    return encode(cut, "PNG", compress_level=1)


class HeldHasher(MediaHasher):
    """Decodes only once the test lets it, counting the images decoding at once."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.go = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.threads: set[str] = set()

    def _decode(self, data: bytes) -> Hashes:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            if not self.go.wait(60):
                raise AssertionError("the test never let decoding go on")
            return super()._decode(data)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def held() -> Iterator[Callable[..., HeldHasher]]:
    made: list[HeldHasher] = []

    def make(**kwargs: object) -> HeldHasher:
        made.append(HeldHasher(**kwargs))
        return made[-1]

    yield make
    for hasher in made:
        hasher.go.set()
        hasher.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never came to pass: {what}")


async def test_it_hashes_as_hash_media_does() -> None:
    files = [
        (FIXTURES / BRIDGE).read_bytes(),
        (FIXTURES / "misc/pen-and-coaster.png").read_bytes(),
        encode(bridge(), "WEBP"),
        encode(bridge().crop((0, 0, 300, 300)), "GIF", save_all=True, append_images=[bridge()]),
        b'{"type": "Note"}',
    ]
    hasher = MediaHasher()
    try:
        got = await asyncio.gather(*(hasher.hash(data, sender="host.example") for data in files))
    finally:
        hasher.close()
    assert got == [hash_media(data) for data in files]
    assert hasher.decoded == len(files) and hasher.decoding == 0 and hasher.reserved == 0


async def test_it_decodes_on_a_pool_of_its_own(held: Callable[..., HeldHasher]) -> None:
    hasher = held(workers=2)
    hasher.go.set()
    await asyncio.gather(*(hasher.hash(picture(n)) for n in range(4)))
    assert hasher.threads and all(t.startswith("sluice-hash") for t in hasher.threads)
    assert 1 <= default_workers() <= 4


async def test_a_bomb_is_refused_without_decoding() -> None:
    hasher = MediaHasher(sender_pixels_per_minute=1)
    try:
        with pytest.raises(DecodeError, match=r"^decompression bomb: 7000x7000 pixels exceeds"):
            await hasher.hash(solid_7000(), sender="host.example")
    finally:
        hasher.close()
    assert hasher.decoded == 0


async def test_only_the_memory_budget_s_worth_decodes_at_once(
    held: Callable[..., HeldHasher],
) -> None:
    files = [picture(n) for n in range(5)]
    each = survey(files[0]).memory  # 1000x1000 RGB: about 9 MB
    hasher = held(workers=4, memory=2 * each + each // 2)
    hashing = [asyncio.ensure_future(hasher.hash(data)) for data in files]
    await until(lambda: hasher.waiting == 3, "three images waiting for memory")
    assert hasher.decoding == 2 and hasher.reserved == 2 * each
    hasher.go.set()
    assert await asyncio.gather(*hashing) == [hash_media(data) for data in files]
    assert hasher.most == 2
    assert (hasher.waiting, hasher.decoding, hasher.reserved) == (0, 0, 0)


async def test_an_image_larger_than_the_memory_budget_decodes_alone(
    held: Callable[..., HeldHasher],
) -> None:
    files = [picture(n) for n in range(3)]
    hasher = held(workers=4, memory=survey(files[0]).memory // 2)
    hashing = [asyncio.ensure_future(hasher.hash(data)) for data in files]
    await until(lambda: hasher.waiting == 2, "two images waiting for memory")
    assert hasher.decoding == 1
    hasher.go.set()
    assert await asyncio.gather(*hashing) == [hash_media(data) for data in files]
    assert hasher.most == 1


async def test_an_image_no_longer_awaited_gives_its_place_back(
    held: Callable[..., HeldHasher],
) -> None:
    small = [picture(n) for n in range(3)]
    large = encode(bridge().resize((2000, 2000)), "PNG", compress_level=1)
    each = survey(small[0]).memory
    assert each + survey(large).memory > 2 * each + each // 2
    hasher = held(workers=4, memory=2 * each + each // 2)
    first = asyncio.ensure_future(hasher.hash(small[0]))
    await until(lambda: hasher.decoding == 1, "the first image decoding")
    # The large one waits for memory; a small one waits behind it, first come first served.
    waiting = asyncio.ensure_future(hasher.hash(large))
    await until(lambda: hasher.waiting == 1, "the large image waiting")
    behind = asyncio.ensure_future(hasher.hash(small[1]))
    await until(lambda: hasher.waiting == 2, "a small image waiting behind it")
    waiting.cancel()
    await until(lambda: hasher.decoding == 2, "the small one decoding in the large one's place")
    assert hasher.waiting == 0 and hasher.reserved == 2 * each
    first.cancel()  # its decoding runs on; its memory comes back when it ends
    await asyncio.sleep(0)
    assert hasher.reserved == 2 * each
    hasher.go.set()
    assert await behind == hash_media(small[1])
    await until(lambda: hasher.reserved == 0, "the first image's memory back")
    assert await hasher.hash(small[2]) == hash_media(small[2])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_sender_past_its_budget_is_refused_without_decoding() -> None:
    files = [picture(n) for n in range(6)]
    pixels = survey(files[0]).pixels
    assert pixels == 1000 * 1000
    clock = Clock()
    hasher = MediaHasher(sender_pixels_per_minute=3 * pixels, clock=clock)
    try:
        for data in files[:3]:
            assert await hasher.hash(data, sender="busy.example") == hash_media(data)
        with pytest.raises(OverBudget) as caught:
            await hasher.hash(files[3], sender="busy.example")
        assert hasher.decoded == 3
        assert str(caught.value) == (
            "busy.example is over its budget of 3000000 decoded pixels a minute: "
            "this image of 1000000 pixels was not decoded"
        )
        assert isinstance(caught.value, DecodeError)
        assert (caught.value.sender, caught.value.budget) == ("busy.example", 3 * pixels)
        # Another sender has its own budget; so has nobody in particular.
        assert await hasher.hash(files[3], sender="quiet.example") == hash_media(files[3])
        assert await hasher.hash(files[4]) == hash_media(files[4])
        # A third of a minute later, a third of the budget is back.
        clock.now += 20
        assert await hasher.hash(files[5], sender="busy.example") == hash_media(files[5])
        with pytest.raises(OverBudget):
            await hasher.hash(files[0], sender="busy.example")
    finally:
        hasher.close()
    assert hasher.decoded == 6


async def test_what_a_jpeg_costs_is_what_it_decodes_to() -> None:
    # 4000x3000 decodes at 1/8 scale: 500x375 pixels.
    data = encode(bridge().resize((4000, 3000)), "JPEG", quality=90)
    assert survey(data).pixels == 500 * 375
    clock = Clock()
    hasher = MediaHasher(sender_pixels_per_minute=2 * 500 * 375, clock=clock)
    try:
        for _ in range(2):
            await hasher.hash(data, sender="photos.example")
        with pytest.raises(OverBudget):
            await hasher.hash(data, sender="photos.example")
    finally:
        hasher.close()


def test_what_the_survey_reads_from_the_header() -> None:
    assert survey(b'{"type": "Note"}') == Survey(0, 0)
    tiles = [bridge().crop((x, 0, x + 200, 100)) for x in range(0, 1000, 50)]
    animation = encode(tiles[0], "GIF", save_all=True, append_images=tiles[1:])
    # 20 frames, 8 hashed, the last of them frame 19: every frame is decoded.
    assert survey(animation).pixels == 20 * 200 * 100
    assert survey(animation, max_pixels=100_000).pixels == 5 * 200 * 100
    with pytest.raises(DecodeError, match=r"^decompression bomb: 7000x7000"):
        survey(solid_7000())
    with pytest.raises(DecodeError, match=r"^cannot decode image/png"):
        survey(picture(0)[:30])


async def test_memory_granted_to_an_image_cancelled_before_it_woke_comes_back() -> None:
    gate = _MemoryGate(10)
    assert await gate.acquire(10) == 10
    waiter = asyncio.ensure_future(gate.acquire(5))
    await asyncio.sleep(0)
    gate.release(10)  # grants the 5 bytes; the waiter has not run since
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled() and gate.in_use == 0 and not gate.queue
    assert await gate.acquire(50) == 10  # more than all of it: all of it
