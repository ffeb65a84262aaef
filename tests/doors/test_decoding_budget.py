"""A sender past its decoding budget buys nothing: its media go to review undecoded,
whatever ``[hold] on_error`` says (issue 11, finding 6)."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.policy import OVER_BUDGET, Policy
from relay.signal import Signal
from relay.verdict import Disposition
from tests.conftest import Fediverse, Upstream
from tests.doors.test_media_hold import Origin, _settled, origin, with_media  # noqa: F401


async def test_over_budget_media_go_to_review_even_when_errors_are_delivered(
    sluice_factory: Any,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,  # noqa: F811
) -> None:
    sluice = await sluice_factory(
        media={"sender_pixels_per_minute": 1000},
        hold={"on_error": "deliver"},
    )
    alice = fediverse.actor("alice")
    # One image larger than the whole budget passes while the bucket is full; the next
    # finds it empty.
    activity = with_media(alice, origin.url("pen.png"), origin.url("bridge-edit.jpg"))
    assert (await sluice.post(alice, activity))[0] == 202
    record = await _settled(sluice, activity["id"])
    assert record["state"] == "review"
    assert record["verdict"]["rule"] == "media.over_budget"
    [over] = [s for s in record["verdict"]["signals"] if s["kind"] == OVER_BUDGET]
    assert over["detail"]["stage"] == "budget"
    assert f"{alice.id} is over its budget of 1000 decoded pixels" in over["detail"]["error"]
    # Its exact hashes were still taken, for the banks; the other image was hashed whole.
    hashed = {
        s["detail"]["url"]: s["detail"]
        for s in record["verdict"]["signals"]
        if s["kind"] == "hashed"
    }
    assert hashed[over["detail"]["url"]]["pdq"] is None
    assert hashed[over["detail"]["url"]]["sha256"]
    assert len(hashed) == 2
    assert upstream.inbox_posts() == []


def test_the_policy_floor_for_over_budget_is_review() -> None:
    over = Signal(OVER_BUDGET, "media", {"stage": "budget"})
    assert Policy(on_error=Disposition.DELIVER).decide([over]).disposition is Disposition.REVIEW
    # A stronger action from the rules or on_error still wins.
    stronger = Policy(on_error=Disposition.REJECT).decide([over, Signal("error", "media")])
    assert (stronger.disposition, stronger.rule) == (Disposition.REJECT, "hold.on_error")


async def test_a_shared_fetch_charges_no_one_else_s_budget() -> None:
    """Two activities name one file at once: the first sender's empty budget must not
    send the second sender's activity to review."""
    import json

    from aiohttp import web

    from relay.activity import parse_activity
    from relay.banks import BankIndex
    from relay.media.check import MediaCheck
    from relay.media.fetch import HashCache, MediaFetcher
    from relay.media.hasher import MediaHasher
    from relay.network import NetworkPolicy, client_session
    from tests.conftest import start_server
    from tests.doors.test_media_hold import BRIDGE, PEN

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)  # both activities ask while the first fetch runs
        return web.Response(body=BRIDGE if request.match_info["n"] == "1" else PEN)

    app = web.Application()
    app.router.add_get("/{n}", slow)
    server = await start_server(app)
    base = str(server.make_url("")).rstrip("/")
    policy = NetworkPolicy.from_strings(["127.0.0.0/8"], allow_http=True)

    def activity(actor: str, *urls: str) -> Any:
        attachment = [{"type": "Document", "url": url} for url in urls]
        document = {"type": "Create", "id": f"{actor}/1", "actor": actor}
        document["object"] = {"type": "Note", "id": f"{actor}/n", "attachment": attachment}
        return parse_activity(json.dumps(document).encode())

    mallory, alice = "https://bad.example/users/mallory", "https://good.example/users/alice"
    async with client_session(policy) as session:
        check = MediaCheck(
            MediaFetcher(session, policy, max_bytes=1 << 24),
            lambda: BankIndex(),
            HashCache(0),
            hasher=MediaHasher(sender_pixels_per_minute=1000),
        )
        # Mallory spends its budget (a full bucket lets one large image through).
        await check.run(activity(mallory, f"{base}/2"))
        theirs, ours = await asyncio.gather(
            check.run(activity(mallory, f"{base}/1")),
            check.run(activity(alice, f"{base}/1")),
        )
        check.hasher.close()
    await server.close()
    assert [s.kind for s in theirs if s.kind == OVER_BUDGET] == [OVER_BUDGET]
    assert [s.kind for s in ours] == ["hashed"]
    assert ours[0].detail["pdq"] is not None
