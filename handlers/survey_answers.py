"""The survey's rules on every channel: store the answer to the open question, go back one,
and complete the survey (which opens the escalations the answers call for).

These change state only; what to show next is the channel's business (a chat message
through the outbox, or the next web page). The chat (`survey_flow._apply`) and the web page
(`web_survey`) both call these, so the rules live here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import escalations
from handlers.policy import SurveyPolicy
from handlers.questionnaire import Question, load_questionnaire
from handlers.rendering import question_choices
from storage.models import Answer, Escalation, Survey, SurveyStatus
from storage.repositories import cases as case_repo
from storage.repositories import prompts
from storage.repositories import surveys as survey_repo

BACK = "back"
SKIP = "skip"
TEXT = "text"
MAX_TEXT = 4000


def open_question(survey: Survey) -> Question:
    return load_questionnaire(survey.questionnaire).questions[survey.position]


def allowed_values(survey: Survey, question: Question) -> list[str]:
    """What may be answered to the open question: the values of the chat's choices (a score,
    `y`/`n`, `skip`, `back`), plus free text for a text question."""
    values = [c.data.rsplit(":", 1)[1] for c in question_choices(survey, question, survey.position)]
    if question.kind == "text":
        values.append(TEXT)
    return values


async def record_answer(
    session: AsyncSession,
    survey: Survey,
    value: str,
    now: datetime,
    *,
    text: str | None = None,
) -> None:
    """Answers the open question with `value` (one of `allowed_values`) and moves on one
    question, or with `back` goes back one. The caller checks `value` and the survey's state."""
    if value == BACK:
        survey.position = max(0, survey.position - 1)
        return
    question = open_question(survey)
    answer = await survey_repo.answer_for(session, survey.id, question.id)
    if answer is None:
        answer = Answer(survey_id=survey.id, question_id=question.id, factor=question.factor)
        session.add(answer)
    answer.value_int = None
    answer.value_text = None
    answer.skipped = value == SKIP
    answer.answered_at = now
    if question.kind == "rating" and value.isdigit():
        answer.value_int = int(value)
    elif question.kind == "yes_no" and value in {"y", "n"}:
        answer.value_text = "yes" if value == "y" else "no"
    elif question.kind == "text" and value == TEXT and text is not None:
        answer.value_text = text[:MAX_TEXT]
    survey.position += 1


def answered_all(survey: Survey) -> bool:
    return survey.position >= len(load_questionnaire(survey.questionnaire))


async def complete_survey(
    session: AsyncSession,
    survey: Survey,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> list[Escalation]:
    """Ends the survey and opens what its answers call for; returns the escalations opened.

    `channels`: the chat channels configured to reach unit heads, best first.
    """
    survey.status = SurveyStatus.COMPLETED
    survey.completed_at = now
    if survey.channel is not None and survey.address is not None:
        # Finished elsewhere (the web page): the chat's invitation or question is closed too.
        refs = (f"a:{survey.ref}:", f"s:{survey.ref}:")
        await prompts.close_if_for(session, survey.channel, survey.address, refs)
    await session.flush()
    answers = await case_repo.answers_of(session, survey.id)
    return await escalations.survey_completed(session, survey, answers, now, policy, channels)
