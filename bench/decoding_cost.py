"""What the images of security review finding 8 cost to hash: CPU-seconds and peak RSS.

- single: the review's image, a flat 7000x7000 PNG (160 kB), through ``hash_media``
  (``--max-pixels`` to hash it as an older limit would);
- activity: one activity's worth, 32 different 5760x5760 PNGs (a flat colour and a
  little noise, 270 kB each: within the pixel and density limits), hashed at once as
  the media check would: through ``MediaHasher`` for one sender where there is one,
  else (older trees) ``asyncio.to_thread(hash_media)`` on the default executor.

The images are built in a child process and come over a pipe, so that the peak RSS
measured (``ru_maxrss`` of this process) is the hashing's alone. To compare with an
older commit, run this file against its tree::

    git worktree add /tmp/before 4934c4f
    cd /tmp/before && PYTHONPATH=. python /work/main/bench/decoding_cost.py single
    cd /work/main && PYTHONPATH=. python bench/decoding_cost.py single
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import pickle
import resource
import subprocess
import sys
import time

COPIES = 32


def build(what: str) -> list[bytes]:
    import numpy as np
    from PIL import Image

    def png(img: Image.Image) -> bytes:
        out = io.BytesIO()
        img.save(out, "PNG")
        return out.getvalue()

    if what == "single":
        return [png(Image.new("RGB", (7000, 7000), (30, 120, 200)))]
    rng = np.random.default_rng(0)
    files = []
    for i in range(COPIES):
        img = Image.new("RGB", (5760, 5760), (i * 7, 120, 200))
        noise = rng.integers(0, 255, (200, 250, 3), dtype=np.uint8)
        img.paste(Image.fromarray(noise), (i, i))
        files.append(png(img))
    return files


async def hash_all(files: list[bytes], max_pixels: int | None) -> list[object]:
    from relay.media.hashes import hash_media

    limits = {} if max_pixels is None else {"max_pixels": max_pixels}
    try:
        from relay.media.hasher import MediaHasher
    except ImportError:  # before MediaHasher: what relay/media/check.py did
        calls = [asyncio.to_thread(hash_media, data, **limits) for data in files]
        return await asyncio.gather(*calls, return_exceptions=True)
    hasher = MediaHasher(**limits)  # type: ignore[arg-type]
    try:
        calls = [hasher.hash(data, sender="sender.example") for data in files]
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        hasher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["single", "activity"])
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        sys.stdout.buffer.write(pickle.dumps(build(args.what)))
        return
    child = [sys.executable, __file__, args.what, "--build"]
    files = pickle.loads(subprocess.run(child, capture_output=True, check=True).stdout)
    import relay
    import relay.media.hashes  # imported before measuring: numpy, Pillow, pdqhash

    with contextlib.suppress(ImportError):
        import relay.media.hasher
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, cpu = time.perf_counter(), time.process_time()
    got = asyncio.run(hash_all(files, args.max_pixels))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes: dict[str, int] = {}
    for result in got:
        name = type(result).__name__ if isinstance(result, Exception) else "hashed"
        outcomes[name] = outcomes.get(name, 0) + 1
    print(f"relay: {relay.__file__}")
    print(f"{len(files)} file(s) of {len(files[0])} bytes: {outcomes}")
    for result in got[:1]:
        if isinstance(result, Exception):
            print(f"  first: {result}")
    print(
        f"cpu {cpu:.2f} s, wall {wall:.2f} s, peak RSS {peak / 1024:.0f} MiB "
        f"({(peak - before) / 1024:.0f} MiB above the {before / 1024:.0f} before hashing)"
    )


if __name__ == "__main__":
    main()
