"""Done when (issue 10): the same kind of case answered on Telegram, on Zalo and on the web page;
each low rating reaches the unit's head, and the weekly report counts the three responses and
escalations the same way, whichever channel they came from. The real service with Zalo and
Telegram faked over HTTP, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.fakes.zalo_api import Sent
from tests.telegram_support import AUTH, CASE, case_body
from tests.web_support import WebCitizen
from tests.zalo_support import ZaloRig, ZaloRigFactory, make_zalo_rig

__all__ = ["make_zalo_rig"]  # fixtures

HEAD = 901  # the head of HN-LB, on Telegram (telegram_support.UNITS_YAML)
TELEGRAM_CITIZEN = 5558001
ZALO_CITIZEN = "zl-citizen-report"
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}
WEEK = "2026-W48"  # the rig's clock: Monday 23/11/2026, when the surveys are completed
CODES = {
    "telegram": "000.00.12.H26-261122-0101",
    "zalo": "000.00.12.H26-261122-0102",
    "web": "000.00.12.H26-261122-0103",
}
# One low rating each, on a different factor: access, procedure and civil_servant are each
# satisfied in two responses of three (66.7), result and feedback_handling in all (100).
RATINGS = {
    "telegram": ("1", "4", "4", "4", "4"),
    "zalo": ("4", "2", "4", "4", "4"),
    "web": ("4", "4", "2", "4", "4"),
}


def body(channel: str, phone: str, **changes: Any) -> dict[str, Any]:
    citizen = {**CASE["citizen"], "name": f"Công dân {channel}", "phone": phone}
    return case_body(case_code=CODES[channel], citizen=citizen, **changes)


def has_button(prefix: str) -> Any:
    return lambda m: any(label.startswith(prefix) for label, _ in FakeTelegramAPI.buttons(m))


def asks(fragment: str) -> Any:
    return lambda sent: fragment in sent.text


async def press(telegram: FakeTelegramAPI, chat: int, label: str) -> SentCall:
    mark = telegram.mark()
    telegram.press(chat, label)
    return await telegram.wait_for_message(chat, since=mark)


async def link_on_telegram(rig: ZaloRig, telegram: FakeTelegramAPI) -> None:
    view = await rig.get_case(CODES["telegram"])
    token = view["links"]["telegram"].split("start=", 1)[1]
    mark = telegram.mark()
    telegram.push_text(TELEGRAM_CITIZEN, f"/start {token}")
    await telegram.wait_for_message(TELEGRAM_CITIZEN, has_button("Đồng ý"), since=mark)
    await press(telegram, TELEGRAM_CITIZEN, "Đồng ý")


async def test_telegram_zalo_and_the_web_page_count_the_same_in_the_weekly_report(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    rig = await make_zalo_rig(telegram=True, digest_min_responses=1)
    telegram = rig.telegram
    assert telegram is not None
    await rig.post_case(body("telegram", "0912000101"), 201)
    await link_on_telegram(rig, telegram)
    await rig.post_case(body("zalo", "0912000102"), 201)
    await rig.link(ZALO_CITIZEN, CODES["zalo"])
    telegram_mark, zalo_mark = telegram.mark(), rig.zalo.mark()
    await rig.post_case(body("telegram", "0912000101", **RESOLVED), 200)
    await rig.post_case(body("zalo", "0912000102", **RESOLVED), 200)
    await rig.post_case(body("web", "0912000103", **RESOLVED), 201)  # no chat at all
    await rig.sweep()

    # Telegram: buttons.
    await telegram.wait_for_message(TELEGRAM_CITIZEN, has_button("Bắt đầu"), since=telegram_mark)
    await press(telegram, TELEGRAM_CITIZEN, "Bắt đầu")
    for label in (*RATINGS["telegram"], "Không", "Bỏ qua"):
        last = await press(telegram, TELEGRAM_CITIZEN, label)
    assert "người đứng đầu UBND quận Long Biên" in last.text

    # Zalo: typed numbers and words.
    await rig.zalo.wait_for_message(ZALO_CITIZEN, asks("1. Bắt đầu"), since=zalo_mark)
    await rig.say(ZALO_CITIZEN, "1", asks("Câu 1/7"))
    for reply in (*RATINGS["zalo"], "Không"):
        await rig.say(ZALO_CITIZEN, reply)
    thanks: Sent = await rig.say(ZALO_CITIZEN, "Bỏ qua")
    assert "người đứng đầu UBND quận Long Biên" in thanks.text

    # The web page: forms.
    view = await rig.get_case(CODES["web"])
    citizen = WebCitizen(rig.client, view["links"]["web"])
    page = await citizen.press(await citizen.open(), "Đồng ý")
    for label in (*RATINGS["web"], "Không"):
        page = await citizen.press(page, label)
    page = await citizen.press(page, "Gửi", text="")
    assert "người đứng đầu UBND quận Long Biên" in page.text

    # Each complaint reaches the head on Telegram.
    for code in CODES.values():
        card = await telegram.wait_for_message(
            HEAD, lambda m, code=code: code in m.text and has_button("Tiếp nhận")(m)
        )
        assert "UBND quận Long Biên" in card.text
    for code in CODES.values():
        survey = (await rig.get_case(code))["survey"]
        assert survey["status"] == "completed"
    assert [(await rig.get_case(c))["survey"]["channel"] for c in CODES.values()] == [
        "telegram",
        "zalo",
        "web",
    ]

    response = await rig.client.get(f"/api/v1/reports/weekly?week={WEEK}", headers=AUTH)
    assert response.status == 200
    report = await response.json()
    lb = next(u for u in report["units"] if u["unit_code"] == "HN-LB")
    assert lb["responses"] == 3
    assert lb["sipas_index"] == 80.0
    assert lb["factors"] == {
        "access": 66.7,
        "procedure": 66.7,
        "civil_servant": 66.7,
        "result": 100.0,
        "feedback_handling": 100.0,
    }
    assert lb["escalations"]["opened"] == 3 and lb["escalations"]["open_now"] == 3
    assert report["overall"]["responses"] == 3
