"""Loading and keeping current a bank of millions of PDQ and MD5 hashes.

Fills one bank in a fresh embedded PostgreSQL with ``--n`` PDQ hashes and ``--md5`` MD5
digests (made by PostgreSQL itself: sha256 and md5 of a counter), then in one run:

- ``BankIndex.load`` of the whole bank: binary COPY parsed with numpy and indexes built
  in threads; time, memory and the longest stall of the event loop. Baseline for PDQ:
  the same rows read through a cursor with the hex converted in Python, as the first
  version did, without building anything.
- The MD5s alone: ``relay.hashing.exact_index.ExactIndex`` (binary COPY, one sort)
  against the first version's dict of hex digest -> entry id filled from a cursor:
  time, memory (the objects' own size, and the growth of the process's RSS) and the
  time of one lookup (half the queries stored, half not; both give the same answers).
- An incremental reload of ``--batch`` new PDQ and MD5 entries each: the longest stall
  of the event loop (changes applied in a thread), against the same change applied on
  the event loop as before.
- The periodic safety net when nothing changed: ``BankIndex.refresh`` (rows past the
  marks; the watcher counts the entries too on every tenth pass) against the full
  ``BankIndex.load`` it replaces.

Ratios come last.

    python bench/bank_load.py [--n 10000000] [--md5 10000000] [--batch 65536]
        [--queries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.banks.index import BankIndex, _read_hashes
from relay.hashing import Md5, Pdq
from relay.hashing.exact_index import ExactIndex
from relay.store import migrate

MiB = 1 << 20


def say(text: str) -> None:
    print(text, flush=True)


def rss() -> int:
    """The process's resident memory now, in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def fill(conn: asyncpg.Connection, bank_id: int, kind: str, start: int, count: int) -> None:
    """``count`` entries of ``kind``, made by PostgreSQL from the counter ``start``..."""
    value = "encode(sha256(('p' || i)::bytea), 'hex')" if kind == "pdq" else "md5('m' || i)"
    step = 1_000_000
    for first in range(start, start + count, step):
        last = min(first + step, start + count) - 1
        await conn.execute(
            f"INSERT INTO bank_entry (bank_id, kind, value) SELECT $1, '{kind}', {value} "
            "FROM generate_series($2::bigint, $3::bigint) i",
            bank_id,
            first,
            last,
        )


async def dict_baseline(pool: asyncpg.Pool, bank_id: int) -> dict[str, int]:
    """The first version's exact table: rows through a cursor into a dict."""
    table: dict[str, int] = {}
    async with pool.acquire() as conn, conn.transaction():
        cursor = await conn.cursor(
            "SELECT id, value FROM bank_entry WHERE bank_id = $1 AND kind = 'md5'", bank_id
        )
        while chunk := await cursor.fetch(20_000):
            for entry_id, value in chunk:
                table[value] = entry_id
            await asyncio.sleep(0)
    return table


def dict_bytes(table: dict[str, int]) -> int:
    """The dict, its keys and its values (ints past 256 are objects of their own)."""
    return sys.getsizeof(table) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in table.items())


async def exact_ours(pool: asyncpg.Pool, bank_id: int) -> ExactIndex:
    async with pool.acquire() as conn:
        ids, digests = await _read_hashes(conn, bank_id, Md5)
    return await asyncio.to_thread(ExactIndex.build, digests, ids, kind=Md5)


async def longest_stall(work: asyncio.Task[object]) -> float:
    """The longest the event loop went without running a 1 ms ticker while ``work`` ran."""
    loop = asyncio.get_running_loop()
    worst, last = 0.0, loop.time()
    while not work.done():
        await asyncio.sleep(0.001)
        now = loop.time()
        worst, last = max(worst, now - last - 0.001), now
    await work
    return worst


def per_query(lookup: Callable[[str], object], queries: list[str]) -> float:
    started = time.perf_counter()
    for q in queries:
        lookup(q)
    return (time.perf_counter() - started) / len(queries)


