"""What signing costs a receipt's fan-out: one receipt pushed to 1,000 followers' inboxes,
signed by Sluice's actor, against the same posts unsigned, in one run.

Runs, on this machine:

- the followers: one child process serving ``--hosts`` aiohttp servers on 127.0.0.1 (a
  few peers' hosts), ``--followers`` inbox paths spread across them, each answering
  ``POST /users/N/inbox`` with 202 (nothing verified: the peers' cost is not Sluice's);
- Sluice's side, in this process: the send effect (relay.effects.send.Send) on a
  fediverse session (relay.network.client_session, a policy allowing loopback), one
  ``Send.run`` per inbox at ``--concurrency``. Signed: a draft-cavage rsa-sha256
  signature by Sluice's own actor (relay.actor.Actor.sign_request, its RSA key made as
  on a first start) made per POST, as the outbox makes it per attempt. Unsigned: a signer that
  adds nothing.

``--outbox`` measures the whole path instead: each round's receipt is enqueued with
``fan_out`` (one statement, 1,000 rows) on an embedded PostgreSQL, and the outbox
(relay.outbox.Outbox, ``--concurrency`` runners, its default lease and poll) claims,
sends and settles every row; timed from the enqueue to the last row done.

Rounds alternate unsigned and signed (``--rounds`` each), so drift hits both alike;
a warm-up round of each comes first. The rate is deliveries answered 202 per second
over all of a kind's rounds; the CPU this process spent per delivery (/proc) and the
followers' process's say where the time goes.

    python bench/receipts.py [--followers 1000] [--hosts 4] [--concurrency 16]
        [--rounds 3] [--outbox]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inbound import free_port
from bench.outbound import cpu_seconds, wait_listening
from relay.effects.send import KIND, Send, Signer, fan_out
from relay.log import configure_logging
from relay.network import NetworkPolicy, client_session
from relay.outbox import Outbox

ACTOR = "https://sluice.example/actor"
LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)


def serve_followers(ports: list[int]) -> None:
    """Child process: the followers' hosts; every inbox answers 202."""

    async def inbox(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    async def run() -> None:
        for port in ports:
            app = web.Application()
            app.router.add_post("/users/{n}/inbox", inbox)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(run())


def receipt(n: int) -> dict[str, object]:
    """A signed receipt's size and shape (its proof is a stand-in: only its bytes count)."""
    return {
        "@context": [
            "https://www.w3.org/ns/activitystreams",
            "https://w3id.org/security/data-integrity/v2",
        ],
        "id": f"https://sluice.example/receipts/{n}",
        "type": "ModerationReceipt",
        "actor": ACTOR,
        "object": [f"https://origin.example/notes/{n}", "https://origin.example/users/x"],
        "published": "2026-12-03T10:00:00Z",
        "jurisdiction": ["EU"],
        "category": "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
        "categorySpecification": ["KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL"],
        "decisionGround": "DECISION_GROUND_ILLEGAL_CONTENT",
        "automatedDetection": True,
        "automatedDecision": "AUTOMATED_DECISION_FULLY",
        "contentHash": [{"algorithm": "sha256", "value": "ab" * 32}],
        "shouldPropagate": True,
        "proof": {
            "type": "DataIntegrityProof",
            "cryptosuite": "eddsa-jcs-2022",
            "verificationMethod": f"{ACTOR}#ed25519-key",
            "proofPurpose": "assertionMethod",
            "proofValue": "z" + "5" * 86,
        },
    }


def signers(key_dir: Path) -> dict[str, Signer]:
    """Sluice's own actor's signer (its RSA key, made as on a first start), and none."""
    from relay.actor import Actor

    actor = Actor.load(ACTOR.rsplit("/", 1)[0], key_dir=key_dir)
    assert actor is not None
    signed = actor.sign_request

    def unsigned(
        method: str, url: str, headers: Mapping[str, str] | None, body: bytes | None
    ) -> dict[str, str]:
        return {}

    return {"unsigned": unsigned, "signed": signed}


async def direct_round(sender: Send, inboxes: list[str], n: int, concurrency: int) -> int:
    """Send.run per inbox, ``concurrency`` at a time; returns how many were delivered."""
    gate = asyncio.Semaphore(concurrency)
    activity = receipt(n)

    async def one(inbox: str) -> bool:
        async with gate:
            await sender.run({"inbox": inbox, "activity": activity, "key": f"{n}:{inbox}"})
            return True

    return sum(await asyncio.gather(*(one(i) for i in inboxes)))


async def outbox_round(outbox: Outbox, inboxes: list[str], n: int) -> int:
    before = (await outbox.counts())["done"]
    await fan_out(outbox, receipt(n), inboxes, f"bench:{n}")
    while True:
        counts = await outbox.counts()
        if counts["pending"] == 0:
            if counts["dead"]:
                raise SystemExit(f"{counts['dead']} sends failed: {await outbox.list('dead', 3)}")
            return counts["done"] - before
        await asyncio.sleep(0.005)


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-receipts-"))
    logfile = (workdir / "sluice.log").open("w")
    configure_logging("info")  # as `sluice serve` logs (an effect_done per send), to a file
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(logfile))
    ports = [free_port() for _ in range(args.hosts)]
    inboxes = [
        f"http://127.0.0.1:{ports[i % len(ports)]}/users/{i}/inbox" for i in range(args.followers)
    ]
    child = multiprocessing.get_context("spawn").Process(
        target=serve_followers, args=(ports,), daemon=True
    )
    child.start()
    database = None
    outboxes: dict[str, Outbox] = {}
    try:
        for port in ports:
            await wait_listening(port, "followers")
        session = client_session(LOOPBACK, limit=args.concurrency, limit_per_host=args.concurrency)
        made = signers(workdir / "actor")
        sign_cost = _signing_seconds(made["signed"], inboxes[0], receipt(0))
        senders = {kind: Send(session, LOOPBACK, signer) for kind, signer in made.items()}
        if args.outbox:
            from relay.store import connect

            database = await connect("", workdir / "pg", pool_size=args.concurrency + 4)
            for kind, sender in senders.items():
                # One outbox per kind, started for its own rounds only: a round's rows are
                # claimed by its signer.
                box = Outbox(database.pool, concurrency=args.concurrency, poll_interval=0.05)
                box.register(KIND, sender)
                outboxes[kind] = box

        async def round_of(kind: str, n: int) -> tuple[int, float, float]:
            cpu0, started = cpu_seconds(os.getpid()), time.perf_counter()
            if args.outbox:
                box = outboxes[kind]
                await box.start()
                try:
                    done = await outbox_round(box, inboxes, n)
                finally:
                    await box.stop()
            else:
                done = await direct_round(senders[kind], inboxes, n, args.concurrency)
            return done, time.perf_counter() - started, cpu_seconds(os.getpid()) - cpu0

        totals = {kind: [0, 0.0, 0.0, 0.0] for kind in made}  # done, seconds, cpu, peer cpu
        n = 0
        for timed in [False] + [True] * args.rounds:
            for kind in made:
                n += 1
                peer0 = cpu_seconds(child.pid)
                done, seconds, cpu = await round_of(kind, n)
                if done != len(inboxes):
                    raise SystemExit(f"round {n} ({kind}): {done} of {len(inboxes)} delivered")
                if timed:
                    total = totals[kind]
                    total[0] += done
                    total[1] += seconds
                    total[2] += cpu
                    total[3] += cpu_seconds(child.pid) - peer0
        await session.close()
    finally:
        for box in outboxes.values():
            await box.stop()
        if database is not None:
            await database.close()
            shutil.rmtree(workdir / "pg", ignore_errors=True)
        child.terminate()
        child.join(10)
        logfile.close()

    print(
        f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}, aiohttp "
        f"{aiohttp.__version__}; followers: {args.followers} inboxes on {args.hosts} loopback "
        f"servers in one child process; path: "
        + (
            "fan_out into the outbox (embedded PostgreSQL), claimed, sent and settled"
            if args.outbox
            else "Send.run per inbox"
        )
        + f", concurrency {args.concurrency}"
    )
    print(
        f"receipt: {len(json.dumps(receipt(0)))} bytes of JSON; {args.rounds} timed "
        "round(s) of each kind, alternating, after a warm-up round of each"
    )
    print(f"Actor.sign_request per POST: {sign_cost * 1e3:.2f} ms; Sluice's log: {logfile.name}")
    rates = {}
    for kind, (done, seconds, cpu, peer) in totals.items():
        rates[kind] = done / seconds
        print(
            f"{kind:8} {rates[kind]:8.1f} deliveries/s   Sluice CPU {cpu / done * 1e3:5.2f} ms "
            f"per delivery, followers' {peer / done * 1e3:5.2f} ms"
        )
    print(f"signed: {rates['signed']:.0f} deliveries/s (target >= 200/s)")
    print(f"ratio signed/unsigned: x{rates['signed'] / rates['unsigned']:.2f}")


def _signing_seconds(signer: Signer, url: str, activity: dict[str, object]) -> float:
    body = json.dumps(activity).encode()
    count = 200
    started = time.perf_counter()
    for _ in range(count):
        signer("POST", url, {"Content-Type": "application/activity+json"}, body)
    return (time.perf_counter() - started) / count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--outbox", action="store_true", help="through fan_out and the outbox")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))
