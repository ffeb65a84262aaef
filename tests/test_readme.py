"""The README's two opening commands stay true: CI runs the test command verbatim, and
the serve command starts Sluice with its embedded defaults on a machine with no config."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_the_serve_and_test_commands() -> None:
    serve, test = readme_commands()
    assert serve.startswith("python3 -m venv .venv") and serve.endswith("sluice serve")
    assert test.startswith("python3 -m venv .venv") and test.endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, ".ci/run must run the README's test command verbatim"


@pytest.mark.timeout(120)
async def test_sluice_serve_starts_with_embedded_defaults(tmp_path: Path) -> None:
    sluice = Path(sys.executable).parent / "sluice"
    assert sluice.exists(), "the console script `sluice` is installed"
    with (tmp_path / "stderr").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            str(sluice), "serve", cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=stderr
        )
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                if process.returncode is not None:
                    raise AssertionError((tmp_path / "stderr").read_text()[-3000:])
                try:
                    async with session.get("http://127.0.0.1:9090/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, timeout=90, interval=0.2)
        assert (tmp_path / "sluice-data" / "postgres" / "PG_VERSION").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0
    log = (tmp_path / "stderr").read_text()
    assert '"event": "started"' in log, log[-2000:]
