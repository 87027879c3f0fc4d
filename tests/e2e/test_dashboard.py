"""The dashboard in a real headless browser (Debian's Chromium driven by Playwright)
against a real daemon: sign in, watch a job advance, act with each token's scope."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from daemon.cli.client import ApiClient

VIEW, MANAGE = "ui-view-token", "ui-manage-token"
RUNNING = {"IN_PROGRESS", "ERRORED"}  # ERRORED: some chunks wait to retry, the rest run on
# As root in a sandbox, with no network: no sandboxing, no calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def chromium() -> str:
    path = os.environ.get("CHUNKD_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("Chromium is not installed (make test installs Debian's chromium when run as root)")
    pytest.skip("Chromium is not installed: apt-get install chromium (or set CHUNKD_TEST_CHROMIUM)")


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    path = chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def progress(page, iid: int) -> float:  # type: ignore[no-untyped-def]
    bar = page.locator(f'tr[data-instance-id="{iid}"] [role=progressbar]')
    return float(bar.get_attribute("aria-valuenow") or 0)


def sign_in(page, token: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_dashboard_end_to_end(api_daemon, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # 4 partitions x 2 slots and 0.25 s per chunk: about 10 s of work, long enough to watch.
    api = api_daemon(f"view:{VIEW},manage:{MANAGE}", CHUNKD_PARTITION_CONCURRENCY="2")
    manage = ApiClient(api.url, MANAGE)
    iid = manage.call("POST", "/api/v1/instances",
                      body={"job": "test.dash", "parameters": {"chunks": 320, "work_ms": 250}})["id"]
    origin = api.url

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    navigations: list[str] = []
    page.on("framenavigated", lambda f: navigations.append(f.url) if f == page.main_frame else None)

    page.goto(origin + "/ui")
    # a token the daemon does not know is refused and not kept
    sign_in(page, "not-a-token")
    page.get_by_role("alert").filter(has_text="not accepted").wait_for()
    assert page.evaluate("sessionStorage.getItem('chunkd.token')") is None

    sign_in(page, VIEW)
    page.get_by_text("Signed in: view token").wait_for()
    row = page.locator(f'tr[data-instance-id="{iid}"]')
    row.wait_for()
    first = progress(page, iid)
    loads = len(navigations)
    deadline = time.monotonic() + 30
    while progress(page, iid) <= first:  # the page refreshes itself
        assert time.monotonic() < deadline, f"progress stayed at {first}%"
        page.wait_for_timeout(250)
    assert len(navigations) == loads, "the page reloaded instead of updating in place"
    assert row.locator(".status").inner_text() in RUNNING
    page.screenshot(path=str(tmp_path / "instances.png"), full_page=True)

    row.get_by_role("link", name=f"#{iid}").click()
    page.locator("#steps tbody tr").nth(1).wait_for()
    assert page.locator("#view-only").is_visible()
    assert "no schedule" in page.locator("#fired-by").inner_text()  # submitted, not fired by a schedule
    page.locator("#throughput svg rect").first.wait_for()
    page.screenshot(path=str(tmp_path / "instance-detail.png"), full_page=True)

    # a view token may look but not act: the daemon refuses, the instance runs on
    page.get_by_role("button", name="Cancel").click()
    page.get_by_role("dialog").get_by_role("button", name="Yes").click()
    page.locator("#toast").filter(has_text="Refused").wait_for()
    assert "manage" in page.locator("#toast").inner_text()
    assert manage.call("GET", f"/api/v1/instances/{iid}")["status"] in RUNNING

    # sign in again with the manage token, by keyboard alone; the hash (never the token) keeps the page
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").fill(MANAGE)
    page.keyboard.press("Enter")
    page.get_by_text("Signed in: manage token").wait_for()
    assert page.locator("#view-only").count() == 0
    page.get_by_role("button", name="Cancel").focus()
    page.keyboard.press("Enter")
    page.get_by_role("dialog").wait_for()
    page.keyboard.press("Enter")  # the confirmation's focused button is "Yes"
    page.locator("#status").filter(has_text="CANCELLED").wait_for(timeout=15_000)
    assert manage.call("GET", f"/api/v1/instances/{iid}")["status"] == "CANCELLED"
    page.screenshot(path=str(tmp_path / "instance-cancelled.png"), full_page=True)

    for name in ("Jobs", "Schedules", "Cluster"):
        page.get_by_role("navigation").get_by_role("link", name=name).click()
        page.get_by_role("heading", level=1, name=name).wait_for()
    page.locator("#nodes tbody tr").first.wait_for()
    assert "leader" in page.locator("#nodes").inner_text()

    # a schedule paused and resumed from its page
    manage.call("POST", "/api/v1/schedules", body={"id": "nightly", "job": "test.dash", "cron": "0 3 * * *"})
    page.get_by_role("navigation").get_by_role("link", name="Schedules").click()
    page.get_by_role("button", name="Pause nightly").click()
    page.get_by_role("button", name="Resume nightly").wait_for()
    assert manage.call("GET", "/api/v1/schedules/nightly")["paused"] is True
    page.get_by_role("button", name="Resume nightly").click()
    page.get_by_role("button", name="Pause nightly").wait_for()
    assert manage.call("GET", "/api/v1/schedules/nightly")["paused"] is False

    dark = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark")
    dark.on("request", lambda r: requests.append(r.url))
    night = dark.new_page()
    night.goto(f"{origin}/ui/#/instances/{iid}")
    sign_in(night, VIEW)
    night.locator("#steps tbody tr").first.wait_for()
    night.screenshot(path=str(tmp_path / "instance-detail-dark.png"), full_page=True)
    dark.close()

    # everything the page fetched came from the daemon itself, and no URL carried a token
    assert requests, "the page made no requests"
    assert {urlsplit(u).netloc for u in requests} == {urlsplit(origin).netloc}, requests
    assert not [u for u in requests if VIEW in u or MANAGE in u]
    print(f"screenshots: {tmp_path}")
    for shot in ("instances.png", "instance-detail.png"):
        assert (tmp_path / shot).stat().st_size > 10_000
