"""Sluice's keys: made once with restricted modes, reloaded, refused when exposed, rotated."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from relay.actor import Actor, ActorKeyError, load_keys, rotate_keys
from relay.signature.keys import parse_key_document


def _raw(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_first_start_makes_private_files_and_later_starts_reload_them(tmp_path: Path) -> None:
    key_dir = tmp_path / "data" / "actor"
    first = load_keys(key_dir)
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    files = sorted(p.name for p in key_dir.iterdir())
    assert len(files) == 3 and "keys.json" in files
    for path in key_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not [p for p in key_dir.iterdir() if p.name.startswith(".")]  # no temporaries left
    again = load_keys(key_dir)
    assert _raw(again.rsa) == _raw(first.rsa)
    assert _raw(again.ed25519) == _raw(first.ed25519)
    assert first.rsa.key_size >= 2048


def test_a_key_file_others_may_read_is_refused_by_name(tmp_path: Path) -> None:
    load_keys(tmp_path)
    rsa_file = next(p for p in tmp_path.iterdir() if p.name.startswith("rsa-"))
    os.chmod(rsa_file, 0o640)
    with pytest.raises(ActorKeyError) as refused:
        load_keys(tmp_path)
    assert str(rsa_file) in str(refused.value)
    assert "0o640" in str(refused.value)


def test_rotation_gives_new_keys_new_ids_and_keeps_the_old_ones_published(tmp_path: Path) -> None:
    base = "https://sluice.example/relay"
    old = Actor(base, load_keys(tmp_path))
    old_doc = old.document()
    rotated = rotate_keys(tmp_path, keep_days=7, now=1_000_000)
    new = Actor(base, load_keys(tmp_path))
    assert _raw(new.keys.rsa) != _raw(old.keys.rsa)
    assert new.key_id != old.key_id and new.ed25519_key_id != old.ed25519_key_id
    assert _raw(rotated.rsa) == _raw(new.keys.rsa)

    published = new.document(now=1_000_000 + 6 * 86400)
    assert [k["id"] for k in published["publicKey"]] == [new.key_id, old.key_id]
    assert [k["id"] for k in published["assertionMethod"]] == [
        new.ed25519_key_id,
        old.ed25519_key_id,
    ]
    # A peer holding the old key id still finds the old key, at that id.
    old_rsa = parse_key_document(published, old.key_id)
    assert old_rsa.key.public_numbers() == old.keys.rsa.public_key().public_numbers()
    old_ed = parse_key_document(published, old.ed25519_key_id)
    assert old_ed.key.public_bytes_raw() == old.keys.ed25519.public_key().public_bytes_raw()
    assert old_doc["assertionMethod"][0] == published["assertionMethod"][1]

    # After the keep period only the new keys are published.
    later = new.document(now=1_000_000 + 8 * 86400)
    assert later["publicKey"]["id"] == new.key_id
    assert [k["id"] for k in later["assertionMethod"]] == [new.ed25519_key_id]
    # The old private keys are gone from the directory.
    assert len([p for p in tmp_path.glob("*.pem")]) == 2


def test_a_second_rotation_keeps_both_earlier_generations_within_their_periods(
    tmp_path: Path,
) -> None:
    first = load_keys(tmp_path)
    rotate_keys(tmp_path, keep_days=1, now=1_000_000)
    third = rotate_keys(tmp_path, keep_days=7, now=1_000_000 + 3600)
    fragments = [r.fragment for r in third.published(1_000_000 + 7200)]
    assert first.rsa_fragment in fragments and len(fragments) == 4
    assert [r.fragment for r in third.published(1_000_000 + 2 * 86400)] == fragments[2:]


def test_keys_no_index_names_are_removed_on_the_next_start(tmp_path: Path) -> None:
    """What a start or rotation killed before writing keys.json leaves is not kept."""
    keys = load_keys(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    orphans = ["rsa-20260101T000000000000Z.pem", ".ed25519-x.pem.abc", ".keys.json.tmp1"]
    for name in orphans:
        (tmp_path / name).write_bytes(b"half a key")
        os.chmod(tmp_path / name, 0o600)
    again = load_keys(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert _raw(again.rsa) == _raw(keys.rsa)
