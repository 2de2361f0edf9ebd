"""The audit report as a person sees it: the sandbox fleet's HTML report in headless Chromium.

Debian's /usr/bin/chromium (packages chromium, chromium-driver) driven by Playwright; no browser is
downloaded. The page must load with no console error and no request beyond its own file, show the
key sections, and fit the window. The screenshot is kept as an artifact: the test's tmp directory
and a copy at /tmp/bupwatch-report.png (the path is printed).
"""

from __future__ import annotations

import shutil
import struct
import time
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Route, sync_playwright

from bup_watchdog.config import Config
from bup_watchdog.journal import Journal
from bup_watchdog.report import ReportSettings, build_report, render
from bup_watchdog.runner import Runner, inventory_source
from bup_watchdog.sandbox.spec import DEMO_PROJECTS
from bup_watchdog.state import State

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",  # we run as root
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LATEST = Path("/tmp/bupwatch-report.png")
SECTIONS = (
    "#summary",
    "#hosts",
    "#projects",
    "#lag-chart",
    "#save-chart",
    "#save-freshness",
    "#deep",
    "#repairs",
)


def demo_report(config: Config, tmp_path: Path) -> Path:
    """The HTML report of a real deep sweep of the demo fleet, with a few journaled repairs."""
    state = State(tmp_path / "state.db")
    result = Runner(config, state, inventory_source(config)).run_once(force=True, deep=True)
    assert result is not None
    ids = {s.name: s.server_id for s in result.inventory.servers.values()}
    journal = Journal(state)
    p3, p2 = DEMO_PROJECTS["P3"], DEMO_PROJECTS["P2"]
    common = {"fingerprint": None, "reason": "", "plan": []}
    journal.write(
        repair="resync_replica",
        target=f"{ids['h4']}/{p3}",
        server_id=ids["h4"],
        project_id=p3,
        requested_by="schedule",
        mode="approve",
        status="pending",
        **common,
    )
    journal.write(
        repair="rotate_save_log",
        target=f"{ids['h2']}/{p2}",
        server_id=ids["h2"],
        project_id=p2,
        requested_by="alertmanager",
        mode="auto",
        status="refused",
        refusal="circuit_breaker: 3 of 4 hosts were unreachable in the last sweep",
        **common,
    )
    done = journal.write(
        repair="rotate_save_log",
        target=f"{ids['h4']}/{p2}",
        server_id=ids["h4"],
        project_id=p2,
        requested_by="schedule",
        mode="auto",
        status="running",
        **common,
    )
    journal.update(
        done,
        status="succeeded",
        started_at=time.time() - 12,
        verification="save_log_size passes again",
    )
    report = build_report(state, settings=ReportSettings.from_config(config))
    state.close()
    path = tmp_path / "bupwatch-audit.html"
    path.write_text(render(report, "html"), encoding="utf-8")
    return path


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_report_renders_in_chromium_without_errors_and_shows_every_section(
    demo_config: Config, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed: apt-get install chromium chromium-driver")
    page_file = demo_report(demo_config, tmp_path)
    url = page_file.as_uri()
    problems: list[str] = []
    requests: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            problems.append(f"{msg.type}: {msg.text}")

    def only_the_file(route: Route) -> None:
        requests.append(route.request.url)
        if route.request.url == url:
            route.continue_()
        else:
            route.abort()

    shot = tmp_path / "bupwatch-report.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.route("**/*", only_the_file)
            page.goto(url, wait_until="load")
            for selector in SECTIONS:
                box = page.locator(selector).bounding_box()
                assert page.locator(selector).is_visible() and box, f"{selector} is not visible"
                assert box["width"] > 300 and box["height"] > 50, (selector, box)
            assert page.locator("#verdict").inner_text() == "CRITICAL"
            assert page.locator("#lag-chart rect[fill]").count() >= 3  # bars of two dcs
            assert page.locator("tr.host-row").count() == 4
            assert page.locator("article.project").count() == 4  # P1, P2, P3, P6
            assert page.locator("#save-freshness tr[data-project-id]").count() == 1  # P6
            assert page.locator("tr.journal-entry").count() == 3
            assert "pending #" in page.locator("#projects").inner_text()
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"the page is {overflow} px wider than the window"
            page.screenshot(path=str(shot), full_page=True)
            narrow = browser.new_page(viewport={"width": 420, "height": 900})
            narrow.on("console", on_console)
            narrow.goto(url, wait_until="load")
            assert narrow.locator("#summary").is_visible()
        finally:
            browser.close()
    assert problems == [], problems
    assert requests == [url], f"the page asked for more than itself: {requests}"
    width, height = png_size(shot)
    assert width == 1280 and height > 2000
    shutil.copyfile(shot, LATEST)
    print(f"\nscreenshot of the audit report: {shot} (latest copy: {LATEST})")
