"""The dashboard in a real headless Chromium (Playwright, Debian's /usr/bin/chromium) on a
phone (390×844) and a desk (1366×768), against the real aiohttp server on SQLite and
PostgreSQL: sign in, read the overview, sort it, open a unit, switch the language, download
the workbook. Neither viewport may scroll sideways. Screenshots are kept as test artefacts
(SIPAS_TEST_ARTIFACTS, by default tests/artifacts/, which git ignores).

Outside CI the tests skip, saying why, when no Chromium is found; under CI=true they fail
(as tests/test_web_survey_browser.py).
"""

from __future__ import annotations

import re

import pytest
from openpyxl import load_workbook
from playwright.async_api import Browser, Page, expect

from tests.api_support import (
    Api,
    api_fixture,  # noqa: F401
    make_api_fixture,  # noqa: F401
)
from tests.browser_support import (
    ACTION_TIMEOUT_MS,
    ARTIFACTS,
    artifacts_folder,  # noqa: F401 - fixture
    browser_fixture,  # noqa: F401 - fixture
)
from tests.dashboard_seed import seed
from tests.dashboard_support import issue_link

CHART_DRAWN = """() => {
  const image = document.querySelector("section.chart img");
  return image !== null && image.complete && image.naturalWidth > 0;
}"""
VIEWPORTS = {
    "phone": {"width": 390, "height": 844},
    "desk": {"width": 1366, "height": 768},
}


async def browser_sign_in(page: Page, api: Api, unit_code: str) -> None:
    """Follows a fresh one-time link, as an official opening it from chat would."""
    issued = await issue_link(api.services, unit_code)
    await page.goto(str(api.client.make_url(f"/dashboard/login/{issued.token}")))


async def assert_no_sideways_scroll(page: Page) -> None:
    scroll_width = await page.evaluate("document.documentElement.scrollWidth")
    inner_width = await page.evaluate("window.innerWidth")
    assert scroll_width <= inner_width, (page.url, scroll_width, inner_width)


async def screenshot(page: Page, api: Api, viewport: str, name: str) -> None:
    path = ARTIFACTS / f"dashboard-{api.backend}-{viewport}-{name}.png"
    await page.screenshot(path=path, full_page=True)


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
async def test_an_official_reads_sorts_opens_switches_and_downloads(
    api: Api, browser: Browser, viewport: str
) -> None:
    await seed(api.services)
    context = await browser.new_context(
        viewport=VIEWPORTS[viewport],
        is_mobile=viewport == "phone",
        has_touch=viewport == "phone",
        locale="vi-VN",
        accept_downloads=True,
    )
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    try:
        page = await context.new_page()
        await browser_sign_in(page, api, "HN")

        # The overview of last week: the unit that fell is named, with why.
        await expect(page.get_by_role("heading", name="Tổng quan tuần 2026-W47")).to_be_visible()
        callout = page.locator("[data-unit='HN-LB']").first
        await expect(callout).to_contain_text("Tiếp cận dịch vụ")
        bd_index = page.locator("tr[data-unit='HN-BD'] td[data-col='index']")
        await expect(bd_index).to_have_text("chưa đủ phản hồi")
        await assert_no_sideways_scroll(page)
        await screenshot(page, api, viewport, "1-overview")

        # Sorted by responses, most first: by the column's link on a desk, the form on a phone.
        if viewport == "desk":
            await page.locator("thead").get_by_role("link", name="Phản hồi", exact=True).click()
        else:
            await page.locator("select#sort").select_option("responses")
            await page.locator("select[name='dir']").select_option("desc")
            await page.locator("form.sort-form").get_by_role("button").click()
        await expect(page).to_have_url(re.compile(r"sort=responses&dir=desc"))
        first = page.locator("tbody tr[data-unit]").nth(1)
        await expect(first).to_have_attribute("data-unit", "HN-LB")
        await assert_no_sideways_scroll(page)
        await screenshot(page, api, viewport, "2-sorted")

        # A unit's page: its comments masked, its complaint's steps, its chart.
        await page.locator("tbody").get_by_role("link", name="UBND quận Long Biên").click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("UBND quận Long Biên")
        await expect(page.locator("[data-comment]")).to_have_count(3)
        await expect(page.locator("[data-comment]").first).to_contain_text("[SĐT đã ẩn]")
        await expect(page.locator("[data-step]")).to_have_count(4)
        await expect(page.locator("section.chart img")).to_be_visible()
        await page.wait_for_function(CHART_DRAWN, timeout=ACTION_TIMEOUT_MS)
        await assert_no_sideways_scroll(page)
        await screenshot(page, api, viewport, "3-unit")

        # English, remembered on the next page.
        await page.get_by_role("link", name="English").click()
        await expect(page.locator("html")).to_have_attribute("lang", "en")
        await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        await page.get_by_role("link", name="« Back to the overview").click()
        await expect(page.get_by_role("heading", name="Overview, week 2026-W47")).to_be_visible()
        await expect(bd_index).to_have_text("too few responses")
        await assert_no_sideways_scroll(page)
        await screenshot(page, api, viewport, "4-english")

        # The workbook of weeks 46 and 47.
        await page.locator("input#from").fill("2026-W46")
        async with page.expect_download() as waiting:
            await page.get_by_role("button", name="Download workbook (XLSX)").click()
        download = await waiting.value
        assert download.suggested_filename == "sipas-HN-2026-W46-2026-W47.xlsx"
        saved = ARTIFACTS / f"dashboard-{api.backend}-{viewport}.xlsx"
        await download.save_as(saved)
        sheet = load_workbook(saved).active
        assert sheet is not None
        weeks = [row[3] for row in sheet.iter_rows(min_row=3, values_only=True)]
        assert weeks == ["2026-W46"] * 4 + ["2026-W47"] * 4

        # Signing out from a page of figures ends the session.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.locator("[data-unit]")).to_have_count(0)
        await page.goto(str(api.client.make_url("/dashboard")))
        await expect(page.locator("[data-unit]")).to_have_count(0)
        await screenshot(page, api, viewport, "5-signed-out")
    finally:
        await context.close()
