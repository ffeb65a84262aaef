"""The review UI in a real browser: Debian's Chromium, headless, driven by Selenium.

A moderator logs in through the form, works the queue (confirm, false positive,
escalate), sees only previews until a reveal, and the page loads under its own
Content-Security-Policy with no console errors. Screenshots of the queue and of an item
are saved to ``$SLUICE_ARTIFACTS`` (or ``artifacts/screenshots/`` at the repository
root).

Sluice runs in the test's event loop, so every Selenium call (which blocks) runs in a
thread: ``await asyncio.to_thread(...)`` through the small ``Browser`` wrapper.

No Chromium or chromedriver: the tests skip, unless SLUICE_REQUIRE_ALL=1, where they
fail.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from relay.review.session import COOKIE
from tests.conftest import Fediverse, Running, Upstream, settled_row, wait_for
from tests.doors import test_media_hold as media_hold
from tests.doors.test_media_hold import Origin
from tests.review.support import PASSWORD, PREFIX, hold, reviewing

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRE_ALL = os.environ.get("SLUICE_REQUIRE_ALL") == "1"
ROOT = Path(__file__).resolve().parents[2]


def _missing() -> str | None:
    """Why a browser cannot run here, or None."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


MISSING = _missing()
if MISSING and not REQUIRE_ALL:
    pytest.skip(MISSING, allow_module_level=True)

if not MISSING:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

origin, evidence_key = media_hold.origin, media_hold.evidence_key

T = TypeVar("T")
WAIT = 15.0  # seconds a page may take to load


def artifacts() -> Path:
    """Where screenshots go: ``$SLUICE_ARTIFACTS``, else ``artifacts/screenshots``."""
    where = Path(os.environ.get("SLUICE_ARTIFACTS") or ROOT / "artifacts" / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


# -- the browser, blocking calls made in a thread -------------------------------------


def _start(profile: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT)
    return driver


def _loaded(driver: Any) -> None:
    WebDriverWait(driver, WAIT).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def _go(driver: Any, url: str) -> None:
    driver.get(url)
    _loaded(driver)


def _navigating(driver: Any, act: Callable[[Any], None]) -> None:
    """Do ``act`` (a click, a submit) and wait for the next page to have loaded."""
    old = driver.find_element(By.TAG_NAME, "html")
    act(driver)
    WebDriverWait(driver, WAIT).until(expected_conditions.staleness_of(old))
    _loaded(driver)


def _click(driver: Any, selector: str) -> None:
    _navigating(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector).click())


