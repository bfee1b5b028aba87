"""Complaints reach the unit head in chat, climb past their SLA, and come back to the citizen.

Driven end to end: the real API, the real python-telegram-bot Application against the fake Bot
API, the real dispatcher, sweeps on an injected clock, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.cli.heads import heads_invite
from bot.jobs.sweeps import escalation_sweep
from handlers.units import load_units, parse_units_file
from storage.models import Escalation, EscalationEvent
from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.telegram_support import CASE, Rig, RigFactory, case_body, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
CITIZEN = 5554001
CITY_HEAD = 900
DISTRICT_HEAD = 901
OTHER_HEAD = 902
STRANGER = 5554999
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}

MORE_UNITS = """
units:
  - code: HN-BD
    name: UBND quận Ba Đình
    parent: HN
    head: {name: Phạm Văn Cường, telegram_chat_id: 902}
  - code: HN-TT
    name: UBND huyện Thanh Trì
    parent: HN
"""


def buttons(message: SentCall) -> list[str]:
    return [text for text, _ in FakeTelegramAPI.buttons(message)]


def is_card(message: SentCall) -> bool:
    return "Tiếp nhận" in buttons(message)


async def more_units(rig: Rig, text: str = MORE_UNITS) -> None:
    async with rig.services.sessions.begin() as session:
        await load_units(session, parse_units_file(text))


async def survey(rig: Rig, answers: list[str], comment: str | None = None, **case: Any) -> None:
    """A citizen links, the case is resolved, and they answer the short survey."""
    await rig.post_case(case_body(**case), 201)
    await rig.link(CITIZEN, case.get("case_code", CASE["case_code"]))
    await rig.post_case(case_body(**{**case, **RESOLVED}), 200)
    await rig.sweep()
    await rig.api.wait_for_message(CITIZEN, lambda m: "Bắt đầu" in buttons(m))
    await rig.answer(CITIZEN, "Bắt đầu")
    for label in answers:
        await rig.answer(CITIZEN, label)
    if comment is None:
        await rig.answer(CITIZEN, "Bỏ qua")
    else:
        await rig.say(CITIZEN, comment)


async def escalations(rig: Rig) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await rig.get_case(CASE["case_code"]))["escalations"]
    return items


async def events(rig: Rig) -> list[str]:
    async with rig.services.sessions() as session:
        rows = await session.execute(select(EscalationEvent).order_by(EscalationEvent.id))
        return [row.kind for row in rows.scalars()]


async def test_low_rating_reaches_the_district_head_with_an_action_card(rig: Rig) -> None:
    await survey(rig, ["5", "4", "1", "4", "4", "Không"], comment="Chờ quá lâu")
    card = await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    assert CASE["case_code"] in card.text
    assert "UBND quận Long Biên" in card.text and "Chứng thực bản sao từ bản chính" in card.text
    assert "20/11/2026" in card.text and "25/11/2026" in card.text
    assert "(trước hạn)" in card.text  # resolved 23/11, promised 25/11
    assert "Công chức 1/5" in card.text and "Chờ quá lâu" in card.text
    assert buttons(card) == ["Tiếp nhận", "Đã xử lý"]
    assert "Nguyễn Thị Lan" not in rig.api.last_message(CITIZEN).text  # the officer stays unnamed
    thanks = rig.api.last_message(CITIZEN)
    assert "người đứng đầu UBND quận Long Biên" in thanks.text and not buttons(thanks)
    [item] = await escalations(rig)
    assert item["reason"] == "low_rating" and item["status"] == "open"
    assert item["level"] == 1 and item["unit_code"] == "HN-LB"
    assert rig.api.messages_to(CITY_HEAD) == []


async def test_informal_payment_is_critical(rig: Rig) -> None:
    await survey(rig, ["4", "4", "4", "4", "4", "Có"])
    card = await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    assert "Đặc biệt nghiêm trọng" in card.text
    [item] = await escalations(rig)
    assert item["reason"] == "informal_payment" and item["severity"] == "critical"


async def test_a_complaining_comment_opens_a_complaint(rig: Rig) -> None:
    await survey(rig, ["4", "4", "4", "4", "4", "Không"], comment="Thái độ cán bộ hách dịch")
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    [item] = await escalations(rig)
    assert item["reason"] == "complaint" and item["severity"] == "normal"


async def test_a_happy_citizen_escalates_nothing(rig: Rig) -> None:
    await survey(rig, ["5", "4", "5", "4", "4", "Không"], comment="Rất tốt")
    assert await escalations(rig) == []
    assert "người đứng đầu" not in rig.api.last_message(CITIZEN).text


async def test_acknowledge_resolve_and_the_closed_loop(rig: Rig) -> None:
    await survey(rig, ["2", "4", "4", "4", "4", "Không"])
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    acked = await rig.answer(DISTRICT_HEAD, "Tiếp nhận")
    assert CASE["case_code"] in acked.text and buttons(acked) == ["Đã xử lý"]
    assert (await escalations(rig))[0]["status"] == "acknowledged"
    prompt = await rig.answer(DISTRICT_HEAD, "Đã xử lý")
    assert not buttons(prompt)
    mark = rig.api.mark()
    done = await rig.say(DISTRICT_HEAD, "Đã nhắc nhở bộ phận một cửa, bổ sung biển chỉ dẫn")
    assert CASE["case_code"] in done.text
    outcome = await rig.api.wait_for_message(CITIZEN, since=mark)
    assert "bổ sung biển chỉ dẫn" in outcome.text
    question = await rig.api.wait_for_message(CITIZEN, lambda m: len(buttons(m)) == 5, since=mark)
    assert [b[0] for b in buttons(question)] == ["1", "2", "3", "4", "5"]
    item = (await escalations(rig))[0]
    assert item["status"] == "resolved" and item["resolved_at"] is not None
    await rig.answer(CITIZEN, "5")
    async with rig.services.sessions() as session:
        escalation = (await session.execute(select(Escalation))).scalar_one()
    assert escalation.recovery_rating == 5
    assert escalation.resolution_note == "Đã nhắc nhở bộ phận một cửa, bổ sung biển chỉ dẫn"
    assert await events(rig) == ["opened", "sent", "acknowledged", "resolved", "recovery"]


async def test_an_unhappy_answer_reopens_it_one_level_up(rig: Rig) -> None:
    await survey(rig, ["1", "4", "4", "4", "4", "Không"])
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    await rig.answer(DISTRICT_HEAD, "Đã xử lý")
    mark = rig.api.mark()
    await rig.say(DISTRICT_HEAD, "Đã xử lý xong")
    await rig.api.wait_for_message(CITIZEN, lambda m: len(buttons(m)) == 5, since=mark)
    await rig.answer(CITIZEN, "1")
    card = await rig.api.wait_for_message(CITY_HEAD, is_card)
    assert "UBND quận Long Biên" in card.text
    item = (await escalations(rig))[0]
    assert item["status"] == "open" and item["level"] == 2 and item["unit_code"] == "HN"
    assert "reopened" in await events(rig)


async def test_strangers_and_other_heads_change_nothing(rig: Rig) -> None:
    await more_units(rig)
    await survey(rig, ["1", "4", "4", "4", "4", "Không"])
    card = await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    data = dict(FakeTelegramAPI.buttons(card))["Tiếp nhận"]
    for chat in (STRANGER, OTHER_HEAD, CITY_HEAD, CITIZEN):
        await rig.say(chat, "/help")
        rig.api.push_callback(chat, data)
    await rig.api.wait_until(
        lambda: (
            sum(
                "không có quyền" in str(c.params.get("text", "")).lower()
                or "not authorised" in str(c.params.get("text", "")).lower()
                for c in rig.api.calls("answerCallbackQuery")
            )
            >= 4
        )
    )
    assert (await escalations(rig))[0]["status"] == "open"
    assert await events(rig) == ["opened", "sent"]


async def test_it_climbs_to_the_city_head_past_the_acknowledgement_sla(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(working_calendar="always", escalation_ack_sla="8h")
    await survey(rig, ["1", "4", "4", "4", "4", "Không"])
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    rig.clock.advance(timedelta(hours=7, minutes=59))
    assert await escalation_sweep(rig.services) == 0
    rig.clock.advance(timedelta(minutes=1))
    assert await escalation_sweep(rig.services) == 1
    card = await rig.api.wait_for_message(CITY_HEAD, is_card)
    assert "CHUYỂN LÊN CẤP TRÊN" in card.text and "UBND quận Long Biên" in card.text
    notice = await rig.api.wait_for_message(DISTRICT_HEAD, lambda m: "UBND thành phố" in m.text)
    assert not buttons(notice)
    item = (await escalations(rig))[0]
    assert item["level"] == 2 and item["unit_code"] == "HN" and item["status"] == "open"
    # The city head acknowledges and resolves it; the citizen hears back.
    await rig.answer(CITY_HEAD, "Tiếp nhận")
    await rig.answer(CITY_HEAD, "Đã xử lý")
    mark = rig.api.mark()
    await rig.say(CITY_HEAD, "Đã kiểm điểm cán bộ và xin lỗi công dân")
    outcome = await rig.api.wait_for_message(CITIZEN, since=mark)
    assert "kiểm điểm" in outcome.text


async def test_at_the_top_an_unresolved_complaint_stays_and_its_head_is_reminded_daily(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(
        working_calendar="always", escalation_ack_sla="8h", escalation_resolve_sla="2d"
    )
    await survey(rig, ["1", "4", "4", "4", "4", "Không"])
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    rig.clock.advance(timedelta(hours=8))
    assert await escalation_sweep(rig.services) == 1
    await rig.api.wait_for_message(CITY_HEAD, is_card)
    await rig.answer(CITY_HEAD, "Tiếp nhận")
    rig.clock.advance(timedelta(days=2))
    assert await escalation_sweep(rig.services) == 1  # reminded once to resolve
    await rig.api.wait_for_message(CITY_HEAD, lambda m: "Nhắc việc" in m.text)
    rig.clock.advance(timedelta(hours=8))
    mark = rig.api.mark()
    assert await escalation_sweep(rig.services) == 1  # nowhere to climb: overdue
    reminder = await rig.api.wait_for_message(CITY_HEAD, since=mark)
    assert "Quá hạn" in reminder.text and buttons(reminder) == ["Đã xử lý"]
    [item] = await escalations(rig)
    assert (item["status"], item["level"], item["overdue"]) == ("acknowledged", 2, True)
    assert item["acknowledged_at"] is not None and item["due_at"] is not None
    rig.clock.advance(timedelta(days=1))
    mark = rig.api.mark()
    assert await escalation_sweep(rig.services) == 1
    await rig.api.wait_for_message(CITY_HEAD, lambda m: "Quá hạn" in m.text, since=mark)
    # The head acts on the reminder; the citizen hears back and it is no longer overdue.
    await rig.answer(CITY_HEAD, "Đã xử lý")
    mark = rig.api.mark()
    await rig.say(CITY_HEAD, "Đã kiểm điểm cán bộ")
    await rig.api.wait_for_message(CITIZEN, lambda m: "kiểm điểm" in m.text, since=mark)
    [item] = await escalations(rig)
    assert (item["status"], item["overdue"], item["due_at"]) == ("resolved", False, None)


def _local(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=HANOI).astimezone(UTC)


@pytest.mark.parametrize(
    ("opened", "not_yet", "due"),
    [
        # Friday 16:00 before Tết 2026: 1 h on Friday, Tết (16-20/2) and the weekends off,
        # then 7 h from Monday 23/2 08:00.
        (_local(2026, 2, 13, 16), _local(2026, 2, 23, 14, 59), _local(2026, 2, 23, 15)),
        # An ordinary Friday afternoon: the weekend does not count.
        (_local(2026, 11, 27, 15), _local(2026, 11, 30, 13, 59), _local(2026, 11, 30, 14)),
    ],
)
async def test_the_vn_calendar_skips_weekends_and_tet(
    make_rig: RigFactory, opened: datetime, not_yet: datetime, due: datetime
) -> None:
    rig = await make_rig(working_calendar="vn", escalation_ack_sla="8h")
    rig.clock.set(opened)
    resolved = opened.astimezone(HANOI).isoformat()
    dates = {"received_at": "2026-01-05T08:00:00+07:00", "due_at": "2026-12-31T17:00:00+07:00"}
    await rig.post_case(case_body(**dates), 201)
    await rig.link(CITIZEN)
    await rig.post_case(case_body(**dates, status="resolved", resolved_at=resolved), 200)
    await rig.sweep()
    await rig.api.wait_for_message(CITIZEN, lambda m: "Bắt đầu" in buttons(m))
    await rig.answer(CITIZEN, "Bắt đầu")
    for label in ["1", "4", "4", "4", "4", "Không", "Bỏ qua"]:
        await rig.answer(CITIZEN, label)
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    rig.clock.set(not_yet)
    assert await escalation_sweep(rig.services) == 0
    rig.clock.set(due)
    assert await escalation_sweep(rig.services) == 1
    await rig.api.wait_for_message(CITY_HEAD, is_card)


async def test_a_head_who_is_the_rated_officer_is_passed_over(rig: Rig) -> None:
    await more_units(
        rig,
        """