async def main(args: argparse.Namespace) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    server = pgserver.get_server(
        Path(tempfile.mkdtemp(prefix="sluice-bench-bank-")), cleanup_mode="delete"
    )
    pool = await asyncpg.create_pool(server.get_uri(), min_size=1, max_size=2)
    await migrate(pool)
    bank_id = await pool.fetchval(
        "INSERT INTO bank (name, category) VALUES ('big', 'test') RETURNING id"
    )
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await fill(conn, bank_id, "pdq", 0, args.n)
        await fill(conn, bank_id, "md5", 0, args.md5)
        await conn.execute("VACUUM ANALYZE bank_entry")
    filled = time.perf_counter() - started
    say(
        f"machine: {os.cpu_count()} cores; one bank of {args.n:,} PDQ and {args.md5:,} MD5 "
        f"entries (filled in {filled:.0f} s)"
    )

    # -- the whole bank at start
    before = rss()
    started = time.perf_counter()
    loading = asyncio.create_task(BankIndex.load(pool))
    load_stall = await longest_stall(loading)
    index = loading.result()
    load = time.perf_counter() - started
    load_rss = rss() - before
    assert len(index) == args.n + args.md5
    bank = index.banks["big"]
    say(
        f"BankIndex.load, both kinds (COPY + numpy + indexes): {load:6.1f} s, "
        f"arrays {sum(i.nbytes for i in bank.indexes()) / MiB:,.0f} MiB, "
        f"RSS +{load_rss / MiB:,.0f} MiB, longest event loop stall {load_stall * 1e3:.0f} ms"
    )
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        values = []
        cursor = await conn.cursor(
            "SELECT id, value FROM bank_entry WHERE bank_id = $1 AND kind = 'pdq'", bank_id
        )
        while rows := await cursor.fetch(20_000):
            values += [value for _, value in rows]
        np.frombuffer(bytes.fromhex("".join(values)), ">u8").astype(np.uint64)
    pdq_baseline = time.perf_counter() - started
    del values
    say(f"  PDQ baseline, reading only (cursor + Python hex), no index: {pdq_baseline:6.1f} s")

    # -- the MD5s alone: ours, then the dict
    gc.collect()
    before = rss()
    started = time.perf_counter()
    exact = await exact_ours(pool, bank_id)
    exact_load = time.perf_counter() - started
    exact_rss = rss() - before
    say(
        f"ExactIndex, {args.md5:,} MD5s (COPY + numpy + sort): {exact_load:6.1f} s, "
        f"arrays {exact.nbytes / MiB:,.0f} MiB, RSS +{exact_rss / MiB:,.0f} MiB"
    )
    gc.collect()
    before = rss()
    started = time.perf_counter()
    table = await dict_baseline(pool, bank_id)
    dict_load = time.perf_counter() - started
    table_rss = rss() - before
    table_bytes = dict_bytes(table)
    say(
        f"  baseline dict from a cursor: {dict_load:6.1f} s, objects "
        f"{table_bytes / MiB:,.0f} MiB, RSS +{table_rss / MiB:,.0f} MiB"
    )
    rng = np.random.default_rng(1)
    stored = [
        hashlib.md5(f"m{k}".encode()).hexdigest()
        for k in rng.integers(0, args.md5, args.queries // 2)
    ]
    absent = [rng.bytes(16).hex() for _ in range(args.queries - len(stored))]
    queries = stored + absent
    assert [exact.get(q) for q in queries] == [table.get(q) for q in queries]
    ours_query = per_query(exact.get, queries)
    dict_query = per_query(table.get, queries)
    say(f"  lookup: ExactIndex.get {ours_query * 1e6:.2f} us, dict.get {dict_query * 1e6:.2f} us")
    started = time.perf_counter()
    await asyncio.to_thread(exact.compact)
    exact_compact = time.perf_counter() - started
    say(f"  ExactIndex.compact (in a thread, lookups go on): {exact_compact:.1f} s")
    exact_bytes = exact.nbytes
    del table, exact
    gc.collect()

    # -- a change to the running bank: in a thread, against on the event loop
    async with pool.acquire() as conn:
        await fill(conn, bank_id, "pdq", args.n, args.batch)
        await fill(conn, bank_id, "md5", args.md5, args.batch)
    started = time.perf_counter()
    task = asyncio.create_task(index.reload(pool, "big"))
    stall = await longest_stall(task)
    reload = time.perf_counter() - started
    assert len(index) == args.n + args.md5 + 2 * args.batch
    say(
        f"reload of {args.batch:,} new PDQ + {args.batch:,} MD5 entries: {reload:.2f} s, "
        f"longest event loop stall {stall * 1e3:.1f} ms"
    )
    for each in bank.indexes():
        await asyncio.to_thread(each.compact)
    async with pool.acquire() as conn:
        await fill(conn, bank_id, "pdq", args.n + args.batch, args.batch)
        await fill(conn, bank_id, "md5", args.md5 + args.batch, args.batch)
        added = {}
        for kind in (Pdq, Md5):
            added[kind.name] = await _read_hashes(conn, bank_id, kind, after=bank.last_entry)
    started = time.perf_counter()
    bank.apply(added, np.zeros(0, np.int64))  # on the event loop, as before
    on_loop = time.perf_counter() - started
    say(f"  baseline, the same change applied on the event loop: stall {on_loop * 1e3:.1f} ms")
    # The marks, as reload would have moved them.
    bank.last_entry = max(int(ids.max()) for ids, _ in added.values())
    bank.changed_at = await pool.fetchval("SELECT changed_at FROM bank WHERE id = $1", bank_id)

    # -- the periodic safety net, nothing changed
    timings = {}
    for verify in (False, True, False, True):  # the second of each: caches warm
        started = time.perf_counter()
        assert await index.refresh(pool, verify=verify) is index
        timings[verify] = time.perf_counter() - started
    refresh, counted = timings[False], timings[True]
    say(
        f"BankIndex.refresh, nothing changed: {refresh * 1e3:.0f} ms, {counted:.2f} s with "
        f"the count; baseline, the full load it replaces: {load:.1f} s and a second copy "
        "of the indexes while it runs"
    )
    await pool.close()
    server.cleanup()

    say("")
    say(f"ratio load / PDQ baseline read: x{load / pdq_baseline:.2f}")
    say(f"ratio ExactIndex / dict, load time: x{exact_load / dict_load:.2f}")
    say(f"ratio ExactIndex / dict, memory (arrays / objects): x{exact_bytes / table_bytes:.3f}")
    say(f"ratio ExactIndex / dict, RSS growth: x{exact_rss / table_rss:.3f}")
    say(f"ratio ExactIndex / dict, lookup: x{ours_query / dict_query:.1f}")
    say(f"ratio event loop stall, reload in a thread / on the loop: x{stall / on_loop:.3f}")
    say(f"ratio refresh / full load: x{refresh / load:.4f} (with the count: x{counted / load:.3f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="PDQ entries")
    parser.add_argument("--md5", type=int, default=10_000_000, help="MD5 entries")
    parser.add_argument("--batch", type=int, default=65_536, help="entries of each kind added")
    parser.add_argument("--queries", type=int, default=100_000, help="MD5 lookups timed")
    asyncio.run(main(parser.parse_args()))
