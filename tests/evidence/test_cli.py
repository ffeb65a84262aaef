"""``sluice evidence hold|unhold|purge|export``: the lifecycle from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg

from relay.evidence import EvidenceKey, EvidenceStore, MediaItem
from tests.test_evidence import facts, png, sluice


async def test_cli_hold_purge_unhold_export(
    make_config: Any, migrated_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    key_file = tmp_path / "evidence.key"
    EvidenceKey.generate(key_file)
    config = make_config(evidence={"key_file": str(key_file)})
    store = EvidenceStore.from_config(migrated_pool, config)
    image = png()
    due, held = [
        await store.preserve(
            activity_row=None, facts=facts(), media=[MediaItem("https://r.example/a", image, {})]
        )
        for _ in range(2)
    ]
    await migrated_pool.execute(
        "UPDATE evidence SET retain_until = now() - interval '1 hour' WHERE id = ANY($1)",
        [due, held],
    )
    source = config.source

    holding = sluice("evidence", "hold", str(held), "--who", "alice", "--why", "FBI request 9",
                     "--config", source)  # fmt: skip
    assert holding.returncode == 0, holding.stderr
    again = sluice("evidence", "hold", str(held), "--who", "bob", "--why", "x", "--config", source)
    assert again.returncode == 1
    assert "is held already" in again.stderr and "by alice: FBI request 9" in again.stderr
    anonymous = sluice("evidence", "hold", str(held), "--config", source)
    assert anonymous.returncode == 2 and "--who" in anonymous.stderr

    purged = sluice("evidence", "purge", "--config", source)
    assert purged.returncode == 0, purged.stderr
    [line] = [json.loads(x) for x in purged.stdout.splitlines()]
    assert (line["id"], line["blobs"], line["jurisdiction"]) == (due, 2, None)

    out = tmp_path / "for-the-fbi"
    exported = sluice("evidence", "export", str(held), "--who", "alice", "--why", "FBI request 9",
                      "--into", str(out), "--config", source)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    package = Path(exported.stdout.strip())
    assert package == out / f"evidence-{held}"
    assert "WARNING" in exported.stderr and "1 decrypted media file(s)" in exported.stderr
    assert (package / "media" / "media-0.png").read_bytes() == image
    assert json.loads((package / "manifest.json").read_text())["why"] == "FBI request 9"

    gone = sluice("evidence", "export", str(due), "--who", "alice", "--why", "late",
                  "--into", str(out), "--config", source)  # fmt: skip
    assert gone.returncode == 1 and f"evidence {due} was purged" in gone.stderr

    lifted = sluice("evidence", "unhold", str(held), "--who", "carol", "--why", "closed",
                    "--config", source)  # fmt: skip
    assert lifted.returncode == 0, lifted.stderr
    second = sluice("evidence", "purge", "--config", source)
    assert [json.loads(x)["id"] for x in second.stdout.splitlines()] == [held]

    audit = sluice("evidence", "audit", str(held), "--config", source)
    assert [(r["who"], r["what"]) for r in map(json.loads, audit.stdout.splitlines())] == [
        ("alice", "hold"),
        ("alice", f"export to {package}"),
        ("carol", "unhold"),
        ("retention", "purge"),
    ]
