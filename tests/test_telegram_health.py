"""The Telegram channel's state follows the Bot API after start-up too: a failed long poll
makes it `unreachable` (its messages wait in the outbox), the next good one `ok` again."""

from __future__ import annotations

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
