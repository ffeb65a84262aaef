"""Loading a PDQ bank of millions of hashes from PostgreSQL at start.

Fills a bank in a fresh embedded PostgreSQL with ``--n`` random PDQ hashes, then times
``BankIndex.load`` (binary COPY parsed with numpy, then the index built in a thread)
against the baseline of reading the same rows through a cursor and converting the hex
in Python, as the first version did. Prints the ratio last.

    python bench/bank_load.py [--n 10000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.bank import BankIndex, _words
from relay.store import migrate


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
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    chunk = 1_000_000
    async with pool.acquire() as conn:
        for start in range(0, args.n, chunk):
            count = min(chunk, args.n - start)
            hexes = rng.integers(0, 256, size=(count, 32), dtype=np.uint8)
            records = [(bank_id, "pdq", row.tobytes().hex()) for row in hexes]
            await conn.copy_records_to_table(
                "bank_entry", records=records, columns=["bank_id", "kind", "value"]
            )
    filled = time.perf_counter() - started

    started = time.perf_counter()
    index = await BankIndex.load(pool)
    ours = time.perf_counter() - started
    assert len(index) == args.n

    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        ids, values = [], []
        cursor = await conn.cursor("SELECT id, value FROM bank_entry WHERE bank_id = $1", bank_id)
        while rows := await cursor.fetch(20_000):
            for entry_id, value in rows:
                ids.append(entry_id)
                values.append(value)
        _words(values)
    baseline_read = time.perf_counter() - started
    await pool.close()
    server.cleanup()

    print(
        f"machine: {os.cpu_count()} cores; {args.n:,} random PDQ hashes in one bank "
        f"(filled in {filled:.1f} s)"
    )
    print(f"BankIndex.load (binary COPY + numpy + index build): {ours:6.1f} s")
    print(f"baseline, reading only (cursor + Python hex), no index: {baseline_read:6.1f} s")
    print(f"ratio load / baseline read: x{ours / baseline_read:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    asyncio.run(main(parser.parse_args()))
