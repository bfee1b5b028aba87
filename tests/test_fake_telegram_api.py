"""Tests for tests/fakes/telegram_api.py: the real python-telegram-bot stack against the fake."""

from __future__ import annotations

import asyncio
import datetime as dtm
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    Update,
)
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fakes.telegram_api import FakeTelegramAPI

CHAT = 424242
OTHER_CHAT = 515151

App = Application[Any, Any, Any, Any, Any, Any]


@pytest.fixture
async def api() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI() as fake:
        yield fake


def _build_app(api: FakeTelegramAPI) -> App:
    return (
        Application.builder()
        .token(api.token)
        .base_url(api.base_url)
        .base_file_url(api.base_file_url)
        .build()
    )


async def _on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None
    assert update.effective_user is not None
    keyboard = InlineKeyboardMarkup(
        [
            [InlineKeyboardButton("Hài lòng ✅", callback_data="rate:5")],
            [InlineKeyboardButton("Chưa hài lòng", callback_data="rate:1")],
        ]
    )
    await update.effective_message.reply_text(
        f"Xin chào {update.effective_user.first_name}! args={context.args!r}",
        reply_markup=keyboard,
    )


async def _on_rate(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None
    assert query.data is not None
    await query.answer("Cảm ơn!")
    await query.edit_message_text(f"Bạn đã chọn {query.data.split(':')[1]}")


async def _on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None
    await update.effective_message.reply_text(f"echo:{update.effective_message.text}")


@pytest.fixture
async def running_app(api: FakeTelegramAPI) -> AsyncIterator[App]:
    app = _build_app(api)
    app.add_handler(CommandHandler("start", _on_start))
    app.add_handler(CallbackQueryHandler(_on_rate, pattern=r"^rate:"))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, _on_text))
    await app.initialize()
    await app.start()
    assert app.updater is not None
    await app.updater.start_polling(poll_interval=0.0, timeout=1)
    try:
        yield app
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()


async def test_start_command_and_button_press_through_real_application(
    api: FakeTelegramAPI, running_app: App
) -> None:
    update_id = api.push_text(CHAT, "/start QR-2024-ABC", first_name="Lan")
    assert update_id == 1

    reply = await api.wait_for_message(CHAT, count=1)
    assert reply.method == "sendMessage"
    assert reply.text == "Xin chào Lan! args=['QR-2024-ABC']"
    assert reply.chat_id == CHAT
    assert api.buttons(reply) == [("Hài lòng ✅", "rate:5"), ("Chưa hài lòng", "rate:1")]
    # The user's /start consumed message_id 1 in this private chat, the reply gets 2.
    assert reply.message_id == 2
    assert reply.message is not None
    assert reply.message["from"]["username"] == "sipas_test_bot"

    api.press(CHAT, "Hài lòng")
    edit = await api.wait_for_call("editMessageText", chat_id=CHAT)
    answer = api.calls("answerCallbackQuery")[0]

    assert answer.text == "Cảm ơn!"
    assert answer.chat_id == CHAT
    assert answer.timestamp <= edit.timestamp
    assert edit.text == "Bạn đã chọn 5"
    assert edit.message_id == reply.message_id
    state = api.message_state(CHAT, 2)
    assert state is not None
    assert state["text"] == "Bạn đã chọn 5"
    assert "reply_markup" not in state  # editMessageText without markup drops the keyboard
    assert api.failed == []
    assert [c.method for c in api.sent] == [
        "deleteWebhook",
        "sendMessage",
        "answerCallbackQuery",
        "editMessageText",
    ]


async def test_plain_text_is_not_a_command_and_string_values_survive(
    api: FakeTelegramAPI, running_app: App
) -> None:
    for text in ("123", "true", "Tôi muốn góp ý về thủ tục"):
        api.push_text(CHAT, text)
    replies = [await api.wait_for_message(CHAT, count=n) for n in (1, 2, 3)]
    assert [r.text for r in replies] == [
        "echo:123",
        "echo:true",
        "echo:Tôi muốn góp ý về thủ tục",
    ]
    assert [r.message_id for r in replies] == [4, 5, 6]  # user messages took 1-3


async def test_press_without_matching_button_lists_available_ones(
    api: FakeTelegramAPI, running_app: App
) -> None:
    api.push_text(CHAT, "/start")
    await api.wait_for_message(CHAT, count=1)
    with pytest.raises(AssertionError, match=r"Hài lòng ✅.*rate:5"):
        api.press(CHAT, "Rất tệ")
    with pytest.raises(AssertionError, match="no bot message"):
        api.push_callback(OTHER_CHAT, "rate:5")


