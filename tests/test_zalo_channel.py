"""The Zalo channel end to end: a fake Zalo Bot API over HTTP, the real channel, outbox and API.

Zalo has no buttons: every prompt is answered by typing its number or its words, and anything
else gets a hint and the question again (docs/contract.md section 7). On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.cli.heads import heads_invite
from bot.config import SettingsError
from bot.jobs.digests import send_due_digests
from handlers.clock import FakeClock
from storage.models import CitizenContact, Escalation
from storage.repositories.escalations import heads_by_address
from tests.digest_support import TREE_YAML, add_response, load_tree
from tests.fakes.zalo_api import Sent
from tests.telegram_support import CASE, case_body
from tests.zalo_support import ZaloRig, ZaloRigFactory, make_zalo_rig, zalo_rig

__all__ = ["make_zalo_rig", "zalo_rig"]  # fixtures

CITIZEN = "zl-citizen-1"
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}
MID_W47 = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)
MONDAY_0731 = datetime(2026, 11, 23, 0, 31, tzinfo=UTC)  # 07:31 in Hà Nội, week 48


def asks(fragment: str) -> Any:
    return lambda sent: fragment in sent.text


async def resolved_and_invited(rig: ZaloRig) -> Sent:
    await rig.post_case(case_body(), 201)
    await rig.link(CITIZEN)
    mark = rig.zalo.mark()
    await rig.post_case(case_body(**RESOLVED), 200)
    await rig.sweep()
    return await rig.zalo.wait_for_message(CITIZEN, asks("1. Bắt đầu"), since=mark)


async def answers(rig: ZaloRig) -> dict[str, Any]:
    survey: dict[str, Any] = (await rig.get_case())["survey"]
    return survey


async def test_the_survey_answered_by_numbers(zalo_rig: ZaloRig) -> None:
    rig = zalo_rig
    invitation = await resolved_and_invited(rig)
    view = await rig.get_case()
    assert view["links"]["zalo"].startswith("https://zalo.me/2718281828?start=")
    assert "2. Để sau" in invitation.text
    question = await rig.say(CITIZEN, "1", asks("Câu 1/7"))
    assert "1. 1 - Rất không hài lòng" in question.text and "5. 5 - Rất hài lòng" in question.text
    assert "Bỏ qua" not in question.text  # the first question is required
    for score in ("5", "4", "2", "1"):
        question = await rig.say(CITIZEN, score)
    assert "Câu 5/7" in question.text
    assert "6. Bỏ qua" in question.text and "7. « Quay lại" in question.text
    question = await rig.say(CITIZEN, "6")  # "6. Bỏ qua", answered by its number
    assert "Câu 6/7" in question.text and "1. Có" in question.text and "2. Không" in question.text
    question = await rig.say(CITIZEN, "2")
    assert "Câu 7/7" in question.text
    thanks = await rig.say(CITIZEN, "Cán bộ hướng dẫn rất tận tình")
    assert "Xin cảm ơn" in thanks.text and "\n1. " not in thanks.text  # nothing left to choose
    after = await rig.say(CITIZEN, "6")  # the survey is over: no question is open any more
    assert "Hiện chưa có câu hỏi" in after.text
    survey = await answers(rig)
    assert survey["status"] == "completed" and survey["channel"] == "zalo"
    assert survey["answers"] == {
        "access": 5,
        "procedure": 4,
        "civil_servant": 2,
        "result": 1,
        "informal_payment": "no",
        "comment": "Cán bộ hướng dẫn rất tận tình",
    }


async def test_the_survey_answered_by_words_with_single_updates(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    rig = await make_zalo_rig(updates_as="single")
    await rig.post_case(case_body(), 201)
    # The token pasted as a plain message links like /start TOKEN.
    consent = await rig.say(CITIZEN, await rig.token())
    assert "1. Đồng ý" in consent.text and "2. Từ chối" in consent.text
    await rig.say(CITIZEN, "đồng ý")
    mark = rig.zalo.mark()
    await rig.post_case(case_body(**RESOLVED), 200)
    await rig.sweep()
    await rig.zalo.wait_for_message(CITIZEN, asks("Bắt đầu"), since=mark)
    question = await rig.say(CITIZEN, "bat dau", asks("Câu 1/7"))
    hint = await rig.say(CITIZEN, "tuyệt vời")  # no choice: a hint and the choices again
    assert "chưa hiểu" in hint.text and "5. 5 - Rất hài lòng" in hint.text
    for reply in ("5 - Rất hài lòng", "4", "4", "4"):
        question = await rig.say(CITIZEN, reply)
    assert "Câu 5/7" in question.text
    question = await rig.say(CITIZEN, "bỏ qua")
    assert "Câu 6/7" in question.text
    question = await rig.say(CITIZEN, "Có")
    assert "Câu 7/7" in question.text
    thanks = await rig.say(CITIZEN, "Bỏ qua")
    assert "Xin cảm ơn" in thanks.text
    survey = await answers(rig)
    assert survey["status"] == "completed"
    assert survey["answers"]["access"] == 5 and survey["answers"]["informal_payment"] == "yes"
    assert "comment" not in survey["answers"] and "feedback_handling" not in survey["answers"]


async def test_a_picture_gets_please_type_and_the_question_stays_open(zalo_rig: ZaloRig) -> None:
    rig = zalo_rig
    await resolved_and_invited(rig)
    await rig.say(CITIZEN, "1", asks("Câu 1/7"))
    mark = rig.zalo.mark()
    rig.zalo.push_event(CITIZEN, "message.image.received")
    please = await rig.zalo.wait_for_message(CITIZEN, since=mark)
    assert "gõ câu trả lời" in please.text
    question = await rig.say(CITIZEN, "3")
    assert "Câu 2/7" in question.text


async def test_language_and_delete_by_typing(zalo_rig: ZaloRig) -> None:
    rig = zalo_rig
    await rig.post_case(case_body(), 201)
    await rig.link(CITIZEN)
    prompt = await rig.say(CITIZEN, "/lang")
    assert "1. Tiếng Việt" in prompt.text and "2. English" in prompt.text
    done = await rig.say(CITIZEN, "2")
    assert "English" in done.text or "language" in done.text.lower()
    confirm = await rig.say(CITIZEN, "/delete")
    assert "1. Yes" in confirm.text and "2. No" in confirm.text
    kept = await rig.say(CITIZEN, "no")
    assert "\n1. " not in kept.text
    await rig.say(CITIZEN, "/delete")
    await rig.say(CITIZEN, "1")
    async with rig.services.sessions() as session:
        assert (await session.execute(select(CitizenContact))).scalars().all() == []


async def test_a_word_that_is_no_choice_gets_a_hint_and_the_question_again(
    zalo_rig: ZaloRig,
) -> None:
    rig = zalo_rig
    await rig.post_case(case_body(), 201)
    await rig.say(CITIZEN, f"/start {await rig.token()}")
    mark = rig.zalo.mark()
    rig.zalo.push_text(CITIZEN, "có lẽ")
    hint = await rig.zalo.wait_for_message(CITIZEN, since=mark)
    assert "gõ số hoặc chữ" in hint.text
    again = await rig.zalo.wait_for_message(CITIZEN, asks("1. Đồng ý"), since=hint.seq)
    assert CASE["case_code"] in again.text
    accepted = await rig.say(CITIZEN, "1")
    assert CASE["case_code"] in accepted.text


async def test_a_redelivered_message_counts_once(zalo_rig: ZaloRig) -> None:
    rig = zalo_rig
    await resolved_and_invited(rig)
    await rig.say(CITIZEN, "1", asks("Câu 1/7"))
    mark = rig.zalo.mark()
    rig.zalo.push_text(CITIZEN, "5", message_id="dup-1")
    rig.zalo.push_text(CITIZEN, "5", message_id="dup-1")  # the same message again
    rig.zalo.push_text(CITIZEN, "4", message_id="next-1")
    third = await rig.zalo.wait_for_message(CITIZEN, asks("Câu 3/7"), since=mark)
    # Had the copy counted, "5" would have answered question 2 and "4" question 3.
    assert len(rig.zalo.messages_to(CITIZEN, mark)) == 2
    survey = await answers(rig)
    assert survey["answers"] == {"access": 5, "procedure": 4}
    assert third.text.startswith("Hồ sơ")


async def test_webhook_checks_the_secret_and_takes_wrapped_and_bare_updates(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    secret = "s3cret-webhook-token"
    rig = await make_zalo_rig(
        zalo_mode="webhook", zalo_webhook_secret=secret, public_url="https://sipas.example.vn"
    )
    assert rig.zalo.webhook == {
        "url": "https://sipas.example.vn/zalo/webhook",
        "secret_token": secret,
    }
    update = rig.zalo.make_update(CITIZEN, "/help")
    for headers in ({}, {"X-Bot-Api-Secret-Token": "wrong-secret"}):
        refused = await rig.client.post("/zalo/webhook", json=update, headers=headers)
        assert refused.status == 403
    assert rig.zalo.messages_to(CITIZEN) == []
    good = {"X-Bot-Api-Secret-Token": secret}
    mark = rig.zalo.mark()
    answer = await rig.client.post(
        "/zalo/webhook", json={"ok": True, "result": update}, headers=good
    )
    assert answer.status == 200
    await rig.zalo.wait_for_message(CITIZEN, since=mark)
    again = await rig.client.post("/zalo/webhook", json=update, headers=good)  # redelivered
    assert again.status == 200
    mark = rig.zalo.mark()
    bare = rig.zalo.make_update(CITIZEN, "/help")
    assert (await rig.client.post("/zalo/webhook", json=bare, headers=good)).status == 200
    await rig.zalo.wait_for_message(CITIZEN, since=mark)
    assert len(rig.zalo.messages_to(CITIZEN)) == 2  # the redelivery answered nothing
    broken = await rig.client.post("/zalo/webhook", data=b"{not json", headers=good)
    assert broken.status == 400


async def test_rate_limits_and_outages_are_retried(zalo_rig: ZaloRig) -> None:
    rig = zalo_rig
    clock = rig.services.clock
    assert isinstance(clock, FakeClock)
    rig.zalo.fail_next("sendMessage", 429, "Too Many Requests", retry_after=1)
    rig.zalo.fail_next("sendMessage", 502, "Bad Gateway")
    mark = rig.zalo.mark()
    rig.zalo.push_text(CITIZEN, "/help")
    for tries in (1, 2):
        await rig.zalo.wait_until(lambda n=tries: rig.zalo.methods().count("sendMessage") >= n)
        clock.advance(timedelta(minutes=15))  # past any backoff the dispatcher chose
        rig.services.wake_dispatcher()
    help_text = await rig.zalo.wait_for_message(CITIZEN, since=mark)
    assert "/start" in help_text.text
    assert rig.zalo.methods().count("sendMessage") == 3


async def test_a_user_who_blocked_the_bot_is_unreachable(zalo_rig: ZaloRig) -> None:
    rig = zalo_rig
    await rig.post_case(case_body(), 201)
    await rig.link(CITIZEN)
    rig.zalo.fail_next("sendMessage", 403, "User has blocked the bot")
    await rig.post_case(case_body(**RESOLVED), 200)
    await rig.sweep()
    await rig.zalo.wait_until(lambda: rig.zalo.methods().count("sendMessage") >= 3)

    async def contact_status() -> str:
        async with rig.services.sessions() as session:
            contact = (await session.execute(select(CitizenContact))).scalar_one()
            return contact.status

    # The dispatcher settles the failed send in its own short transaction: poll until then.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if await contact_status() != "active":
            break
        await asyncio.sleep(0.05)
    assert await contact_status() == "unreachable"


async def test_a_zalo_citizen_and_a_telegram_head_in_one_flow(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    rig = await make_zalo_rig(telegram=True)
    telegram = rig.telegram
    assert telegram is not None
    head = 901
    await resolved_and_invited(rig)
    await rig.say(CITIZEN, "1", asks("Câu 1/7"))
    for reply in ("2", "4", "4", "4", "4", "2"):
        await rig.say(CITIZEN, reply)
    thanks = await rig.say(CITIZEN, "Chờ quá lâu")
    assert "người đứng đầu UBND quận Long Biên" in thanks.text
    card = await telegram.wait_for_message(
        head, lambda m: "Tiếp nhận" in [label for label, _ in telegram.buttons(m)]
    )
    assert CASE["case_code"] in card.text
    mark = telegram.mark()
    telegram.press(head, "Tiếp nhận")
    await telegram.wait_for_message(head, since=mark)
    mark = telegram.mark()
    telegram.press(head, "Đã xử lý")
    await telegram.wait_for_message(head, since=mark)
    zalo_mark = rig.zalo.mark()
    telegram.push_text(head, "Đã bổ sung biển chỉ dẫn")
    outcome = await rig.zalo.wait_for_message(CITIZEN, asks("biển chỉ dẫn"), since=zalo_mark)
    question = await rig.zalo.wait_for_message(CITIZEN, asks("5. 5 - "), since=zalo_mark)
    assert outcome.seq <= question.seq
    await rig.say(CITIZEN, "4")
    async with rig.services.sessions() as session:
        escalation = (await session.execute(select(Escalation))).scalar_one()
    assert escalation.recovery_rating == 4 and escalation.status == "resolved"


async def test_a_head_on_zalo_acknowledges_and_resolves_by_typing(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    from tests.zalo_support import UNITS_WITH_ZALO_HEAD

    rig = await make_zalo_rig(units=UNITS_WITH_ZALO_HEAD)
    head = "zl-head-901"
    await resolved_and_invited(rig)
    await rig.say(CITIZEN, "bắt đầu", asks("Câu 1/7"))
    for reply in ("1", "4", "4", "4", "4", "không"):
        await rig.say(CITIZEN, reply)
    mark = rig.zalo.mark()
    rig.zalo.push_text(CITIZEN, "bỏ qua")
    card = await rig.zalo.wait_for_message(head, asks("1. Tiếp nhận"), since=mark)
    assert CASE["case_code"] in card.text and "2. Đã xử lý" in card.text
    acked = await rig.say(head, "1")
    assert CASE["case_code"] in acked.text and "1. Đã xử lý" in acked.text
    prompt = await rig.say(head, "đã xử lý")
    assert "\n1. " not in prompt.text
    mark = rig.zalo.mark()
    await rig.say(head, "Đã nhắc nhở bộ phận một cửa")
    question = await rig.zalo.wait_for_message(CITIZEN, asks("5. 5 - "), since=mark)
    assert "1. 1 - " in question.text
    thanks = await rig.say(CITIZEN, "5")
    assert "\n1. " not in thanks.text
    async with rig.services.sessions() as session:
        escalation = (await session.execute(select(Escalation))).scalar_one()
    assert escalation.recovery_rating == 5
    assert escalation.resolution_note == "Đã nhắc nhở bộ phận một cửa"


async def test_a_recipient_on_zalo_gets_the_digest_with_chart_and_workbook_links(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    rig = await make_zalo_rig(telegram=True)
    clock = rig.services.clock
    assert isinstance(clock, FakeClock)
    async with rig.services.sessions.begin() as session:
        await load_tree(session, TREE_YAML)
        for _ in range(6):
            await add_response(session, "HN-LB", MID_W47, (5, 4, 4, 2, 5), officer_code="CB-9")
    clock.set(MONDAY_0731)
    outcome = await send_due_digests(rig.services)
    assert "recipient:2" in outcome.queued and outcome.unreachable == []  # z951 is on Zalo
    rig.services.wake_dispatcher()
    recipient = "z951"
    workbook = await rig.zalo.wait_for_message(recipient, asks(".xlsx"), within=20)
    sent = rig.zalo.messages_to(recipient)
    assert "SIPAS tuần 2026-W47" in sent[0].text
    [photo] = [m for m in sent if m.method == "sendPhoto"]
    public = rig.services.settings.public_url
    assert photo.photo is not None and photo.photo.startswith(public + "/files/")
    chart = await rig.client.get(photo.photo.removeprefix(public))
    assert chart.status == 200 and chart.content_type == "image/png"
    assert (await chart.read()).startswith(b"\x89PNG")
    link = next(word for word in workbook.text.split() if word.startswith(public + "/files/"))
    download = await rig.client.get(link.removeprefix(public))
    assert download.status == 200 and "attachment" in download.headers["Content-Disposition"]
    assert (await download.read()).startswith(b"PK")  # an .xlsx is a zip
    clock.advance(timedelta(days=15))
    expired = await rig.client.get(link.removeprefix(public))
    assert expired.status == 404


async def test_a_citizen_is_invited_on_the_channel_linked_last(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    rig = await make_zalo_rig(telegram=True)
    telegram = rig.telegram
    assert telegram is not None
    clock = rig.services.clock
    assert isinstance(clock, FakeClock)
    chat = 5557001
    first, second = case_body(), case_body(case_code="000.00.12.H26-261122-0002")
    await rig.post_case(first, 201)
    await rig.post_case(second, 201)  # the same citizen (same phone)
    token = (await rig.get_case())["links"]["telegram"].split("start=", 1)[1]
    mark = telegram.mark()
    telegram.push_text(chat, f"/start {token}")
    await telegram.wait_for_message(chat, lambda m: bool(telegram.buttons(m)), since=mark)
    mark = telegram.mark()
    telegram.press(chat, "Đồng ý")
    await telegram.wait_for_message(chat, since=mark)
    clock.advance(timedelta(minutes=5))
    await rig.link(CITIZEN, second["case_code"])  # later, on Zalo
    mark = rig.zalo.mark()
    await rig.post_case({**first, **RESOLVED}, 200)
    await rig.sweep()
    invitation = await rig.zalo.wait_for_message(CITIZEN, asks("1. Bắt đầu"), since=mark)
    assert first["case_code"] in invitation.text
    assert (await rig.get_case())["survey"]["channel"] == "zalo"


async def test_a_head_links_on_zalo_by_sending_the_invite_token(zalo_rig: ZaloRig) -> None:
    rig = zalo_rig
    link = await heads_invite(rig.services, "HN-LB")
    assert link.startswith("https://zalo.me/2718281828?start=")
    welcome = await rig.say("zl-new-head", link.split("start=", 1)[1])
    assert "UBND quận Long Biên" in welcome.text
    async with rig.services.sessions() as session:
        heads = await heads_by_address(session, "zalo", "zl-new-head")
    assert [head.unit_id for head in heads] != []
    assert heads[0].telegram_chat_id == "901"  # the Telegram address from the units file stays


async def test_an_expired_survey_leaves_no_question_to_answer(zalo_rig: ZaloRig) -> None:
    rig = zalo_rig
    clock = rig.services.clock
    assert isinstance(clock, FakeClock)
    await resolved_and_invited(rig)
    await rig.say(CITIZEN, "1", asks("Câu 1/7"))
    clock.advance(timedelta(days=8))
    await rig.sweep()
    assert (await answers(rig))["status"] == "expired"
    reply = await rig.say(CITIZEN, "5")
    assert "Hiện chưa có câu hỏi" in reply.text


async def test_a_token_zalo_rejects_stops_start_up_naming_the_variable(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    with pytest.raises(SettingsError, match="SIPAS_ZALO_TOKEN") as raised:
        await make_zalo_rig(zalo_token="31415:NOT-THE-BOTS-TOKEN")
    assert "NOT-THE-BOTS-TOKEN" not in str(raised.value)


async def test_an_unreachable_zalo_is_retried_and_health_follows(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    from tests.fakes.zalo_api import FakeZaloAPI

    up = asyncio.Event()
    original_start = FakeZaloAPI.start

    async def failing_first(self: FakeZaloAPI) -> None:
        await original_start(self)
        self.fail_next("getMe", 502, "Bad Gateway")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FakeZaloAPI, "start", failing_first)
        rig = await make_zalo_rig()
    assert rig.services.channels.get("zalo") == "unreachable"
    health = await (await rig.client.get("/healthz")).json()
    assert health["zalo"] == "unreachable"
    rig.services.channels.listen(lambda channel, state: up.set() if state == "ok" else None)
    if rig.services.channels.get("zalo") != "ok":
        await asyncio.wait_for(up.wait(), 10)
    reply = await rig.say(CITIZEN, "/help")  # and what arrives now is answered
    assert "/start" in reply.text
