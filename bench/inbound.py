"""How much latency Sluice adds, and how many activities per second it stores and forwards.

Runs, in one go and on this machine:

- an upstream (an aiohttp server that answers 202 and records when each activity
  arrived) and an actor server publishing the sender's key, in a child process;
- Sluice itself (``python -m relay serve``) on its embedded PostgreSQL with fsync on;
- the sender, here: real draft-cavage signatures, made before timing starts.

Baseline: the same signed activities posted straight to the upstream.
Latency: one activity at a time, from the POST to its arrival at the upstream.
Throughput: a burst at fixed concurrency, until the last one has arrived.

    python bench/inbound.py [--latency 500] [--burst 5000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.signature import sign_cavage


def actor_response(actor: str, key_pem: str) -> web.Response:
    """The sender's actor document, its key inside, as the benchmarks' origins serve it."""
    return web.json_response(
        {
            "@context": ["https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"],
            "id": actor,
            "type": "Person",
            "inbox": actor + "/inbox",
            "publicKey": {"id": actor + "#main-key", "owner": actor, "publicKeyPem": key_pem},
        },
        content_type="application/activity+json",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_upstream(port: int, key_pem: str, actor: str) -> None:
    """Child process: the instance (records arrival times) and the sender's actor document."""
    arrivals: dict[str, float] = {}

    async def inbox(request: web.Request) -> web.Response:
        body = await request.read()
        arrivals[json.loads(body)["id"]] = time.time()
        return web.Response(status=202)

    async def actor_doc(request: web.Request) -> web.Response:
        return actor_response(actor, key_pem)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def reset(request: web.Request) -> web.Response:
        arrivals.clear()
        return web.Response()

    app = web.Application()
    app.router.add_get("/users/bench", actor_doc)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/{tail:.*}", inbox)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Sender:
    def __init__(self, key: rsa.RSAPrivateKey, actor: str) -> None:
        self.key = key
        self.actor = actor
        self.n = 0

    def make(self, count: int) -> list[tuple[str, bytes, dict[str, str]]]:
        out = []
        for _ in range(count):
            self.n += 1
            ident = f"{self.actor}/activities/{self.n}"
            body = json.dumps(
                {
                    "@context": "https://www.w3.org/ns/activitystreams",
                    "id": ident,
                    "type": "Create",
                    "actor": self.actor,
                    "object": {
                        "id": f"{self.actor}/notes/{self.n}",
                        "type": "Note",
                        "attributedTo": self.actor,
                        "content": "<p>hello</p>",
                        "to": ["https://www.w3.org/ns/activitystreams#Public"],
                    },
                }
            ).encode()
            headers = sign_cavage(
                "POST",
                "https://social.example/inbox",
                body,
                self.key,
                self.actor + "#main-key",
                headers={"Content-Type": "application/activity+json"},
            )
            headers["Content-Type"] = "application/activity+json"
            out.append((ident, body, headers))
        return out


async def arrivals(session: aiohttp.ClientSession, upstream: str) -> dict[str, float]:
    async with session.get(upstream + "/_stats") as r:
        return await r.json()


