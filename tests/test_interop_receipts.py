"""Sluice speaks to real ActivityPub software (issue 13, point 8): Fedify 1.5.9 as the peer.

    receipts.mjs (a Fedify app: `author` posts and gets Flags, `moderator` sends receipts)
      ◄─► Sluice with an actor (its WebFinger, actor document, inbox, receipts collection)

Fedify, offline on loopback, looks Sluice's actor up by WebFinger, verifies a receipt's
eddsa-jcs-2022 proof with its own implementation (and refuses a tampered copy), takes
Sluice's Flag after checking its HTTP signature itself, and sends receipts of its own
(signed by its own createProof, carried by a Delete it signs and sends) that Sluice
honours or refuses by ``[[trust]]``; a plain Delete from it goes to the instance as before.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relay.media.hashes import hash_media
from tests.conftest import REQUIRE_ALL, Running, Upstream, need, wait_for
from tests.receipt_support import BRIDGE_BANK, bank_the_picture, speaking_sluice

INTEROP = Path(__file__).parent / "interop"
CONTEXTS = Path(__file__).parent.parent / "relay" / "contexts.json"
PDQ = Path(__file__).parent / "fixtures" / "pdq"
BRIDGE = PDQ / "bridge-mods" / "aaa-orig.jpg"
PEN = PDQ / "misc" / "pen-and-coaster.png"
LOOPBACK = {"allow": ["127.0.0.0/8"], "allow_http": True}


class Fedify:
    """receipts.mjs: one JSON command a line in, one JSON object a line out."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.numbers = itertools.count(1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    def find(self, key: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if key in line]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.find('ready')[0]['port']}"

    async def ask(self, command: str, timeout: float = 60, **args: Any) -> dict[str, Any]:
        """Run one command; its reply (an ``error`` key when Fedify threw)."""
        number = next(self.numbers)
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": number, "do": command, **args}).encode() + b"\n")
        self.process.stdin.flush()
        replies = await wait_for(
            lambda: [line for line in self.find("reply") if line["reply"] == number], timeout
        )
        return replies[0]


