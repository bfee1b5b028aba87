"""Courtesy messages: the rules as data (matching on folded field and name, by whole words,
paperwork excluded, rules switched off) and, end to end through the rig, congratulations or
condolences sent as soon as a case is resolved, once, and only where a rule applies.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from sqlalchemy import func, select, update

from handlers import courtesy
from handlers.courtesy import CourtesyRule, CourtesyRulesError, load_rules, parse_rules
from handlers.texts import t
from storage.models import CitizenContact, ContactStatus, OutboxMessage
from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.telegram_support import CASE, Rig, case_body, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

CHAT = 5553001
UNIT_NAME = "UBND quận Long Biên"
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}
BIRTH = {"code": "1.001193", "name": "Đăng ký khai sinh", "field": "Hộ tịch"}
DEATH = {"code": "1.000656", "name": "Đăng ký khai tử", "field": "Hộ tịch"}
BUILDING = {
    "code": "1.009994",
    "name": "Cấp giấy phép xây dựng nhà ở riêng lẻ",
    "field": "Xây dựng",
}


def enabled(rules: tuple[CourtesyRule, ...]) -> tuple[CourtesyRule, ...]:
    return tuple(dataclasses.replace(rule, enabled=True) for rule in rules)


SHIPPED = courtesy.default_rules()
RULES = SHIPPED


def buttons(message: SentCall) -> list[str]:
    return [text for text, _ in FakeTelegramAPI.buttons(message)]


def desk_linked(**changes: Any) -> dict[str, Any]:
    """A case whose citizen gave their Telegram chat at the desk."""
    body = case_body(**{"procedure": BIRTH, **changes})
    body["citizen"] = {**CASE["citizen"], "telegram_chat_id": CHAT}
    return body


async def courtesy_rows(rig: Rig) -> int:
    async with rig.services.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.dedupe_key.like("courtesy:%"))
        )
    return int(count or 0)


# --- the rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "field", "template"),
    [
        ("Đăng ký khai sinh", "Hộ tịch", "birth"),
        ("ĐĂNG KÝ KHAI SINH", "HỘ TỊCH", "birth"),
        ("Đăng ký khai sinh có yếu tố nước ngoài", "Hộ tịch", "birth"),
        ("Liên thông: đăng ký khai sinh, thường trú, cấp thẻ BHYT", None, "birth"),
        ("Đăng ký khai tử", "Hộ tịch", "death"),
        ("Đăng ký khai tử, xóa đăng ký thường trú, mai táng phí", "Hộ tịch", "death"),
        ("Đăng ký kết hôn", "Hộ tịch", "marriage"),
        ("Đăng ký kết hôn có yếu tố nước ngoài", "Hộ tịch", "marriage"),
        # Paperwork about a record, not a family event.
        ("Cấp bản sao trích lục khai sinh", "Hộ tịch", None),
        ("Đăng ký lại khai sinh", "Hộ tịch", None),
        ("Đăng ký khai sinh cho người đã có hồ sơ, giấy tờ cá nhân", "Hộ tịch", None),
        ("Cấp bản sao trích lục khai tử", "Hộ tịch", None),
        ("Đăng ký lại kết hôn", "Hộ tịch", None),
        ("Cấp Giấy xác nhận tình trạng hôn nhân", "Hộ tịch", None),
        # A rule names its fields; whole words only.
        ("Đăng ký khai sinh", "Đất đai", None),
        ("Đăng ký khai tuyển", "Hộ tịch", None),
        ("Cấp giấy phép xây dựng nhà ở riêng lẻ", "Xây dựng", None),
    ],
)
def test_template_for_procedures(name: str, field: str | None, template: str | None) -> None:
    assert courtesy.template_for(name, field, RULES) == template


def test_the_shipped_rules_are_on() -> None:
    assert [rule.template for rule in SHIPPED] == ["birth", "death", "marriage"]
    assert all(rule.enabled for rule in SHIPPED)
    assert courtesy.template_for("Đăng ký khai sinh", "Hộ tịch", SHIPPED) == "birth"


def test_every_template_has_a_text_in_both_languages() -> None:
    for rule in SHIPPED:
        for locale in ("vi", "en"):
            assert UNIT_NAME in t(f"courtesy.{rule.template}", locale, unit_name=UNIT_NAME)


def test_rules_written_with_diacritics_and_one_switched_off() -> None:
    rules = load_rules(
        """
rules:
  - template: death
    procedure_keywords: [Khai Tử]
    enabled: false
  - template: marriage
    fields: [Hộ tịch]
    procedure_keywords: [Kết hôn]
