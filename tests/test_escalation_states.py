"""Every state and transition of an escalation's life, the top of the hierarchy included.

Driven through the handlers on both databases (the end-to-end chat path is in
test_escalations.py): a late case opens an escalation, heads press and write notes through
`ChatContext`, the citizen rates the handling, and the SLA sweep runs per item on a clock the
test moves. What the heads would read is what the outbox holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from handlers import escalations
from handlers.case_view import case_view_by_code
from handlers.chat import ChatContext
from handlers.clock import FakeClock
from handlers.escalation_states import (
    TABLE,
    Event,
    Guard,
    State,
    Step,
    needs_guard,
    status_of,
    transition,
)
from handlers.intake import case_posted
from handlers.intake_schema import parse_case
from handlers.policy import EscalationPolicy, SurveyPolicy
from handlers.units import load_units, parse_units_file
from handlers.working_time import AlwaysCalendar, make_calendar
from storage.db import SessionFactory
from storage.models import Escalation, EscalationEvent, EscalationStatus, OutboxMessage
from tests.contract_data import units_yaml
from tests.telegram_support import case_body

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
CITY_HEAD = "900"
DISTRICT_HEAD = "901"
CITIZEN = "777"
CASE_CODE = "000.00.12.H26-261122-0001"
CHANNELS = ("telegram",)
UNITS = units_yaml(recipients=False)
ALWAYS = SurveyPolicy(
    quiet_hours=None,
    escalation=EscalationPolicy(
        ack_sla=timedelta(hours=8), resolve_sla=timedelta(days=2), calendar=AlwaysCalendar()
    ),
)


# --- the table itself ------------------------------------------------------------------------


def test_every_transition_leads_to_a_state_with_the_right_status() -> None:
    for (state, event, guard), move in TABLE.items():
        assert move.step != Step.IGNORE, (state, event, guard)
        if move.step in (Step.CLIMB, Step.REOPEN_ABOVE):
            assert guard == Guard.ABOVE
        if move.step == Step.REMIND_OVERDUE:
            assert guard == Guard.TOP and move.to in (
                State.OPEN_OVERDUE,
                State.ACKNOWLEDGED_OVERDUE,
            )
        assert status_of(move.to) in EscalationStatus


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_every_state_answers_every_event(state: State, event: Event) -> None:
    guards = [Guard.ABOVE, Guard.TOP] if needs_guard(state, event) else [Guard.ANY]
    for guard in guards:
        move = transition(state, event, guard)
        if move.step == Step.IGNORE:
            assert move.to == state  # an event a state does not expect changes nothing
    unresolved = state != State.RESOLVED
    # The deadline moves every unresolved state on; nothing moves a resolved one but a reopen.
    assert (transition(state, Event.DEADLINE_PASSED, Guard.TOP).step != Step.IGNORE) == unresolved
    assert (transition(state, Event.RESOLVED).step == Step.RESOLVE) == unresolved
    assert (transition(state, Event.REOPENED, Guard.TOP).step != Step.IGNORE) == (not unresolved)


def test_at_the_top_nothing_climbs_and_nothing_is_dropped() -> None:
    for state in State:
        move = transition(state, Event.DEADLINE_PASSED, Guard.TOP)
        assert move.step != Step.CLIMB
        if state != State.RESOLVED:
            # Every unresolved state keeps a deadline at the top: the sweep comes back.
            assert move.to != State.RESOLVED


# --- the life of one escalation --------------------------------------------------------------


@dataclass
class Life:
    sessions: SessionFactory
    clock: FakeClock
    policy: SurveyPolicy

    def ctx(self, chat: str) -> ChatContext:
        return ChatContext("telegram", chat, self.clock.now(), self.policy, channels=CHANNELS)

    async def open(self, unit_code: str = "HN-LB", units: str = UNITS) -> None:
        """A case resolved a day late: the `late` escalation opens, routed at once."""
        async with self.sessions.begin() as session:
            await load_units(session, parse_units_file(units))
            body = case_body(
                unit_code=unit_code,
                status="resolved",
                resolved_at="2026-11-23T08:00:00+07:00",
                due_at="2026-11-22T08:00:00+07:00",
            )
            body["citizen"] = {**body["citizen"], "telegram_chat_id": int(CITIZEN)}
            await case_posted(
                session, parse_case(body), self.clock.now(), self.policy, channels=CHANNELS
            )

    async def sweep(self) -> int:
        """The SLA sweep as bot/jobs/sweeps.py runs it: due ids, each in its own transaction."""
        async with self.sessions() as session:
            due = await escalations.due_for_sla(session, self.clock.now())
        moved = 0
        for escalation_id in due:
            async with self.sessions.begin() as session:
                moved += await escalations.deadline_passed(
                    session, escalation_id, self.clock.now(), self.policy, CHANNELS
                )
        return moved

    async def press(self, chat: str, action: str) -> None:
        async with self.sessions.begin() as session:
            ref = (await session.execute(select(Escalation.ref))).scalar_one()
            await escalations.escalation_pressed(session, self.ctx(chat), ref, action)

    async def resolve(self, chat: str, note: str = "Đã chấn chỉnh") -> None:
        await self.press(chat, escalations.RESOLVE)
        async with self.sessions.begin() as session:
            assert await escalations.note_received(session, self.ctx(chat), note)

    async def rate(self, score: int) -> None:
        async with self.sessions.begin() as session:
            ref = (await session.execute(select(Escalation.ref))).scalar_one()
            await escalations.recovery_pressed(session, self.ctx(CITIZEN), ref, str(score))

    async def get(self) -> Escalation:
        async with self.sessions() as session:
            return (await session.execute(select(Escalation))).scalar_one()

    async def events(self) -> list[str]:
        async with self.sessions() as session:
            query = select(EscalationEvent.kind).order_by(EscalationEvent.id)
            return list((await session.execute(query)).scalars())

    async def texts_to(self, chat: str) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            query = (
                select(OutboxMessage.payload)
                .where(OutboxMessage.address == chat)
                .order_by(OutboxMessage.id)
            )
            return list((await session.execute(query)).scalars())

    async def view(self) -> dict[str, Any]:
        async with self.sessions() as session:
            item: dict[str, Any] = (await case_view_by_code(session, CASE_CODE, lambda _: {}))[
                "escalations"
            ][0]
            return item

    def advance(self, delta: timedelta) -> datetime:
        return self.clock.advance(delta)


def buttons(message: dict[str, Any]) -> list[str]:
    return [button["label"] for row in message.get("buttons", []) for button in row]


@pytest.fixture
def life(sessions: SessionFactory, clock: FakeClock) -> Life:
    return Life(sessions, clock, ALWAYS)


async def test_open_then_acknowledged(life: Life) -> None:
    await life.open()
    assert (await life.get()).status == "open"
    await life.press(DISTRICT_HEAD, escalations.ACK)
    escalation = await life.get()
    assert escalation.status == "acknowledged" and escalation.acknowledged_at == life.clock.now()
    await life.press(DISTRICT_HEAD, escalations.ACK)  # a second press changes nothing
    assert await life.events() == ["opened", "sent", "acknowledged"]
    view = await life.view()
    assert view["overdue"] is False and view["due_at"] == escalation.resolve_due_at.isoformat()


async def test_open_then_resolved_without_acknowledging(life: Life) -> None:
    await life.open()
    await life.resolve(DISTRICT_HEAD)
    escalation = await life.get()
    assert escalation.status == "resolved" and escalation.acknowledged_at is not None
    assert (await life.view())["due_at"] is None
    assert "Đã chấn chỉnh" in (await life.texts_to(CITIZEN))[-2]["text"]
    life.advance(timedelta(days=30))
    assert await life.sweep() == 0  # nothing moves a resolved escalation


async def test_open_past_the_ack_deadline_climbs(life: Life) -> None:
    await life.open()
    life.advance(timedelta(hours=7, minutes=59))
    assert await life.sweep() == 0
    life.advance(timedelta(minutes=1))
    assert await life.sweep() == 1
    escalation = await life.get()
    assert (escalation.status, escalation.level) == ("open", 2)
    assert escalation.ack_due_at == life.clock.now() + timedelta(hours=8)
    assert await life.events() == ["opened", "sent", "climbed", "sent"]
    assert "Tiếp nhận" in buttons((await life.texts_to(CITY_HEAD))[-1])
    assert not buttons((await life.texts_to(DISTRICT_HEAD))[-1])  # the lower head is told


async def test_open_at_the_top_stays_overdue_and_its_head_is_reminded(life: Life) -> None:
    await life.open(unit_code="HN")
    deadline = (await life.get()).ack_due_at
    life.advance(timedelta(hours=8))
    assert await life.sweep() == 1
    escalation = await life.get()
    assert (escalation.status, escalation.level, escalation.overdue_since) == ("open", 1, deadline)
    assert escalation.ack_due_at == life.clock.now() + timedelta(days=1)
    reminder = (await life.texts_to(CITY_HEAD))[-1]
    assert "Quá hạn" in reminder["text"] and buttons(reminder) == ["Tiếp nhận", "Đã xử lý"]
    view = await life.view()
    assert view["overdue"] is True and view["due_at"] == deadline.isoformat()
    assert view["status"] == "open" and view["level"] == 1
    life.advance(timedelta(hours=23))
    assert await life.sweep() == 0
    life.advance(timedelta(hours=1))
    assert await life.sweep() == 1  # the next day, again
    assert (await life.get()).overdue_since == deadline
    assert await life.events() == ["opened", "sent", "overdue", "reminded"]
    # Acknowledged at last: no longer overdue, the resolution deadline counts.
    await life.press(CITY_HEAD, escalations.ACK)
    view = await life.view()
    assert view["status"] == "acknowledged" and view["overdue"] is False


async def test_overdue_at_the_top_climbs_once_a_head_above_can_take_it(life: Life) -> None:
    unreachable_city = UNITS.replace("head: {name: Nguyễn Văn An, telegram_chat_id: 900}", "")
    await life.open(units=unreachable_city)
    life.advance(timedelta(hours=8))
    assert await life.sweep() == 1
    assert (await life.view())["overdue"] is True
    async with life.sessions.begin() as session:  # the city's head joins
        await load_units(session, parse_units_file(UNITS))
    life.advance(timedelta(days=1))
    assert await life.sweep() == 1
    escalation = await life.get()
    assert (escalation.level, escalation.status, escalation.overdue_since) == (2, "open", None)
    assert await life.events() == ["opened", "sent", "overdue", "climbed", "sent"]


async def test_overdue_then_resolved(life: Life) -> None:
    await life.open(unit_code="HN")
    life.advance(timedelta(hours=8))
    await life.sweep()
    await life.resolve(CITY_HEAD)
    view = await life.view()
    assert (view["status"], view["overdue"], view["due_at"]) == ("resolved", False, None)


async def test_acknowledged_past_the_resolve_deadline_is_reminded_once_then_climbs(
    life: Life,
) -> None:
    await life.open()
    await life.press(DISTRICT_HEAD, escalations.ACK)
    life.advance(timedelta(days=2))
    assert await life.sweep() == 1
    escalation = await life.get()
    assert escalation.status == "acknowledged" and escalation.resolve_reminded_at is not None
    assert buttons((await life.texts_to(DISTRICT_HEAD))[-1]) == ["Đã xử lý"]
    life.advance(timedelta(hours=8))
    assert await life.sweep() == 1
    escalation = await life.get()
    assert (escalation.status, escalation.level, escalation.acknowledged_at) == ("open", 2, None)
    assert await life.events() == [
        "opened",
        "sent",
        "acknowledged",
        "reminded",
        "climbed",
        "sent",
    ]


async def test_acknowledged_at_the_top_past_the_resolve_deadline_stays_acknowledged(
    life: Life,
) -> None:
    """The reproduced bug: it was reset to open, lost its acknowledgement, recorded a climb
    that did not happen and lost its deadline, so that no sweep ever selected it again."""
    await life.open(unit_code="HN")
    await life.press(CITY_HEAD, escalations.ACK)
    acknowledged_at = (await life.get()).acknowledged_at
    life.advance(timedelta(days=2))
    assert await life.sweep() == 1  # the one reminder to resolve
    missed = (await life.get()).resolve_due_at
    life.advance(timedelta(hours=8))
    assert await life.sweep() == 1
    escalation = await life.get()
    assert escalation.status == "acknowledged" and escalation.acknowledged_at == acknowledged_at
    assert escalation.overdue_since == missed and escalation.level == 1
    assert escalation.resolve_due_at == life.clock.now() + timedelta(days=1)
    assert "climbed" not in await life.events()
    view = await life.view()
    assert (view["status"], view["overdue"], view["due_at"]) == (
        "acknowledged",
        True,
        missed.isoformat(),
    )
    reminder = (await life.texts_to(CITY_HEAD))[-1]
    assert "Quá hạn" in reminder["text"] and buttons(reminder) == ["Đã xử lý"]
    for _day in range(3):  # reminded every day, never dropped
        before = len(await life.texts_to(CITY_HEAD))
        life.advance(timedelta(days=1))
        assert await life.sweep() == 1
        assert len(await life.texts_to(CITY_HEAD)) == before + 1
    assert await life.events() == [
        "opened",
        "sent",
        "acknowledged",
        "reminded",
        "overdue",
        "reminded",
        "reminded",
        "reminded",
    ]
    await life.resolve(CITY_HEAD)
    assert (await life.view())["overdue"] is False


async def test_a_rejected_resolution_reopens_one_level_up(life: Life) -> None:
    await life.open()
    await life.resolve(DISTRICT_HEAD)
    await life.rate(1)
    escalation = await life.get()
    assert (escalation.status, escalation.level, escalation.resolved_at) == ("open", 2, None)
    assert (await life.events())[-2:] == ["reopened", "sent"]


async def test_a_rejected_resolution_at_the_top_goes_back_to_the_same_head(life: Life) -> None:
    await life.open(unit_code="HN")
    await life.resolve(CITY_HEAD)
    await life.rate(2)
    escalation = await life.get()
    assert (escalation.status, escalation.level) == ("open", 1)
    assert escalation.ack_due_at == life.clock.now() + timedelta(hours=8)  # not lost
    assert "Tiếp nhận" in buttons((await life.texts_to(CITY_HEAD))[-1])
    life.advance(timedelta(hours=8))
    assert await life.sweep() == 1
    assert (await life.view())["overdue"] is True


async def test_a_happy_rating_keeps_it_resolved(life: Life) -> None:
    await life.open()
    await life.resolve(DISTRICT_HEAD)
    await life.rate(5)
    assert (await life.get()).status == "resolved"
    assert "reopened" not in await life.events()


async def test_with_nobody_reachable_it_still_becomes_overdue(life: Life) -> None:
    await life.open(units=UNITS.replace("telegram_chat_id", "zalo_user_id"))
    assert await life.events() == ["opened", "skipped", "skipped", "unrouted"]
    life.advance(timedelta(hours=8))
    assert await life.sweep() == 1
    assert (await life.view())["overdue"] is True
    assert await life.texts_to(CITY_HEAD) == []


def _local(day: int, hour: int) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=HANOI).astimezone(UTC)


async def test_overdue_reminders_follow_the_working_calendar(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    calendar = make_calendar("vn", HANOI)
    policy = SurveyPolicy(
        quiet_hours=None,
        escalation=EscalationPolicy(ack_sla=timedelta(hours=8), calendar=calendar),
    )
    life = Life(sessions, clock, policy)
    clock.set(_local(26, 9))  # Thursday 09:00
    await life.open(unit_code="HN")
    clock.set(_local(27, 8))  # Friday 08:00: eight working hours later
    assert await life.sweep() == 1
    assert (await life.get()).ack_due_at == _local(30, 8)  # Monday, not Saturday
    clock.set(_local(29, 12))  # Sunday
    assert await life.sweep() == 0
    clock.set(_local(30, 8))
    assert await life.sweep() == 1
