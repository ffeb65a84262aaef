"""Normal activities' time to verdict, alone and beside a burst of hostile requests.

Sluice runs as `python -m relay serve` on its embedded PostgreSQL. A child process
stands for the fediverse and the upstream: it serves the actors, the images, the slow
key hosts and the instance's inbox. The normal stream is signed Create activities with
one or two distinct ~1 MP JPEGs each (bench/media_e2e.py's corpus) at ``--rate`` per
second for ``--seconds``, from actors Sluice has not seen before (a new one every
``--per-actor`` activities, so key fetches are part of the normal path).

Phase A: the normal stream alone (the baseline). Phase B: the same stream again while
a hostile burst arrives over its first half, from other source addresses
(127.0.0.50-53), each kind spread evenly:

- LD-signed relayed notes: HTTP-signed by one actor, ``actor`` another, with the
  actor's genuine RsaSignature2017 (``sign_ld``) over a note of 60-200 kB of hashtags:
  what costs pyld's URDNA2015 seconds;
- slow key hosts: requests whose keyId points at origins on 32 loopback addresses
  (127.0.0.10-41) that answer, then drip one byte every ``--drip`` seconds;
- oversized PNGs: activities whose 32 attachments are distinct solid-colour
  7000x7000 PNGs of ~160 kB each.

For the normal activities only, the time from receipt to verdict is Sluice's own
record (received_at to decided_at, through the admin API). A normal activity that got
no 202, or no verdict before the end, counts at the time it had waited so far (a lower
bound: its percentiles are then printed with >=). Also printed: how the hostile
requests were answered, and the ratio B p99 / A p99 last.

    python bench/hostile.py [--rate 20] [--seconds 10] [--hostile-scale 1]
    python bench/hostile.py --legacy-admin   # code before [admin] listen (4934c4f)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inbound import actor_response, free_port, pct, signing_key, wait_ready  # noqa: E402
from bench.media_e2e import activity, corpus, seconds  # noqa: E402
from relay.signature import sign_cavage, sign_ld  # noqa: E402

TOKEN = "bench-token"
INBOX = "https://social.example/inbox"  # what every sender signs for: [server] hosts
JSON = {"Content-Type": "application/activity+json"}
HOSTILE_ORIGIN = "127.0.0.2"  # the hostile actors, their notes and PNGs
DRIP_HOSTS = [f"127.0.0.{i}" for i in range(10, 42)]  # 32 slow key hosts
HOSTILE_SOURCES = [f"127.0.0.{i}" for i in range(50, 54)]  # where the burst comes from
LD_CONTEXT = [
    "https://www.w3.org/ns/activitystreams",
    "https://w3id.org/security/v1",
    {"Hashtag": "as:Hashtag"},  # as Mastodon writes it
]
PNGS_PER_ACTIVITY = 32


# -- The oversized PNGs: one deflate stream for the rows below the first, shared. --


@dataclass(frozen=True)
class PngTail:
    """Rows 2..side of a solid picture (filter Up, all zero), deflated once."""

    side: int
    deflated: bytes
    adler: int
    length: int

    @classmethod
    def make(cls, side: int) -> PngTail:
        row = b"\x02" + bytes(3 * side)
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        parts, adler = [], 1
        for _ in range(side - 1):
            parts.append(deflate.compress(row))
            adler = zlib.adler32(row, adler)
        parts.append(deflate.flush())
        return cls(side, b"".join(parts), adler, len(row) * (side - 1))


def _adler_combine(first: int, second: int, second_length: int) -> int:
    """Adler-32 of a + b from those of a and b (zlib's adler32_combine)."""
    mod = 65521
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % mod
    b = (b1 + b2 + second_length * (a1 - 1)) % mod
    return (b << 16) | a


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def solid_png(tail: PngTail, rgb: tuple[int, int, int]) -> bytes:
    """A side x side PNG of one colour in about a millisecond: the first row deflated and
    fully flushed, then the shared tail (a full flush makes the two streams independent)."""
    first = b"\x00" + bytes(rgb) * tail.side
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(first) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = _adler_combine(zlib.adler32(first), tail.adler, tail.length)
    idat = b"\x78\xda" + head + tail.deflated + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", tail.side, tail.side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def colour(n: int) -> tuple[int, int, int]:
    """A distinct colour per picture, so no hash cache helps."""
    n = (n * 2654435761 + 12345) & 0xFFFFFF
    return (n >> 16, (n >> 8) & 0xFF, n & 0xFF)


# -- The child process: every other server there is. --


def serve(port: int, key_pem: str, images: int, png_side: int, drip: float) -> None:
    """Actors (one key for all), images, PNGs, drip key hosts and the instance's inbox."""
    jpegs = corpus(images)
    tail = PngTail.make(png_side)

    async def actor_doc(request: web.Request) -> web.Response:
        actor = f"http://{request.host}/users/{request.match_info['name']}"
        return actor_response(actor, key_pem)

    async def jpeg(request: web.Request) -> web.Response:
        return web.Response(body=jpegs[int(request.match_info["n"])], content_type="image/jpeg")

    async def png(request: web.Request) -> web.Response:
        body = solid_png(tail, colour(int(request.match_info["n"])))
        return web.Response(body=body, content_type="image/png")

    async def slow_key(request: web.Request) -> web.StreamResponse:
        """Answer at once, then one byte (JSON whitespace) every `drip` seconds."""
        response = web.StreamResponse(headers=JSON)
        await response.prepare(request)
        try:
            for _ in range(int(300 / drip)):
                await response.write(b" ")
                await asyncio.sleep(drip)
        except (ConnectionError, RuntimeError):
            pass  # Sluice gave up
        return response

    async def inbox(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")  # the corpus is made: wait_ready may go on

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/readyz", ready)
        app.router.add_get("/users/{name}", actor_doc)
        app.router.add_get("/img/{n}.jpg", jpeg)
        app.router.add_get("/png/{n}.png", png)
        app.router.add_get("/drip/{name}", slow_key)
        app.router.add_post("/{tail:.*}", inbox)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for host in ["127.0.0.1", HOSTILE_ORIGIN, *DRIP_HOSTS]:
            await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()

    asyncio.run(run())


# -- What is sent. --


def relayed_note(author: str, n: int, tags: int) -> dict:
    """A Create of a note with `tags` hashtags: ~80 bytes and a dozen quads each."""
    base = author.rsplit("/users/", 1)[0]
    return {
        "@context": LD_CONTEXT,
        "id": f"{author}/activities/ld-{n}",
        "type": "Create",
        "actor": author,
        "object": {
            "id": f"{author}/notes/ld-{n}",
            "type": "Note",
            "attributedTo": author,
            "content": "<p>relayed</p>",
            "to": ["https://www.w3.org/ns/activitystreams#Public"],
            "tag": [
                {"type": "Hashtag", "href": f"{base}/tags/t{n}x{i}", "name": f"#t{n}x{i}"}
                for i in range(tags)
            ],
        },
    }


def sign_relayed(key_pem: bytes, author: str, n: int, tags: int) -> bytes:
    """Worker process: the note with its author's genuine RsaSignature2017."""
    key = serialization.load_pem_private_key(key_pem, None)
    return json.dumps(sign_ld(relayed_note(author, n, tags), key, author + "#main-key")).encode()


@dataclass
class Sent:
    kind: str
    ident: str
    sent: float  # time.time()
    status: str = "no answer"
    answered: float | None = None


async def post(
    session: aiohttp.ClientSession, target: str, body: bytes, key, key_id: str, sent: Sent
) -> None:
    headers = sign_cavage("POST", INBOX, body, key, key_id, headers=JSON)
    sent.sent = time.time()
    try:
        async with session.post(target + "/inbox", data=body, headers=headers) as r:
            await r.read()
            sent.status = str(r.status)
    except aiohttp.ClientError as exc:
        sent.status = type(exc).__name__
    sent.answered = time.time()


async def paced(items: list[tuple[float, Callable]]) -> list[asyncio.Task]:
    """Start each coroutine factory at its offset in seconds from now."""
    started = time.perf_counter()
    tasks = []
    for offset, start in sorted(items, key=lambda item: item[0]):
        await asyncio.sleep(max(0.0, started + offset - time.perf_counter()))
        tasks.append(asyncio.create_task(start()))
    return tasks


def normal_stream(args, session, target, key, base, phase: str, first_image: int):
    """(schedule, records) of one phase's normal activities; each from a new actor every
    `per_actor`, with 1 or 2 images numbered from `first_image`."""
    count = int(args.rate * args.seconds)
    schedule, records, image = [], [], first_image
    for n in range(count):
        actor = f"{base}/users/{phase}{n // args.per_actor}"
        urls = [f"{base}/img/{image + i}.jpg" for i in range(1 + n % 2)]
        image += len(urls)
        body = activity(actor, n, urls)
        record = Sent("normal", json.loads(body)["id"], 0.0)
        records.append(record)
        schedule.append(
            (
                n / args.rate,
                lambda b=body, a=actor, r=record: post(session, target, b, key, a + "#main-key", r),
            )
        )
    return schedule, records, image


def images_needed(args) -> int:
    count = int(args.rate * args.seconds)
    return 2 * (count + count // 2) + 8


async def decided(session, api: str, ids: list[str], deadline: float) -> dict[str, dict]:
    """Sluice's records of `ids` once decided, polled until all are or `deadline` passes."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    out: dict[str, dict] = {}
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        for ident in pending:
            async with session.get(
                api + "/_sluice/api/activities", params={"id": ident}, headers=auth
            ) as r:
                record = await r.json() if r.status == 200 else None
            if record and record.get("decided_at"):
                out[ident] = record
        pending = [i for i in pending if i not in out]
        if pending:
            await asyncio.sleep(0.2)
    return out


def outcome(record: dict) -> str:
    """The verdict's action, with its rule unless it is deliver; else the state so far."""
    verdict = record.get("verdict") or {}
    action = verdict.get("action") or record.get("state", "unknown")
    rule = verdict.get("rule")
    return f"{action} ({rule})" if rule and action != "deliver" else action


async def outcomes(session, api: str, ids: list[str]) -> Counter:
    """Where the accepted hostile activities stand now, without waiting."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    out: Counter = Counter()
    for ident in ids:
        async with session.get(
            api + "/_sluice/api/activities", params={"id": ident}, headers=auth
        ) as r:
            out[outcome(await r.json() if r.status == 200 else {})] += 1
    return out


def verdict_times(
    records: list[Sent], found: dict[str, dict], now: float
) -> tuple[list[float], int]:
    """Receipt to verdict per normal activity; the refused and the undecided at the time
    they had waited (lower bounds), and how many those were."""
    times, censored = [], 0
    for record in records:
        if record.ident in found:
            times.append(seconds(found[record.ident])[0])
        else:
            censored += 1
            times.append((record.answered if record.status != "202" else now) - record.sent)
    return times, censored


def summary(
    name: str, records: list[Sent], found: dict[str, dict], now: float
) -> tuple[str, float]:
    times, censored = verdict_times(records, found, now)
    refused = Counter(r.status for r in records if r.status != "202")
    undecided = sum(r.status == "202" and r.ident not in found for r in records)
    bound = ">=" if censored else "  "
    p99 = pct(times, 99)
    line = (
        f"{name}: receipt to verdict p50 {bound}{pct(times, 50) * 1000:8.1f} ms  "
        f"p99 {bound}{p99 * 1000:8.1f} ms  ({len(found)} decided"
    )
    if refused:
        line += ", refused: " + counted(refused)
    if undecided:
        line += f", {undecided} accepted but undecided at the end"
    verdicts = Counter(outcome(record) for record in found.values())
    line += "; " + counted(verdicts)
    return line + ")", p99


def counted(counts: Counter) -> str:
    return ", ".join(f"{name} x{count}" for name, count in sorted(counts.items()))


def answers(records: list[Sent]) -> str:
    waits = [r.answered - r.sent for r in records if r.answered is not None]
    text = counted(Counter(r.status for r in records))
    if waits:
        text += f"; answered in p50 {pct(waits, 50):.2f} s, max {max(waits):.2f} s"
    return text


async def stop(process: asyncio.subprocess.Process, grace: float = 60) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        print(f"Sluice did not stop within {grace:g} s; killed", file=sys.stderr)
        process.kill()
        await process.wait()


async def main(args: argparse.Namespace) -> None:
    key, pem = signing_key()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    port, sluice_port, admin_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    hostile = f"http://{HOSTILE_ORIGIN}:{port}"
    child = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, pem, images_needed(args), args.png_side, args.drip), daemon=True
    )
    child.start()
    png_bytes = len(solid_png(PngTail.make(args.png_side), (1, 2, 3)))

    scale = args.hostile_scale
    n_ld, n_slow, n_png = round(6 * scale), round(120 * scale), round(2 * scale)
    # 60 to 200 kB of JSON: 700 to 2,200 hashtags.
    ld_tags = [700 + (1500 * i) // max(1, n_ld - 1) for i in range(n_ld)]
    signer_pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    ld_bodies = [
        loop.run_in_executor(signer_pool, sign_relayed, key_pem, f"{hostile}/users/author", i, t)
        for i, t in enumerate(ld_tags)
    ]

    work = Path(tempfile.mkdtemp(prefix="sluice-bench-hostile-"))
    config = work / "sluice.toml"
    server = f'[server]\nlisten = "127.0.0.1:{sluice_port}"\n'
    admin = f"http://127.0.0.1:{sluice_port}"
    if not args.legacy_admin:
        server += f'hosts = ["social.example"]\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
        admin = f"http://127.0.0.1:{admin_port}"
    config.write_text(
        server + f'[upstream]\nurl = "{base}"\n[storage]\ndata_dir = "{work / "data"}"\n'
        '[network]\nallow = ["127.0.0.0/8"]\nallow_http = true\n[log]\nlevel = "warning"\n'
    )
    sluice = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--config",
        str(config),
        cwd=ROOT,  # `-m relay` from this tree (a worktree of an older commit, too)
        stdout=subprocess.DEVNULL,
        stderr=(work / "sluice.log").open("wb"),
        env={**os.environ, "SLUICE_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)},
    )
    target = f"http://127.0.0.1:{sluice_port}"
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            aiohttp.ClientSession() as api,
        ):
            await wait_ready(api, base)  # the child
            await wait_ready(api, admin)
            bodies = await asyncio.gather(*ld_bodies)
            signer_pool.shutdown()

            # Warm-up: connections, the pool, the first hashes.
            warm = argparse.Namespace(rate=args.rate, seconds=4 / args.rate, per_actor=4)
            schedule, records, image = normal_stream(warm, session, target, key, base, "w", 0)
            await asyncio.gather(*await paced(schedule))
            await decided(api, admin, [r.ident for r in records], time.monotonic() + 30)

            # Phase A: the normal stream alone.
            schedule, normal_a, image = normal_stream(args, session, target, key, base, "a", image)
            await asyncio.gather(*await paced(schedule))
            found_a = await decided(
                api,
                admin,
                [r.ident for r in normal_a if r.status == "202"],
                time.monotonic() + args.wait,
            )
            now_a = time.time()

            # Phase B: the same stream, and the burst over its first half.
            burst = args.seconds / 2
            sources = [
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(a, 0), limit=0))
                for a in HOSTILE_SOURCES
            ]
            plan: list[tuple[float, Callable]] = []
            hostile_records: list[Sent] = []

            def add(kind: str, i: int, total: int, body: bytes, key_id: str) -> None:
                record = Sent(kind, json.loads(body)["id"], 0.0)
                hostile_records.append(record)
                source = sources[len(hostile_records) % len(sources)]
                plan.append(
                    (burst * i / total, lambda: post(source, target, body, key, key_id, record))
                )

            for i, body in enumerate(bodies):
                add("ld", i, n_ld, body, f"{hostile}/users/relay#main-key")
            for i in range(n_slow):
                origin = f"http://{DRIP_HOSTS[i % len(DRIP_HOSTS)]}:{port}"
                body = activity(f"{origin}/drip/k{i}", i, [])
                add("slow_key", i, n_slow, body, f"{origin}/drip/k{i}#main-key")
            for i in range(n_png):
                painter = f"{hostile}/users/painter"
                urls = [
                    f"{hostile}/png/{i * PNGS_PER_ACTIVITY + j}.png"
                    for j in range(PNGS_PER_ACTIVITY)
                ]
                add("png", i, n_png, activity(painter, 1_000_000 + i, urls), painter + "#main-key")

            schedule, normal_b, _ = normal_stream(args, session, target, key, base, "b", image)
            hostile_started = asyncio.create_task(paced(plan))
            await asyncio.gather(*await paced(schedule))
            found_b = await decided(
                api,
                admin,
                [r.ident for r in normal_b if r.status == "202"],
                time.monotonic() + args.wait,
            )
            now_b = time.time()
            hostile_tasks = await hostile_started
            if hostile_tasks:
                await asyncio.wait(hostile_tasks, timeout=args.grace)
            for task in hostile_tasks:
                task.cancel()
            await asyncio.gather(*hostile_tasks, return_exceptions=True)
            accepted = [r.ident for r in hostile_records if r.status == "202"]
            hostile_states = await outcomes(api, admin, accepted)
            for source in sources:
                await source.close()
    finally:
        await stop(sluice)
        child.terminate()

    print(
        f"machine: {os.cpu_count()} cores; normal stream {len(normal_a)} activities per phase at "
        f"{args.rate:g}/s, 1 or 2 distinct ~1 MP JPEGs each, a new actor every {args.per_actor}; "
        "embedded PostgreSQL"
        + (" (legacy admin: API on the public port)" if args.legacy_admin else "")
    )
    sizes = [len(body) // 1000 for body in bodies] or [0]
    print(
        f"hostile burst over the first {burst:g} s of B, from {len(HOSTILE_SOURCES)} addresses: "
        f"{n_ld} LD-signed relayed notes "
        f"({min(sizes)}-{max(sizes)} kB), "
        f"{n_slow} requests naming keys on {len(DRIP_HOSTS)} hosts "
        f"dripping a byte every {args.drip:g} s, "
        f"{n_png} activities x {PNGS_PER_ACTIVITY} solid PNGs {args.png_side}x{args.png_side} "
        f"(~{png_bytes // 1000} kB each, all distinct)"
    )
    line_a, p99_a = summary("A normal, alone         ", normal_a, found_a, now_a)
    line_b, p99_b = summary("B normal, beside hostile", normal_b, found_b, now_b)
    print(line_a)
    print(line_b)
    for kind, name in (
        ("ld", "LD-signed relayed"),
        ("slow_key", "slow key hosts   "),
        ("png", "oversized PNGs   "),
    ):
        print(f"hostile {name}: " + answers([r for r in hostile_records if r.kind == kind]))
    if hostile_states:
        print("accepted hostile activities at the end: " + counted(hostile_states))
    print(
        f"ratio B/A normal p99 x{p99_b / p99_a:.2f}"
        + (" (B a lower bound)" if ">=" in line_b else "")
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20, help="normal activities per second")
    parser.add_argument("--seconds", type=float, default=10, help="length of each phase")
    parser.add_argument("--per-actor", type=int, default=10, help="normal activities per new actor")
    parser.add_argument(
        "--hostile-scale",
        type=float,
        default=1,
        help="multiplies the burst: 6 LD notes, 120 slow-key requests, 2 PNG activities",
    )
    parser.add_argument("--png-side", type=int, default=7000)
    parser.add_argument("--drip", type=float, default=3, help="seconds between a slow host's bytes")
    parser.add_argument(
        "--wait", type=float, default=90, help="longest wait for verdicts after a phase"
    )
    parser.add_argument("--grace", type=float, default=5, help="then for hostile answers")
    parser.add_argument(
        "--legacy-admin",
        action="store_true",
        help="no [admin] listen or [server] hosts: /readyz and the API on the public port",
    )
    asyncio.run(main(parser.parse_args()))
