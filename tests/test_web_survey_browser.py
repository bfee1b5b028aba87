"""The web survey page in a real headless Chromium (Playwright, Debian's /usr/bin/chromium) on
a phone's viewport (390×844), with JavaScript off, against the real service: the aiohttp
server on a local port, the outbox dispatcher, and Telegram faked over HTTP for the unit head:
a whole survey, the pages with nothing to answer, and forged and replayed forms refused. On
SQLite and PostgreSQL. Screenshots are kept as test artefacts (SIPAS_TEST_ARTIFACTS, by
default tests/artifacts/, which git ignores).

Outside CI the tests skip, saying why, when no Chromium is found; under CI=true they fail.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from tests.telegram_support import CASE, Rig, case_body, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

from tests.browser_support import (  # noqa: I001 - first: skips without Playwright
    ACTION_TIMEOUT_MS,
    ARTIFACTS,
    artifacts_folder,  # noqa: F401 - fixture
    browser_fixture,  # noqa: F401 - fixture
)
from playwright.async_api import Browser, Locator, Page, expect


PHONE = {"width": 390, "height": 844}
MIN_TAP = 44  # px: the smallest comfortable tap target (WCAG 2.5.5, Apple HIG)
HEAD_CHAT = 901  # the head of HN-LB in telegram_support.UNITS_YAML
CITY_HEAD = 900  # the head of HN, above it
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}


@pytest.fixture
async def phone(browser: Browser) -> AsyncIterator[Page]:
    """A phone-sized page with JavaScript off: the survey must not need it."""
    context = await browser.new_context(
        viewport=PHONE,
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
        java_script_enabled=False,
        locale="vi-VN",
    )
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def screenshot(page: Page, rig: Rig, name: str) -> None:
    backend = rig.services.engine.dialect.name
    await page.screenshot(path=ARTIFACTS / f"web-survey-{backend}-{name}.png", full_page=True)


async def web_url(rig: Rig) -> str:
    view = await rig.get_case(CASE["case_code"])
    path = "/s/" + view["links"]["web"].rsplit("/s/", 1)[1]
    return str(rig.client.make_url(path))


def button(page: Page, label: str) -> Locator:
    return page.get_by_role("button", name=label, exact=True)


async def press(page: Page, label: str) -> None:
    await button(page, label).click()


async def assert_fits_a_phone(page: Page) -> None:
    """Every button is a large tap target inside the screen's width (no sideways scrolling)."""
    buttons = page.get_by_role("button")
    count = await buttons.count()
    assert count > 0
    for index in range(count):
        box = await buttons.nth(index).bounding_box()
        assert box is not None
        assert box["height"] >= MIN_TAP, (index, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (index, box)


async def on_question(page: Page, number: int) -> None:
    await expect(page.get_by_text(f"Câu {number}/7", exact=True)).to_be_visible()


async def test_a_citizen_answers_the_whole_survey_on_a_phone(rig: Rig, phone: Page) -> None:
    await rig.post_case(case_body(), 201)
    await rig.post_case(case_body(**RESOLVED), 200)
    url = await web_url(rig)

    response = await phone.goto(url)
    assert response is not None and response.status == 200
    assert await phone.locator("html").get_attribute("lang") == "vi"
    await expect(phone.get_by_text("Nghị định 13/2023/NĐ-CP", exact=False)).to_be_visible()
    await expect(phone.get_by_text("Chứng thực bản sao từ bản chính", exact=True)).to_be_visible()
    await expect(phone.get_by_text("23/11/2026", exact=True)).to_be_visible()
    await assert_fits_a_phone(phone)
    await screenshot(phone, rig, "1-consent")

    # The language can be switched without JavaScript, and back.
    await phone.get_by_role("link", name="English").click()
    await expect(button(phone, "Agree")).to_be_visible()
    assert await phone.locator("html").get_attribute("lang") == "en"
    await phone.get_by_role("link", name="Tiếng Việt").click()
    await press(phone, "Đồng ý")

    await on_question(phone, 1)
    labels = await phone.get_by_role("button").all_inner_texts()
    assert labels == [
        "1 - Rất không hài lòng",
        "2 - Không hài lòng",
        "3 - Bình thường",
        "4 - Hài lòng",
        "5 - Rất hài lòng",
    ]
    await assert_fits_a_phone(phone)
    await screenshot(phone, rig, "2-question")
    await press(phone, "3 - Bình thường")
    await on_question(phone, 2)
    await press(phone, "« Quay lại")  # back: the first answer can be changed
    await on_question(phone, 1)
    await press(phone, "1 - Rất không hài lòng")
    for label in ("4 - Hài lòng", "4 - Hài lòng", "5 - Rất hài lòng"):
        await press(phone, label)
    await on_question(phone, 5)
    await press(phone, "Bỏ qua")  # feedback handling is optional
    await on_question(phone, 6)
    await press(phone, "Không")
    await on_question(phone, 7)
    comment = "Phải đi lại ba lần mới nộp được hồ sơ; cán bộ không hướng dẫn rõ."
    await phone.get_by_role("textbox", name=re.compile("góp ý")).fill(comment)
    await assert_fits_a_phone(phone)
    await screenshot(phone, rig, "3-comment")
    mark = rig.api.mark()
    await press(phone, "Gửi")

    await expect(
        phone.get_by_text(re.compile("Xin cảm ơn Ông/Bà đã dành thời gian"))
    ).to_be_visible()
    await expect(
        phone.get_by_text(re.compile("người đứng đầu UBND quận Long Biên"))
    ).to_be_visible()
    assert await phone.locator("form").count() == 0
    await screenshot(phone, rig, "4-thanks")

    # The low rating reached the head of the unit on Telegram, with the comment.
    card = await rig.api.wait_for_message(HEAD_CHAT, since=mark)
    assert CASE["case_code"] in card.text and comment in card.text
    assert [text for text, _ in rig.api.buttons(card)] == ["Tiếp nhận", "Đã xử lý"]
    survey = (await rig.get_case(CASE["case_code"]))["survey"]
    assert survey["status"] == "completed" and survey["channel"] == "web"
    assert survey["answers"] == {
        "access": 1,
        "procedure": 4,
        "civil_servant": 4,
        "result": 5,
        "informal_payment": "no",
        "comment": comment,
    }

    # The head acknowledges and handles it on Telegram; the citizen, who has no chat, reads
    # what was done on the page and rates the handling there, once.
    await rig.answer(HEAD_CHAT, "Tiếp nhận")
    await rig.answer(HEAD_CHAT, "Đã xử lý")
    note = "Đã nhắc nhở cán bộ tiếp nhận và bổ sung bảng hướng dẫn thủ tục."
    await rig.say(HEAD_CHAT, note)
    await phone.goto(url)
    await expect(phone.get_by_text(re.compile("Xin cảm ơn"))).to_be_visible()
    await expect(phone.get_by_text(re.compile("bổ sung bảng hướng dẫn thủ tục"))).to_be_visible()
    assert await phone.locator("form").count() == 1
    assert len(await phone.get_by_role("button").all_inner_texts()) == 5
    await assert_fits_a_phone(phone)
    await screenshot(phone, rig, "5-outcome")
    mark = rig.api.mark()
    await press(phone, "2 - Không hài lòng")
    await expect(phone.get_by_text(re.compile("đã cho biết ý kiến"))).to_be_visible()
    assert await phone.locator("form").count() == 0
    await phone.goto(url)
    await expect(phone.get_by_text(re.compile("đã cho biết ý kiến"))).to_be_visible()
    assert await phone.locator("form").count() == 0
    await screenshot(phone, rig, "6-recovery")
    # The low rating reopened it one level up: the city's head has it now.
    card = await rig.api.wait_for_message(CITY_HEAD, since=mark)
    assert CASE["case_code"] in card.text


async def test_before_resolution_and_after_a_decline_the_page_says_so(
    rig: Rig, phone: Page
) -> None:
    await rig.post_case(case_body(), 201)
    url = await web_url(rig)
    await phone.goto(url)
    await expect(phone.get_by_text(re.compile("chưa được giải quyết xong"))).to_be_visible()
    assert await phone.locator("form").count() == 0

    await rig.post_case(case_body(**RESOLVED), 200)
    await phone.goto(url + "?lang=en")
    await press(phone, "Decline")
    await expect(phone.get_by_text(re.compile("We keep nothing"))).to_be_visible()
    await screenshot(phone, rig, "declined")
    assert (await rig.get_case(CASE["case_code"]))["survey"]["status"] == "scheduled"


async def test_forged_and_replayed_forms_change_nothing_in_the_browser(
    rig: Rig, phone: Page
) -> None:
    await rig.post_case(case_body(), 201)
    await rig.post_case(case_body(**RESOLVED), 200)
    url = await web_url(rig)
    await phone.goto(url)
    await press(phone, "Đồng ý")
    await on_question(phone, 1)
    # The first question's page as it was, its form pointing at the page (for the replay).
    first = (await phone.content()).replace('action="', f'action="{url.rsplit("/", 1)[0]}/', 1)
    await press(phone, "4 - Hài lòng")
    await on_question(phone, 2)

    # Another site's page posting to the survey, with a token it made up.
    await phone.set_content(
        f'<form method="post" action="{url}"><input type="hidden" name="step" value="1">'
        '<input type="hidden" name="csrf" value="made.up"><button name="choice" value="1">'
        "Gửi</button></form>"
    )
    await press(phone, "Gửi")
    await expect(
        phone.get_by_text(re.compile("không phải do trang lấy ý kiến cấp"))
    ).to_be_visible()
    await screenshot(phone, rig, "refused-forged")

    # The first question's form sent again.
    await phone.set_content(first)
    await press(phone, "1 - Rất không hài lòng")
    await expect(phone.get_by_text(re.compile("Câu hỏi này không còn mở"))).to_be_visible()
    await phone.get_by_role("link", name="Về trang lấy ý kiến").click()
    await on_question(phone, 2)

    answers = (await rig.get_case(CASE["case_code"]))["survey"]["answers"]
    assert answers == {"access": 4}
