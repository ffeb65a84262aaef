"""Real ActivityPub software on both sides: Fedify sends, Sluice holds, Fedify receives.

    peer.mjs (Fedify 1.5.9; RFC 9421 via Misskey's library)
      └─► nginx with deploy/nginx/sluice-mastodon.conf
            └─► Sluice (verifies, stores, forwards)
                  └─► upstream.mjs (a Fedify instance that verifies every signature itself)

Everything the peer sends must be accepted by the upstream, which proves that what
Sluice forwards still carries a valid signature of the original sender. A tampered
delivery must be stopped by Sluice and never reach the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need, wait_for
from tests.nginx import find_nginx, run_nginx

INTEROP = Path(__file__).parent / "interop"
SNIPPET = Path(__file__).parent.parent / "deploy" / "nginx" / "sluice-mastodon.conf"


@dataclass
class Node:
    """A Node program printing one JSON object per line."""

    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    def find(self, key: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if key in line]


@contextlib.asynccontextmanager
async def node(script: str, *args: str) -> AsyncIterator[Node]:
    binary = need("node")
    if not (INTEROP / "node_modules" / "@fedify" / "fedify").exists():
        subprocess.run(
            [need("npm"), "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=INTEROP,
            check=True,
            timeout=600,
        )
    process = await asyncio.create_subprocess_exec(
        binary,
        script,
        *args,
        cwd=INTEROP,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    program = Node(process)
    program.reader = asyncio.create_task(program._read())
    try:
        await wait_for(lambda: program.find("ready") or process.returncode is not None, 60)
        assert program.find("ready"), f"{script} exited with {process.returncode}"
        yield program
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
        await program.reader


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scheme", ["cavage", "rfc9421"])
async def test_fedify_to_fedify_through_nginx_and_sluice(
    scheme: str, tmp_path: Path, sluice_factory: Any
) -> None:
    find_nginx()
    async with node("upstream.mjs", "--port", "0") as instance:
        instance_port = instance.find("ready")[0]["port"]
        sluice = await sluice_factory(upstream={"url": f"http://127.0.0.1:{instance_port}"})
        site = (
            f"upstream sluice {{ server 127.0.0.1:{sluice.server.port}; }}\n"
            f"upstream instance {{ server 127.0.0.1:{instance_port}; }}\n"
            "server {\n"
            "    listen @LISTEN@;\n"
            "    server_name instance.test;\n"
            f"    include {SNIPPET};\n"
            "    location / { proxy_pass http://instance; proxy_set_header Host $http_host; }\n"
            "}\n"
        )
        with run_nginx(tmp_path / "nginx", site) as nginx_port:
            inbox = f"http://127.0.0.1:{nginx_port}/users/bob/inbox"
            common = ["--inbox", inbox, "--host-header", "instance.test", "--scheme", scheme]
            async with node(
                "peer.mjs", "--port", "0", "--count", "5", "--ed25519", *common
            ) as peer:
                await wait_for(lambda: peer.find("done"), 120)
                sent = [line for line in peer.find("id") if "status" in line]
                assert len(sent) == 5
                assert {line["status"] for line in sent} == {202}, sent
                ids = {line["id"] for line in sent}
                records = {i: await _settled(sluice, i) for i in ids}
                delivered = {i for i, r in records.items() if r["state"] == "delivered"}
                # An Update still held when the peer's Delete of the same note arrives is
                # cancelled with it; everything else must be delivered.
                assert all(
                    r["state"] == "delivered"
                    or (r["type"] == "Update" and r["state"] == "cancelled")
                    for r in records.values()
                ), records
                assert len(delivered) >= 4
                await wait_for(
                    lambda: delivered <= {a["accepted"] for a in instance.find("accepted")}, 60
                )
            assert instance.find("refused") == []

            # A body changed after signing is stopped by Sluice: 401, never forwarded.
            async with node(
                "peer.mjs", "--port", "0", "--count", "1", "--tamper", "body", *common
            ) as tampered:
                await wait_for(lambda: tampered.find("done"), 60)
                [bad] = [line for line in tampered.find("id") if "status" in line]
                assert bad["status"] == 401
        await asyncio.sleep(0.3)
        assert bad["id"] not in {a["accepted"] for a in instance.find("accepted")}
        assert instance.find("refused") == []
    for ident in delivered:
        assert (await sluice.parts.store.get(ident))["last_status"] == 202


async def _settled(sluice: Any, ident: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        record = await sluice.parts.store.get(ident)
        return (
            record if record and record["state"] in ("delivered", "cancelled", "refused") else None
        )

    return await wait_for(done, 60)
