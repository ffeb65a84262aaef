"""What the review UI costs: the queue page with 10,000 items held for review, and one
preview, each beside a baseline in the same run.

Runs, in this process, a whole Sluice (``relay.app.build_app``, embedded PostgreSQL
under a temporary directory) with its admin listener on loopback, then:

- fills the review queue with ``--items`` rows (realistic verdicts: a match of a
  ``csam``, ``unwanted`` or ``test`` bank on a fifth, two fifths, two fifths, a
  ``hashed`` signal each, a few hundred actors' hosts), as the hold would leave them;
- logs a moderator in through the form and times ``GET /review`` (the first page,
  ordered by severity then age), a page deep in the queue, and a filtered page, each
  ``--rounds`` times; the baseline is the JSON API's ``GET /_sluice/api/review`` (a
  hundred rows by id, no severity, no template) through the same listener;
- times ``relay.review.preview.preview`` (decode at reduced scale, shrink, greyscale,
  blur, re-encode) on a 12-megapixel JPEG and a 1-megapixel PNG, against Pillow's
  plain ``open`` + ``thumbnail`` of the same bytes (no draft, no blur) as the baseline.

Times are wall-clock on the client, on loopback: an upper bound on the server's time.
Targets (issue 14): the queue page under 200 ms, a preview under 50 ms.

    python bench/review.py [--items 10000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inbound import free_port
from relay.app import SLUICE, build_app
from relay.config import load_config
from relay.log import configure_logging
from relay.people import Accounts, ApiTokens
from relay.review.preview import SIZE, Look, preview

PASSWORD = "a long enough password"

_FILL = """
INSERT INTO activity (ap_id, type, actor, state, target, headers, body, received_at,
                      deadline, decided_at, verdict)
SELECT 'https://host' || (i % 300) || '.example/activities/' || i, 'Create',
       'https://host' || (i % 300) || '.example/users/u' || (i % 5000), 'review', '/inbox',
       '[]'::jsonb, convert_to('{"type": "Create"}', 'UTF8'),
       now() - make_interval(secs => $1 - i), now() + interval '1 day', now(),
       jsonb_build_object(
         'action', 'review',
         'rule', 'rule[' || (i % 3) || '] -> review',
         'signals', jsonb_build_array(
           jsonb_build_object('kind', 'hashed', 'source', 'media', 'detail',
             jsonb_build_object('url', 'https://host' || (i % 300) || '.example/m/' || i,
                                'sha256', md5(i::text) || md5(i::text), 'mime', 'image/jpeg')),
           jsonb_build_object('kind', 'match', 'source', 'bank-' || (i % 5), 'detail',
             jsonb_build_object('category',
               CASE WHEN i % 5 = 0 THEN 'csam' WHEN i % 5 < 3 THEN 'unwanted' ELSE 'test' END,
               'hash_kind', 'pdq', 'distance', i % 32))),
         'timings', jsonb_build_object('media', 0.2))
FROM generate_series(1, $1) AS i
"""


def picture(width: int, height: int, fmt: str) -> bytes:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 64):
        draw.rectangle((x, 0, x + 31, height), fill=(x % 255, 80, 160))
    out = io.BytesIO()
    image.save(out, fmt, quality=90) if fmt == "JPEG" else image.save(out, fmt)
    return out.getvalue()


def plain_thumbnail(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((SIZE, SIZE))
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=70)
        return out.getvalue()


def timed(function: object, data: bytes, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        function(data)  # type: ignore[operator]
        out.append(time.perf_counter() - start)
    return out


async def timed_get(
    session: aiohttp.ClientSession, url: str, rounds: int, **kwargs: object
) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        async with session.get(url, **kwargs) as response:  # type: ignore[arg-type]
            await response.read()
            assert response.status == 200, (url, response.status)
        out.append(time.perf_counter() - start)
    return out


def ms(values: list[float]) -> str:
    p95 = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
    return f"median {statistics.median(values) * 1000:7.1f} ms, p95 {p95 * 1000:7.1f} ms"


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-review-"))
    admin_port = free_port()
    config_file = workdir / "sluice.toml"
    config_file.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[storage]\ndata_dir = "{workdir / "data"}"\n'
        '[log]\nlevel = "warning"\n'
        f'[admin]\nlisten = "127.0.0.1:{admin_port}"\nsecure_cookies = false\n'
    )
    configure_logging("warning")
    app = build_app(load_config(config_file, environ={}))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        parts = app[SLUICE]
        pool = parts.pool
        await pool.execute(_FILL, args.items)
        await pool.execute("ANALYZE activity")
        await Accounts(pool).add("mo", "moderator", PASSWORD)
        token = (await ApiTokens(pool).issue("mo")).secret
        base = f"http://127.0.0.1:{admin_port}"
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.get(base + "/review/login") as response:
                csrf = re.search(r'name="csrf" value="([^"]+)"', await response.text())
            assert csrf is not None
            form = {"csrf": csrf.group(1), "name": "mo", "password": PASSWORD}
            async with session.post(base + "/review/login", data=form) as response:
                page = await response.text()
                assert response.status == 200 and f"{args.items}</small>" in page, page[:500]
            await timed_get(session, base + "/review", 3)  # warm
            first = await timed_get(session, base + "/review", args.rounds)
            deep = await timed_get(session, base + f"/review?offset={args.items - 60}", args.rounds)
            filtered = await timed_get(
                session, base + "/review?category=csam&origin=host7.example", args.rounds
            )
            api = await timed_get(
                session,
                base + "/_sluice/api/review",
                args.rounds,
                headers={"Authorization": f"Bearer {token}"},
            )
    finally:
        await runner.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    big, small = picture(4000, 3000, "JPEG"), picture(1200, 900, "PNG")
    look = Look(12, True)
    ours_big = timed(lambda d: preview(d, look), big, args.rounds)
    ours_small = timed(lambda d: preview(d, look), small, args.rounds)
    base_big = timed(plain_thumbnail, big, args.rounds)
    base_small = timed(plain_thumbnail, small, args.rounds)

    print(f"queue of {args.items} items in review, {args.rounds} rounds each")
    print(f"  /review first page (50, by severity)   {ms(first)}")
    print(f"  /review deep page (offset {args.items - 60})      {ms(deep)}")
    print(f"  /review?category&origin                {ms(filtered)}")
    print(f"  baseline: /_sluice/api/review (JSON)   {ms(api)}")
    print("previews (blur 12, greyscale)")
    jpeg, png = f"{len(big) // 1024} KiB", f"{len(small) // 1024} KiB"
    print(f"  12 MP JPEG ({jpeg}): ours {ms(ours_big)}; Pillow thumbnail {ms(base_big)}")
    print(f"  1 MP PNG ({png}): ours {ms(ours_small)}; Pillow thumbnail {ms(base_small)}")
    page_ratio = statistics.median(first) / statistics.median(api)
    preview_ratio = statistics.median(ours_big) / statistics.median(base_big)
    print(
        f"ratio queue page / JSON listing: {page_ratio:.2f}; "
        f"preview / plain thumbnail (JPEG): {preview_ratio:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
