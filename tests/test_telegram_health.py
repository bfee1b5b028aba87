"""The Telegram channel's state follows the Bot API after start-up too: a failed long poll
makes it `unreachable` (its messages wait in the outbox), the next good one `ok` again."""

from __future__ import annotations

from pathlib import Path

from pytest_aiohttp import AiohttpClient

from bot.app import build_services
from bot.channels.telegram.channel import SECRET_HEADER, WEBHOOK_PATH, configure_telegram
from bot.config import load_settings
from bot.http.api import create_web_app
from tests.cli_support import free_port
from tests.telegram_support import CASE, Rig, case_body, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

CHAT = 5150


async def test_a_bot_api_outage_after_start_up_holds_messages_until_it_is_over(rig: Rig) -> None:
    channels = rig.services.channels
    assert channels.get("telegram") == "ok"

    rig.api.fail_next("getUpdates", 502, count=3)
    rig.api.push_text(CHAT, "xin chào")  # ends the long poll in flight; the next ones fail
    await rig.api.wait_until(
        lambda: channels.get("telegram") == "unreachable", timeout=30, message="not unreachable"
    )
    await rig.api.wait_until(
        lambda: channels.get("telegram") == "ok", timeout=30, message="not ok again"
    )

    # What is queued now goes out: the dispatcher runs again with the channel.
    body = case_body(
        status="delayed",
        citizen={**CASE["citizen"], "telegram_chat_id": CHAT},
        delay={"new_due_at": "2026-12-02T17:00:00+07:00", "reason": "Chờ xác minh"},
    )
    await rig.post_case(body, 201)
    letter = await rig.api.wait_for_message(CHAT, lambda m: "XIN LỖI" in m.text, timeout=30)
    assert CASE["case_code"] in letter.text


async def test_webhook_updates_are_refused_with_503_until_the_channel_is_up(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'sipas.db'}",
        telegram_token="123456:TEST-TOKEN",
        telegram_api_url=f"http://127.0.0.1:{free_port()}/bot",  # nothing listens there
        telegram_mode="webhook",
        telegram_webhook_secret="s3cret",
        public_url="https://gopy.example.gov.vn",
    )
    services = build_services(settings)
    try:
        configure_telegram(services)  # configured, not started: Telegram cannot be reached
        client = await aiohttp_client(create_web_app(services))
        update = {"update_id": 1, "message": {"message_id": 1, "date": 0, "chat": {"id": 1}}}
        answer = await client.post(WEBHOOK_PATH, json=update, headers={SECRET_HEADER: "s3cret"})
        assert answer.status == 503  # Telegram delivers it again later
        answer = await client.post(WEBHOOK_PATH, json=update)
        assert answer.status == 403  # the secret is checked first, as always
    finally:
        await services.engine.dispose()
