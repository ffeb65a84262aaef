"""From receipt to verdict for activities carrying two images, at a steady rate.

Sluice runs as `python -m relay serve` on its embedded PostgreSQL with a bank of
benign test hashes and a `review` rule; a child process serves the images (distinct
1-megapixel JPEGs, so no cache helps) and stands for the upstream and the sender's
actor. The benchmark sends signed Create activities at ``--rate`` per second: first
with no media, then with two images each. Each activity's time to verdict comes from
Sluice's own record (received_at to decided_at, via the admin API), split into the
hold's own time (fetch, decode, hash, match) and the wait before it.

Baseline: the same two images fetched over HTTP and hashed in this process, one
activity at a time, with nothing else going on: the floor of the hold's work.

    python bench/media_e2e.py [--rate 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
from aiohttp import web
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inbound import actor_response, free_port, pct, signing_key, wait_ready  # noqa: E402
from relay.media.hashes import hash_media  # noqa: E402
from relay.signature import sign_cavage  # noqa: E402

TOKEN = "bench-token"


def corpus(count: int) -> list[bytes]:
    """Distinct ~1 MP JPEGs made from the reference photo (crops, flips, quality)."""
    source = Image.open(ROOT / "tests" / "fixtures" / "pdq" / "bridge-mods" / "aaa-orig.jpg")
    source = source.convert("RGB").resize((1224, 816))
    out = []
    for i in range(count):
        img = source.crop((i % 37, i % 23, 1224 - (i % 41), 816 - (i % 29)))
        if i % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=80 + i % 15)
        out.append(buffer.getvalue())
    return out


def serve(port: int, key_pem: str, actor: str, images: list[bytes]) -> None:
    async def image(request: web.Request) -> web.Response:
        return web.Response(body=images[int(request.match_info["n"])], content_type="image/jpeg")

    async def actor_doc(request: web.Request) -> web.Response:
        return actor_response(actor, key_pem)

    async def inbox(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_get("/img/{n}.jpg", image)
    app.router.add_get("/users/bench", actor_doc)
    app.router.add_post("/{tail:.*}", inbox)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def activity(actor: str, n: int, urls: list[str]) -> bytes:
    note = {
        "id": f"{actor}/notes/{n}",
        "type": "Note",
        "attributedTo": actor,
        "content": "<p>bench</p>",
        "to": ["https://www.w3.org/ns/activitystreams#Public"],
        "attachment": [{"type": "Document", "mediaType": "image/jpeg", "url": u} for u in urls],
    }
    return json.dumps(
        {
            "@context": "https://www.w3.org/ns/activitystreams",
            "id": f"{actor}/activities/{n}",
            "type": "Create",
            "actor": actor,
            "object": note,
        }
    ).encode()


async def run_rate(session, target, key, actor, bodies, rate) -> list[str]:
    """Send at a steady rate; return the ids."""
    ids, tasks = [], []
    started = time.perf_counter()

    async def post(body: bytes) -> None:
        headers = sign_cavage(
            "POST",
            "https://social.example/inbox",
            body,
            key,
            actor + "#main-key",
            headers={"Content-Type": "application/activity+json"},
        )
        headers["Content-Type"] = "application/activity+json"
        async with session.post(target + "/inbox", data=body, headers=headers) as r:
            assert r.status == 202, await r.text()

    for i, body in enumerate(bodies):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        ids.append(json.loads(body)["id"])
        tasks.append(asyncio.create_task(post(body)))
    await asyncio.gather(*tasks)
    return ids


async def verdicts(session, target, ids) -> list[dict]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    out = []
    for ident in ids:
        for _ in range(600):
            async with session.get(
                target + "/_sluice/api/activities", params={"id": ident}, headers=auth
            ) as r:
                record = await r.json() if r.status == 200 else None
            if record and record.get("decided_at"):
                out.append(record)
                break
            await asyncio.sleep(0.05)
        else:
            raise SystemExit(f"no verdict for {ident}")
    return out


def seconds(record: dict) -> tuple[float, float]:
    received = datetime.fromisoformat(record["received_at"])
    decided = datetime.fromisoformat(record["decided_at"])
    hold = record["verdict"].get("timings", {}).get("hold_seconds", 0.0)
    return (decided - received).total_seconds(), hold


async def floor(session, base: str, pairs: list[tuple[int, int]]) -> list[float]:
    out = []
    for a, b in pairs:
        started = time.perf_counter()
        for n in (a, b):
            async with session.get(f"{base}/img/{n}.jpg") as r:
                data = await r.read()
            hash_media(data)
        out.append(time.perf_counter() - started)
    return out


async def main(args: argparse.Namespace) -> None:
    count = int(args.rate * args.seconds)
    images = corpus(2 * count)
    key, pem = signing_key()
    port, sluice_port, admin_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    actor = f"{base}/users/bench"
    child = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, pem, actor, images), daemon=True
    )
    child.start()
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-media-"))
    # A bank entry no bench image is near (every bench image is a variant of the bridge).
    pen = ROOT / "tests" / "fixtures" / "pdq" / "misc" / "pen-and-coaster.png"
    bank_hashes = hash_media(pen.read_bytes())
    config = work / "sluice.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{sluice_port}"\n[upstream]\nurl = "{base}"\n'
        f'[storage]\ndata_dir = "{work / "data"}"\n'
        '[network]\nallow = ["127.0.0.0/8"]\nallow_http = true\n[log]\nlevel = "warning"\n'
        f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
        f"[media]\nper_host_concurrency = {args.per_host}\n"
        '[[bank]]\nname = "bench"\ncategory = "test"\n'
        '[[rule]]\nmatch = "bench"\naction = "review"\n'
    )
    env = {**os.environ, "SLUICE_ADMIN_TOKEN": TOKEN}
    sluice = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--config",
        str(config),
        stderr=(work / "sluice.log").open("wb"),
        env=env,
    )
    target = f"http://127.0.0.1:{sluice_port}"
    admin = f"http://127.0.0.1:{admin_port}"  # /readyz and the admin API
    async with aiohttp.ClientSession() as session:
        await wait_ready(session, admin)
        import subprocess

        hashes_file = work / "bank.txt"
        hashes_file.write_text(f"pdq {bank_hashes.pdq[0].hash}\nmd5 {bank_hashes.md5}\n")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "relay",
                "bank",
                "import",
                "--config",
                str(config),
                "--bank",
                "bench",
                "--category",
                "test",
                str(hashes_file),
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        await asyncio.sleep(1.5)
        n = 0

        def batch(with_images: bool) -> list[bytes]:
            nonlocal n
            out = []
            for _ in range(count):
                n += 1
                urls = [
                    f"{base}/img/{2 * (n % count)}.jpg",
                    f"{base}/img/{2 * (n % count) + 1}.jpg",
                ]
                out.append(activity(actor, n, urls if with_images else []))
            return out

        await run_rate(session, target, key, actor, batch(False)[:20], args.rate)  # warm-up
        plain = await verdicts(
            session, admin, await run_rate(session, target, key, actor, batch(False), args.rate)
        )
        media = await verdicts(
            session, admin, await run_rate(session, target, key, actor, batch(True), args.rate)
        )
        baseline = await floor(session, base, [(2 * i, 2 * i + 1) for i in range(50)])
    sluice.terminate()
    await sluice.wait()
    child.terminate()

    ms = 1000
    plain_t = [seconds(r)[0] for r in plain]
    media_t = [seconds(r)[0] for r in media]
    media_hold = [seconds(r)[1] for r in media]
    wait = [t - h for t, h in zip(media_t, media_hold, strict=True)]
    matched = sum(r["state"] == "review" for r in media)
    print(
        f"machine: {os.cpu_count()} cores; {count} activities per run at {args.rate}/s; "
        "1 MP JPEGs, all distinct; embedded PostgreSQL"
    )
    print(
        f"0 images : receipt to verdict p50 {pct(plain_t, 50) * ms:7.1f} ms  "
        f"p99 {pct(plain_t, 99) * ms:7.1f} ms"
    )
    print(
        f"2 images : receipt to verdict p50 {pct(media_t, 50) * ms:7.1f} ms  "
        f"p99 {pct(media_t, 99) * ms:7.1f} ms"
    )
    print(
        f"           of which the hold (fetch, decode, hash, match) p50 "
        f"{pct(media_hold, 50) * ms:7.1f} ms, p99 {pct(media_hold, 99) * ms:7.1f} ms; "
        f"waiting before it p50 {pct(wait, 50) * ms:6.1f} ms"
    )
    print(
        f"           {matched} of {len(media)} held for review by the bench bank "
        "(none expected: every image is matched against the bank, none is in it)"
    )
    print(
        f"baseline : fetch + hash of the same two images, in-process, alone: p50 "
        f"{pct(baseline, 50) * ms:7.1f} ms"
    )
    print(
        f"ratio 2 images / baseline p50 x{pct(media_t, 50) / pct(baseline, 50):.2f}; "
        f"2 images / 0 images p50 x{pct(media_t, 50) / pct(plain_t, 50):.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--per-host",
        type=int,
        default=4,
        help="[media] per_host_concurrency: every image here comes from one origin host",
    )
    asyncio.run(main(parser.parse_args()))
