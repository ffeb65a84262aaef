"""A Sluice that holds benign drawn pictures for review, people to review them, and a
client that logs in to the review UI as a browser would (cookies, CSRF tokens)."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import aiohttp
from PIL import Image, ImageDraw

from relay.banks import BankStore
from relay.media.hashes import hash_media
from relay.people import Accounts
from tests.conftest import Fediverse, Running, settled_row, wait_for
from tests.doors.test_media_hold import Origin, with_media

PASSWORD = "a long enough password"
PREFIX = "/review"


def drawn(colour: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> bytes:
    """A benign picture no public list holds: coloured stripes on white."""
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    for x in range(0, size[0], 40):
        draw.rectangle((x, 0, x + 19, size[1] - 1), fill=colour)
    draw.ellipse((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(250, 200, 0))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=90)
    return out.getvalue()


#: Three pictures the test bank lists (category ``test``): each held for review.
PICTURES = {
    "red.jpg": drawn((200, 30, 30)),
    "green.jpg": drawn((30, 160, 60)),
    "blue.jpg": drawn((30, 60, 200)),
}


async def reviewing(sluice_factory: Any, evidence_key: Any, **sections: Any) -> Running:
    """Sluice holding ``PICTURES`` for review, a ``test`` category drafting reports
    (``bank`` and ``rule`` replace the bank ``test-review`` and its rule)."""
    sluice = await sluice_factory(
        evidence={"key_file": str(evidence_key)},
        media={"fetch_timeout_seconds": 2.0},
        hold={"max_seconds": 10.0, "on_error": "reject"},
        bank=sections.pop("bank", [{"name": "test-review", "category": "test"}]),
        rule=sections.pop("rule", [{"match": "test-review", "action": "review"}]),
        review={"report_categories": ["test"], **sections.pop("review", {})},
        admin={"secure_cookies": False, **sections.pop("admin", {})},
        **sections,
    )
    if any(b.name == "test-review" for b in sluice.parts.config.bank):
        store = BankStore(sluice.parts.pool)
        await store.ensure("test-review", category="test")
        await store.add(
            "test-review",
            [("sha256", hash_media(data).sha256, name) for name, data in PICTURES.items()],
        )
        await wait_for(lambda: len(sluice.parts.banks.index) >= 1, timeout=5)
    accounts = Accounts(sluice.parts.pool)
    await accounts.add("ada", "admin", PASSWORD)
    await accounts.add("mo", "moderator", PASSWORD)
    return sluice


async def hold(
    sluice: Running, fediverse: Fediverse, origin: Origin, name: str, *, author: str = "alice"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post a picture of ``PICTURES`` and wait for its verdict: (activity, record)."""
    origin.files[name] = (PICTURES[name], "image/jpeg")
    activity = with_media(fediverse.actor(author), origin.url(name))
    assert (await sluice.post(fediverse.actor(author), json.dumps(activity).encode()))[0] == 202

    async def decided() -> dict[str, Any] | None:
        record = await sluice.parts.store.get(activity["id"])
        return record if record and record["state"] not in ("received",) else None

    record = await wait_for(decided, timeout=15)
    if record["state"] == "queued":
        record = await settled_row(sluice, activity["id"])
    return activity, record


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Reviewer:
    """A logged-in browser, without the browser: cookies and the page's CSRF token."""

    def __init__(self, sluice: Running) -> None:
        self.base = sluice.admin_url
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
        self.session = aiohttp.ClientSession(cookie_jar=jar)
        self.csrf = ""
        self.last = ""

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        async with self.session.get(
            self.base + path, allow_redirects=kwargs.pop("allow_redirects", True), **kwargs
        ) as response:
            text = await response.text(errors="replace")
            found = _CSRF.search(text)
            if found:
                self.csrf = found.group(1)
            self.last = text
            return response.status, text

    async def raw(self, path: str) -> tuple[int, str, bytes]:
        async with self.session.get(self.base + path, allow_redirects=False) as response:
            return response.status, response.content_type, await response.read()

    async def post(
        self, path: str, data: dict[str, str], *, csrf: str | None = None
    ) -> tuple[int, str, str]:
        """POST a form; (status, where it redirects or "", text)."""
        form = {"csrf": self.csrf if csrf is None else csrf, **data}
        async with self.session.post(
            self.base + path, data=form, allow_redirects=False
        ) as response:
            return response.status, response.headers.get("Location", ""), await response.text()

    async def login(self, name: str, password: str = PASSWORD) -> int:
        await self.get(PREFIX + "/login")
        status, where, _ = await self.post(PREFIX + "/login", {"name": name, "password": password})
        return status if not where else (await self.get(where))[0]