"""
    )
    assert courtesy.template_for("Đăng ký khai tử", "Hộ tịch", rules) is None
    assert courtesy.template_for("Đăng ký kết hôn", "Hộ tịch", rules) == "marriage"
    assert courtesy.template_for("Đăng ký kết hôn", None, rules) == "marriage"
    assert courtesy.template_for("Đăng ký kết hôn", "Tư pháp", rules) is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"rules": [{"template": "graduation", "procedure_keywords": ["x"]}]}, "graduation"),
        ({"rules": [{"template": "birth", "procedure_keywords": []}]}, "procedure_keywords"),
        ({"rules": [{"template": "birth", "procedure_keywords": ["!!"]}]}, "no letters"),
        ({"rules": [{"template": "birth", "keywords": ["khai sinh"]}]}, "keywords"),
        ({"rules": [{"template": "birth", "procedure_keywords": "khai sinh"}]}, "list"),
        ([], "rules"),
    ],
)
def test_malformed_rules_are_refused(raw: object, problem: str) -> None:
    with pytest.raises(CourtesyRulesError, match=problem):
        parse_rules(raw, "test")


def test_bad_yaml_is_refused() -> None:
    with pytest.raises(CourtesyRulesError, match="not valid YAML"):
        load_rules("rules: [")


# --- end to end ---------------------------------------------------------------------------


async def test_a_birth_registration_resolved_is_congratulated_at_once_and_once(rig: Rig) -> None:
    await rig.post_case(desk_linked(), 201)
    mark = rig.api.mark()
    await rig.post_case(desk_linked(**RESOLVED), 200)
    congratulations = await rig.api.wait_for_message(CHAT, since=mark)  # before any sweep
    assert congratulations.text == t("courtesy.birth", "vi", unit_name=UNIT_NAME)
    assert congratulations.text.startswith("UBND quận Long Biên xin chúc mừng gia đình")
    assert not buttons(congratulations)

    await rig.post_case(desk_linked(**RESOLVED), 200)  # replayed
    mark = rig.api.mark()
    assert await rig.sweep() == 1
    invitation = await rig.api.wait_for_message(CHAT, since=mark)
    assert buttons(invitation) == ["Bắt đầu", "Để sau"]
    assert await courtesy_rows(rig) == 1
    sent = [m for m in rig.api.messages_to(CHAT) if "chúc mừng" in m.text]
    assert len(sent) == 1


async def test_a_death_registration_gets_condolences(rig: Rig) -> None:
    await rig.post_case(desk_linked(procedure=DEATH, **RESOLVED), 201)
    condolences = await rig.api.wait_for_message(CHAT, count=1)
    assert condolences.text == t("courtesy.death", "vi", unit_name=UNIT_NAME)
    assert "xin thành kính chia buồn" in condolences.text


async def test_english_courtesy_for_an_english_citizen(rig: Rig) -> None:
    body = desk_linked(procedure=DEATH, **RESOLVED)
    body["citizen"]["locale"] = "en"
    await rig.post_case(body, 201)
    condolences = await rig.api.wait_for_message(CHAT, count=1)
    assert condolences.text.startswith("UBND quận Long Biên offers you and your family")


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"procedure": BUILDING, **RESOLVED}, id="no-rule"),
        pytest.param({"status": "rejected", "resolved_at": RESOLVED["resolved_at"]}, id="rejected"),
    ],
)
async def test_no_courtesy_without_a_rule_or_for_a_rejection(
    rig: Rig, changes: dict[str, Any]
) -> None:
    await rig.post_case(desk_linked(), 201)
    mark = rig.api.mark()
    await rig.post_case(desk_linked(**changes), 200)
    assert await rig.sweep() == 1  # both are surveyed
    first = await rig.api.wait_for_message(CHAT, since=mark)
    assert buttons(first) == ["Bắt đầu", "Để sau"]  # the invitation, nothing ahead of it
    assert await courtesy_rows(rig) == 0


async def test_no_courtesy_without_a_chat(rig: Rig) -> None:
    await rig.post_case(case_body(**RESOLVED), 201)
    await rig.link(CHAT)
    assert await courtesy_rows(rig) == 0


async def phone_only_case_linked_in_chat(rig: Rig) -> None:
    """A first case whose citizen (known by phone) then links their chat by the deep link."""
    await rig.post_case(case_body(case_code="C-FIRST"), 201)
    await rig.link(CHAT, "C-FIRST")


async def test_courtesy_reaches_a_chat_linked_earlier_when_the_desk_gives_only_the_phone(
    rig: Rig,
) -> None:
    await phone_only_case_linked_in_chat(rig)
    mark = rig.api.mark()
    await rig.post_case(case_body(case_code="C-BIRTH", procedure=BIRTH, **RESOLVED), 201)
    congratulations = await rig.api.wait_for_message(CHAT, since=mark)
    assert congratulations.text == t("courtesy.birth", "vi", unit_name=UNIT_NAME)


async def test_no_courtesy_when_the_citizens_only_chat_is_unreachable(rig: Rig) -> None:
    await phone_only_case_linked_in_chat(rig)
    async with rig.services.sessions.begin() as session:
        await session.execute(update(CitizenContact).values(status=ContactStatus.UNREACHABLE))
    await rig.post_case(case_body(case_code="C-BIRTH", procedure=BIRTH, **RESOLVED), 201)
    assert await courtesy_rows(rig) == 0
