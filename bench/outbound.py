"""What the outbound door's forward proxy costs: added latency for deliveries, and
throughput for 1 MB media fetches, against a direct connection.

Runs, in one go and on this machine, each in its own process:

- an HTTPS origin on 127.0.0.1 (aiohttp), its certificate for ``localhost`` from a
  throwaway "public" CA (relay.outbound.ca.create_ca), answering ``POST /inbox``
  with 202 and ``GET /media/{n}`` with ``--media-bytes`` of random bytes;
- Sluice's forward proxy (relay.outbound.proxy.ForwardProxy, built through its
  public constructor with Sluice's own CA for interception, a ``[network]`` policy
  allowing loopback, the public CA as its ``cafile``, and the default handler: the
  forwarding core, ``Forwarder``; no checking handler is measured);
- the instance, here: aiohttp clients that trust the public CA (direct) or Sluice's CA
  (through the proxy, ``proxy=``: CONNECT, then TLS to Sluice inside the tunnel).

Both clients keep their connections alive, as does the proxy towards the origin; the
connections each side opened are counted (aiohttp tracing) and printed.

Deliveries: ``--deliveries`` signed POSTs (draft-cavage rsa-sha256, about 2 KB of JSON,
signed before timing starts), one at a time, alternating direct and via the proxy so
that the machine's drift hits both alike; each timed from the POST to the 202 read.
Media: ``--fetches`` GETs of the body at ``--concurrency``, direct then via the proxy,
``--rounds`` times alternating; MB/s over the whole of each path's rounds. The CPU time
each process spent per MB (/proc) says where the time goes: all three share the cores
here, so their sums set the ratio when CPU-bound, and the proxy's own share gives its
ceiling on a core of its own.

    python bench/outbound.py [--deliveries 1000] [--fetches 64] [--concurrency 8]
        [--rounds 2] [--media-bytes 1000000] [--profile FILE]

``--sluice`` measures a whole ``relay serve`` as the proxy instead, with the checks it
wires on its outbound door: a delivery is stored and judged, and answered 202 by Sluice
(the origin gets it later, from the flow); media are decoded and judged, so the body
is a noise JPEG. Its CPU figures count Sluice's main process alone (not PostgreSQL's,
nor any worker process's).

``--profile FILE`` (not with ``--sluice``) runs the proxy under cProfile and writes its
stats to FILE (then ``python -m pstats FILE``); its figures are then not the proxy's own.

``--pin`` gives the proxy a core of its own, as a deployment does (Sluice beside the
instance, the origin elsewhere): every thread of the proxy (and of its PostgreSQL, with
``--sluice``) on CPU 1, the clients and the origin on CPU 0. Direct then runs on one core
and via the proxy on two: the ratio says whether the proxy slows the instance's fetches
when it is not also taking the instance's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import multiprocessing
import os
import signal
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from aiohttp import web
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inbound import _peak_rss_mib, free_port, pct, signing_key
from relay.network import NetworkPolicy
from relay.outbound.ca import CertificateAuthority, create_ca
from relay.outbound.proxy import ForwardProxy
from relay.signature import sign_cavage

HOST = "localhost"  # resolves to 127.0.0.1 alone here; the proxy resolves it too
LOOPBACK = ("127.0.0.0/8", "::1/128")
ACTOR = "https://sender.example/users/bench"


def serve_origin(port: int, public_dir: str, body: bytes, content_type: str) -> None:
    """Child process: the HTTPS origin (an instance's inbox, a media server)."""

    async def inbox(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    async def media(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/inbox", inbox)
    app.router.add_get("/media/{n}", media)
    tls = CertificateAuthority.load(Path(public_dir)).context(HOST)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=tls, print=None, access_log=None)


def serve_proxy(port: int, sluice_dir: str, public_cafile: str, profile: str | None) -> None:
    """Child process: Sluice's forward proxy, as `sluice serve` would build it."""

    async def run() -> None:
        ca = CertificateAuthority.load(Path(sluice_dir))
        policy = NetworkPolicy.from_strings(LOOPBACK, allow_http=False)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with ForwardProxy(ca, policy, cafile=public_cafile) as proxy:
            await proxy.start("127.0.0.1", port)
            await stop.wait()

    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    asyncio.run(run())
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)


def media_body(size: int, picture: bool) -> tuple[bytes, str]:
    """``size`` random bytes; or, for Sluice's media check, a JPEG of noise about that
    big (benign, and it decodes: the check reads every file whole)."""
    if not picture:
        return os.urandom(size), "application/octet-stream"
    side = max(16, int((size / 0.9) ** 0.5))  # noise at quality 90: ~0.9 bytes a pixel
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), "image/jpeg"


