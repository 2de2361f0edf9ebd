"""The audit report as a person sees it: the sandbox fleet's HTML report in headless Chromium.

Debian's /usr/bin/chromium (packages chromium, chromium-driver) driven by Playwright; no browser is
downloaded. The page must load with no console error and no request beyond its own file, show the
key sections, and fit the window on a desktop (1400 px), a tablet (900) and a phone (420): nothing
wider than the window, every repair command in full view. Full-page screenshots at each width are
kept in the test's tmp directory (their paths are printed), with copies at
/tmp/bupwatch-report-<width>.png.
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, sync_playwright

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
LATEST = Path("/tmp")  # copies of the latest screenshots: /tmp/bupwatch-report-<width>.png
WIDTHS = (1400, 900, 420)  # a desktop, a tablet (the hosts table at its tightest), a phone
LINKS = {
    "grafana_url": "https://grafana.example.org",
    "alertmanager_url": "https://alertmanager.example.org",
    "runbook_url": "https://git.example.org/ops/bup-watchdog/blob/main/docs/runbooks.md",
}
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
    settings = dataclasses.replace(ReportSettings.from_config(config), **LINKS)
    report = build_report(state, settings=settings)
    state.close()
    path = tmp_path / "bupwatch-audit.html"
    path.write_text(render(report, "html"), encoding="utf-8")
    return path


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


# Why an element is not in full view: outside the window's width, or cut by an ancestor that
# clips its overflow (overflow other than visible). None when all of it can be seen.
NOT_IN_VIEW = """el => {
  const r = el.getBoundingClientRect(), w = window.innerWidth, px = v => v.toFixed(0);
  if (r.width === 0 || r.height === 0) return 'it has no size';
  if (r.left < -0.5 || r.right > w + 0.5) return `it spans x ${px(r.left)}..${px(r.right)} of ${w}`;
  for (let a = el.parentElement; a; a = a.parentElement) {
    const st = getComputedStyle(a);
    if (st.overflowX === 'visible' && st.overflowY === 'visible') continue;
    const b = a.getBoundingClientRect();
    if (r.left < b.left - 0.5 || r.right > b.right + 0.5 ||
        r.top < b.top - 0.5 || r.bottom > b.bottom + 0.5)
      return `<${a.tagName.toLowerCase()} class="${a.className}"> (overflow ${st.overflow}) cuts`;
  }
  return null;
}"""


def repair_commands_out_of_view(page: Page) -> list[str]:
    """Each finding's repair command (or its by-hand advice) that cannot be seen whole."""
    out = []
    findings = page.locator("tr.finding, li.host-finding")
    assert findings.count() > 0
    for i in range(findings.count()):
        finding = findings.nth(i)
        fix = finding.locator(".fix code")
        if fix.count() == 0:  # no command: a repair by hand, with its advice
            fix = finding.locator(".fix .hint")
        assert fix.count() > 0, f"finding {i} shows no repair: {finding.inner_text()[:200]}"
        for j in range(fix.count()):
            why = fix.nth(j).evaluate(NOT_IN_VIEW)
            if why:
                out.append(f"{fix.nth(j).inner_text()!r}: {why}")
    return out


def open_page(browser: Browser, url: str, width: int, problems: list[str]) -> Page:
    """The report in a window this wide; console errors and warnings go to ``problems``, and any
    request beyond the page's own file is refused and recorded there too."""
    page = browser.new_page(viewport={"width": width, "height": 900})

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            problems.append(f"{width} px: {msg.type}: {msg.text}")

    def only_the_file(route: Route) -> None:
        if route.request.url == url:
            route.continue_()
        else:
            problems.append(f"{width} px: the page asked for {route.request.url}")
            route.abort()

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(f"{width} px: page error: {exc}"))
    page.route("**/*", only_the_file)
    page.goto(url, wait_until="load")
    return page


@pytest.fixture(scope="module")
def report_url(demo_config: Config, tmp_path_factory: pytest.TempPathFactory) -> str:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed: apt-get install chromium chromium-driver")
    return demo_report(demo_config, tmp_path_factory.mktemp("report-browser")).as_uri()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_report_renders_in_chromium_without_errors_and_shows_every_section(
    report_url: str, browser: Browser
) -> None:
    problems: list[str] = []
    page = open_page(browser, report_url, 1400, problems)
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
    assert page.locator("tr.host-row a.grafana").count() == 4
    assert page.locator("tr.finding a.runbook").count() >= 4
    page.close()
    assert problems == [], problems


@pytest.mark.parametrize("width", WIDTHS)
def test_at_desktop_tablet_and_phone_width_nothing_is_cut_and_every_repair_command_is_in_view(
    report_url: str, browser: Browser, width: int, tmp_path: Path
) -> None:
    problems: list[str] = []
    page = open_page(browser, report_url, width, problems)
    scroll_width, inner_width = page.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth]"
    )
    shot = tmp_path / f"bupwatch-report-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    latest = LATEST / shot.name
    shutil.copyfile(shot, latest)
    print(f"\nscreenshot of the audit report at {width} px: {shot} (latest copy: {latest})")
    assert scroll_width <= inner_width, (
        f"at {width} px the page is {scroll_width} px wide: it needs horizontal scrolling"
    )
    assert png_size(shot)[0] == width
    assert repair_commands_out_of_view(page) == []
    # Charts shrunk to a phone are unreadable: there the same numbers are tables instead.
    narrow = width < 860  # report.css: @media (max-width: 860px)
    for chart, table in (("#lag-chart", "#lag-table"), ("#save-chart", "#save-table")):
        assert page.locator(chart).is_visible() is not narrow, chart
        assert page.locator(table).is_visible() is narrow, table
    size = page.locator("#lag-table td" if narrow else "#lag-chart text").first.evaluate(
        "e => e.getBoundingClientRect().height"
    )
    assert size >= 10, f"chart labels are {size:.1f} px high at {width} px"
    # Every host tile leads to its host's row.
    tiles = page.locator("a.tile")
    assert tiles.count() == 4
    for i in range(tiles.count()):
        target = tiles.nth(i).get_attribute("href")
        assert target and target.startswith("#host-")
        assert page.locator(f"tr.host-row[id='{target[1:]}']").count() == 1, target
    tiles.last.click()
    target = tiles.last.get_attribute("href") or ""
    seen = page.locator(f"tr.host-row[id='{target[1:]}']").evaluate(
        """el => { const r = el.getBoundingClientRect();
                   return r.top >= -1 && r.top < window.innerHeight
                          && el.contains(document.elementFromPoint(r.left + 10, r.top + 6)); }"""
    )
    assert seen, f"the tile {target} does not bring its host row into view (or the nav covers it)"
    page.close()
    assert problems == [], problems
