"""The Zalo adapter's pure parts: update shapes, text splitting, error mapping, numbering."""

from __future__ import annotations

from typing import Any

import pytest

from bot.channels.zalo.api import (
    ZaloApi,
    ZaloApiError,
    ZaloMessage,
    parse_update,
    split_text,
    unwrap,
)
from bot.channels.zalo.sender import ZaloSender, render, translate_error
from bot.config import SettingsError, load_settings
from bot.outbox import PermanentSendError, RetryAfter, TransientSendError, Unreachable
from bot.outbox.wire import marking
from bot.serve import enabled_channels
from handlers.rendering import Choice, match_typed_choice, numbered, numbered_lines
from tests.fakes.zalo_api import FakeZaloAPI

UPDATE = {
    "event_name": "message.text.received",
    "message": {
        "message_id": "a1b2c3",
        "date": 1764547200000,
        "text": "5",
        "chat": {"id": "u1", "chat_type": "PRIVATE"},
        "from": {"id": "u1", "first_name": "Minh"},
    },
}
RATING = [Choice(f"{n} - label {n}", f"a:r:0:{n}") for n in range(1, 6)] + [
    Choice("Bỏ qua", "a:r:0:skip"),
    Choice("« Quay lại", "a:r:0:back"),
]


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (UPDATE, 1),
        ({"ok": True, "result": UPDATE}, 1),
        ({"ok": True, "result": [UPDATE, UPDATE]}, 2),
        ([UPDATE], 1),
        ({"ok": True, "result": []}, 0),
        ({"ok": True, "result": None}, 0),
    ],
)
def test_updates_wrapped_or_bare_one_or_a_list(body: object, count: int) -> None:
    assert len(unwrap(body)) == count


def test_not_an_update_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Zalo update"):
        unwrap("text")


def test_a_text_message_is_parsed_and_its_id_is_stable() -> None:
    message = parse_update(UPDATE)
    assert message == ZaloMessage("message.text.received", "a1b2c3", "u1", "u1", "5", "Minh")
    other = parse_update({**UPDATE, "message": {**UPDATE["message"], "message_id": "a1b2c4"}})  # type: ignore[dict-item]
    assert other is not None and message.update_id != other.update_id
    assert 0 <= message.update_id < 2**63
    numeric = parse_update({**UPDATE, "message": {**UPDATE["message"], "message_id": "42"}})  # type: ignore[dict-item]
    assert numeric is not None and numeric.update_id == 42


def test_group_messages_and_updates_without_a_sender_are_ignored() -> None:
    group = {**UPDATE["message"], "chat": {"id": "g1", "chat_type": "GROUP"}}  # type: ignore[dict-item]
    assert parse_update({**UPDATE, "message": group}) is None
    assert parse_update({"event_name": "message.text.received"}) is None


def test_long_texts_are_split_at_line_breaks() -> None:
    lines = [f"dòng {i} " + "x" * 90 for i in range(60)]
    pieces = split_text("\n".join(lines))
    assert len(pieces) > 1 and all(1 <= len(piece) <= 2000 for piece in pieces)
    assert "\n".join(pieces) == "\n".join(lines)
    assert split_text("y" * 4500) == ["y" * 2000, "y" * 2000, "y" * 500]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ZaloApiError(429, "Too Many Requests", retry_after=7), RetryAfter),
        (ZaloApiError(200, "quota", error_code=429), RetryAfter),
        (ZaloApiError(0, "TimeoutError calling sendMessage"), TransientSendError),
        (ZaloApiError(502, "Bad Gateway"), TransientSendError),
        (ZaloApiError(401, "Unauthorized"), TransientSendError),
        (ZaloApiError(403, "Forbidden"), Unreachable),
        (ZaloApiError(400, "User has blocked the bot"), Unreachable),
        (ZaloApiError(400, "text is too long"), PermanentSendError),
    ],
)
def test_errors_map_onto_the_dispatchers_family(error: ZaloApiError, expected: type) -> None:
    assert type(translate_error(error)) is expected


