"""Seeding for the digest tests: units and completed surveys written straight to the database,
so that each test states exactly the answers whose figures it checks."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.questionnaire import load_questionnaire
from handlers.units import load_units, parse_units_file
from storage.models import (
    Answer,
    Case,
    CaseStatus,
    Officer,
    Procedure,
    Survey,
    SurveyStatus,
    Unit,
)

# Three levels: the city, two districts, a ward below one of them.
TREE_YAML = """
units:
  - code: HN
    name: UBND thành phố Hà Nội
    head: {name: Nguyễn Văn An, telegram_chat_id: 900}
  - code: HN-LB
    name: UBND quận Long Biên
    parent: HN
    head: {name: Lê Thị Bình, telegram_chat_id: 901}
  - code: HN-LB-BD
    name: UBND phường Bồ Đề
    parent: HN-LB
    head: {name: Phạm Văn Cường, telegram_chat_id: 902}
  - code: HN-BD
    name: UBND quận Ba Đình
    parent: HN
digest_recipients:
  - {name: Sở Nội vụ Hà Nội, telegram_chat_id: 950, scope: HN}
  - {name: Văn phòng quận Long Biên, zalo_user_id: z951, scope: HN-LB}
"""

SHORT_FACTORS = ("access", "procedure", "civil_servant", "result", "feedback_handling")
_codes = itertools.count(1)


async def load_tree(session: AsyncSession, text: str = TREE_YAML) -> None:
    await load_units(session, parse_units_file(text))


async def _procedure(session: AsyncSession) -> Procedure:
    found = await session.scalar(select(Procedure).where(Procedure.code == "1.001193"))
    if found is None:
        found = Procedure(code="1.001193", name="Đăng ký khai sinh", field="Hộ tịch")
        session.add(found)
        await session.flush()
    return found


async def _officer(session: AsyncSession, code: str, unit_id: int) -> Officer:
    found = await session.scalar(select(Officer).where(Officer.code == code))
    if found is None:
        found = Officer(code=code, name=f"Cán bộ {code}", unit_id=unit_id)
        session.add(found)
        await session.flush()
    return found


async def add_case(
    session: AsyncSession,
    unit_code: str,
    *,
    received_at: datetime,
    due_at: datetime,
    resolved_at: datetime | None = None,
    status: str = CaseStatus.RESOLVED,
    officer_code: str | None = None,
) -> Case:
    unit = await session.scalar(select(Unit).where(Unit.code == unit_code))
    assert unit is not None, unit_code
    officer = await _officer(session, officer_code, unit.id) if officer_code else None
    case = Case(
        case_code=f"T-{next(_codes):07d}",
        unit_id=unit.id,
        procedure_id=(await _procedure(session)).id,
        officer_id=officer.id if officer else None,
        status=status,
        received_at=received_at,
        due_at=due_at,
        resolved_at=resolved_at,
        body_hash="x",
    )
    session.add(case)
    await session.flush()
    return case


async def add_response(
    session: AsyncSession,
    unit_code: str,
    completed_at: datetime,
    ratings: Mapping[str, int | None] | tuple[int | None, ...],
    *,
    questionnaire: str = "sipas-short",
    invited_at: datetime | None = None,
    informal_payment: bool = False,
    comment: str | None = None,
    officer_code: str | None = None,
) -> Survey:
    """A completed survey; `ratings` by question id, or in the short form's factor order."""
    if not isinstance(ratings, Mapping):
        ratings = dict(zip(SHORT_FACTORS, ratings, strict=True))
    form = load_questionnaire(questionnaire)
    case = await add_case(
        session,
        unit_code,
        received_at=completed_at - timedelta(days=5),
        due_at=completed_at - timedelta(days=1),
        resolved_at=completed_at - timedelta(days=2),
        officer_code=officer_code,
    )
    survey = Survey(
        ref=f"r{case.id}",
        case_id=case.id,
        questionnaire=questionnaire,
        status=SurveyStatus.COMPLETED,
        due_at=completed_at - timedelta(hours=2),
        invited_at=invited_at or completed_at - timedelta(hours=1),
        completed_at=completed_at,
    )
    session.add(survey)
    await session.flush()
    for question_id, value in ratings.items():
        question = form.question(question_id)
        session.add(
            Answer(
                survey_id=survey.id,
                question_id=question_id,
                factor=question.factor,
                value_int=value,
                skipped=value is None,
                answered_at=completed_at,
            )
        )
    payment = form.by_role("informal_payment")
    if payment is not None:
        session.add(
            Answer(
                survey_id=survey.id,
                question_id=payment.id,
                value_text="yes" if informal_payment else "no",
                answered_at=completed_at,
            )
        )
    comment_question = form.by_role("comment")
    if comment is not None and comment_question is not None:
        session.add(
            Answer(
                survey_id=survey.id,
                question_id=comment_question.id,
                value_text=comment,
                answered_at=completed_at,
            )
        )
    await session.flush()
    return survey


async def add_invitation(session: AsyncSession, unit_code: str, invited_at: datetime) -> Survey:
    """An invitation sent and not (yet) answered."""
    case = await add_case(
        session,
        unit_code,
        received_at=invited_at - timedelta(days=5),
        due_at=invited_at,
        resolved_at=invited_at - timedelta(hours=1),
    )
    survey = Survey(
        ref=f"r{case.id}",
        case_id=case.id,
        questionnaire="sipas-short",
        status=SurveyStatus.INVITED,
        due_at=invited_at,
        invited_at=invited_at,
    )
    session.add(survey)
    await session.flush()
    return survey