units:
  - code: HN-LB
    name: UBND quận Long Biên
    parent: HN
    head: {name: Lê Thị Bình, telegram_chat_id: 901, officer_code: CB-017}
""",
    )
    await survey(rig, ["1", "4", "4", "4", "4", "Không"])
    await rig.api.wait_for_message(CITY_HEAD, is_card)
    assert not any(is_card(m) for m in rig.api.messages_to(DISTRICT_HEAD))
    item = (await escalations(rig))[0]
    assert item["level"] == 2 and item["unit_code"] == "HN"


async def test_a_unit_without_a_reachable_head_goes_to_its_parent_at_once(rig: Rig) -> None:
    await more_units(rig)
    await survey(rig, ["1", "4", "4", "4", "4", "Không"], unit_code="HN-TT")
    card = await rig.api.wait_for_message(CITY_HEAD, is_card)
    assert "UBND huyện Thanh Trì" in card.text
    item = (await escalations(rig))[0]
    assert item["level"] == 2 and item["unit_code"] == "HN"
    assert await events(rig) == ["opened", "skipped", "sent"]
    trail = [(e["kind"], e["level"], e["unit_code"], e.get("why")) for e in item["events"]]
    assert trail == [
        ("opened", 1, "HN-TT", None),
        ("skipped", 1, "HN-TT", "no_reachable_head"),
        ("sent", 2, "HN", None),
    ]


async def test_resolve_sla_reminds_once_then_climbs(make_rig: RigFactory) -> None:
    rig = await make_rig(
        working_calendar="always", escalation_ack_sla="8h", escalation_resolve_sla="2d"
    )
    await survey(rig, ["1", "4", "4", "4", "4", "Không"])
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    await rig.answer(DISTRICT_HEAD, "Tiếp nhận")
    rig.clock.advance(timedelta(days=2))
    mark = rig.api.mark()
    assert await escalation_sweep(rig.services) == 1
    reminder = await rig.api.wait_for_message(DISTRICT_HEAD, since=mark)
    assert buttons(reminder) == ["Đã xử lý"]
    assert (await escalations(rig))[0]["level"] == 1
    rig.clock.advance(timedelta(hours=8))
    assert await escalation_sweep(rig.services) == 1
    await rig.api.wait_for_message(CITY_HEAD, is_card)
    assert (await escalations(rig))[0]["level"] == 2
    assert await events(rig) == ["opened", "sent", "acknowledged", "reminded", "climbed", "sent"]


async def test_the_sweep_catches_up_after_downtime(make_rig: RigFactory) -> None:
    rig = await make_rig(working_calendar="always", escalation_ack_sla="8h")
    await survey(rig, ["1", "4", "4", "4", "4", "Không"])
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    rig.clock.advance(timedelta(days=3))  # the process was down; no sweep ran
    assert await escalation_sweep(rig.services) == 1
    await rig.api.wait_for_message(CITY_HEAD, is_card)


async def test_a_head_joins_by_invite_link(rig: Rig) -> None:
    await more_units(rig)
    link = await heads_invite(rig.services, "HN-TT")
    assert link.startswith("https://t.me/sipas_test_bot?start=")
    token = link.split("start=")[1]
    welcome = await rig.say(7770001, f"/start {token}")
    assert "UBND huyện Thanh Trì" in welcome.text
    again = await rig.say(7770002, f"/start {token}")  # one time only
    assert "không hợp lệ" in again.text
    await survey(rig, ["1", "4", "4", "4", "4", "Không"], unit_code="HN-TT")
    await rig.api.wait_for_message(7770001, is_card)
    assert (await escalations(rig))[0]["unit_code"] == "HN-TT"


async def test_the_case_view_shows_the_audit_trail(make_rig: RigFactory) -> None:
    rig = await make_rig(working_calendar="always", escalation_ack_sla="8h")
    await survey(rig, ["1", "4", "4", "4", "4", "Không"])
    await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    rig.clock.advance(timedelta(hours=8))
    await escalation_sweep(rig.services)
    await rig.api.wait_for_message(CITY_HEAD, is_card)
    await rig.answer(CITY_HEAD, "Tiếp nhận")
    [item] = await escalations(rig)
    trail = [(e["kind"], e["level"], e["unit_code"]) for e in item["events"]]
    assert trail == [
        ("opened", 1, "HN-LB"),
        ("sent", 1, "HN-LB"),
        ("climbed", 1, "HN-LB"),
        ("sent", 2, "HN"),
        ("acknowledged", 2, "HN"),
    ]
    # No chat address (personal data) in the trail; a skip or climb says why, a note is kept.
    allowed = {"kind", "level", "unit_code", "at", "why", "note", "severity", "rating"}
    assert all({"kind", "level", "unit_code", "at"} <= set(e) <= allowed for e in item["events"])


async def test_a_case_resolved_late_escalates_once(rig: Rig) -> None:
    late = {"status": "resolved", "resolved_at": "2026-11-26T09:00:00+07:00"}  # due 25/11
    rig.clock.set(datetime(2026, 11, 26, 2, 5, tzinfo=UTC))  # posted just after, 09:05 local
    await rig.post_case(case_body(**late), 201)
    card = await rig.api.wait_for_message(DISTRICT_HEAD, is_card)
    assert "Hồ sơ trả kết quả trễ hẹn" in card.text and "(trễ hạn)" in card.text
    await rig.post_case(case_body(**late), 200)  # a replay opens nothing more
    [item] = await escalations(rig)
    assert item["reason"] == "late" and item["level"] == 1
    on_time = case_body(case_code="C-ON-TIME", **RESOLVED)
    await rig.post_case(on_time, 201)
    assert (await rig.get_case("C-ON-TIME"))["escalations"] == []
