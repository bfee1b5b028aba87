"""The case view of docs/contract.md section 4: what the API answers about one case."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.errors import NotFound
from handlers.escalations import due_at
from storage.models import (
    Answer,
    Case,
    Escalation,
    EscalationEvent,
    EscalationStatus,
    Survey,
    SurveyStatus,
    Unit,
)
from storage.repositories import cases as case_repo
from storage.repositories import escalations as escalation_repo

# Given the case's link token, the links every configured channel offers (telegram, zalo, web).
LinkBuilder = Callable[[str], Mapping[str, str]]


SHOWN_CODE_CHARACTERS = 100


def shown_code(case_code: str) -> str:
    """A case code as an error message may quote it: cut short when it is too long to be one."""
    if len(case_code) <= SHOWN_CODE_CHARACTERS:
        return repr(case_code)
    return f"{case_code[:SHOWN_CODE_CHARACTERS]!r}… ({len(case_code)} characters)"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def answer_value(answer: Answer) -> object:
    if answer.value_int is not None:
        return answer.value_int
    return answer.value_text


def survey_view(
    survey: Survey | case_repo.SurveyState | None, answers: Sequence[Answer]
) -> dict[str, Any]:
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


def event_view(
    event: EscalationEvent, unit_code: str | None, levels: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """One step of an escalation's audit trail: what happened, at which unit and level, when.

    An event about another unit than the one holding the escalation (a head passed over on
    the way up) names that unit and its level. A resolution carries the head's note; a skip
    or a climb says why. Who acted is a chat address, personal data: the view says which
    level, not which chat.
    """
    detail = event.detail or {}
    level = event.level
    named = detail.get("unit")
    if isinstance(named, str) and named:
        unit_code = named
        level = (levels or {}).get(named, level)
    view: dict[str, Any] = {
        "kind": event.kind,
        "level": level,
        "unit_code": unit_code,
        "at": _iso(event.at),
    }
    for key in ("note", "why", "severity", "rating"):
        if detail.get(key) is not None:
            view[key] = detail[key]
    return view


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
        # What the head wrote when it was handled (also on the `resolved` event).
        "note": escalation.resolution_note,
        # The deadline its head has now (acknowledge when open, resolve when acknowledged),
        # or the one missed while it is overdue at the top of the hierarchy; null resolved.
        "due_at": _iso(due_at(escalation)),
        "overdue": escalation.overdue_since is not None
        and escalation.status != EscalationStatus.RESOLVED,
        "events": list(events),
    }


async def case_view(session: AsyncSession, case: Case, links: LinkBuilder) -> dict[str, Any]:
    token = await case_repo.link_token_for_case(session, case.id)
    survey = await case_repo.survey_for_case(session, case.id)
    answers = await case_repo.answers_of(session, survey.id) if survey else []
    escalations = await case_repo.escalations_of(session, case.id)
    # The level of each unit on the way up from where each escalation started.
    levels: dict[int, dict[str, int]] = {}
    for escalation, _code in escalations:
        chain = await escalation_repo.chain(session, escalation.origin_unit_id)
        levels[escalation.id] = {unit.code: index + 1 for index, unit in enumerate(chain)}
    events: dict[int, list[dict[str, Any]]] = {}
    for event, code in await case_repo.escalation_events_of(session, case.id):
        view = event_view(event, code, levels.get(event.escalation_id))
        events.setdefault(event.escalation_id, []).append(view)
    # By id, not through `case.unit`: a case just moved to another unit may still hold the
    # old unit in its loaded relationship, and the answer must show what was committed.
    unit = await session.get(Unit, case.unit_id)
    assert unit is not None
    return {
        "case_code": case.case_code,
        "unit_code": unit.code,
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
        raise NotFound(f"no case {shown_code(case_code)}")
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
    found = await case_repo.links_and_surveys_of(session, ids)
    tokens = {case_id: links.token for case_id, links in found.items() if links.token}
    surveys = {case_id: links.survey for case_id, links in found.items() if links.survey}
    # A scheduled survey has no answers yet (most of what intake answers about), and most
    # cases have no escalation: neither is asked for then.
    asked = [s.id for s in surveys.values() if s.status != SurveyStatus.SCHEDULED]
    answers = await case_repo.answers_of_surveys(session, asked)
    escalated = [case_id for case_id, links in found.items() if links.escalated]
    escalations = await case_repo.escalations_of_cases(session, escalated) if escalated else {}
    # The level of each unit on the way up from where each escalation started.
    origin_of = {e.id: e.origin_unit_id for found in escalations.values() for e, _code in found}
    levels: dict[int, dict[str, int]] = {}
    for origin in set(origin_of.values()):
        chain = await escalation_repo.chain(session, origin)
        levels[origin] = {unit.code: index + 1 for index, unit in enumerate(chain)}
    events: dict[int, list[dict[str, Any]]] = {}
    for event, code in await case_repo.escalation_events_of_cases(session, list(origin_of)):
        view = event_view(event, code, levels.get(origin_of[event.escalation_id]))
        events.setdefault(event.escalation_id, []).append(view)
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
