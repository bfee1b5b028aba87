"""The demo's citizens answer: surveys of resolved sample cases, completed as people would,
and the complaints they open, some already handled by the unit heads.

Answers are written as stored state (nobody real is in the chat), and complaints go through
the real escalation handler, so the case views, cards and audit trails are what a district
would see after a few weeks. Each unit has its own level of satisfaction, so units differ.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.escalations import survey_completed
from handlers.questionnaire import load_questionnaire
from storage.models import Answer, Case, Escalation, EscalationStatus, Survey, SurveyStatus, Unit
from storage.repositories import escalations as escalation_repo

if TYPE_CHECKING:
    from bot.demo import DemoContext

ANSWER_SHARE = 0.65  # of resolved cases whose citizen answered
PRAISE = (
    "Cán bộ hướng dẫn tận tình, dễ hiểu.",
    "Thủ tục nhanh, đúng hẹn. Cảm ơn!",
    "Nơi tiếp nhận sạch sẽ, có chỗ ngồi chờ.",
)
COMPLAINTS = (
    "Phải đi lại nhiều lần mới bổ sung đủ hồ sơ.",
    "Chờ quá lâu, không ai hướng dẫn.",
    "Cán bộ thái độ chưa niềm nở.",
    "Trả kết quả trễ hẹn mà không được báo trước.",
)
NOTES = (
    "Đã làm việc với cán bộ tiếp nhận, nhắc nhở và chấn chỉnh thái độ phục vụ.",
    "Đã bổ sung biển hướng dẫn và bố trí thêm một cán bộ vào giờ cao điểm.",
    "Đã gọi điện xin lỗi công dân và hướng dẫn lại thủ tục.",
)


async def seed_feedback(context: DemoContext) -> None:
    services = context.services
    rng = context.rng
    async with services.sessions.begin() as session:
        units = {u.id: u for u in (await session.execute(select(Unit))).scalars()}
        # How satisfied each unit's citizens are: most units do well, a few lag behind.
        mood = {unit_id: rng.uniform(0.6, 0.97) for unit_id in units}
        rows = (
            await session.execute(
                select(Survey, Case)
                .join(Case, Case.id == Survey.case_id)
                .where(Survey.status == SurveyStatus.SCHEDULED)
                .order_by(Survey.id)
            )
        ).all()
        answered = 0
        for survey, case in rows:
            if case.resolved_at is None or rng.random() > ANSWER_SHARE:
                continue
            moment = min(case.resolved_at + timedelta(hours=rng.uniform(1, 48)), context.now)
            answers = _answers(rng, survey, mood[case.unit_id], moment)
            for answer in answers:
                session.add(answer)
            survey.status = SurveyStatus.COMPLETED
            survey.channel = "telegram"
            survey.invited_at = survey.started_at = case.resolved_at
            survey.completed_at = moment
            await session.flush()
            await survey_completed(
                session, survey, answers, moment, services.policy, channels=["telegram"]
            )
            answered += 1
        handled = await _heads_handle_some(session, rng, context.now)
    context.summary.append(
        f"Surveys:   {answered} answered by citizens; complaints: {_describe(handled)}"
    )


def _answers(rng: random.Random, survey: Survey, mood: float, moment: datetime) -> list[Answer]:
    questionnaire = load_questionnaire(survey.questionnaire)
    answers: list[Answer] = []
    unhappy = False
    for question in questionnaire.questions:
        answer = Answer(
            survey_id=survey.id,
            question_id=question.id,
            factor=question.factor,
            answered_at=moment,
        )
        if question.kind == "rating":
            score = rng.choice((4, 5)) if rng.random() < mood else rng.choice((1, 2, 3))
            unhappy = unhappy or score <= 3
            answer.value_int = score
        elif question.kind == "yes_no":
            answer.value_text = "yes" if rng.random() < 0.015 else "no"
        elif rng.random() < 0.3:
            answer.value_text = rng.choice(COMPLAINTS if unhappy else PRAISE)
        else:
            answer.skipped = True
        answers.append(answer)
    return answers


async def _heads_handle_some(
    session: AsyncSession, rng: random.Random, now: datetime
) -> Counter[str]:
    """About half of the complaints older than two days were acknowledged and resolved."""
    states: Counter[str] = Counter()
    for escalation in (await session.execute(select(Escalation))).scalars():
        old_enough = now - escalation.opened_at > timedelta(days=2)
        if old_enough and rng.random() < 0.55:
            acknowledged = escalation.opened_at + timedelta(hours=rng.uniform(1, 6))
            resolved = acknowledged + timedelta(hours=rng.uniform(4, 40))
            escalation.status = EscalationStatus.RESOLVED
            escalation.acknowledged_at = acknowledged
            escalation.resolved_at = resolved
            escalation.resolution_note = rng.choice(NOTES)
            escalation_repo.add_event(session, escalation, "acknowledged", acknowledged)
            escalation_repo.add_event(session, escalation, "resolved", resolved)
        states[escalation.status] += 1
    return states


def _describe(states: Counter[str]) -> str:
    if not states:
        return "none"
    return ", ".join(f"{count} {status}" for status, count in states.most_common())
