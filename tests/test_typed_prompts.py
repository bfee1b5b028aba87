"""On Telegram too, every prompt can be answered by typing its number or its words (the
buttons stay the first way): consent, language and /delete were press-only before."""

from __future__ import annotations

from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.telegram_support import CASE, Rig, case_body, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

CHAT = 5558001


def buttons(message: SentCall) -> list[str]:
    return [text for text, _ in FakeTelegramAPI.buttons(message)]


async def test_consent_language_and_delete_answered_by_typing(rig: Rig) -> None:
    await rig.post_case(case_body(), 201)
    token = (await rig.get_case(CASE["case_code"]))["links"]["telegram"].split("start=", 1)[1]
    consent = await rig.say(CHAT, f"/start {token}")
    assert buttons(consent) == ["Đồng ý", "Từ chối"]
    hint = await rig.say(CHAT, "chưa chắc")  # no choice: a hint, then the question again
    assert "gõ số hoặc chữ" in hint.text
    again = await rig.api.wait_for_message(CHAT, lambda m: bool(buttons(m)), since=hint.seq)
    assert buttons(again) == ["Đồng ý", "Từ chối"]
    accepted = await rig.say(CHAT, "Đồng ý")
    assert CASE["case_code"] in accepted.text
    assert (await rig.get_case(CASE["case_code"]))["survey"]["status"] == "not_due"
    languages = await rig.say(CHAT, "/lang")
    assert buttons(languages) == ["Tiếng Việt", "English"]
    switched = await rig.say(CHAT, "2")
    assert "English" in switched.text or "language" in switched.text.lower()
    confirm = await rig.say(CHAT, "/delete")
    assert buttons(confirm) == ["Yes", "No"]
    kept = await rig.say(CHAT, "no")
    assert not buttons(kept)
    nothing = await rig.say(CHAT, "no")  # the prompt was answered: nothing is open now
    assert "no question waiting" in nothing.text
