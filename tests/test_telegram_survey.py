"""Citizens on Telegram, end to end: link with consent, the survey after resolution, and the
ways people really answer (back, skip, typing), on both questionnaires and both databases.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from storage.models import OutboxMessage
from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.telegram_support import CASE, Rig, RigFactory, case_body, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

CHAT = 5551001
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}


def buttons(message: SentCall) -> list[str]:
    return [text for text, _ in FakeTelegramAPI.buttons(message)]


async def resolved_and_invited(rig: Rig, chat: int = CHAT) -> SentCall:
    await rig.post_case(case_body(), 201)
    await rig.link(chat)
    mark = rig.api.mark()
    await rig.post_case(case_body(**RESOLVED), 200)
    assert await rig.sweep() == 1
    return await rig.api.wait_for_message(chat, since=mark)


async def test_link_consent_and_full_short_survey(rig: Rig) -> None:
    await rig.post_case(case_body(), 201)
    view = await rig.get_case(CASE["case_code"])
    assert view["links"]["telegram"].startswith("https://t.me/sipas_test_bot?start=")
    token = view["links"]["telegram"].split("start=")[1]
    assert CASE["case_code"] not in token

    mark = rig.api.mark()
    rig.api.push_text(CHAT, f"/start {token}")
    consent = await rig.api.wait_for_message(CHAT, since=mark)
    assert "Nghị định 13/2023" in consent.text and CASE["case_code"] in consent.text
    assert buttons(consent) == ["Đồng ý", "Từ chối"]
    accepted = await rig.answer(CHAT, "Đồng ý")
    assert CASE["case_code"] in accepted.text and not buttons(accepted)

    mark = rig.api.mark()
    await rig.post_case(case_body(**RESOLVED), 200)
    assert (await rig.get_case(CASE["case_code"]))["survey"]["status"] == "scheduled"
    assert await rig.sweep() == 1
    invitation = await rig.api.wait_for_message(CHAT, since=mark)
    assert "23/11/2026" in invitation.text
    assert buttons(invitation) == ["Bắt đầu", "Để sau"]
    assert (await rig.get_case(CASE["case_code"]))["survey"]["status"] == "invited"

    question = await rig.answer(CHAT, "Bắt đầu")
    assert "Câu 1/7" in question.text and "Chứng thực bản sao từ bản chính" in question.text
    assert [b[0] for b in buttons(question)] == ["1", "2", "3", "4", "5"]
    for score in ("5", "4", "2", "1"):
        question = await rig.answer(CHAT, score)
    assert "Câu 5/7" in question.text
    assert "Bỏ qua" in buttons(question)  # feedback handling is optional
    question = await rig.answer(CHAT, "3")
    assert "Câu 6/7" in question.text and buttons(question)[:2] == ["Có", "Không"]
    question = await rig.answer(CHAT, "Không")
    assert "Câu 7/7" in question.text and "Bỏ qua" in buttons(question)
    thanks = await rig.say(CHAT, "Cán bộ hướng dẫn rất tận tình, cảm ơn!")
    assert not buttons(thanks)  # CONTRACT 7.5: nothing left to press

    survey = (await rig.get_case(CASE["case_code"]))["survey"]
    assert survey["status"] == "completed" and survey["channel"] == "telegram"
    assert survey["completed_at"] is not None
    assert survey["answers"] == {
        "access": 5,
        "procedure": 4,
        "civil_servant": 2,
        "result": 1,
        "feedback_handling": 3,
        "informal_payment": "no",
        "comment": "Cán bộ hướng dẫn rất tận tình, cảm ơn!",
    }
    # The pressed question keeps the chosen answer and loses its buttons: an edit, paced
    # through the outbox right behind the replies, so it may come after the last reply.
    await rig.api.wait_until(
        lambda: any(
            (call.text or "").endswith("✔ 5 - Rất hài lòng")
            for call in rig.api.calls("editMessageText", CHAT)
        )
    )


async def test_back_changes_the_previous_answer_and_skip_leaves_it_out(rig: Rig) -> None:
    await resolved_and_invited(rig)
    await rig.answer(CHAT, "Bắt đầu")
    second = await rig.answer(CHAT, "2")
    assert "Câu 2/7" in second.text and "« Quay lại" in buttons(second)
    first_again = await rig.answer(CHAT, "« Quay lại")
    assert "Câu 1/7" in first_again.text and "« Quay lại" not in buttons(first_again)
    await rig.answer(CHAT, "5")
    for score in ("4", "4", "4"):
        await rig.answer(CHAT, score)
    await rig.answer(CHAT, "Bỏ qua")  # feedback handling
    await rig.answer(CHAT, "Không")
    thanks = await rig.answer(CHAT, "Bỏ qua")  # comment
    assert not buttons(thanks)
    answers = (await rig.get_case(CASE["case_code"]))["survey"]["answers"]
    assert answers["access"] == 5
    assert "feedback_handling" not in answers and "comment" not in answers


async def test_typed_answers_are_understood(rig: Rig) -> None:
    await resolved_and_invited(rig)
    question = await rig.say(CHAT, "bat dau")
    assert "Câu 1/7" in question.text
    question = await rig.say(CHAT, "4")
    assert "Câu 2/7" in question.text
    confused = await rig.say(CHAT, "tuyệt vời")
    assert "1. 1 - Rất không hài lòng" in confused.text  # the choices, listed
    for _ in range(4):
        await rig.say(CHAT, "5")
    await rig.say(CHAT, "khong")
    thanks = await rig.say(CHAT, "bỏ qua")
    assert not buttons(thanks)
    answers = (await rig.get_case(CASE["case_code"]))["survey"]["answers"]
    assert answers["access"] == 4 and answers["informal_payment"] == "no"


async def test_the_full_2023_questionnaire(make_rig: RigFactory) -> None:
    rig = await make_rig(questionnaire="sipas-2023")
    await resolved_and_invited(rig)
    question = await rig.answer(CHAT, "Bắt đầu")
    assert "Câu 1/21" in question.text
    for _ in range(19):
        question = await rig.answer(CHAT, "4")
    assert "Câu 20/21" in question.text
    await rig.answer(CHAT, "Có")
    thanks = await rig.say(CHAT, "Bị yêu cầu nộp thêm phí")
    assert not buttons(thanks)
    answers = (await rig.get_case(CASE["case_code"]))["survey"]["answers"]
    assert len(answers) == 21 and answers["informal_payment"] == "yes"


async def test_a_chat_id_from_the_desk_links_directly(rig: Rig) -> None:
    body = case_body(**RESOLVED)
    body["citizen"] = {**CASE["citizen"], "telegram_chat_id": CHAT}
    await rig.post_case(body, 201)
    assert await rig.sweep() == 1
    invitation = await rig.api.wait_for_message(CHAT, count=1)
    assert buttons(invitation) == ["Bắt đầu", "Để sau"]


async def test_linked_citizen_is_recognised_on_a_later_case(rig: Rig) -> None:
    await resolved_and_invited(rig)
    second = case_body(case_code="000.00.12.H26-261122-0002", **RESOLVED)
    await rig.post_case(second, 201)  # same phone: the same person
    mark = rig.api.mark()
    assert await rig.sweep() == 1
    invitation = await rig.api.wait_for_message(CHAT, since=mark)
    assert "000.00.12.H26-261122-0002" in invitation.text


async def test_consent_declined_links_nothing(rig: Rig) -> None:
    await rig.post_case(case_body(**RESOLVED), 201)
    token = (await rig.get_case(CASE["case_code"]))["links"]["telegram"].split("start=")[1]
    rig.api.push_text(CHAT, f"/start {token}")
    await rig.api.wait_for_message(CHAT, count=1)
    declined = await rig.answer(CHAT, "Từ chối")
    assert "không đồng ý" in declined.text
    assert await rig.sweep() == 0
    assert (await rig.get_case(CASE["case_code"]))["survey"]["status"] == "scheduled"


async def test_unknown_used_and_plain_start(rig: Rig) -> None:
    unknown = await rig.say(CHAT, "/start not-a-real-token")
    assert "không tìm thấy" in unknown.text
    plain = await rig.say(CHAT, "/start")
    assert "quét mã QR" in plain.text
    await rig.post_case(case_body(), 201)
    await rig.link(CHAT)
    token = (await rig.get_case(CASE["case_code"]))["links"]["telegram"].split("start=")[1]
    used = await rig.say(CHAT + 1, f"/start {token}")
    assert "đã được dùng" in used.text


async def test_expired_link_token(rig: Rig) -> None:
    await rig.post_case(case_body(), 201)
    token = (await rig.get_case(CASE["case_code"]))["links"]["telegram"].split("start=")[1]
    rig.clock.advance(timedelta(days=91))
    expired = await rig.say(CHAT, f"/start {token}")
    assert "hết hạn" in expired.text


async def test_replayed_resolution_invites_once(rig: Rig) -> None:
    await resolved_and_invited(rig)
    await rig.post_case(case_body(**RESOLVED), 200)
    assert await rig.sweep() == 0
    async with rig.services.sessions() as session:
        invitations = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.dedupe_key.like("invite:%"))
        )
    assert invitations == 1


async def test_language_switch_to_english(rig: Rig) -> None:
    await rig.post_case(case_body(), 201)
    await rig.link(CHAT)
    prompt = await rig.say(CHAT, "/lang")
    assert buttons(prompt) == ["Tiếng Việt", "English"]
    switched = await rig.answer(CHAT, "English")
    assert "English" in switched.text
    await rig.post_case(case_body(**RESOLVED), 200)
    mark = rig.api.mark()
    await rig.sweep()
    invitation = await rig.api.wait_for_message(CHAT, since=mark)
    assert buttons(invitation) == ["Start", "Later"]
    question = await rig.answer(CHAT, "Start")
    assert "Question 1/7" in question.text or "1/7" in question.text
    help_text = await rig.say(CHAT, "/help")
    assert "/delete" in help_text.text


async def test_commands_are_registered_in_both_languages(rig: Rig) -> None:
    for language in ("vi", "en", ""):
        names = [c["command"] for c in rig.api.my_commands[language]]
        assert names == ["start", "help", "lang", "stop", "delete", "dashboard"]
    assert rig.api.my_commands["vi"][4]["description"].startswith("Xóa")
    assert rig.api.my_commands["en"][4]["description"].startswith("Erase")
    assert rig.api.my_commands["vi"][5]["description"].startswith("Trang tổng hợp")
    assert rig.api.my_commands["en"][5]["description"].startswith("Officials' dashboard")


async def test_a_restart_mid_survey_loses_nothing(rig: Rig) -> None:
    await resolved_and_invited(rig)
    await rig.answer(CHAT, "Bắt đầu")
    await rig.answer(CHAT, "5")
    await rig.restart()
    # The citizen goes on where they were; the new process knows from the database.
    question = await rig.answer(CHAT, "4")
    assert "Câu 3/7" in question.text
    for label in ("3", "3", "3", "Không"):
        await rig.answer(CHAT, label)
    thanks = await rig.answer(CHAT, "Bỏ qua")
    assert not buttons(thanks)
    answers = (await rig.get_case(CASE["case_code"]))["survey"]["answers"]
    assert answers["access"] == 5 and answers["procedure"] == 4
    # Nothing was sent twice: one invitation, seven questions, one thanks, plus the linking.
    texts = [m.text for m in rig.api.messages_to(CHAT)]
    assert len([t for t in texts if "Câu 1/7" in t]) == 1
    assert len(texts) == len(set(texts))
