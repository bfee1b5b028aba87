"""What the Telegram channel must refuse or hold back: quiet hours, reminders and expiry on an
injected clock; forged and stale presses; the webhook secret; redelivered updates; /stop and
/delete (Nghị định 13/2023).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

import bot.channels.base as channel_base
from bot.channels.telegram.channel import TelegramChannel
from handlers.texts import t
from storage.models import Answer, Citizen, CitizenContact, OutboxMessage, Survey
from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.telegram_support import CASE, Rig, RigFactory, case_body, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

CHAT = 5552001
STRANGER = 5552999
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}


def buttons(message: SentCall) -> list[str]:
    return [text for text, _ in FakeTelegramAPI.buttons(message)]


def local(hour: int, minute: int = 0, day: int = 23) -> datetime:
    """A Hà Nội wall-clock time on November `day`, 2026, as UTC."""
    return datetime(2026, 11, day, hour, minute, tzinfo=HANOI).astimezone(UTC)


async def linked_and_resolved(rig: Rig) -> None:
    await rig.post_case(case_body(), 201)
    await rig.link(CHAT)
    await rig.post_case(case_body(**RESOLVED), 200)


async def survey_status(rig: Rig) -> str:
    status: str = (await rig.get_case(CASE["case_code"]))["survey"]["status"]
    return status


async def test_quiet_hours_hold_the_invitation_until_morning(make_rig: RigFactory) -> None:
    rig = await make_rig(quiet_hours="21:00-07:00")
    rig.clock.set(local(22, 30))
    await linked_and_resolved(rig)
    async with rig.services.sessions() as session:
        survey = (await session.execute(select(Survey))).scalar_one()
    assert survey.due_at == local(7, 0, day=24)  # scheduled for the morning, local time
    assert await rig.sweep() == 0
    rig.clock.set(local(6, 59, day=24))
    assert await rig.sweep() == 0
    assert await survey_status(rig) == "scheduled"
    rig.clock.set(local(7, 0, day=24))
    assert await rig.sweep() == 1
    assert await survey_status(rig) == "invited"


async def test_survey_delay_is_honoured(make_rig: RigFactory) -> None:
    rig = await make_rig(survey_delay="2h")
    await linked_and_resolved(rig)
    rig.clock.advance(timedelta(hours=1, minutes=59))
    assert await rig.sweep() == 0
    rig.clock.advance(timedelta(minutes=1))
    assert await rig.sweep() == 1


async def test_one_reminder_then_expiry(make_rig: RigFactory) -> None:
    rig = await make_rig(reminder_after="24h", survey_expires_after="7d")
    await linked_and_resolved(rig)
    assert await rig.sweep() == 1
    invitation = await rig.api.wait_for_message(CHAT, lambda m: "Bắt đầu" in buttons(m))
    rig.clock.advance(timedelta(hours=23, minutes=59))
    assert await rig.sweep() == 0
    rig.clock.advance(timedelta(minutes=1))
    mark = rig.api.mark()
    assert await rig.sweep() == 1
    reminder = await rig.api.wait_for_message(CHAT, since=mark)
    assert reminder.text != invitation.text and buttons(reminder) == ["Bắt đầu", "Để sau"]
    rig.clock.advance(timedelta(days=2))
    assert await rig.sweep() == 0  # one reminder, ever
    rig.clock.advance(timedelta(days=5))
    assert await rig.sweep() == 1  # expired
    assert await survey_status(rig) == "expired"
    rig.api.press(CHAT, "Bắt đầu")
    await rig.api.wait_for_call("answerCallbackQuery", chat_id=None)
    assert await survey_status(rig) == "expired"  # a press on an expired survey changes nothing


async def test_no_reminder_during_quiet_hours(make_rig: RigFactory) -> None:
    rig = await make_rig(quiet_hours="21:00-07:00", reminder_after="12h")
    rig.clock.set(local(10, 0))
    await linked_and_resolved(rig)
    assert await rig.sweep() == 1
    rig.clock.set(local(22, 0))  # 12 h later, inside quiet hours
    assert await rig.sweep() == 0
    rig.clock.set(local(7, 0, day=24))
    assert await rig.sweep() == 1


async def test_forged_and_stale_presses_change_nothing(rig: Rig) -> None:
    await linked_and_resolved(rig)
    await rig.sweep()
    await rig.api.wait_for_message(CHAT, count=3)
    first = await rig.answer(CHAT, "Bắt đầu")
    data = dict(FakeTelegramAPI.buttons(first))["5 - Rất hài lòng"]

    # A stranger replays the survey's button data from their own chat.
    await rig.say(STRANGER, "/help")
    before = len(rig.api.messages_to(STRANGER))
    rig.api.push_callback(STRANGER, data)
    answered = await rig.api.wait_for_call(
        "answerCallbackQuery", predicate=lambda c: bool(c.params.get("text"))
    )
    assert "không thuộc" in answered.params["text"]
    assert len(rig.api.messages_to(STRANGER)) == before

    # The owner answers, then presses the same (now stale) button again.
    await rig.answer(CHAT, "5")
    rig.api.push_callback(CHAT, data, message_id=first.message_id)
    stale = await rig.api.wait_for_call(
        "answerCallbackQuery",
        predicate=lambda c: "đã đóng" in str(c.params.get("text", "")),
    )
    assert stale is not None
    # Forged data: a value the question does not offer, and garbage.
    ref = data.split(":")[1]
    rig.api.push_callback(CHAT, f"a:{ref}:1:9")
    rig.api.push_callback(CHAT, "zz:garbage")
    await rig.api.wait_until(lambda: len(rig.api.calls("answerCallbackQuery")) >= 6)
    async with rig.services.sessions() as session:
        answers = (await session.execute(select(Answer))).scalars().all()
        survey = (await session.execute(select(Survey))).scalar_one()
    assert [(a.question_id, a.value_int) for a in answers] == [("access", 5)]
    assert survey.position == 1


async def test_redelivered_update_is_processed_once(rig: Rig) -> None:
    update = rig.api.make_update(CHAT, "/help")
    rig.api.push_raw_update(update)
    await rig.api.wait_for_message(CHAT, count=1)
    again = dict(update)
    rig.api.push_raw_update(again)  # same update_id, e.g. after a restart of polling
    rig.api.push_text(CHAT, "/help")  # a new update
    await rig.api.wait_for_message(CHAT, count=2)
    async with rig.services.sessions() as session:
        helps = (await session.execute(select(OutboxMessage))).scalars().all()
    assert len(helps) == 2


async def test_stop_opts_out_of_this_and_future_surveys(rig: Rig) -> None:
    await linked_and_resolved(rig)
    stopped = await rig.say(CHAT, "/stop")
    assert "/start" in stopped.text
    assert await survey_status(rig) == "opted_out"
    await rig.post_case(case_body(case_code="C-2", **RESOLVED), 201)
    assert (await rig.get_case("C-2"))["survey"]["status"] == "opted_out"
    assert await rig.sweep() == 0
    # /start resumes for the cases to come.
    await rig.say(CHAT, "/start")
    await rig.post_case(case_body(case_code="C-3", **RESOLVED), 201)
    assert await rig.sweep() == 1


async def test_delete_erases_personal_data_and_keeps_anonymous_answers(rig: Rig) -> None:
    await linked_and_resolved(rig)
    await rig.sweep()
    await rig.api.wait_for_message(CHAT, count=3)
    await rig.answer(CHAT, "Bắt đầu")
    await rig.answer(CHAT, "2")
    prompt = await rig.say(CHAT, "/delete")
    assert buttons(prompt) == ["Có", "Không"]
    cancelled = await rig.answer(CHAT, "Không")
    assert "Đã hủy" in cancelled.text
    await rig.say(CHAT, "/delete")
    done = await rig.answer(CHAT, "Có")
    assert "ẩn danh" in done.text
    async with rig.services.sessions() as session:
        assert (await session.execute(select(Citizen))).scalars().all() == []
        assert (await session.execute(select(CitizenContact))).scalars().all() == []
        answers = (await session.execute(select(Answer))).scalars().all()
        sent_before = (
            (await session.execute(select(OutboxMessage).where(OutboxMessage.address == str(CHAT))))
            .scalars()
            .all()
        )
    assert [(a.question_id, a.value_int) for a in answers] == [("access", 2)]
    # Only the confirmation of the erasure still carries the address (it had to be sent).
    assert len(sent_before) == 1 and "ẩn danh" in sent_before[0].payload["text"]
    view = await rig.get_case(CASE["case_code"])
    assert view["survey"]["status"] == "opted_out" and view["survey"]["answers"] == {"access": 2}


async def test_webhook_mode_checks_the_secret(make_rig: RigFactory) -> None:
    rig = await make_rig(
        telegram_mode="webhook",
        telegram_webhook_secret="s3cret-Value",
        public_url="https://sipas.example.gov.vn",
    )
    assert rig.api.webhook is not None
    assert rig.api.webhook["url"].endswith("/telegram/webhook")
    update = rig.api.make_update(CHAT, "/help")
    refused = await rig.client.post("/telegram/webhook", json=update)
    assert refused.status == 403
    wrong = await rig.client.post(
        "/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "nope"}
    )
    assert wrong.status == 403
    assert rig.api.messages_to(CHAT) == []
    headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-Value"}
    accepted = await rig.client.post("/telegram/webhook", json=update, headers=headers)
    assert accepted.status == 200
    await rig.api.wait_for_message(CHAT, count=1)
    replay = await rig.client.post("/telegram/webhook", json=update, headers=headers)
    assert replay.status == 200
    junk = await rig.client.post("/telegram/webhook", data=b"{not json", headers=headers)
    assert junk.status == 400
    async with rig.services.sessions() as session:
        rows = (await session.execute(select(OutboxMessage))).scalars().all()
    assert len(rows) == 1  # the replay was processed once


async def test_a_polling_update_the_database_failed_to_store_is_handled_again(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polling: Telegram counts an update as delivered once fetched, so the channel itself
    handles one again after a pause when the database failed to store it (as Telegram
    redelivers a webhook's): the citizen gets the real answer, once, and no apology."""
    monkeypatch.setattr(TelegramChannel, "_RETRY_DELAYS", (0.05, 0.05, 0.05))
    rig = await make_rig()  # polling
    stored = channel_base.first_time
    failures = [
        OperationalError("INSERT INTO processed_updates", {}, OSError("disk I/O error"))
        for _ in range(2)
    ]

    async def failing_twice(*args: object) -> bool:
        if failures:
            raise failures.pop()
        return await stored(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(channel_base, "first_time", failing_twice)
    reply = await rig.say(CHAT, "/help")
    assert failures == []
    assert reply.text == t("command.help", "vi")
    async with rig.services.sessions() as session:
        rows = (await session.execute(select(OutboxMessage))).scalars().all()
    assert [row.payload["text"] for row in rows] == [reply.text]  # once; no apology


async def test_a_polling_update_that_never_stores_gets_the_apology_after_the_last_try(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TelegramChannel, "_RETRY_DELAYS", (0.02, 0.02))
    rig = await make_rig()
    tries: list[int] = []

    async def failing(*args: object) -> bool:
        tries.append(1)
        raise OperationalError("INSERT INTO processed_updates", {}, OSError("disk I/O error"))

    monkeypatch.setattr(channel_base, "first_time", failing)
    reply = await rig.say(CHAT, "/help")
    assert len(tries) == 3  # the first try and two more
    assert reply.text == t("error.generic", "vi")


async def test_a_webhook_update_the_database_failed_to_store_is_delivered_again(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails while an update is handled: the webhook answers 503 (so Telegram
    sends it again) rather than 200 for an update whose effects never committed, and the
    citizen gets no apology for a failure the redelivery mends."""
    rig = await make_rig(
        telegram_mode="webhook",
        telegram_webhook_secret="s3cret-Value",
        public_url="https://sipas.example.gov.vn",
    )
    stored = channel_base.first_time
    failures = [OperationalError("INSERT INTO processed_updates", {}, OSError("disk I/O error"))]

    async def failing_once(*args: object) -> bool:
        if failures:
            raise failures.pop()
        return await stored(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(channel_base, "first_time", failing_once)
    headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-Value"}
    update = rig.api.make_update(CHAT, "/help")

    lost = await rig.client.post("/telegram/webhook", json=update, headers=headers)
    assert lost.status == 503
    assert (await lost.json())["error"]["code"] == "unavailable"
    again = await rig.client.post("/telegram/webhook", json=update, headers=headers)
    assert again.status == 200
    await rig.api.wait_for_message(CHAT, count=1)
    replay = await rig.client.post("/telegram/webhook", json=update, headers=headers)
    assert replay.status == 200
    async with rig.services.sessions() as session:
        rows = (await session.execute(select(OutboxMessage))).scalars().all()
    assert len(rows) == 1  # the help, once; no apology for the failure
    assert rows[0].payload["text"] == rig.api.messages_to(CHAT)[0].text