def _type(driver: Any, element_id: str, text: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


class Browser:
    """A Chromium tab; every method runs its Selenium calls off the event loop."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.console: list[dict[str, Any]] = []  # every console entry read so far

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(call, *args)

    async def go(self, url: str) -> None:
        await self._run(_go, self.driver, url)

    async def click(self, selector: str) -> None:
        """Click what ``selector`` finds and wait for the page it leads to."""
        await self._run(_click, self.driver, selector)

    async def type(self, element_id: str, text: str) -> None:
        await self._run(_type, self.driver, element_id, text)

    async def js(self, script: str, *args: Any) -> Any:
        return await self._run(self.driver.execute_script, script, *args)

    async def submit_injected(self, script: str, *args: Any) -> None:
        """Run ``script`` (which submits a form) and wait for the page it leads to."""
        await self._run(_navigating, self.driver, lambda d: d.execute_script(script, *args))

    async def url(self) -> str:
        return str(await self._run(lambda: self.driver.current_url))

    async def source(self) -> str:
        return str(await self._run(lambda: self.driver.page_source))

    async def text(self, selector: str = "body") -> str:
        return str(
            await self._run(lambda: self.driver.find_element(By.CSS_SELECTOR, selector).text)
        )

    async def cookies(self) -> list[dict[str, Any]]:
        return list(await self._run(self.driver.get_cookies))

    async def status(self) -> int:
        """The HTTP status of the page shown (Navigation Timing's responseStatus)."""
        return int(
            await self.js("return performance.getEntriesByType('navigation')[0].responseStatus")
        )

    async def resources(self) -> list[str]:
        """Every URL this page has loaded (Resource Timing)."""
        return list(
            await self.js(
                "return performance.getEntriesByType('resource').map(function (e) "
                "{ return e.name; })"
            )
        )

    async def screenshot(self, name: str) -> Path:
        path = artifacts() / name
        path.unlink(missing_ok=True)
        assert await self._run(self.driver.save_screenshot, str(path)), path
        assert path.stat().st_size > 1000, path
        return path

    async def read_console(self) -> list[dict[str, Any]]:
        """The console entries since the last read, also kept in ``console``."""
        entries = list(await self._run(self.driver.get_log, "browser"))
        self.console.extend(entries)
        return entries

    async def requested(self) -> list[str]:
        """URLs of every request the browser has sent since the last call (the
        DevTools performance log: all pages, not only the one shown)."""
        import json

        entries = await self._run(self.driver.get_log, "performance")
        urls = []
        for entry in entries:
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    async def login(self, base: str, name: str, password: str = PASSWORD) -> None:
        await self.go(base + PREFIX + "/login")
        await self.type("name", name)
        await self.type("password", password)
        await self.click("#login")


@pytest.fixture
async def open_browser(tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    """Start Chromium browsers (each with a fresh profile); all are quit afterwards."""
    if MISSING:
        pytest.fail(f"SLUICE_REQUIRE_ALL=1 but {MISSING}")
    started: list[Browser] = []

    async def start() -> Browser:
        profile = tmp_path / f"chromium-{len(started)}"
        browser = Browser(await asyncio.to_thread(_start, profile))
        started.append(browser)
        return browser

    try:
        yield start
    finally:
        for browser in started:
            await asyncio.to_thread(browser.driver.quit)


@pytest.fixture
async def held(sluice_factory: Any, evidence_key: Path) -> Running:
    # The product's default: the session cookie is Secure. Chromium keeps a Secure
    # cookie from http://127.0.0.1 (loopback is a trustworthy origin).
    return await reviewing(sluice_factory, evidence_key, admin={"secure_cookies": True})


def _errors(entries: list[dict[str, Any]]) -> list[str]:
    """Console errors worth failing on: a CSP refusal, a script error, a failed load.
    The favicon is not the UI's (the browser asks for it on its own)."""
    return [
        str(e.get("message"))
        for e in entries
        if e.get("level") == "SEVERE" and "favicon.ico" not in str(e.get("message"))
    ]


async def _record(sluice: Running, row: int) -> dict[str, Any]:
    record = await sluice.parts.store.get(row)
    assert record is not None, row
    return record


async def _rows_in_queue(browser: Browser) -> list[str]:
    return list(
        await browser.js(
            "return Array.from(document.querySelectorAll('#queue a.item'))"
            ".map(function (a) { return a.textContent.trim(); })"
        )
    )


async def _images(browser: Browser) -> list[dict[str, Any]]:
    return list(
        await browser.js(
            "return Array.from(document.images).map(function (i) { return {"
            "src: i.getAttribute('src'), cls: i.className, complete: i.complete, "
            "width: i.naturalWidth, height: i.naturalHeight}; })"
        )
    )


async def _open_item(browser: Browser, base: str, row: int) -> None:
    """From the queue, as a moderator would: click the item's link."""
    await browser.go(base + PREFIX)
    await browser.click(f"#queue a.item[href='{PREFIX}/item/{row}']")
    assert (await browser.url()).endswith(f"{PREFIX}/item/{row}")


async def test_a_moderator_works_the_queue_in_a_browser(
    held: Running,
    fediverse: Fediverse,
    origin: Origin,
    upstream: Upstream,
    open_browser: Callable[[], Any],
) -> None:
    red, red_record = await hold(held, fediverse, origin, "red.jpg")
    green, green_record = await hold(held, fediverse, origin, "green.jpg")
    blue, blue_record = await hold(held, fediverse, origin, "blue.jpg")
    rows = [r["id"] for r in (red_record, green_record, blue_record)]
    assert [r["state"] for r in (red_record, green_record, blue_record)] == ["review"] * 3
    base = held.admin_url
    browser: Browser = await open_browser()

    # Logging in through the form.
    await browser.go(base + PREFIX)
    assert (await browser.url()).endswith(PREFIX + "/login")
    await browser.login(base, "mo")
    assert (await browser.url()).rstrip("/").endswith(PREFIX)
    [session] = [c for c in await browser.cookies() if c["name"] == COOKIE]
    assert session["secure"] is True and session["httpOnly"] is True
    assert session["sameSite"] == "Strict"

    # The queue: three items, the stylesheet and the script allowed by the page's CSP.
    assert await _rows_in_queue(browser) == [f"#{row}" for row in rows]
    assert "mo (moderator)" in await browser.text("header")
    queue_shot = await browser.screenshot("review-queue.png")
    header = await browser.js(
        "return getComputedStyle(document.querySelector('header')).backgroundColor"
    )
    assert header == "rgb(45, 58, 58)"  # review.css applied
    assert await browser.js("return document.getElementById('help').hidden") is True
    await browser.js(
        "document.dispatchEvent(new KeyboardEvent('keydown', {key: '?', bubbles: true}))"
    )
    assert await browser.js("return document.getElementById('help').hidden") is False

    # An item: previews only, and the browser never asked for an original.
    await _open_item(browser, base, rows[0])
    images = await _images(browser)
    assert images and all(f"{PREFIX}/item/{rows[0]}/preview/" in i["src"] for i in images)
    assert all(i["complete"] and 0 < max(i["width"], i["height"]) <= 320 for i in images)
    assert all(i["cls"] == "preview" for i in images)
    loaded = await browser.resources()
    assert any("/preview/0" in url for url in loaded), loaded
    assert not [url for url in loaded if "/original/" in url]
    before_reveal = await browser.requested()
    assert any("/preview/0" in url for url in before_reveal)
    assert not [url for url in before_reveal if "/original/" in url]
    assert "/original/" not in await browser.source()
    item_shot = await browser.screenshot("review-item.png")
    assert await held.parts.pool.fetchval("SELECT count(*) FROM reveal") == 0

    # The reveal: a logged POST, then the original is shown in full.
    await browser.click("#reveal-0")
    assert (await browser.url()).endswith(f"{PREFIX}/item/{rows[0]}#file-0")
    [original] = [i for i in await _images(browser) if i["cls"] == "original"]
    assert original["src"] == f"{PREFIX}/item/{rows[0]}/original/0"
    assert original["complete"] and (original["width"], original["height"]) == (640, 480)
    assert any("/original/0" in url for url in await browser.resources())
    reveals = await held.parts.pool.fetch("SELECT who, media, activity_row FROM reveal")
    assert [(r["who"], r["media"], r["activity_row"]) for r in reveals] == [("mo", 0, rows[0])]
    audit = await held.parts.pool.fetch("SELECT who FROM audit_log WHERE action = 'review.reveal'")
    assert [a["who"] for a in audit] == ["mo"]
    assert "1 of 100 reveals" in await browser.text("#exposure")
    await browser.js("window.scrollTo(0, 0)")
    revealed_shot = await browser.screenshot("review-item-revealed.png")

    # Confirm: quarantined, report drafts made, linked from the page.
    await browser.click("#confirm")
    assert "confirm: now quarantined" in await browser.text("#done")
    assert (await _record(held, rows[0]))["state"] == "quarantined"
    drafts = await held.parts.pool.fetch(
        "SELECT kind, created_by FROM report_draft WHERE activity_row = $1 ORDER BY kind",
        rows[0],
    )
    assert drafts and {d["created_by"] for d in drafts} == {"mo"}
    for draft in drafts:
        assert await browser.js(f"return !!document.getElementById('draft-{draft['kind']}')")
    assert upstream.ids() == []

    # A false positive, with a reason: delivered, and the picture is never held again.
    await _open_item(browser, base, rows[1])
    await browser.type("why", "striped test card, not material")
    await browser.click("#false_positive")
    assert "false positive" in await browser.text("#done")
    assert (await settled_row(held, green["id"]))["state"] == "delivered"
    assert upstream.ids() == [green["id"]]
    await wait_for(lambda: "allow" in held.parts.banks.index.counts(), timeout=5)
    again, later = await hold(held, fediverse, origin, "green.jpg", author="bob")
    assert later["state"] == "delivered"
    assert upstream.ids() == [green["id"], again["id"]]

    # Escalate, with a reason: it stays in review, marked for an admin.
    await _open_item(browser, base, rows[2])
    await browser.type("why", "not sure: an admin should look")
    await browser.click("#escalate")
    assert "Escalated by mo" in await browser.text("main")
    after = await _record(held, rows[2])
    assert after["state"] == "review"
    assert after["verdict"]["escalated"]["by"] == "mo"
    assert after["verdict"]["escalated"]["why"] == "not sure: an admin should look"
    await browser.go(base + PREFIX)
    assert await _rows_in_queue(browser) == [f"#{rows[2]}"]
    assert "escalated" in await browser.text("#queue")
    assert red["id"] not in upstream.ids() and blue["id"] not in upstream.ids()

    # Nothing the pages did was refused or broke: no CSP report, no script error.
    assert _errors(await browser.read_console()) == []
    for shot in (queue_shot, item_shot, revealed_shot):
        assert shot.is_file() and shot.read_bytes().startswith(b"\x89PNG")


async def test_a_browser_sees_nothing_without_a_login_and_a_forged_form_is_refused(
    held: Running, fediverse: Fediverse, origin: Origin, open_browser: Callable[[], Any]
) -> None:
    _, record = await hold(held, fediverse, origin, "red.jpg")
    row = record["id"]
    base = held.admin_url
    browser: Browser = await open_browser()

    # Anonymous: the item and its preview lead to the login form and show nothing.
    for path in (f"{PREFIX}/item/{row}", f"{PREFIX}/item/{row}/preview/0"):
        await browser.go(base + path)
        assert (await browser.url()).endswith(PREFIX + "/login"), path
        page = await browser.source()
        assert "/preview/" not in page and "/original/" not in page
        assert not [i for i in await _images(browser)]
        assert await browser.js("return !!document.getElementById('login')")

    # A wrong password shows the error and no session.
    await browser.login(base, "mo", "not the password")
    assert await browser.status() == 401
    assert "Wrong name or password" in await browser.text(".error")
    await browser.go(base + f"{PREFIX}/item/{row}")
    assert (await browser.url()).endswith(PREFIX + "/login")

    # Logged in, a form that is not the page's own (a wrong token) is refused.
    await browser.login(base, "mo")
    await browser.go(base + f"{PREFIX}/item/{row}")
    assert await browser.status() == 200
    await browser.submit_injected(
        """
        var form = document.createElement('form');
        form.method = 'post';
        form.action = arguments[0];
        [['csrf', 'wrong'], ['decision', 'confirm'], ['why', 'forged']].forEach(function (kv) {
          var input = document.createElement('input');
          input.type = 'hidden'; input.name = kv[0]; input.value = kv[1];
          form.appendChild(input);
        });
        document.body.appendChild(form);
        form.submit();
        """,
        f"{PREFIX}/item/{row}/decide",
    )
    assert (await browser.url()).endswith(f"{PREFIX}/item/{row}/decide")
    assert await browser.status() == 403
    assert "was not ours" in await browser.text()
    after = await _record(held, row)
    assert after["state"] == "review" and "escalated" not in after["verdict"]
    assert await held.parts.pool.fetchval("SELECT count(*) FROM report_draft") == 0
    assert await held.parts.pool.fetchval("SELECT count(*) FROM reveal") == 0
    decided = await held.parts.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action LIKE 'review.%'"
    )
    assert decided == 0
