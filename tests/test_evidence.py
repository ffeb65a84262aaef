"""Preserved evidence: sealed on disk, bound to its record, read only on the record."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from PIL import Image, ImageDraw

from relay.evidence import EvidenceError, EvidenceKey, EvidenceStore, MediaItem

SLUICE = str(Path(sys.executable).parent / "sluice")
# A string that appears in the facts only: it must never be found on disk in clear.
MARKER = "victim-account-7f3a9c"


def png() -> bytes:
    image = Image.new("RGB", (64, 48), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 40, 30), fill="navy")
    draw.ellipse((30, 20, 60, 44), fill="orange")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def facts(**extra: Any) -> dict[str, Any]:
    return {
        "activity": {
            "type": "Create",
            "actor": f"https://remote.example/users/{MARKER}",
            "object": {"type": "Note", "content": f"<p>to @{MARKER}</p>"},
        },
        "actor": f"https://remote.example/users/{MARKER}",
        "signer": "https://remote.example/users/sender",
        "key_id": "https://remote.example/users/sender#main-key",
        "remote": "203.0.113.7",
        "headers": [["Host", "social.example"], ["Signature", "keyId=..."]],
        "target": "/inbox",
        "received_at": "2025-01-02T03:04:05+00:00",
        "verdict": {
            "action": "quarantine",
            "rule": "rule[0] test-bank -> quarantine",
            "signals": [
                {"kind": "match", "source": "test-bank", "detail": {"distance": 0}},
                {"kind": "unchecked", "source": "checker", "detail": {}},
            ],
        },
        **extra,
    }


def write_key(path: Path, raw: bytes | None = None) -> EvidenceKey:
    path.write_text(base64.b64encode(raw or os.urandom(32)).decode())
    return EvidenceKey.load(path)


@pytest.fixture
def pool(migrated_pool: asyncpg.Pool) -> asyncpg.Pool:
    return migrated_pool


@pytest.fixture
def key(tmp_path: Path) -> EvidenceKey:
    return write_key(tmp_path / "evidence.key")


@pytest.fixture
def store(pool: asyncpg.Pool, tmp_path: Path, key: EvidenceKey) -> EvidenceStore:
    return EvidenceStore(pool, tmp_path / "data" / "evidence", key)


async def activity_row(pool: asyncpg.Pool) -> int:
    return await pool.fetchval(
        "INSERT INTO activity (ap_id, type, actor, target, headers, body, deadline, state) "
        "VALUES ('https://remote.example/a/1', 'Create', 'https://remote.example/u', '/inbox', "
        "'[]', '{}', now(), 'quarantined') RETURNING id"
    )


def blob_files(store: EvidenceStore) -> list[Path]:
    return sorted(store.directory.iterdir())


async def blob_path(store: EvidenceStore, evidence_id: int, name: str) -> Path:
    blobs = json.loads(
        await store.pool.fetchval("SELECT blobs FROM evidence WHERE id = $1", evidence_id)
    )
    [file] = [b["file"] for b in blobs if b["name"] == name]
    return store.directory / file


# -- preserving and reading --------------------------------------------------------


async def test_round_trip_of_facts_and_media(store: EvidenceStore, pool: asyncpg.Pool) -> None:
    row = await activity_row(pool)
    image, noise = png(), os.urandom(5000)
    media = [
        MediaItem("https://remote.example/media/a.png", image, {"sha256": "aa", "pdq": "f0"}),
        MediaItem("https://remote.example/media/b", noise, {"sha256": "bb"}),
    ]
    evidence_id = await store.preserve(activity_row=row, facts=facts(), media=media)

    record, data = await store.read(evidence_id, who="alice", why="NCMEC report 1234")
    assert data == [image, noise]
    assert record.id == evidence_id
    assert record.activity_row == row
    assert record.facts == facts()
    assert record.media == [
        {"url": m.url, "hashes": m.hashes, "size": len(m.data), "blob": f"media-{i}"}
        for i, m in enumerate(media)
    ]
    assert record.retain_until - record.created_at == timedelta(days=365)

    [listed] = await store.list()
    assert listed["id"] == evidence_id
    assert listed["activity_row"] == row
    summary = listed["summary"]
    assert summary["action"] == "quarantine"
    assert summary["banks"] == ["test-bank"]
    assert summary["media"] == 2
    assert summary["bytes"] == len(image) + len(noise)
    assert [b["name"] for b in listed["blobs"]] == ["facts", "media-0", "media-1"]
    assert MARKER not in json.dumps(listed, default=str)
    assert "remote.example" not in json.dumps(listed, default=str)


async def test_evidence_without_media_or_activity_row(store: EvidenceStore) -> None:
    evidence_id = await store.preserve(activity_row=None, facts={"note": "x"}, media=[])
    record, data = await store.read(evidence_id, who="alice", why="check")
    assert (record.activity_row, record.facts, record.media, data) == (None, {"note": "x"}, [], [])


async def test_retention_is_configurable(pool: asyncpg.Pool, tmp_path: Path, key) -> None:
    store = EvidenceStore(pool, tmp_path / "ev", key, retention_days=90)
    evidence_id = await store.preserve(activity_row=None, facts={}, media=[])
    record, _ = await store.read(evidence_id, who="a", why="b")
    assert record.retain_until - record.created_at == timedelta(days=90)


async def test_nothing_is_stored_in_clear(store: EvidenceStore, pool: asyncpg.Pool) -> None:
    image = png()
    media = [MediaItem(f"https://remote.example/{MARKER}.png", image, {"sha256": "x"})]
    evidence_id = await store.preserve(activity_row=None, facts=facts(), media=media)
    files = blob_files(store)
    assert len(files) == 2
    for path in files:
        content = path.read_bytes()
        assert content[0] == 1  # format version
        assert MARKER.encode() not in content
        assert b"quarantine" not in content
        assert image not in content
        assert image[:32] not in content  # the PNG signature and header
        assert b"IHDR" not in content
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    row = await pool.fetchval("SELECT evidence::text FROM evidence WHERE id = $1", evidence_id)
    assert MARKER not in row
    assert "remote.example" not in row


async def test_facts_must_be_json(store: EvidenceStore) -> None:
    with pytest.raises(EvidenceError, match="must be JSON"):
        await store.preserve(activity_row=None, facts={"raw": b"bytes"}, media=[])
    assert not store.directory.exists() or blob_files(store) == []


def test_media_bytes_never_in_a_repr() -> None:
    item = MediaItem("https://remote.example/a.png", b"\x89PNG-secret-bytes", {})
    assert "secret" not in repr(item)
    assert "hidden" in repr(EvidenceKey(bytes(32)))


# -- tampering and loss ------------------------------------------------------------


async def test_wrong_key_fails_authentication(
    store: EvidenceStore, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    evidence_id = await store.preserve(
        activity_row=None, facts=facts(), media=[MediaItem("u", png(), {})]
    )
    other = EvidenceStore(pool, store.directory, write_key(tmp_path / "other.key"))
    with pytest.raises(EvidenceError) as error:
        await other.read(evidence_id, who="mallory", why="curious")
    assert str(error.value).startswith(
        f"evidence blob facts of evidence {evidence_id} failed authentication: "
        "tampered or wrong key"
    )


async def test_a_blob_swapped_between_records_fails(store: EvidenceStore) -> None:
    first = await store.preserve(
        activity_row=None, facts={"n": 1}, media=[MediaItem("u", os.urandom(100), {})]
    )
    second = await store.preserve(
        activity_row=None, facts={"n": 2}, media=[MediaItem("u", os.urandom(100), {})]
    )
    shutil.copyfile(
        await blob_path(store, first, "media-0"), await blob_path(store, second, "media-0")
    )
    await store.read(first, who="a", why="b")
    with pytest.raises(EvidenceError, match=f"blob media-0 of evidence {second} failed auth"):
        await store.read(second, who="a", why="b")


async def test_a_blob_swapped_within_a_record_fails(store: EvidenceStore) -> None:
    media = [MediaItem("u0", os.urandom(100), {}), MediaItem("u1", os.urandom(100), {})]
    evidence_id = await store.preserve(activity_row=None, facts={}, media=media)
    shutil.copyfile(
        await blob_path(store, evidence_id, "media-0"),
        await blob_path(store, evidence_id, "media-1"),
    )
    with pytest.raises(EvidenceError, match=r"blob media-1 .* failed authentication"):
        await store.read(evidence_id, who="a", why="b")


async def test_a_flipped_bit_fails(store: EvidenceStore) -> None:
    evidence_id = await store.preserve(
        activity_row=None, facts={}, media=[MediaItem("u", os.urandom(100), {})]
    )
    path = await blob_path(store, evidence_id, "media-0")
    content = bytearray(path.read_bytes())
    content[40] ^= 1
    path.write_bytes(bytes(content))
    with pytest.raises(EvidenceError, match="tampered or wrong key"):
        await store.read(evidence_id, who="a", why="b")


async def test_truncated_and_missing_blobs(store: EvidenceStore) -> None:
    evidence_id = await store.preserve(
        activity_row=None, facts={}, media=[MediaItem("u", os.urandom(1000), {})]
    )
    path = await blob_path(store, evidence_id, "media-0")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(EvidenceError, match=r"media-0 .* is truncated: .* has 500 of 1029 bytes"):
        await store.read(evidence_id, who="a", why="b")
    path.write_bytes(b"")
    with pytest.raises(EvidenceError, match="is truncated"):
        await store.read(evidence_id, who="a", why="b")
    path.unlink()
    with pytest.raises(EvidenceError, match=f"media-0 of evidence {evidence_id} is missing"):
        await store.read(evidence_id, who="a", why="b")


# -- the audit log -----------------------------------------------------------------


async def test_every_read_is_audited_including_failures(store: EvidenceStore) -> None:
    evidence_id = await store.preserve(
        activity_row=None, facts={}, media=[MediaItem("u", os.urandom(10), {})]
    )
    await store.read(evidence_id, who="alice", why="report 1")
    path = await blob_path(store, evidence_id, "media-0")
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(EvidenceError):
        await store.read(evidence_id, who="bob", why="review 2", what="extract to /tmp/x")
    with pytest.raises(EvidenceError, match="no evidence with id 999999"):
        await store.read(999999, who="carol", why="typo")

    rows = await store.audit(evidence_id)
    assert [(r["who"], r["why"], r["what"]) for r in rows] == [
        ("alice", "report 1", "read"),
        ("bob", "review 2", "extract to /tmp/x"),
    ]
    assert rows[0]["outcome"] == "ok"
    assert rows[1]["outcome"].startswith("failed: evidence blob media-0")
    assert rows[0]["at"] <= rows[1]["at"]
    [missing] = await store.audit(999999)
    assert (missing["who"], missing["outcome"]) == ("carol", "failed: no evidence with id 999999")


async def test_read_needs_who_and_why(store: EvidenceStore) -> None:
    evidence_id = await store.preserve(activity_row=None, facts={}, media=[])
    with pytest.raises(EvidenceError, match="needs a `who` and a `why`"):
        await store.read(evidence_id, who=" ", why="x")


async def test_no_audit_no_data(store: EvidenceStore, pool: asyncpg.Pool) -> None:
    evidence_id = await store.preserve(activity_row=None, facts={}, media=[])
    await pool.execute("ALTER TABLE evidence_access RENAME TO evidence_access_gone")
    with pytest.raises(EvidenceError, match="cannot write the audit log"):
        await store.read(evidence_id, who="a", why="b")


async def test_listing_is_not_a_read(store: EvidenceStore) -> None:
    evidence_id = await store.preserve(activity_row=None, facts={}, media=[])
    await store.list()
    assert await store.audit(evidence_id) == []


# -- crash safety ------------------------------------------------------------------


async def test_failure_before_commit_leaves_only_orphans(
    store: EvidenceStore, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash(*args: Any) -> None:
        raise RuntimeError("simulated crash before commit")

    monkeypatch.setattr(store, "_insert", crash)
    media = [MediaItem("u", os.urandom(64), {}), MediaItem("v", png(), {})]
    with pytest.raises(RuntimeError, match="simulated crash"):
        await store.preserve(activity_row=None, facts=facts(), media=media)
    assert await pool.fetchval("SELECT count(*) FROM evidence") == 0
    files = blob_files(store)
    assert len(files) == 3  # facts and two media, sealed, complete, unnamed
    assert not any(p.name.startswith(".tmp-") for p in files)
    assert await store.orphans() == files

    monkeypatch.undo()
    kept = await store.preserve(activity_row=None, facts={}, media=[])
    assert await store.orphans() == files  # a committed record's blobs are not orphans
    assert (await store.read(kept, who="a", why="b"))[0].facts == {}


async def test_a_refused_insert_leaves_orphans_and_a_clear_error(store: EvidenceStore) -> None:
    with pytest.raises(EvidenceError, match="blobs stay on disk as orphans"):
        await store.preserve(activity_row=424242, facts={}, media=[])  # no such activity
    assert len(await store.orphans()) == 1
    cut_short = store.directory / (".tmp-" + "0" * 32 + ".blob")  # a crash mid-write
    cut_short.write_bytes(b"\x01partial")
    assert cut_short in await store.orphans()
    assert await store.pool.fetchval("SELECT count(*) FROM evidence") == 0


async def test_sealed_evidence_counts_once_its_row_commits_with_the_callers(
    store: EvidenceStore, pool: asyncpg.Pool
) -> None:
    """``seal`` then ``record`` on the caller's connection: the quarantine's own writes
    commit with the evidence row or not at all."""
    image = png()
    sealed = await store.seal(facts=facts(), media=[MediaItem("u", image, {})])
    files = blob_files(store)
    assert await store.orphans() == files  # durable, named by nothing yet
    with pytest.raises(RuntimeError, match="rolled back"):
        async with pool.acquire() as conn, conn.transaction():
            await store.record(sealed, activity_row=None, conn=conn)
            raise RuntimeError("rolled back")
    assert await pool.fetchval("SELECT count(*) FROM evidence") == 0
    async with pool.acquire() as conn, conn.transaction():
        await store.record(sealed, activity_row=None, conn=conn)
    assert await store.orphans() == []
    record, data = await store.read(sealed.id, who="alice", why="test")
    assert (record.facts, data) == (facts(), [image])


async def test_summary_tolerates_odd_facts(store: EvidenceStore) -> None:
    evidence_id = await store.preserve(
        activity_row=None, facts={"signals": "odd", "verdict": "quarantine"}, media=[]
    )
    [listed] = await store.list()
    assert listed["id"] == evidence_id
    assert (listed["summary"]["banks"], listed["summary"]["action"]) == ([], None)


# -- the key file ------------------------------------------------------------------


async def test_key_file_forms(store: EvidenceStore, pool: asyncpg.Pool, tmp_path: Path) -> None:
    raw = os.urandom(32)
    while all(32 <= b < 127 for b in raw):  # vanishingly unlikely; keep it binary
        raw = os.urandom(32)
    forms = {
        "raw": raw,
        "hex": (raw.hex().upper() + "\n").encode(),
        "base64": b"  " + base64.b64encode(raw) + b"\r\n",
    }
    keys = []
    for name, content in forms.items():
        (tmp_path / name).write_bytes(content)
        keys.append(EvidenceKey.load(tmp_path / name))
    sealing = EvidenceStore(pool, store.directory, keys[0])
    evidence_id = await sealing.preserve(activity_row=None, facts={"k": 1}, media=[])
    for key in keys[1:]:
        record, _ = await EvidenceStore(pool, store.directory, key).read(
            evidence_id, who="a", why="b"
        )
        assert record.facts == {"k": 1}


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (b"hunter2-is-my-secret-password", "29 characters of text"),
        (b"correct-horse-battery-staple-xy\n", "31 characters of text"),  # 32 bytes of text
        (bytes(range(200, 231)), "31 bytes of binary data"),
        (b"\n  \n", "an empty file"),
        (base64.b64encode(b"s3cr3t" * 4), "32 characters of text"),  # base64 of 24 bytes
        (b"ab" * 31, "62 characters of text"),
    ],
)
def test_bad_key_files_are_named_not_echoed(tmp_path: Path, content: bytes, found: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(EvidenceError) as error:
        EvidenceKey.load(path)
    message = str(error.value)
    assert str(path) in message
    assert f"found {found}" in message
    assert "64 hex characters" in message
    stripped = content.strip()
    if stripped:
        assert stripped.decode("latin-1") not in message
        assert stripped[:8].decode("latin-1") not in message


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match=f"cannot read evidence key file {tmp_path}/nope"):
        EvidenceKey.load(tmp_path / "nope")


def test_keygen_mode_and_no_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "evidence.key"
    EvidenceKey.generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    assert len(base64.b64decode(content.strip(), validate=True)) == 32
    EvidenceKey.load(path)
    with pytest.raises(EvidenceError, match="refusing to overwrite"):
        EvidenceKey.generate(path)
    assert path.read_bytes() == content
    other = tmp_path / "other.key"
    EvidenceKey.generate(other)
    assert other.read_bytes() != content


# -- the command line --------------------------------------------------------------


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=60)


def test_cli_keygen(tmp_path: Path) -> None:
    path = tmp_path / "evidence.key"
    made = sluice("evidence", "keygen", str(path))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    assert content.decode().strip() not in made.stdout + made.stderr
    EvidenceKey.load(path)
    again = sluice("evidence", "keygen", str(path))
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert path.read_bytes() == content


async def test_cli_list_show_extract_audit(
    make_config: Any, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    key_file = tmp_path / "evidence.key"
    assert sluice("evidence", "keygen", str(key_file)).returncode == 0
    config = make_config(evidence={"key_file": str(key_file)})
    store = EvidenceStore.from_config(pool, config)
    image = png()
    media = [
        MediaItem("https://remote.example/media/a.png?x=1", image, {"sha256": "aa"}),
        MediaItem("https://remote.example/media/raw", b"benign bytes", {}),
    ]
    evidence_id = await store.preserve(activity_row=None, facts=facts(), media=media)

    listed = sluice("evidence", "list", "--config", config.source)
    assert listed.returncode == 0, listed.stderr
    [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["id"] == evidence_id
    assert entry["summary"]["banks"] == ["test-bank"]
    assert MARKER not in listed.stdout

    shown = sluice(
        "evidence", "show", str(evidence_id), "--who", "alice", "--why", "report 7",
        "--config", config.source,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["facts"] == facts()
    assert [m["url"] for m in document["media"]] == [m.url for m in media]
    assert "WARNING" not in shown.stderr

    out = tmp_path / "extracted"
    extracted = sluice(
        "evidence", "show", str(evidence_id), "--who", "bob", "--why", "NCMEC upload",
        "--config", config.source, "--extract", str(out),
    )  # fmt: skip
    assert extracted.returncode == 0, extracted.stderr
    assert "WARNING: writing 2 decrypted media file(s) in clear" in extracted.stderr
    files = sorted(out.iterdir())
    assert [p.name for p in files] == [
        f"evidence-{evidence_id}-media-0.png",
        f"evidence-{evidence_id}-media-1.bin",
    ]
    assert [p.read_bytes() for p in files] == [image, b"benign bytes"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)

    again = sluice(
        "evidence", "show", str(evidence_id), "--who", "bob", "--why", "again",
        "--config", config.source, "--extract", str(out),
    )  # fmt: skip
    assert again.returncode == 1
    assert "exists already" in again.stderr
    assert [p.read_bytes() for p in sorted(out.iterdir())] == [image, b"benign bytes"]

    audit = sluice("evidence", "audit", str(evidence_id), "--config", config.source)
    rows = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [(r["who"], r["why"], r["what"]) for r in rows] == [
        ("alice", "report 7", "show"),
        ("bob", "NCMEC upload", f"extract to {out}"),
        ("bob", "again", f"extract to {out}"),
    ]

    anonymous = sluice("evidence", "show", str(evidence_id), "--config", config.source)
    assert anonymous.returncode == 2
    assert "--who" in anonymous.stderr

    orphans = sluice("evidence", "orphans", "--config", config.source)
    assert (orphans.returncode, orphans.stdout) == (0, "")


async def test_cli_show_without_a_key(make_config: Any, pool: asyncpg.Pool) -> None:
    config = make_config()
    shown = sluice("evidence", "show", "1", "--who", "a", "--why", "b", "--config", config.source)
    assert shown.returncode == 1
    assert "set [evidence] key_file" in shown.stderr
    listed = sluice("evidence", "list", "--config", config.source)
    assert (listed.returncode, listed.stdout) == (0, "")
