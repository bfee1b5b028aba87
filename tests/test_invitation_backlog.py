"""The invitation sweep is not starved by citizens who never linked a chat."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from handlers.clock import FakeClock
from handlers.intake import case_posted
from handlers.intake_schema import parse_case
from handlers.policy import SurveyPolicy
from handlers.survey_flow import due_invitations, invite_one
from handlers.units import load_units, parse_units_file
from storage.db import SessionFactory
from storage.models import Survey, SurveyStatus
from tests.telegram_support import case_body

POLICY = SurveyPolicy(quiet_hours=None)
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}


async def test_linked_citizens_are_invited_behind_a_backlog_of_unlinked_ones(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    async with sessions.begin() as session:
        await load_units(session, parse_units_file("units: [{code: HN-LB, name: Long Biên}]"))
        for number in range(12):  # more than the sweep takes at once, none reachable
            body = case_body(case_code=f"UNLINKED-{number}", **RESOLVED)
            body["citizen"] = {"name": f"Người {number}", "phone": f"09100000{number:02d}"}
            await case_posted(session, parse_case(body), clock.now(), POLICY)
    clock.advance(timedelta(minutes=1))
    async with sessions.begin() as session:
        linked = case_body(case_code="LINKED", **RESOLVED)
        linked["citizen"] = {"name": "Trần Văn Minh", "telegram_chat_id": 777}
        await case_posted(session, parse_case(linked), clock.now(), POLICY)
    clock.advance(timedelta(minutes=1))

    async with sessions() as session:
        due = await due_invitations(session, clock.now(), POLICY, ["telegram"], limit=5)
    assert len(due) == 1
    async with sessions.begin() as session:
        assert await invite_one(session, due[0], clock.now(), POLICY, ["telegram"])
    async with sessions() as session:
        statuses = list((await session.execute(select(Survey.status))).scalars())
    assert statuses.count(SurveyStatus.INVITED) == 1
    assert statuses.count(SurveyStatus.SCHEDULED) == 12
