"""One survey per case, whichever way the citizen answers: a survey answered on Telegram shows
the thanks on the web page, one begun in chat continues on the web (and the chat's old
buttons then change nothing), and /stop and /delete in chat are respected by the page. The
real service with Telegram faked over HTTP, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from tests.fakes.telegram_api import SentCall
from tests.telegram_support import CASE, Rig, case_body, make_rig, rig
from tests.web_support import WebCitizen

__all__ = ["make_rig", "rig"]  # fixtures

CHAT = 5551001
HEAD_CHAT = 901
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}


async def linked_and_invited(rig: Rig) -> WebCitizen:
    await rig.post_case(case_body(), 201)
    await rig.link(CHAT)
    mark = rig.api.mark()
    await rig.post_case(case_body(**RESOLVED), 200)
    assert await rig.sweep() == 1
    await rig.api.wait_for_message(CHAT, since=mark)  # the invitation
    view = await rig.get_case(CASE["case_code"])
    return WebCitizen(rig.client, view["links"]["web"])


async def test_a_survey_answered_in_chat_shows_the_thanks_on_the_web(rig: Rig) -> None:
    citizen = await linked_and_invited(rig)
    consent = await citizen.open()  # still open: the web could take it
    assert consent.labels == ["Đồng ý", "Từ chối"]
    await rig.answer(CHAT, "Bắt đầu")
    for label in ("5", "5", "5", "5", "5", "Không"):
        await rig.answer(CHAT, label)
    await rig.answer(CHAT, "Bỏ qua")
    assert (await rig.get_case(CASE["case_code"]))["survey"]["status"] == "completed"

    page = await citizen.open()
    assert page.status == 200 and "Xin cảm ơn" in page.text
    assert not page.has_form and not page.buttons
    refused = await citizen.send(consent.form("Đồng ý"))
    assert refused.status == 403 and "đã trả lời khảo sát cho hồ sơ này rồi" in refused.text
    survey = (await rig.get_case(CASE["case_code"]))["survey"]
    assert survey["channel"] == "telegram" and survey["answers"]["access"] == 5


async def test_a_survey_begun_in_chat_continues_on_the_web(rig: Rig) -> None:
    citizen = await linked_and_invited(rig)
    await rig.answer(CHAT, "Bắt đầu")
    await rig.answer(CHAT, "4")
    await rig.answer(CHAT, "4")  # two answers in chat; the third question is open there

    consent = await citizen.open()
    page = await citizen.press(consent, "Đồng ý")
    assert "Câu 3/7" in page.text

    # The chat's open question now belongs to the web page: pressing it changes nothing.
    def toast(call: SentCall) -> bool:
        return bool(call.params.get("text"))

    toasts = len([c for c in rig.api.calls("answerCallbackQuery") if toast(c)])
    rig.api.press(CHAT, "5")
    refusal = await rig.api.wait_for_call("answerCallbackQuery", predicate=toast, count=toasts + 1)
    assert "không thuộc" in refusal.params["text"]
    assert "civil_servant" not in (await rig.get_case(CASE["case_code"]))["survey"]["answers"]

    mark = rig.api.mark()
    for label in ("2", "4", "4", "Có"):
        page = await citizen.press(page, label)
    thanks = await citizen.press(page, "Bỏ qua")
    assert "Xin cảm ơn" in thanks.text and not thanks.has_form
    # The citizen has a chat, so they will hear back there.
    assert "Chúng tôi sẽ báo lại cho Ông/Bà" in thanks.text

    survey = (await rig.get_case(CASE["case_code"]))["survey"]
    assert survey["status"] == "completed" and survey["channel"] == "web"
    assert survey["answers"] == {
        "access": 4,
        "procedure": 4,
        "civil_servant": 2,
        "result": 4,
        "feedback_handling": 4,
        "informal_payment": "yes",
    }
    # An informal payment and a low rating: both reach the head on Telegram.
    first = await rig.api.wait_for_message(HEAD_CHAT, since=mark)
    second = await rig.api.wait_for_message(
        HEAD_CHAT, lambda m: m.message_id != first.message_id, since=mark
    )
    assert all(CASE["case_code"] in card.text for card in (first, second))
    reasons = {e["reason"] for e in (await rig.get_case(CASE["case_code"]))["escalations"]}
    assert reasons == {"informal_payment", "low_rating"}


async def test_stop_and_delete_in_chat_are_respected_by_the_page(rig: Rig) -> None:
    citizen = await linked_and_invited(rig)
    await rig.say(CHAT, "/stop")
    page = await citizen.open()
    assert page.status == 200 and "không nhận khảo sát" in page.text and not page.has_form

    await rig.say(CHAT, "/start")  # surveys again from now on; this one stays closed
    await rig.say(CHAT, "/delete")
    await rig.answer(CHAT, "Có")
    page = await citizen.open()
    assert "không nhận khảo sát" in page.text and not page.has_form