async def test_wait_for_message_since_mark_and_timeout(api: FakeTelegramAPI) -> None:
    async with _build_app(api) as app:
        await app.bot.send_message(CHAT, "cũ")
        mark = api.mark()
        sender = asyncio.create_task(app.bot.send_message(CHAT, "mới"))
        new = await api.wait_for_message(CHAT, since=mark)
        await sender
        assert new.text == "mới"
        # With a predicate, earlier messages count too (no race with fast replies).
        old = await api.wait_for_message(CHAT, lambda c: c.text == "cũ", timeout=0.1)
        assert old.seq < new.seq
        assert api.last_message(CHAT).text == "mới"
        with pytest.raises(AssertionError, match=r"messages so far: \['cũ', 'mới'\]"):
            await api.wait_for_message(CHAT, timeout=0.05)
        with pytest.raises(AssertionError, match="sent no message"):
            api.last_message(OTHER_CHAT)


async def test_retry_after_injection(api: FakeTelegramAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without PTB_TIMEDELTA, PTB 22.8 emits a PTBDeprecationWarning while *constructing*
    # RetryAfter, which filterwarnings=error turns into the raised exception.
    monkeypatch.setenv("PTB_TIMEDELTA", "1")
    api.fail_next("sendMessage", 429, retry_after=7)
    async with _build_app(api) as app:
        with pytest.raises(RetryAfter) as exc_info:
            await app.bot.send_message(CHAT, "xin chào")
        assert exc_info.value.retry_after == dtm.timedelta(seconds=7)
        assert [(f.method, f.chat_id, f.status) for f in api.failed] == [("sendMessage", CHAT, 429)]
        assert api.failed[0].description == "Too Many Requests: retry after 7"
        assert api.messages_to(CHAT) == []

        await app.bot.send_message(CHAT, "xin chào")  # only the next call failed
        assert [m.text for m in api.messages_to(CHAT)] == ["xin chào"]


async def test_forbidden_only_for_the_given_chat(api: FakeTelegramAPI) -> None:
    api.fail_next("sendMessage", 403, chat_id=OTHER_CHAT)
    api.fail_next("sendmessage", 400, description="Bad Request: chat not found")
    async with _build_app(api) as app:
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await app.bot.send_message(CHAT, "a")  # the 403 rule does not match this chat
        await app.bot.send_message(CHAT, "a")
        with pytest.raises(Forbidden, match="bot was blocked by the user"):
            await app.bot.send_message(OTHER_CHAT, "b")
        await app.bot.send_message(OTHER_CHAT, "b")
    assert [(f.chat_id, f.status) for f in api.failed] == [(CHAT, 400), (OTHER_CHAT, 403)]
    assert [(c.chat_id, c.text) for c in api.sent] == [(CHAT, "a"), (OTHER_CHAT, "b")]


async def test_bad_request_and_bad_gateway(api: FakeTelegramAPI) -> None:
    async with _build_app(api) as app:
        msg = await app.bot.send_message(CHAT, "gốc")
        api.fail_next("editMessageText", 502, count=2)
        for _ in range(2):
            with pytest.raises(NetworkError, match="Bad Gateway"):
                await app.bot.edit_message_text("mới", chat_id=CHAT, message_id=msg.message_id)
        await app.bot.edit_message_text("mới", chat_id=CHAT, message_id=msg.message_id)
        with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
            await app.bot.edit_message_text("mới", chat_id=CHAT, message_id=msg.message_id)
        with pytest.raises(BadRequest, match=r"(?i)message to delete not found"):
            await app.bot.delete_message(CHAT, 999)
        api.fail_next("sendMessage", 500)
        with pytest.raises(NetworkError, match="Internal Server Error"):
            await app.bot.send_message(CHAT, "x")
    assert [f.status for f in api.failed] == [502, 502, 500]


async def test_wrong_token_is_invalid_token(api: FakeTelegramAPI) -> None:
    app = Application.builder().token("999:WRONG").base_url(api.base_url).build()
    try:
        with pytest.raises(InvalidToken, match="rejected by the server") as exc_info:
            await app.initialize()
    finally:
        # Application.shutdown() is a no-op when initialize() failed, which leaves the bot's
        # httpx clients open (a ResourceWarning under filterwarnings=error): close them here.
        await app.bot.shutdown()
    assert isinstance(exc_info.value.__cause__, InvalidToken)
    assert exc_info.value.__cause__.message == "Unauthorized"
    assert api.requests == []  # rejected before reaching any method


async def test_commands_webhook_and_media(api: FakeTelegramAPI) -> None:
    async with _build_app(api) as app:
        bot = app.bot
        assert (await bot.get_me()).username == "sipas_test_bot"
        assert bot.id == 123456
        await bot.set_my_commands([BotCommand("start", "Bắt đầu")], language_code="vi")
        await bot.set_my_commands([BotCommand("start", "Start")])
        assert api.my_commands["vi"] == [{"command": "start", "description": "Bắt đầu"}]
        assert [c.description for c in await bot.get_my_commands()] == ["Start"]
        assert [c.description for c in await bot.get_my_commands(language_code="vi")] == ["Bắt đầu"]

        await bot.set_webhook("https://sipas.example.vn/tg", secret_token="s3cret")
        assert (await bot.get_webhook_info()).url == "https://sipas.example.vn/tg"
        assert api.webhook is not None
        assert api.webhook["secret_token"] == "s3cret"
        await bot.delete_webhook()
        assert (await bot.get_webhook_info()).url == ""

        png = b"\x89PNG" + bytes(996)
        photo = await bot.send_photo(CHAT, InputFile(png, filename="qr.png"), caption="Mã QR")
        doc = await bot.send_document(CHAT, b"%PDF-1.4 digest", filename="tuan-48.pdf")
        assert photo.caption == "Mã QR"
        assert photo.photo[0].file_size == 1000
        assert doc.document is not None
        assert doc.document.file_name == "tuan-48.pdf"
        media = api.messages_to(CHAT)
        assert [(m.method, m.file_name, m.file_size) for m in media] == [
            ("sendPhoto", "qr.png", 1000),
            ("sendDocument", "tuan-48.pdf", 15),
        ]
        assert await bot.delete_message(CHAT, doc.message_id)
        assert api.message_state(CHAT, doc.message_id) is None
        assert await bot.close()
        assert await bot.log_out()


async def test_raw_http_shapes_json_bodies_and_long_polling(api: FakeTelegramAPI) -> None:
    url = f"{api.base_url}{api.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.base_url}1:bad/getMe") as resp:
            assert resp.status == 401
            assert await resp.json() == {
                "ok": False,
                "error_code": 401,
                "description": "Unauthorized",
            }
        async with http.post(f"{url}/noSuchMethod") as resp:
            assert resp.status == 404
            assert await resp.json() == {
                "ok": False,
                "error_code": 404,
                "description": "Not Found: method not found",
            }
        markup = {"inline_keyboard": [[{"text": "OK", "callback_data": "ok"}]]}
        body = {"chat_id": CHAT, "text": "json body", "reply_markup": markup}
        async with http.post(f"{url}/sendMessage", json=body) as resp:
            result = (await resp.json())["result"]
            assert result["reply_markup"] == markup
        assert api.buttons(api.last_message(CHAT)) == [("OK", "ok")]

        api.fail_next("sendMessage", 429, retry_after=3)
        async with http.post(f"{url}/sendMessage", json=body) as resp:
            assert resp.status == 429
            assert await resp.json() == {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 3",
                "parameters": {"retry_after": 3},
            }

        # Long polling: returns as soon as an update is queued.
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, api.push_text, CHAT, "hello")
        started = time.monotonic()
        async with http.post(f"{url}/getUpdates", data={"timeout": "5"}) as resp:
            updates = (await resp.json())["result"]
        assert time.monotonic() - started < 2
        assert [u["message"]["text"] for u in updates] == ["hello"]

        # Unconfirmed updates are redelivered; offset confirms; duplicates are allowed.
        dup = api.make_update(CHAT, "/start X")
        api.push_raw_update(dup)
        api.push_raw_update(dup)
        first = updates[0]["update_id"]
        async with http.post(f"{url}/getUpdates", data={"offset": str(first)}) as resp:
            ids = [u["update_id"] for u in (await resp.json())["result"]]
        assert ids == [first, dup["update_id"], dup["update_id"]]
        assert dup["message"]["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
        async with http.post(
            f"{url}/getUpdates", data={"offset": str(dup["update_id"] + 1), "timeout": "0.2"}
        ) as resp:
            assert (await resp.json())["result"] == []

        # stop() wakes a pending long poll instead of waiting for its timeout.
        poll = asyncio.create_task(http.post(f"{url}/getUpdates", data={"timeout": "30"}))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await api.stop()
        async with await poll as resp:
            assert (await resp.json())["result"] == []
        assert time.monotonic() - started < 2


async def test_make_update_is_parsed_by_ptb_for_webhook_tests(api: FakeTelegramAPI) -> None:
    async with _build_app(api) as app:
        data = api.make_update(CHAT, "/start@sipas_test_bot abc", first_name="Hùng")
        update = Update.de_json(data, app.bot)
        handler = CommandHandler("start", _on_start)
        assert handler.check_update(update)
        assert update.effective_user is not None
        assert update.effective_user.first_name == "Hùng"
        await app.bot.send_message(CHAT, "x", reply_markup=InlineKeyboardMarkup([]))
        contact_id = api.push_contact(CHAT, "+84901234567")
        assert contact_id == data["update_id"] + 1


async def test_latency_applies_to_send_message(api: FakeTelegramAPI) -> None:
    api.latency = 0.05
    async with _build_app(api) as app:
        started = time.monotonic()
        await app.bot.send_message(CHAT, "chậm")
        assert time.monotonic() - started >= 0.05
