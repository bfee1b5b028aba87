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
    from demo.context import DemoContext

ANSWER_SHARE = 0.65  # of resolved cases whose citizen answered
STORY_HORIZON = timedelta(hours=1)
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
        handled = await heads_keep_up(session, rng, context.now)
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


async def heads_keep_up(session: AsyncSession, rng: random.Random, now: datetime) -> Counter[str]:
    """The heads did their job in the weeks before the demo, so the sweeps find nothing overdue
    when it starts: what was due to be acknowledged was acknowledged in time, what was due to
    be resolved was resolved in time (with a note), and about half of the other complaints
    older than two days too. Only complaints still inside their deadlines stay open."""
    states: Counter[str] = Counter()
    query = select(Escalation).order_by(Escalation.id)
    for escalation in (await session.execute(query)).scalars():
        if escalation.status == EscalationStatus.OPEN and escalation.ack_due_at is not None:
            _handle(escalation, rng, now, session)
        states[escalation.status] += 1
    return states


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """A moment between `start` and `end` (`start` when there is no room)."""
    span = max(timedelta(0), end - start)
    return start + span * rng.uniform(0.15, 0.85)


def _handle(
    escalation: Escalation, rng: random.Random, now: datetime, session: AsyncSession
) -> None:
    assert escalation.ack_due_at is not None
    # Deadlines within the next hour count as passed: the story must still hold when a
    # newcomer looks at it a while after the demo started.
    horizon = now + STORY_HORIZON
    ack_overdue = escalation.ack_due_at <= horizon
    old_enough = now - escalation.opened_at > timedelta(days=2)
    if not ack_overdue and not (old_enough and rng.random() < 0.55):
        return  # a fresh complaint: its head still has time to acknowledge it
    acknowledged = _between(rng, escalation.opened_at, min(escalation.ack_due_at, now))
    escalation.status = EscalationStatus.ACKNOWLEDGED
    escalation.acknowledged_at = acknowledged
    escalation_repo.add_event(session, escalation, "acknowledged", acknowledged)
    resolve_due = escalation.resolve_due_at
    resolve_overdue = resolve_due is not None and resolve_due <= horizon
    if not resolve_overdue and not (old_enough and rng.random() < 0.55):
        return  # acknowledged, being looked into, within its deadline
    resolved = _between(rng, acknowledged, min(resolve_due or now, now))
    note = rng.choice(NOTES)
    escalation.status = EscalationStatus.RESOLVED
    escalation.resolved_at = resolved
    escalation.resolution_note = note
    escalation_repo.add_event(session, escalation, "resolved", resolved, detail={"note": note})


def _describe(states: Counter[str]) -> str:
    if not states:
        return "none"
    return ", ".join(f"{count} {status}" for status, count in states.most_common())
