"""``sluice actor show`` and ``sluice actor rotate-key`` on a real configuration file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from relay.actor import Actor, load_keys
from relay.cli import main
from relay.config import load_config
from tests.conftest import config_text


def _config(tmp_path: Path, **actor: str) -> Path:
    path = tmp_path / "sluice.toml"
    sections = {"receipts": {"jurisdictions": ["DE"]}}
    if actor:
        sections["actor"] = actor  # type: ignore[assignment]
    path.write_text(
        config_text(
            listen="127.0.0.1:8080",
            upstream_url="http://127.0.0.1:9",
            database_url="postgresql://unused@127.0.0.1:9/none",
            data_dir=tmp_path / "data",
            **sections,  # type: ignore[arg-type]
        )
    )
    return path


def test_show_makes_the_keys_under_the_data_directory_and_prints_the_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, base_url="https://sluice.example/gate", name="gate")
    assert main(["actor", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "actor: https://sluice.example/gate/actor" in out
    assert "webfinger: acct:gate@sluice.example" in out
    assert "key: https://sluice.example/gate/actor#main-key" in out
    assert "ed25519 key: https://sluice.example/gate/actor#ed25519-key" in out
    key_dir = tmp_path / "data" / "actor"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert (key_dir / "keys.json").exists()


def test_show_without_base_url_says_what_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["actor", "show", "--config", str(_config(tmp_path))]) == 1
    assert "[actor] base_url" in capsys.readouterr().err
    assert not (tmp_path / "data" / "actor").exists()


def test_rotate_key_keeps_the_old_keys_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_dir = tmp_path / "keys"
    path = _config(tmp_path, base_url="https://sluice.example", key_dir=str(key_dir))
    config = load_config(path)
    before = Actor.configured(config)
    assert before is not None
    assert main(["actor", "rotate-key", "--config", str(path), "--keep-days", "2"]) == 0
    out = capsys.readouterr().out
    after = Actor.configured(config)
    assert after is not None
    assert after.key_id != before.key_id and f"key: {after.key_id}" in out
    assert f"retired rsa key: {before.key_id}" in out
    doc = after.document()
    assert [k["id"] for k in doc["publicKey"]] == [after.key_id, before.key_id]
    index = json.loads((key_dir / "keys.json").read_text())
    assert len(index["retired"]) == 2
    assert load_keys(key_dir).rsa_fragment == after.keys.rsa_fragment
