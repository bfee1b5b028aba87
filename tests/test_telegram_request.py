"""python-telegram-bot's calls through aiohttp (bot/channels/telegram/request.py), against the
fake Bot API over real HTTP: what PTB's own httpx request did around each call still holds."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from telegram import Bot, InputFile
from telegram.error import NetworkError, TimedOut

from bot.channels.telegram.request import AiohttpRequest
from tests.fakes.telegram_api import FakeTelegramAPI

CHAT = 700002


@pytest.fixture
async def api() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI() as fake:
        yield fake


async def test_a_file_goes_as_multipart_with_the_other_parameters(api: FakeTelegramAPI) -> None:
    content = "Tuần 48: 12 hồ sơ, chỉ số 87,5 %".encode()
    async with Bot(api.token, base_url=api.base_url, request=AiohttpRequest()) as bot:
        sent = await bot.send_document(
            CHAT,
            InputFile(content, filename="bao-cao-tuan-48.txt"),
            caption="Báo cáo tuần",
        )
    [call] = api.calls("sendDocument", chat_id=CHAT)
    assert (call.caption, call.file_name, call.file_size) == (
        "Báo cáo tuần",
        "bao-cao-tuan-48.txt",
        len(content),
    )
    assert sent.document is not None and sent.document.file_name == "bao-cao-tuan-48.txt"


async def test_parameters_keep_their_types(api: FakeTelegramAPI) -> None:
    """Form-encoded as PTB encodes them: a text that looks like a number stays a text."""
    async with Bot(api.token, base_url=api.base_url, request=AiohttpRequest()) as bot:
        await bot.send_message(CHAT, "123")
    [call] = api.calls("sendMessage", chat_id=CHAT)
    assert call.text == "123"


async def test_a_slow_answer_is_timed_out(api: FakeTelegramAPI) -> None:
    request = AiohttpRequest(read_timeout=0.1)
    async with Bot(api.token, base_url=api.base_url, request=request) as bot:
        api.latency = 0.5  # once the bot has started
        with pytest.raises(TimedOut):
            await bot.send_message(CHAT, "hi")


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("http://127.0.0.1:{port}", "ClientConnectorError"),  # nobody listens there
        ("ftp://127.0.0.1:{port}", "NonHttpUrlClientError"),  # a misconfigured API URL
    ],
)
async def test_a_failed_call_is_a_network_error_that_does_not_show_the_token(
    address: str, error: str
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = address.format(port=port) + "/bot123456:SECRET-TOKEN/sendMessage"
    request = AiohttpRequest()
    await request.initialize()
    try:
        with pytest.raises(NetworkError) as raised:
            await request.post(url)
    finally:
        await request.shutdown()
    assert f"aiohttp.{error}" in raised.value.message
    assert "SECRET" not in raised.value.message


async def test_a_long_poll_waits_beyond_the_read_timeout(api: FakeTelegramAPI) -> None:
    """PTB lengthens getUpdates' read timeout by its long-poll timeout: an empty poll of one
    second is an answer, not a timeout, with a read timeout of a fifth of that."""
    request = AiohttpRequest(read_timeout=0.2)
    async with Bot(api.token, base_url=api.base_url, get_updates_request=request) as bot:
        started = time.monotonic()
        updates = await bot.get_updates(timeout=1)
    assert updates == ()
    assert time.monotonic() - started >= 0.9  # the fake held the poll open, as Telegram does


async def test_the_connections_open_again_after_a_shutdown(api: FakeTelegramAPI) -> None:
    """PTB shuts a bot's requests down when its application stops and initialises them again
    when it starts."""
    request = AiohttpRequest()
    for text in ("một", "hai"):
        async with Bot(api.token, base_url=api.base_url, request=request) as bot:
            await bot.send_message(CHAT, text)
        with pytest.raises(NetworkError, match="not initialized"):
            await request.post(f"{api.base_url}{api.token}/sendMessage")  # between the two
    assert [c.text for c in api.calls("sendMessage", chat_id=CHAT)] == ["một", "hai"]


async def test_calls_share_the_pool_concurrently(api: FakeTelegramAPI) -> None:
    api.latency = 0.2
    request = AiohttpRequest(connection_pool_size=8)
    async with Bot(api.token, base_url=api.base_url, request=request) as bot:
        await asyncio.gather(*(bot.send_message(CHAT + i, "x") for i in range(8)))
    calls = api.calls("sendMessage")
    assert len(calls) == 8
    # Every request had reached the fake before it answered any: eight connections at once.
    assert max(c.arrived or 0.0 for c in calls) < min(c.timestamp for c in calls)
