"""An activity held for review keeps the media it was judged on, sealed like evidence:
the moderator sees exactly those bytes, never a re-fetch (issue 12, point 7)."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image, ImageDraw

from relay.banks import BankStore
from relay.evidence import EvidenceStore
from relay.media.hashes import hash_media
from tests.conftest import Fediverse, Running, Upstream, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import PEN, Origin, read_evidence, with_media


def _drawn() -> bytes:
    """A benign picture no bank lists: stripes."""
    picture = Image.new("RGB", (160, 120), "white")
    draw = ImageDraw.Draw(picture)
    for x in range(0, 160, 20):
        draw.rectangle((x, 0, x + 9, 119), fill=(30, 90, 200))
    out = io.BytesIO()
    picture.save(out, "JPEG")
    return out.getvalue()


STRIPES = _drawn()

guarded, origin, evidence_key = media_hold.guarded, media_hold.origin, media_hold.evidence_key
settled = media_hold._settled


async def test_review_seals_every_judged_file_and_keeps_the_body(
    guarded: Running,
    fediverse: Fediverse,
    upstream: Upstream,
    origin: Origin,
    evidence_key: Any,
) -> None:
    origin.files["stripes.jpg"] = (STRIPES, "image/jpeg")
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("pen.png"), origin.url("stripes.jpg"))
    body = json.dumps(activity).encode()
    assert (await guarded.post(alice, body))[0] == 202
    record = await settled(guarded, activity["id"])
    assert record["state"] == "review"
    assert record["verdict"]["rule"] == "rule[1] test-unwanted -> review"
    [evidence] = [s for s in record["verdict"]["signals"] if s["kind"] == "evidence"]
    evidence_id = evidence["detail"]["evidence_id"]
    assert evidence["detail"]["media"] == 2

    # The row points at the sealed media and keeps what a moderator may deliver.
    row = await guarded.parts.pool.fetchrow(
        "SELECT body, evidence_id FROM activity WHERE ap_id = $1", activity["id"]
    )
    assert row["evidence_id"] == evidence_id
    assert bytes(row["body"]) == body
    [listed] = await guarded.parts.store.in_review()
    assert listed["evidence_id"] == evidence_id

    # Exactly the bytes judged: the matched file and the clean one beside it.
    facts, media = await read_evidence(guarded, evidence_key, evidence_id)
    assert sorted(media) == sorted([PEN, STRIPES])
    assert facts.facts["verdict"]["action"] == "review"
    fetched = list(origin.fetched)

    # Approved, it is delivered as sent; the sealed media stay, nothing is fetched again.
    assert await guarded.parts.store.moderate(listed["id"], "approve", "mod-alice") == "queued"
    guarded.parts.flow.wake()
    await wait_for(upstream.inbox_posts)
    assert upstream.ids() == [activity["id"]]
    assert origin.fetched == fetched
    assert await guarded.parts.pool.fetchval("SELECT count(*) FROM evidence") == 1


async def test_review_without_an_evidence_key_still_holds_the_activity(
    sluice_factory: Any, fediverse: Fediverse, origin: Origin
) -> None:
    sluice = await sluice_factory(
        bank=[{"name": "test-unwanted", "category": "unwanted"}],
        rule=[{"match": "test-unwanted", "action": "review"}],
    )
    store = BankStore(sluice.parts.pool)
    await store.ensure("test-unwanted", category="unwanted")
    await store.add("test-unwanted", [("sha256", hash_media(PEN).sha256, "pen")])
    await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)
    alice = fediverse.actor("alice")
    activity = with_media(alice, origin.url("pen.png"), media_type="image/png")
    assert (await sluice.post(alice, activity))[0] == 202
    record = await settled(sluice, activity["id"])
    assert record["state"] == "review"
    assert not [s for s in record["verdict"]["signals"] if s["kind"] == "evidence"]
    assert await sluice.parts.pool.fetchval("SELECT count(*) FROM evidence") == 0
    assert isinstance(sluice.parts.flow.evidence, EvidenceStore)
