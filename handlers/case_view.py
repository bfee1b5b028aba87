"""The case view of CONTRACT.md section 4: what the API answers about one case."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.errors import NotFound
from storage.models import Answer, Case, Escalation, EscalationEvent, Survey, SurveyStatus
from storage.repositories import cases as case_repo

# Given the case's link token, the links every configured channel offers (telegram, zalo, web).
LinkBuilder = Callable[[str], Mapping[str, str]]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def answer_value(answer: Answer) -> object:
    if answer.value_int is not None:
        return answer.value_int
    return answer.value_text


def survey_view(survey: Survey | None, answers: Sequence[Answer]) -> dict[str, Any]:
    if survey is None:
        return {
            "status": SurveyStatus.NOT_DUE.value,
            "channel": None,
            "completed_at": None,
            "answers": {},
        }
    return {
        "status": survey.status,
        "channel": survey.channel,
        "completed_at": _iso(survey.completed_at),
        "answers": {a.question_id: answer_value(a) for a in answers if not a.skipped},
    }


def event_view(event: EscalationEvent, unit_code: str | None) -> dict[str, Any]:
    # Who acted is a chat address, personal data: the view says which level, not which chat.
    return {"kind": event.kind, "level": event.level, "unit_code": unit_code, "at": _iso(event.at)}


def escalation_view(
    escalation: Escalation, unit_code: str, events: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    return {
        "id": escalation.id,
        "status": escalation.status,
        "level": escalation.level,
        "unit_code": unit_code,
        "reason": escalation.reason,
        "severity": escalation.severity,
        "opened_at": _iso(escalation.opened_at),
        "acknowledged_at": _iso(escalation.acknowledged_at),
        "resolved_at": _iso(escalation.resolved_at),
        "events": list(events),
    }


async def case_view(session: AsyncSession, case: Case, links: LinkBuilder) -> dict[str, Any]:
    token = await case_repo.link_token_for_case(session, case.id)
    survey = await case_repo.survey_for_case(session, case.id)
    answers = await case_repo.answers_of(session, survey.id) if survey else []
    escalations = await case_repo.escalations_of(session, case.id)
    events: dict[int, list[dict[str, Any]]] = {}
    for event, code in await case_repo.escalation_events_of(session, case.id):
        events.setdefault(event.escalation_id, []).append(event_view(event, code))
    return {
        "case_code": case.case_code,
        "unit_code": case.unit.code,
        "status": case.status,
        "links": dict(links(token.token)) if token else {},
        "survey": survey_view(survey, answers),
        "escalations": [escalation_view(e, code, events.get(e.id, [])) for e, code in escalations],
    }


async def case_view_by_code(
    session: AsyncSession, case_code: str, links: LinkBuilder
) -> dict[str, Any]:
    case = await case_repo.get_case(session, case_code)
    if case is None:
        raise NotFound(f"no case {case_code!r}")
    return await case_view(session, case, links)


async def case_views(
    session: AsyncSession,
    cases: Sequence[tuple[int, str, str, str]],
    links: LinkBuilder,
    *,
    fresh: Mapping[int, str] | None = None,
) -> dict[int, dict[str, Any]]:
    """`case_view` of many cases at once, by case id; each case given as (id, case_code,
    unit_code, status). A handful of queries for the lot, not five per case.

    `fresh`: link tokens of cases just created that have no survey and no escalation yet;
    their views need no query.
    """
    fresh = fresh or {}
    views: dict[int, dict[str, Any]] = {}
    for case_id, case_code, unit_code, status in cases:
        if case_id in fresh:
            views[case_id] = {
                "case_code": case_code,
                "unit_code": unit_code,
                "status": status,
                "links": dict(links(fresh[case_id])),
                "survey": survey_view(None, []),
                "escalations": [],
            }
    ids = {case_id for case_id, _code, _unit, _status in cases if case_id not in views}
    if not ids:
        return views
    tokens = await case_repo.link_tokens_of(session, ids)
    surveys = await case_repo.surveys_of(session, ids)
    # A scheduled survey has no answers yet (most of what intake answers about).
    asked = [s.id for s in surveys.values() if s.status != SurveyStatus.SCHEDULED]
    answers = await case_repo.answers_of_surveys(session, asked)
    escalations = await case_repo.escalations_of_cases(session, ids)
    events: dict[int, list[dict[str, Any]]] = {}
    escalation_ids = [e.id for found in escalations.values() for e, _code in found]
    for event, code in await case_repo.escalation_events_of_cases(session, escalation_ids):
        events.setdefault(event.escalation_id, []).append(event_view(event, code))
    for case_id, case_code, unit_code, status in cases:
        if case_id not in ids:
            continue
        token = tokens.get(case_id)
        survey = surveys.get(case_id)
        views[case_id] = {
            "case_code": case_code,
            "unit_code": unit_code,
            "status": status,
            "links": dict(links(token)) if token else {},
            "survey": survey_view(survey, answers.get(survey.id, []) if survey else []),
            "escalations": [
                escalation_view(e, code, events.get(e.id, []))
                for e, code in escalations.get(case_id, [])
            ],
        }
    return views