async def wait_arrived(session, upstream: str, ids: list[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = await arrivals(session, upstream)
        if all(i in got for i in ids):
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"only {sum(i in got for i in ids)}/{len(ids)} arrived")
        await asyncio.sleep(0.01)


async def latency(session, target: str, upstream: str, batch) -> list[float]:
    """Sequential: POST, then wait for the activity to reach the upstream."""
    out = []
    for ident, body, headers in batch:
        sent = time.time()
        async with session.post(target + "/inbox", data=body, headers=headers) as r:
            assert r.status == 202, (r.status, await r.text())
        while True:
            got = await arrivals(session, upstream)
            if ident in got:
                out.append(got[ident] - sent)
                break
            await asyncio.sleep(0.0005)
    return out


async def throughput(session, target: str, upstream: str, batch, concurrency: int) -> float:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(body: bytes, headers: dict[str, str]) -> None:
        async with semaphore, session.post(target + "/inbox", data=body, headers=headers) as r:
            assert r.status == 202, (r.status, await r.text())

    started = time.perf_counter()
    await asyncio.gather(*(one(b, h) for _, b, h in batch))
    await wait_arrived(session, upstream, [i for i, _, _ in batch])
    return len(batch) / (time.perf_counter() - started)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def signing_key() -> tuple[rsa.RSAPrivateKey, str]:
    """A fresh RSA key and its public PEM, for the sender's actor document."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, pem


async def wait_ready(session: aiohttp.ClientSession, target: str) -> None:
    """Until Sluice's admin listener answers /readyz (its embedded PostgreSQL may take
    seconds to start)."""
    for _ in range(600):
        try:
            async with session.get(target + "/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"Sluice at {target} did not become ready")


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) > 1 else values[0]


async def main(args: argparse.Namespace) -> None:
    key, pem = signing_key()
    up_port, sluice_port, admin_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    actor = f"{upstream}/users/bench"
    child = multiprocessing.get_context("spawn").Process(
        target=serve_upstream, args=(up_port, pem, actor), daemon=True
    )
    child.start()
    sender = Sender(key, actor)
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    config = workdir / "sluice.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{sluice_port}"\n'
        f'[upstream]\nurl = "{upstream}"\n'
        f'[storage]\ndata_dir = "{workdir / "data"}"\n'
        '[network]\nallow = ["127.0.0.0/8"]\nallow_http = true\n'
        '[log]\nlevel = "warning"\n'
        f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
    )
    sluice = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--config",
        str(config),
        stderr=(workdir / "sluice.log").open("wb"),
    )
    target = f"http://127.0.0.1:{sluice_port}"
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_ready(session, f"http://127.0.0.1:{admin_port}")
        # Warm up both paths (key cache, connections, JIT-less Python's caches).
        await latency(session, target, upstream, sender.make(20))
        await latency(session, upstream, upstream, sender.make(20))

        direct = await latency(session, upstream, upstream, sender.make(args.latency))
        via = await latency(session, target, upstream, sender.make(args.latency))
        direct_rate = await throughput(
            session, upstream, upstream, sender.make(args.burst), args.concurrency
        )
        via_rate = await throughput(
            session, target, upstream, sender.make(args.burst), args.concurrency
        )
    peak_rss = _peak_rss_mib(sluice.pid)
    sluice.terminate()
    await sluice.wait()
    child.terminate()

    ms = 1000.0
    print(
        f"machine: {os.cpu_count()} cores; {args.latency} sequential, burst {args.burst} "
        f"at concurrency {args.concurrency}; signatures draft-cavage rsa-sha256; "
        "embedded PostgreSQL, synchronous commit before each 202"
    )
    print(
        f"latency to upstream, direct     p50 {pct(direct, 50) * ms:7.2f} ms  "
        f"p99 {pct(direct, 99) * ms:7.2f} ms"
    )
    print(
        f"latency to upstream, via Sluice p50 {pct(via, 50) * ms:7.2f} ms  "
        f"p99 {pct(via, 99) * ms:7.2f} ms"
    )
    added50 = (pct(via, 50) - pct(direct, 50)) * ms
    added99 = (pct(via, 99) - pct(direct, 99)) * ms
    print(f"added latency                   p50 {added50:7.2f} ms  p99 {added99:7.2f} ms")
    print(f"throughput direct      {direct_rate:8.0f} activities/s")
    print(f"throughput via Sluice  {via_rate:8.0f} activities/s (stored durably, then forwarded)")
    print(f"Sluice peak RSS {peak_rss:.0f} MiB (VmHWM; PostgreSQL's processes not counted)")
    print(
        f"ratio via/direct: latency p50 x{pct(via, 50) / pct(direct, 50):.2f}, "
        f"throughput x{via_rate / direct_rate:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=int, default=500)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
