"""The life of a survey: scheduled when a case is resolved, then invited, answered, ended."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.policy import SurveyPolicy
from storage.models import Case, Citizen, Survey, SurveyStatus
from storage.repositories import cases as case_repo


def new_ref() -> str:
    """A short random reference for buttons (12 URL-safe characters, 72 bits)."""
    return secrets.token_urlsafe(9)


async def case_resolved(
    session: AsyncSession, case: Case, citizen: Citizen | None, now: datetime, policy: SurveyPolicy
) -> Survey:
    """Schedules the one survey of this case, after the delay and outside quiet hours."""
    existing = await case_repo.survey_for_case(session, case.id)
    if existing is not None:
        return existing  # one survey per case, ever
    due_at = policy.sendable_at(now + policy.delay)
    opted_out = citizen is not None and citizen.opted_out_at is not None
    survey = Survey(
        ref=new_ref(),
        case_id=case.id,
        questionnaire=policy.questionnaire,
        locale=(citizen.locale if citizen else policy.default_locale),
        status=SurveyStatus.OPTED_OUT if opted_out else SurveyStatus.SCHEDULED,
        due_at=due_at,
        expires_at=due_at + policy.expires_after,
    )
    session.add(survey)
    await session.flush()
    return survey
