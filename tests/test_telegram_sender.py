"""TelegramSender driving a real python-telegram-bot `Bot` against the fake Bot API over HTTP,
alone and under the outbox dispatcher (on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from telegram import Bot
from telegram import error as tg

from bot.channels.telegram.request import AiohttpRequest
from bot.channels.telegram.sender import (
    TelegramSender,
    retry_after_seconds,
    translate_error,
)
from bot.outbox import (
    Dispatcher,
    PermanentSendError,
    RetryAfter,
    TransientSendError,
    Unreachable,
)
from bot.outbox.wire import marking
from handlers.clock import FakeClock
from storage.db import SessionFactory
from storage.models import Citizen, CitizenContact, ContactStatus, OutboxMessage, OutboxStatus
from storage.repositories import outbox
from tests.fakes.telegram_api import FakeTelegramAPI

CHAT = 700001
BUTTONS = [[{"label": "Hài lòng", "data": "s:ab:1:5"}, {"label": "Không", "data": "s:ab:1:1"}]]


@pytest.fixture(autouse=True)
def _timedelta_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    # PTB 22 warns while *constructing* RetryAfter unless opted in to timedeltas, and
    # filterwarnings=error would turn that warning into the exception the sender sees.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")


@pytest.fixture
async def api() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI() as fake:
        yield fake


@pytest.fixture
async def bot(api: FakeTelegramAPI) -> AsyncIterator[Bot]:
    async with Bot(api.token, base_url=api.base_url) as real_bot:
        yield real_bot


@pytest.fixture
def sender(bot: Bot) -> TelegramSender:
    return TelegramSender(bot)


async def test_sends_text_and_buttons(api: FakeTelegramAPI, sender: TelegramSender) -> None:
    message_id = await sender.send(
        str(CHAT), {"text": "Ông/bà hài lòng không?", "buttons": BUTTONS}, clear_buttons_of=None
    )

    sent = api.last_message(CHAT)
    assert message_id == str(sent.message_id)
    assert sent.text == "Ông/bà hài lòng không?"
    assert api.buttons(sent) == [("Hài lòng", "s:ab:1:5"), ("Không", "s:ab:1:1")]

    await sender.send(str(CHAT), {"text": "no buttons"}, clear_buttons_of=None)
    assert api.last_message(CHAT).reply_markup is None


async def test_clears_the_buttons_of_an_earlier_message(
    api: FakeTelegramAPI, sender: TelegramSender
) -> None:
    question = await sender.send(
        str(CHAT), {"text": "question", "buttons": BUTTONS}, clear_buttons_of=None
    )
    assert question is not None

    await sender.send(str(CHAT), {"text": "next"}, clear_buttons_of=question)

    state = api.message_state(CHAT, int(question))
    assert state is not None
    assert "reply_markup" not in state
    assert api.last_message(CHAT).text == "next"
    # Clearing again ("message is not modified") or a vanished message is not an error.
    await sender.send(str(CHAT), {"text": "again"}, clear_buttons_of=question)
    await sender.send(str(CHAT), {"text": "gone"}, clear_buttons_of="9999")
    assert [m.text for m in api.messages_to(CHAT)] == ["question", "next", "again", "gone"]


async def test_edit_replaces_the_text_of_the_message(
    api: FakeTelegramAPI, sender: TelegramSender
) -> None:
    question = await sender.send(
        str(CHAT), {"text": "question", "buttons": BUTTONS}, clear_buttons_of=None
    )
    assert question is not None

    edited = await sender.send(
        str(CHAT), {"text": "Đã ghi nhận: Hài lòng", "edit": True}, clear_buttons_of=question
    )

    assert edited == question
    state = api.message_state(CHAT, int(question))
    assert state is not None
    assert state["text"] == "Đã ghi nhận: Hài lòng"
    assert "reply_markup" not in state
    assert len(api.messages_to(CHAT)) == 1
    # A retried edit that already went through is done, not an error.
    again = await sender.send(
        str(CHAT), {"text": "Đã ghi nhận: Hài lòng", "edit": True}, clear_buttons_of=question
    )
    assert again == question
    # An edit of a message that is gone sends the text as a new message.
    fresh = await sender.send(str(CHAT), {"text": "anew", "edit": True}, clear_buttons_of="999")
    assert fresh == str(api.last_message(CHAT).message_id)
    assert api.last_message(CHAT).text == "anew"


async def test_edit_by_platform_message_id_never_sends_anew(
    api: FakeTelegramAPI, sender: TelegramSender
) -> None:
    """The pressed question gets the answer appended (through the outbox, paced)."""
    question = await sender.send(
        str(CHAT), {"text": "Câu 1/7", "buttons": BUTTONS}, clear_buttons_of=None
    )
    assert question is not None

    edited = await sender.send(
        str(CHAT), {"text": "Câu 1/7\n\n✔ 5", "edit_message_id": question}, clear_buttons_of=None
    )

    assert edited == question
    state = api.message_state(CHAT, int(question))
    assert state is not None
    assert state["text"] == "Câu 1/7\n\n✔ 5"
    assert "reply_markup" not in state
    # A message that is gone has nothing left to edit: done, and nothing new is sent.
    gone = await sender.send(
        str(CHAT), {"text": "late", "edit_message_id": "999"}, clear_buttons_of=None
    )
    assert gone is None
    assert len(api.messages_to(CHAT)) == 1


@pytest.mark.parametrize(
    ("status", "description", "expected"),
    [
        (403, None, Unreachable),
        (400, "Bad Request: chat not found", Unreachable),
        (400, "Bad Request: can't parse entities", PermanentSendError),
        (500, None, TransientSendError),
        (502, None, TransientSendError),
        (503, "Service Unavailable", TransientSendError),
    ],
)
async def test_platform_errors_map_to_the_send_error_family(
    api: FakeTelegramAPI,
    sender: TelegramSender,
    status: int,
    description: str | None,
    expected: type[Exception],
) -> None:
    api.fail_next("sendMessage", status, description=description, chat_id=CHAT)
    with pytest.raises(expected):
        await sender.send(str(CHAT), {"text": "hello"}, clear_buttons_of=None)
    assert api.failed[-1].status == status


async def test_rate_limit_carries_retry_after(api: FakeTelegramAPI, sender: TelegramSender) -> None:
    api.fail_next("sendMessage", 429, retry_after=3)
    with pytest.raises(RetryAfter) as raised:
        await sender.send(str(CHAT), {"text": "hello"}, clear_buttons_of=None)
    assert raised.value.seconds == 3.0


async def test_rate_limit_while_clearing_buttons_is_a_rate_limit(
    api: FakeTelegramAPI, sender: TelegramSender
) -> None:
    question = await sender.send(
        str(CHAT), {"text": "question", "buttons": BUTTONS}, clear_buttons_of=None
    )
    api.fail_next("editMessageReplyMarkup", 429, retry_after=2)
    with pytest.raises(RetryAfter):
        await sender.send(str(CHAT), {"text": "next"}, clear_buttons_of=question)
    assert [m.text for m in api.messages_to(CHAT)] == ["question"]


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
def test_retry_after_as_int_or_timedelta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTB_TIMEDELTA")
    assert retry_after_seconds(tg.RetryAfter(5)) == 5.0
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    assert retry_after_seconds(tg.RetryAfter(timedelta(seconds=1.5))) == 1.5
    translated = translate_error(tg.RetryAfter(7))
    assert isinstance(translated, RetryAfter)
    assert translated.seconds == 7.0


def test_other_ptb_errors_map_to_transient() -> None:
    assert isinstance(translate_error(tg.TimedOut()), TransientSendError)
    assert isinstance(translate_error(tg.NetworkError("Bad Gateway")), TransientSendError)
    assert isinstance(translate_error(tg.Conflict("terminated")), TransientSendError)
    assert isinstance(translate_error(tg.ChatMigrated(-100123)), PermanentSendError)


async def test_timeout_is_transient(api: FakeTelegramAPI) -> None:
    api.latency = 0.5
    request = AiohttpRequest(read_timeout=0.1)
    async with Bot(api.token, base_url=api.base_url, request=request) as slow_bot:
        with pytest.raises(TransientSendError):
            await TelegramSender(slow_bot).send(str(CHAT), {"text": "hi"}, clear_buttons_of=None)


async def test_connection_refused_is_transient(
    api: FakeTelegramAPI, sender: TelegramSender
) -> None:
    await api.stop()  # the bot is initialised; now nobody listens on that port
    with pytest.raises(TransientSendError):
        await sender.send(str(CHAT), {"text": "hi"}, clear_buttons_of=None)


async def test_payload_without_text_is_permanent(sender: TelegramSender) -> None:
    with pytest.raises(PermanentSendError):
        await sender.send(str(CHAT), {"buttons": BUTTONS}, clear_buttons_of=None)


async def test_dispatcher_over_real_http(
    api: FakeTelegramAPI, sender: TelegramSender, sessions: SessionFactory, clock: FakeClock
) -> None:
    """The whole path: outbox rows → Dispatcher → TelegramSender → PTB → HTTP → fake API."""
    blocked, limited, flaky, fine = 710001, 710002, 710003, 710004
    async with sessions.begin() as session:
        citizen = Citizen()
        session.add(citizen)
        await session.flush()
        session.add(CitizenContact(citizen_id=citizen.id, channel="telegram", address=str(blocked)))
        ids = {}
        for chat in (blocked, limited, flaky, fine):
            row = await outbox.enqueue(
                session,
                channel="telegram",
                address=str(chat),
                payload={"text": f"question for {chat}", "buttons": BUTTONS},
                not_before=clock.now(),
            )
            assert row is not None
            ids[chat] = row.id
    api.fail_next("sendMessage", 403, chat_id=blocked)
    api.fail_next("sendMessage", 429, retry_after=4, chat_id=limited)
    api.fail_next("sendMessage", 500, chat_id=flaky)
    dispatcher = Dispatcher(
        sessions, {"telegram": sender}, clock, global_rate=100.0, per_chat_rate=20.0
    )

    assert await dispatcher.drain(3) == 1
    async with sessions() as session:
        status = dict((await session.execute(select(OutboxMessage.id, OutboxMessage.status))).all())
        contact = await session.scalar(select(CitizenContact))
    assert status[ids[fine]] == OutboxStatus.SENT
    assert status[ids[blocked]] == OutboxStatus.FAILED
    assert status[ids[limited]] == OutboxStatus.PENDING
    assert status[ids[flaky]] == OutboxStatus.PENDING
    assert contact is not None
    assert contact.status == ContactStatus.UNREACHABLE

    clock.advance(timedelta(seconds=5))  # past the 429's retry_after and the first backoff
    assert await dispatcher.drain(3) == 2
    assert {c.chat_id for c in api.calls("sendMessage")} == {limited, flaky, fine}

    # The next question clears the buttons of the one before, by outbox row id.
    async with sessions.begin() as session:
        await outbox.enqueue(
            session,
            channel="telegram",
            address=str(fine),
            payload={"text": "thanks", "clear_buttons_of": ids[fine]},
            not_before=clock.now(),
        )
    clock.advance(timedelta(seconds=1))
    assert await dispatcher.drain(3) == 1
    first = api.messages_to(fine)[0]
    assert first.message_id is not None
    state = api.message_state(fine, first.message_id)
    assert state is not None
    assert "reply_markup" not in state
    async with sessions() as session:
        platform_ids = (
            await session.scalars(
                select(OutboxMessage.platform_message_id).where(OutboxMessage.address == str(fine))
            )
        ).all()
    assert sorted(platform_ids, key=str) == ["1", "2"]


async def test_the_http_client_tells_the_dispatcher_when_each_call_reaches_the_wire(
    api: FakeTelegramAPI,
) -> None:
    """Through the Bot the channel builds (AiohttpRequest telling the wire), a send
    marks the moment its request is written, once per call: the dispatcher's pacing counts
    it from then (bot/outbox/wire.py)."""
    request = AiohttpRequest(tell_the_wire=True)
    marks: list[int] = []
    async with Bot(api.token, base_url=api.base_url, request=request) as traced:
        sender = TelegramSender(traced)
        first = await sender.send(str(CHAT), {"text": "một"}, clear_buttons_of=None)
        before = len(api.requests)
        with marking(lambda: marks.append(len(api.requests))):
            await sender.send(str(CHAT), {"text": "hai"}, clear_buttons_of=first)
        await sender.send(str(CHAT), {"text": "ba"}, clear_buttons_of=None)  # unmarked
    # The keyboard cleared, then the message: two calls, each marked before the fake read it.
    assert marks == [before, before + 1]
    calls = [method for method, _ in api.requests]
    assert calls[before:] == ["editMessageReplyMarkup", "sendMessage", "sendMessage"]