@pytest.fixture(scope="module")
def fedify() -> Iterator[Fedify]:
    """The Fedify app, started once for the module."""
    binary = need("node")
    if not (INTEROP / "node_modules" / "@fedify" / "fedify").exists():
        message = f"{INTEROP}/node_modules is missing (npm ci there)"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    process = subprocess.Popen(
        [
            binary,
            "receipts.mjs",
            "--port",
            "0",
            "--media",
            str(BRIDGE),
            "--contexts",
            str(CONTEXTS),
        ],
        cwd=INTEROP,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    program = Fedify(process)
    try:
        for _ in range(600):
            if program.find("ready") or process.poll() is not None:
                break
            threading.Event().wait(0.1)
        assert program.find("ready"), f"receipts.mjs exited with {process.poll()}"
        yield program
    finally:
        process.terminate()
        process.wait(10)
        program.reader.join(10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


async def _get(sluice: Running, url: str) -> Any:
    headers = {"Accept": "application/activity+json"}
    async with sluice.session.get(url, headers=headers) as response:
        assert response.status == 200, url
        return await response.json(content_type=None)


async def test_fedify_finds_sluices_actor_by_webfinger(
    fedify: Fedify, tmp_path: Path, sluice_factory: Callable[..., Awaitable[Running]]
) -> None:
    sluice, base = await speaking_sluice(tmp_path, sluice_factory, network=LOOPBACK)
    host = base.removeprefix("http://")
    document = await _get(sluice, f"{base}/actor")
    [ed25519] = document["assertionMethod"]

    found = await fedify.ask("lookup", handle=f"sluice@{host}")
    assert "error" not in found, found
    jrd = found["jrd"]
    assert jrd["subject"] == f"acct:sluice@{host}"
    assert {"rel": "self", "type": "application/activity+json", "href": f"{base}/actor"} in (
        jrd["links"]
    )
    # acct: means https to Fedify; loopback has no TLS, so receipts.mjs sent it as http.
    query = f"/.well-known/webfinger?resource=acct%3Asluice%40{host.replace(':', '%3A')}"
    asked = {"plainHttp": f"https://{host}{query}", "as": f"{base}{query}"}
    assert asked in fedify.find("plainHttp")
    # Sluice's actor names the FEP's context: Fedify read it from the shipped copy, offline.
    assert {"context": "https://w3id.org/fep/bc20"} in fedify.find("context")
    actor = found["actor"]
    assert actor["type"] == "Service"
    assert actor["id"] == f"{base}/actor"
    assert actor["preferredUsername"] == "sluice"
    assert actor["inbox"] == f"{base}/inbox"
    assert actor["publicKey"] == {
        "id": document["publicKey"]["id"],
        "owner": f"{base}/actor",
        "algorithm": "RSASSA-PKCS1-v1_5",
    }
    assert actor["assertionMethods"] == [
        {
            "id": ed25519["id"],
            "type": "Multikey",
            "controller": f"{base}/actor",
            "algorithm": "Ed25519",
        }
    ]
    assert fedify.find("offline") == []


async def test_fedify_verifies_a_receipt_and_takes_the_flag(
    fedify: Fedify,
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    upstream: Upstream,
) -> None:
    sluice, base = await speaking_sluice(tmp_path, sluice_factory, network=LOOPBACK, **BRIDGE_BANK)
    await bank_the_picture(sluice, BRIDGE.read_bytes())
    document = await _get(sluice, f"{base}/actor")

    # Fedify's author posts the known picture to the instance, through Sluice.
    posted = await fedify.ask("post", inbox=f"{base}/users/bob/inbox", to=f"{base}/users/bob")
    assert "error" not in posted, posted
    author = f"{fedify.base}/users/author"

    # Its inbox gets Sluice's Flag, accepted by Fedify after it checked the signature.
    flags = await wait_for(lambda: fedify.find("flag"), timeout=30)
    [flag] = flags
    assert flag["actor"] == f"{base}/actor"
    assert flag["path"] == "/users/author/inbox"
    assert flag["httpSignatureKey"] == document["publicKey"]["id"]
    assert flag["objects"] == [author, posted["note"]]
    assert "Moderation receipt" in flag["content"]
    assert fedify.find("refused") == []

    # The receipt, from Sluice's collection, verifies by Fedify's eddsa-jcs-2022.
    page = await _get(sluice, f"{base}/receipts?page=true")
    [receipt] = page["orderedItems"]
    assert receipt["id"] == flag["receipt"]["id"]
    checked = await fedify.ask("verify", receipt=receipt)
    assert checked == {
        "reply": checked["reply"],
        "verified": True,
        "cryptosuite": "eddsa-jcs-2022",
        "key": document["assertionMethod"][0]["id"],
        "controller": f"{base}/actor",
        "algorithm": "Ed25519",
    }
    for tampered in (
        {**receipt, "jurisdiction": ["DE"]},
        {**receipt, "contentHash": receipt["contentHash"][1:]},
    ):
        refused = await fedify.ask("verify", receipt=tampered)
        assert refused["verified"] is False, refused
    assert posted["sent"] not in upstream.ids()
    assert fedify.find("offline") == []


def _receipt(fedify: Fedify, number: int) -> dict[str, Any]:
    """A receipt by Fedify's moderator, in the names issue 13 fixes (unsigned)."""
    found = hash_media(PEN.read_bytes())
    moderator = f"{fedify.base}/users/moderator"
    return {
        "@context": [
            "https://www.w3.org/ns/activitystreams",
            "https://w3id.org/fep/bc20",
            "https://w3id.org/security/data-integrity/v1",
        ],
        "id": f"{moderator}/receipts/{number}-{datetime.now(UTC).timestamp()}",
        "type": "ModerationReceipt",
        "actor": moderator,
        "object": [f"{fedify.base}/users/someone/notes/{number}"],
        "published": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "jurisdiction": ["EU"],
        "category": "STATEMENT_CATEGORY_OTHER_VIOLATION_TC",
        "categorySpecification": [],
        "decisionGround": "DECISION_GROUND_INCOMPATIBLE_CONTENT",
        "legalGround": "The instance's terms of service",
        "automatedDetection": True,
        "automatedDecision": "AUTOMATED_DECISION_FULLY",
        "contentHash": [
            {"algorithm": "sha256", "value": found.sha256},
            {"algorithm": "md5", "value": found.md5},
            {"algorithm": "pdq", "value": found.pdq[0].hash},
        ],
        "shouldPropagate": True,
    }


async def _bank_sizes(sluice: Running) -> dict[str, int]:
    rows = await sluice.parts.pool.fetch(
        "SELECT b.name, count(e.*) AS n FROM bank b LEFT JOIN bank_entry e ON e.bank_id = b.id "
        "GROUP BY b.name"
    )
    return {row["name"]: row["n"] for row in rows}


@pytest.mark.parametrize(
    ("trusted", "inbox", "tamper"),
    [
        (True, "/inbox", False),
        (True, "/users/bob/inbox", False),
        (False, "/inbox", False),
        (True, "/inbox", True),
    ],
    ids=["trusted-to-sluices-inbox", "trusted-through-the-inbound-door", "untrusted", "forged"],
)
async def test_fedifys_receipt_is_honoured_by_trust(
    trusted: bool,
    inbox: str,
    tamper: bool,
    fedify: Fedify,
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
) -> None:
    """Sluice's own inbox (its actor's host and path), or the instance's inbox (the
    inbound door): either way the receipt is considered, by ``[[trust]]``; one changed
    after Fedify signed it is refused even from a trusted peer."""
    trust = [{"peer": "127.0.0.1", "automated": True}] if trusted else []
    sluice, base = await speaking_sluice(tmp_path, sluice_factory, network=LOOPBACK, trust=trust)
    to = f"{base}/actor" if inbox == "/inbox" else f"{base}/users/bob"
    sent = await fedify.ask(
        "receipt", inbox=f"{base}{inbox}", to=to, receipt=_receipt(fedify, 1), tamper=tamper
    )
    assert "error" not in sent, sent  # Fedify throws on any answer but 2xx
    receipt = sent["receipt"]
    assert receipt["proof"]["cryptosuite"] == "eddsa-jcs-2022"
    assert receipt["proof"]["verificationMethod"] == f"{fedify.base}/users/moderator#key-2"

    async def decision() -> Any:
        return await sluice.parts.pool.fetchrow(
            "SELECT honoured, reason FROM received_receipt WHERE id = $1", receipt["id"]
        )

    row = await wait_for(decision, timeout=20)
    if tamper:
        assert row["honoured"] is False
        assert row["reason"].startswith("not verified: proof does not verify"), row["reason"]
        assert await _bank_sizes(sluice) == {}
    elif trusted:
        assert row["honoured"] is True, row["reason"]
        assert row["reason"].endswith("3 new hashes in receipts:127.0.0.1:unwanted")
        assert await _bank_sizes(sluice) == {"receipts:127.0.0.1:unwanted": 3}
    else:
        assert (row["honoured"], row["reason"]) == (False, "no [[trust]] entry covers 127.0.0.1")
        assert await _bank_sizes(sluice) == {}
    assert fedify.find("offline") == []


async def test_fedifys_plain_delete_goes_to_the_instance(
    fedify: Fedify,
    tmp_path: Path,
    sluice_factory: Callable[..., Awaitable[Running]],
    upstream: Upstream,
) -> None:
    sluice, base = await speaking_sluice(tmp_path, sluice_factory, network=LOOPBACK)
    sent = await fedify.ask("delete", inbox=f"{base}/users/bob/inbox", to=f"{base}/users/bob")
    assert "error" not in sent, sent
    await wait_for(lambda: sent["sent"] in upstream.ids(), timeout=20)
    [post] = [p for p in upstream.inbox_posts() if p.json()["id"] == sent["sent"]]
    assert post.json()["type"] == "Delete"
    assert post.path == "/users/bob/inbox"
    assert await sluice.parts.pool.fetchval("SELECT count(*) FROM received_receipt") == 0