def test_a_rate_limit_keeps_its_wait() -> None:
    mapped = translate_error(ZaloApiError(429, "slow down", retry_after=7))
    assert isinstance(mapped, RetryAfter) and mapped.seconds == 7


def test_numbering_is_decided_once_ratings_keep_their_digits() -> None:
    assert [number for number, _ in numbered(RATING)] == [1, 2, 3, 4, 5, 6, 7]
    assert numbered_lines(RATING).splitlines()[5:] == ["6. Bỏ qua", "7. « Quay lại"]
    plain = [Choice("Đồng ý", "c:t:y"), Choice("Từ chối", "c:t:n")]
    assert numbered_lines(plain) == "1. Đồng ý\n2. Từ chối"


@pytest.mark.parametrize(
    ("typed", "data"),
    [
        ("6", "a:r:0:skip"),
        ("6.", "a:r:0:skip"),
        (" 7) ", "a:r:0:back"),
        ("bo qua", "a:r:0:skip"),
        ("Quay lại", "a:r:0:back"),
        ("5", "a:r:0:5"),
        ("5 - label 5", "a:r:0:5"),
        ("8", None),
        ("tuyệt", None),
        ("", None),
    ],
)
def test_a_typed_reply_is_matched_by_number_or_words(typed: str, data: str | None) -> None:
    chosen = match_typed_choice(typed, RATING)
    assert (chosen.data if chosen else None) == data


def test_choices_are_written_as_numbered_lines_under_the_text() -> None:
    payload = {
        "text": "Ông/Bà có đồng ý không?",
        "buttons": [[{"label": "Đồng ý", "data": "c:t:y"}, {"label": "Từ chối", "data": "c:t:n"}]],
    }
    assert render(payload) == "Ông/Bà có đồng ý không?\n\n1. Đồng ý\n2. Từ chối"


def test_zalo_send_limits_have_conservative_defaults_and_are_checked() -> None:
    settings = load_settings()
    assert (settings.zalo_send_rate_global, settings.zalo_send_rate_per_chat) == (5.0, 0.5)
    assert load_settings(zalo_send_rate_per_chat="2").zalo_send_rate_per_chat == 2.0
    with pytest.raises(SettingsError, match="SIPAS_ZALO_SEND_RATE_GLOBAL"):
        load_settings(zalo_send_rate_global="0")


async def test_an_edit_is_not_sent_anew_on_zalo() -> None:
    class NoCalls(ZaloApi):
        async def call(self, method: str, params: Any = None, *, wait: float | None = None) -> Any:
            raise AssertionError(f"{method} was called")

    sender = ZaloSender(NoCalls("http://127.0.0.1:9/bot", "1:x"))
    edit = {"text": "Câu 1\n\n✔ 5 - Rất hài lòng", "edit_message_id": "out7"}
    assert await sender.send("u1", edit, clear_buttons_of=None) == "out7"


def test_serve_names_the_zalo_channel_it_runs() -> None:
    both = load_settings(zalo_token="1:x", telegram_token="2:y")
    assert enabled_channels(both) == ["telegram (polling)", "zalo (polling)"]


async def test_the_zalo_client_tells_the_dispatcher_when_each_call_reaches_the_wire() -> None:
    """A send marks the moment its request's headers are written (aiohttp's trace), once
    per call: the dispatcher's pacing counts it from then (bot/outbox/wire.py)."""
    fake = FakeZaloAPI()
    await fake.start()
    client = ZaloApi(fake.base_url, fake.token)
    marks: list[int] = []
    try:
        with marking(lambda: marks.append(len(fake.calls))):
            await client.call("sendMessage", {"chat_id": "u-1", "text": "Xin chào"})
        await client.call("sendMessage", {"chat_id": "u-1", "text": "unmarked"})
    finally:
        await client.close()
        await fake.stop()
    assert marks == [0]  # marked before the fake had read it
    assert [method for method, _ in fake.calls] == ["sendMessage", "sendMessage"]