def sluice_config(workdir: Path, proxy_port: int, origin_port: int, public_cafile: str) -> Path:
    """A whole Sluice whose outbound door is the proxy, every check it wires on."""
    config = workdir / "sluice.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[upstream]\nurl = "https://{HOST}:{origin_port}"\n'
        f'[storage]\ndata_dir = "{workdir / "sluice"}"\n'
        '[network]\nallow = ["127.0.0.0/8", "::1/128"]\n'
        '[log]\nlevel = "warning"\n'
        f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[outbound]\nlisten = "127.0.0.1:{proxy_port}"\ntrust_file = "{public_cafile}"\n'
    )
    return config


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (/proc, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_listening(port: int, what: str) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise SystemExit(f"the {what} on port {port} did not start")


def delivery(actor: str, n: int) -> bytes:
    """A Create activity of about 2 KB, as an instance delivers it."""
    return json.dumps(
        {
            "@context": "https://www.w3.org/ns/activitystreams",
            "id": f"{actor}/activities/{n}",
            "type": "Create",
            "actor": actor,
            "to": ["https://www.w3.org/ns/activitystreams#Public"],
            "object": {
                "id": f"{actor}/notes/{n}",
                "type": "Note",
                "attributedTo": actor,
                "content": "<p>" + "a delivery of a note, about two kilobytes. " * 40 + "</p>",
                "to": ["https://www.w3.org/ns/activitystreams#Public"],
            },
        }
    ).encode()


def deliveries(key, actor: str, url: str, count: int) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` deliveries to ``url``, signed (draft-cavage rsa-sha256) ahead of timing."""
    out = []
    for n in range(count):
        body = delivery(actor, n)
        headers = sign_cavage(
            "POST",
            url,
            body,
            key,
            actor + "#main-key",
            headers={"Content-Type": "application/activity+json"},
        )
        headers["Content-Type"] = "application/activity+json"
        out.append((body, headers))
    return out


class Client:
    """One side's session: direct to the origin, or through the proxy."""

    def __init__(self, tls: ssl.SSLContext, limit: int, proxy: str | None) -> None:
        self.proxy = proxy
        self.connections = 0
        self.refused: dict[int, int] = {}  # status: count, for files Sluice's check refused
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._counted)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, limit=limit, family=socket.AF_INET),
            trace_configs=[trace],
        )

    async def _counted(self, session, context, params) -> None:
        self.connections += 1

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> float:
        started = time.perf_counter()
        async with self.session.post(url, data=body, headers=headers, proxy=self.proxy) as r:
            await r.read()
            elapsed = time.perf_counter() - started
            if r.status != 202:
                raise SystemExit(f"delivery answered {r.status}: {await r.text()}")
        return elapsed

    async def fetch(self, url: str, expected: int) -> int:
        async with self.session.get(url, proxy=self.proxy) as r:
            got = 0
            async for chunk in r.content.iter_chunked(64 * 1024):
                got += len(chunk)
            if r.status != 200:
                self.refused[r.status] = self.refused.get(r.status, 0) + 1
                return 0
            if got != expected:
                raise SystemExit(f"media answered {r.status} with {got} bytes")
        return got

    async def media(self, base: str, count: int, concurrency: int, size: int) -> tuple[int, float]:
        """``count`` fetches, ``concurrency`` at a time; bytes and seconds."""
        semaphore = asyncio.Semaphore(concurrency)

        async def one(n: int) -> int:
            async with semaphore:
                return await self.fetch(f"{base}/media/{n}", size)

        started = time.perf_counter()
        sizes = await asyncio.gather(*(one(n) for n in range(count)))
        return sum(sizes), time.perf_counter() - started


class Cpu:
    """CPU seconds spent by the client (this process), the origin and the proxy."""

    def __init__(self, origin_pid: int, proxy_pid: int) -> None:
        self.pids = origin_pid, proxy_pid

    def now(self) -> tuple[float, float, float]:
        return (time.process_time(), *(cpu_seconds(pid) for pid in self.pids))

    def since(self, then: tuple[float, float, float]) -> list[float]:
        return [b - a for a, b in zip(then, self.now(), strict=True)]


async def measure(args: argparse.Namespace, ports: tuple[int, int], cpu: Cpu, cas):
    public, sluice = cas
    origin_port, proxy_port = ports
    base = f"https://{HOST}:{origin_port}"
    inbox = base + "/inbox"
    key, _ = signing_key()
    limit = max(args.concurrency, 1)
    direct = Client(ssl.create_default_context(cafile=public), limit, None)
    via = Client(ssl.create_default_context(cafile=sluice), limit, f"http://127.0.0.1:{proxy_port}")
    out = SimpleNamespace()
    try:
        # Warm up: connections both ways, Sluice's leaf for localhost, caches.
        for body, headers in deliveries(key, ACTOR, inbox, 20):
            await direct.post(inbox, body, headers)
            await via.post(inbox, body, headers)
        await direct.media(base, limit, limit, args.media_bytes)
        await via.media(base, limit, limit, args.media_bytes)
        warm = direct.connections, via.connections

        batch = deliveries(key, ACTOR, inbox, args.deliveries)
        out.direct_latency, out.via_latency = [], []
        started = cpu.now()
        for body, headers in batch:
            out.direct_latency.append(await direct.post(inbox, body, headers))
            out.via_latency.append(await via.post(inbox, body, headers))
        out.proxy_cpu_delivery = cpu.since(started)[2] / args.deliveries

        moved = {"direct": 0, "via": 0}
        seconds = {"direct": 0.0, "via": 0.0}
        spent = {"direct": [0.0, 0.0, 0.0], "via": [0.0, 0.0, 0.0]}
        for _ in range(args.rounds):
            for name, client in (("direct", direct), ("via", via)):
                started = cpu.now()
                got, took = await client.media(base, args.fetches, limit, args.media_bytes)
                spent[name] = [a + b for a, b in zip(spent[name], cpu.since(started), strict=True)]
                moved[name] += got
                seconds[name] += took
        out.direct_rate = moved["direct"] / seconds["direct"] / 1e6
        out.via_rate = moved["via"] / seconds["via"] / 1e6
        # CPU milliseconds per MB moved: client, origin, proxy.
        out.cpu_mb = {name: [1e3 * c / (moved[name] / 1e6) for c in spent[name]] for name in spent}
        out.new_connections = direct.connections - warm[0], via.connections - warm[1]
        out.warm_connections = warm
        out.refused = via.refused
    finally:
        await direct.session.close()
        await via.session.close()
    return out


def pin(pids: set[int], cpu: int) -> None:
    """Every thread of ``pids`` on ``cpu`` (a thread made later inherits its parent's)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(int(task.name), {cpu})


def _postgres(workdir: Path) -> set[int]:
    """The embedded PostgreSQL's processes under ``workdir`` (``--sluice``), if any."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(workdir) in (proc / "cmdline").read_text(errors="replace"):
                    found.add(int(proc.name))
            except OSError:
                continue
    return found


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-outbound-"))
    create_ca(workdir / "public", label="a public root")
    create_ca(workdir / "sluice", label="bench.example")
    public_cafile = str(CertificateAuthority.load(workdir / "public").cert_path)
    sluice_cafile = str(CertificateAuthority.load(workdir / "sluice").cert_path)
    origin_port, proxy_port = free_port(), free_port()
    body, content_type = media_body(args.media_bytes, picture=args.sluice)
    args.media_bytes = len(body)
    spawn = multiprocessing.get_context("spawn")
    origin = spawn.Process(
        target=serve_origin,
        args=(origin_port, str(workdir / "public"), body, content_type),
        daemon=True,
    )
    origin.start()
    if args.sluice:
        config = sluice_config(workdir, proxy_port, origin_port, public_cafile)
        proxy = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--config",
            str(config),
            stderr=(workdir / "sluice.log").open("wb"),
        )
        proxy_pid = proxy.pid
    else:
        process = spawn.Process(
            target=serve_proxy,
            args=(proxy_port, str(workdir / "sluice"), public_cafile, args.profile),
            daemon=True,
        )
        process.start()
        proxy_pid = process.pid
    try:
        await wait_listening(origin_port, "origin")
        await wait_listening(proxy_port, "proxy")
        if args.pin:
            pin({os.getpid(), origin.pid}, 0)
            pin({proxy_pid, *_postgres(workdir)}, 1)
        cpu = Cpu(origin.pid, proxy_pid)
        cas = public_cafile, sluice_cafile
        r = await measure(args, (origin_port, proxy_port), cpu, cas)
        peak_rss = _peak_rss_mib(proxy_pid)
    finally:
        if args.sluice:
            proxy.terminate()
            await proxy.wait()
        else:
            process.terminate()  # SIGTERM: the proxy closes, and writes its profile if asked
            process.join(30)
        origin.terminate()
        origin.join(10)

    ms = 1000.0
    d, v = r.direct_latency, r.via_latency
    print(
        f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}, aiohttp "
        f"{aiohttp.__version__}, {ssl.OPENSSL_VERSION}; origin, proxy and clients in "
        "three processes on loopback; "
        + (
            "the proxy: a whole `relay serve`, its outbound door with the checks it wires"
            if args.sluice
            else "handler: the default Forwarder (no checks)"
        )
        + ("; PROFILED (figures not the proxy's own)" if args.profile else "")
        + ("; PINNED: clients and origin on CPU 0, the proxy on CPU 1" if args.pin else "")
    )
    print(
        f"deliveries: {args.deliveries} sequential signed POSTs of {len(delivery(ACTOR, 0))} "
        "bytes, alternating direct / via the proxy (CONNECT + Sluice's TLS, keep-alive)"
    )
    print(f"latency direct    p50 {pct(d, 50) * ms:7.2f} ms  p99 {pct(d, 99) * ms:7.2f} ms")
    print(f"latency via proxy p50 {pct(v, 50) * ms:7.2f} ms  p99 {pct(v, 99) * ms:7.2f} ms")
    print(f"proxy CPU per delivery {r.proxy_cpu_delivery * ms:.2f} ms")
    print(
        f"media: {args.rounds} x {args.fetches} GETs of {args.media_bytes} bytes at "
        f"concurrency {args.concurrency}, alternating direct / via the proxy"
    )
    print(f"throughput direct    {r.direct_rate:8.1f} MB/s")
    print(f"throughput via proxy {r.via_rate:8.1f} MB/s")
    if r.refused:
        print(f"refused via the proxy (status: count), not counted in MB/s: {r.refused}")
    for name, label in (("direct", "direct   "), ("via", "via proxy")):
        client, origin_cpu, proxy_cpu = r.cpu_mb[name]
        print(
            f"CPU per MB {label} {client + origin_cpu + proxy_cpu:5.2f} ms: client {client:5.2f}, "
            f"origin {origin_cpu:5.2f}, proxy {proxy_cpu:5.2f}"
        )
    print(
        f"client connections opened while timed: direct {r.new_connections[0]}, via "
        f"{r.new_connections[1]} (in warm-up: {r.warm_connections[0]}, {r.warm_connections[1]})"
    )
    print(f"proxy peak RSS {peak_rss:.0f} MiB (VmHWM)")
    print(
        f"proxy's own ceiling on one core {1e3 / max(r.cpu_mb['via'][2], 1e-9):6.0f} MB/s "
        "(1 / its CPU per MB)"
    )
    if args.profile:
        print(f"profile of the proxy: python -m pstats {args.profile}")
    added50 = (pct(v, 50) - pct(d, 50)) * ms
    added99 = (pct(v, 99) - pct(d, 99)) * ms
    print(f"added latency p50 {added50:6.2f} ms  p99 {added99:6.2f} ms (target p50 <= 5 ms)")
    direct_cpu, via_cpu = sum(r.cpu_mb["direct"]), sum(r.cpu_mb["via"])
    print(
        f"ratio via/direct: media throughput x{r.via_rate / r.direct_rate:.2f} (target >= 0.8); "
        f"CPU per MB x{direct_cpu / via_cpu:.2f} (a CPU-bound run on shared cores would show it)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--fetches", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--media-bytes", type=int, default=1_000_000)
    parser.add_argument("--profile", metavar="FILE", default=None)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the proxy on CPU 1, the clients and the origin on CPU 0 (a core of its own)",
    )
    parser.add_argument(
        "--sluice",
        action="store_true",
        help="measure a whole `relay serve` as the proxy: deliveries stored and judged "
        "(202 from Sluice), media decoded and judged (a noise JPEG instead of random bytes)",
    )
    asyncio.run(main(parser.parse_args()))
