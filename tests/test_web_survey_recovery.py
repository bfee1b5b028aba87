"""The closed loop on the web page: a citizen with no chat, whose complaint a head resolved,
reads the head's note on the thanks page and rates the handling there (1-5) with a signed,
single-use form; a low rating reopens the complaint one level up, as in chat. The real
service with the heads on Telegram faked over HTTP, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import select

from storage.models import Escalation, EscalationStatus
from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.telegram_support import CASE, Rig, case_body, make_rig, rig
from tests.web_support import Page, WebCitizen

__all__ = ["make_rig", "rig"]  # fixtures

CITY_HEAD = 900
DISTRICT_HEAD = 901
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}
NOTE = "Đã nhắc nhở cán bộ tiếp nhận và bổ sung bảng hướng dẫn thủ tục."
RATINGS = ["1 - Rất không hài lòng", "2 - Không hài lòng", "3 - Bình thường", "4 - Hài lòng"]


def is_card(message: SentCall) -> bool:
    return [label for label, _ in FakeTelegramAPI.buttons(message)] == ["Tiếp nhận", "Đã xử lý"]


async def the_escalation(rig: Rig) -> Escalation:
    async with rig.services.sessions() as session:
        return (await session.execute(select(Escalation))).scalar_one()


async def complained_and_resolved(rig: Rig) -> tuple[WebCitizen, Page]:
    """A web-only citizen's low rating reaches the district head, who resolves it."""
    await rig.post_case(case_body(**RESOLVED), 201)
    view = await rig.get_case(CASE["case_code"])
    citizen = WebCitizen(rig.client, view["links"]["web"])
    page = await citizen.press(await citizen.open(), "Đồng ý")
    for label in ("1 - Rất không hài lòng", "4", "4", "4", "4", "Không"):
        page = await citizen.press(page, label)
    page = await citizen.press(page, "Gửi", text="")
    assert "Xin cảm ơn" in page.text and not page.has_form
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    await rig.answer(DISTRICT_HEAD, "Đã xử lý")
    await rig.say(DISTRICT_HEAD, NOTE)
    assert (await the_escalation(rig)).status == EscalationStatus.RESOLVED
    page = await citizen.open()
    assert NOTE in page.text
    return citizen, page


async def test_a_web_citizen_rates_the_handling_once_and_a_good_rating_closes_it(
    rig: Rig,
) -> None:
    citizen, page = await complained_and_resolved(rig)
    assert page.has_form and page.labels == [*RATINGS, "5 - Rất hài lòng"]
    assert "đánh giá thế nào về việc giải quyết phản ánh" in page.text
    form = page.form("4 - Hài lòng")
    thanked = await citizen.send(form)
    assert thanked.status == 200 and "Xin cảm ơn Ông/Bà đã cho biết ý kiến" in thanked.text
    assert not thanked.has_form and not thanked.buttons
    escalation = await the_escalation(rig)
    assert escalation.recovery_rating == 4 and escalation.status == EscalationStatus.RESOLVED

    # The same form again, or another rating on it, changes nothing.
    for again in (form, page.form("1 - Rất không hài lòng")):
        refused = await citizen.send(again)
        assert refused.status == 403, refused.text
    escalation = await the_escalation(rig)
    assert escalation.recovery_rating == 4 and escalation.status == EscalationStatus.RESOLVED
    assert rig.api.messages_to(CITY_HEAD) == []
    reopened = await citizen.open()
    assert not reopened.has_form and "Xin cảm ơn Ông/Bà đã cho biết ý kiến" in reopened.text


async def test_a_low_web_rating_reopens_it_one_level_up(rig: Rig) -> None:
    citizen, page = await complained_and_resolved(rig)
    thanked = await citizen.press(page, "2 - Không hài lòng")
    assert "Xin cảm ơn Ông/Bà đã cho biết ý kiến" in thanked.text and not thanked.has_form
    card = await rig.api.wait_for_message(CITY_HEAD, is_card)
    assert "UBND quận Long Biên" in card.text
    escalation = await the_escalation(rig)
    assert escalation.recovery_rating == 2
    assert escalation.status == EscalationStatus.OPEN and escalation.level == 2


async def test_a_forged_or_invalid_rating_changes_nothing(rig: Rig) -> None:
    citizen, page = await complained_and_resolved(rig)
    forged = await citizen.send(page.form("1 - Rất không hài lòng", step="recovery:999"))
    assert forged.status == 403
    tampered = page.form("1 - Rất không hài lòng")
    csrf = tampered["csrf"]
    tampered["csrf"] = csrf[:-1] + ("1" if csrf.endswith("0") else "0")
    assert (await citizen.send(tampered)).status == 403
    invalid = await citizen.send(page.form("1 - Rất không hài lòng", choice="9"))
    assert invalid.status == 400
    escalation = await the_escalation(rig)
    assert escalation.recovery_rating is None and escalation.status == EscalationStatus.RESOLVED
    assert (await citizen.open()).has_form  # still to be answered
