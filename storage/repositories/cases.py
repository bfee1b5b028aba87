"""Queries about cases, their reference data (units, procedures, officers) and link tokens."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from storage.db import allocate_ids
from storage.inserts import insert_many, update_many
from storage.models import (
    Answer,
    Case,
    CaseEvent,
    Citizen,
    Escalation,
    EscalationEvent,
    LinkToken,
    Officer,
    Procedure,
    Survey,
    Unit,
)
from storage.repositories import citizens as citizen_repo


def _case_with_relations() -> Select[Case]:
    """A case query that loads what handlers read (the relationships are lazy="raise")."""
    return select(Case).options(
        selectinload(Case.unit),
        selectinload(Case.procedure),
        selectinload(Case.officer),
        selectinload(Case.citizen),
    )


async def get_case(
    session: AsyncSession, case_code: str, *, for_update: bool = False
) -> Case | None:
    """A case with its unit, procedure, officer and citizen loaded."""
    query = _case_with_relations().where(Case.case_code == case_code)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def get_case_by_id(session: AsyncSession, case_id: int) -> Case | None:
    query = _case_with_relations().where(Case.id == case_id)
    return (await session.execute(query)).scalar_one_or_none()


async def unit_by_code(session: AsyncSession, code: str) -> Unit | None:
    return (await session.execute(select(Unit).where(Unit.code == code))).scalar_one_or_none()


async def upsert_procedure(
    session: AsyncSession, code: str, name: str, field: str | None
) -> Procedure:
    procedure = (
        await session.execute(select(Procedure).where(Procedure.code == code))
    ).scalar_one_or_none()
    if procedure is None:
        procedure = Procedure(code=code, name=name, field=field)
        session.add(procedure)
        await session.flush()
    else:
        procedure.name = name
        if field is not None:
            procedure.field = field
    return procedure


async def upsert_officer(
    session: AsyncSession, code: str, name: str | None, unit_id: int
) -> Officer:
    officer = (
        await session.execute(select(Officer).where(Officer.code == code))
    ).scalar_one_or_none()
    if officer is None:
        officer = Officer(code=code, name=name, unit_id=unit_id)
        session.add(officer)
        await session.flush()
    elif name is not None:
        officer.name = name
    return officer


def add_event(session: AsyncSession, case: Case, status: str, detail: dict[str, object]) -> None:
    session.add(CaseEvent(case_id=case.id, status=status, detail=detail))


async def link_token_for_case(session: AsyncSession, case_id: int) -> LinkToken | None:
    return (
        await session.execute(select(LinkToken).where(LinkToken.case_id == case_id))
    ).scalar_one_or_none()


async def link_token(session: AsyncSession, token: str) -> LinkToken | None:
    return await session.get(LinkToken, token)


async def survey_for_case(session: AsyncSession, case_id: int) -> Survey | None:
    return (
        await session.execute(select(Survey).where(Survey.case_id == case_id))
    ).scalar_one_or_none()


async def answers_of(session: AsyncSession, survey_id: int) -> Sequence[Answer]:
    query = select(Answer).where(Answer.survey_id == survey_id).order_by(Answer.id)
    return (await session.execute(query)).scalars().all()


async def escalations_of(session: AsyncSession, case_id: int) -> Sequence[tuple[Escalation, str]]:
    """The case's escalations with the code of the unit currently holding each."""
    query = (
        select(Escalation, Unit.code)
        .join(Unit, Unit.id == Escalation.unit_id)
        .where(Escalation.case_id == case_id)
        .order_by(Escalation.id)
    )
    return [(row[0], row[1]) for row in (await session.execute(query)).all()]


async def case_ids_of_citizen(session: AsyncSession, citizen_id: int) -> list[int]:
    query = select(Case.id).where(Case.citizen_id == citizen_id)
    return list((await session.execute(query)).scalars().all())


async def detach_citizen(session: AsyncSession, citizen_id: int) -> None:
    """The citizen's cases stay (for statistics) but no longer point at a person."""
    await session.execute(update(Case).where(Case.citizen_id == citizen_id).values(citizen_id=None))


async def escalation_events_of(
    session: AsyncSession, case_id: int
) -> Sequence[tuple[EscalationEvent, str | None]]:
    """Every escalation event of the case, oldest first, with the code of the unit concerned."""
    query = (
        select(EscalationEvent, Unit.code)
        .join(Escalation, Escalation.id == EscalationEvent.escalation_id)
        .outerjoin(Unit, Unit.id == EscalationEvent.unit_id)
        .where(Escalation.case_id == case_id)
        .order_by(EscalationEvent.id)
    )
    return [(row[0], row[1]) for row in (await session.execute(query)).all()]


# --- intake in bulk: one statement for many cases ----------------------------------------------
#
# Intake answers hundreds of posts a second, and a round trip to the database costs more than
# the rest of a post. These take or write every case of a group of posts at once, through
# Core statements (executemany, INSERT ... RETURNING in parameter order) rather than the ORM's
# unit of work, whose bookkeeping per object is most of a small transaction's time.

_CASES = cast(Table, Case.__table__)
_PROCEDURES = cast(Table, Procedure.__table__)
_OFFICERS = cast(Table, Officer.__table__)
_UNITS = cast(Table, Unit.__table__)
_LINK_TOKENS = cast(Table, LinkToken.__table__)
_CASE_EVENTS = cast(Table, CaseEvent.__table__)
_SURVEYS = cast(Table, Survey.__table__)
_ESCALATIONS = cast(Table, Escalation.__table__)


@dataclass
class StoredCase:
    """What intake reads of a case already stored."""

    id: int
    case_code: str
    status: str
    body_hash: str
    citizen_id: int | None
    due_at: datetime
    delay_new_due_at: datetime | None
    delay_reason: str | None


async def cases_by_code(
    session: AsyncSession, codes: Collection[str], *, phones: Collection[str] = ()
) -> dict[str, StoredCase]:
    """The stored cases among `codes`, locked for this transaction (in code order, so that two
    transactions locking overlapping groups cannot deadlock). On PostgreSQL, `phones` are
    locked first (`citizens.phones_locked`): the first statement of intake takes them, so
    that it costs no round trip of its own."""
    if not codes:
        return {}
    c = _CASES.c
    query = (
        select(
            c.id,
            c.case_code,
            c.status,
            c.body_hash,
            c.citizen_id,
            c.due_at,
            c.delay_new_due_at,
            c.delay_reason,
        )
        .where(c.case_code.in_(codes))
        .order_by(c.case_code)
        .with_for_update()
    )
    if phones and session.get_bind().dialect.name == "postgresql":
        query = query.where(citizen_repo.phones_locked(phones))
    rows = (await session.execute(query)).all()
    return {row.case_code: StoredCase(*row) for row in rows}


async def unit_ids(session: AsyncSession, codes: Collection[str]) -> dict[str, int]:
    if not codes:
        return {}
    query = select(_UNITS.c.code, _UNITS.c.id).where(_UNITS.c.code.in_(codes))
    return {code: id_ for code, id_ in (await session.execute(query)).all()}


async def _ids_by_code(
    session: AsyncSession, table: Table, codes: Collection[str]
) -> dict[str, int]:
    query = select(table.c.code, table.c.id).where(table.c.code.in_(codes))
    return {code: id_ for code, id_ in (await session.execute(query)).all()}


async def ensure_procedures(
    session: AsyncSession, wanted: Mapping[str, tuple[str, str | None]], known: Mapping[str, int]
) -> dict[str, int]:
    """Procedures by code with their latest (name, field): inserted when new, renamed when the
    name changed, and the field replaced only by a given one. Ids of codes not in `known` are
    returned; an insert racing another transaction's does nothing and finds its row."""
    missing = [code for code in wanted if code not in known]
    found: dict[str, int] = {}
    if missing:
        rows = [
            {"code": code, "name": wanted[code][0], "field": wanted[code][1]} for code in missing
        ]
        await session.execute(_insert_ignoring(session, _PROCEDURES, "code"), rows)
        found = await _ids_by_code(session, _PROCEDURES, missing)
    ids = {**known, **found}
    t = _PROCEDURES.c
    with_field = [
        {"p_id": ids[code], "p_name": name, "p_field": field}
        for code, (name, field) in wanted.items()
        if field is not None
    ]
    without_field = [
        {"p_id": ids[code], "p_name": name}
        for code, (name, field) in wanted.items()
        if field is None
    ]
    if with_field:
        statement = (
            update(_PROCEDURES)
            .where(
                t.id == bindparam("p_id"),
                or_(
                    t.name != bindparam("p_name"),
                    t.field.is_(None),
                    t.field != bindparam("p_field"),
                ),
            )
            .values(name=bindparam("p_name"), field=bindparam("p_field"))
        )
        await session.execute(statement, sorted(with_field, key=lambda r: int(str(r["p_id"]))))
    if without_field:
        statement = (
            update(_PROCEDURES)
            .where(t.id == bindparam("p_id"), t.name != bindparam("p_name"))
            .values(name=bindparam("p_name"))
        )
        await session.execute(statement, sorted(without_field, key=lambda r: int(str(r["p_id"]))))
    return found


async def ensure_officers(
    session: AsyncSession, wanted: Mapping[str, tuple[str | None, int]], known: Mapping[str, int]
) -> dict[str, int]:
    """Officers by code with their latest given name and the unit a new one is created in;
    a name left out keeps the stored one. Returns the ids of codes not in `known`."""
    missing = [code for code in wanted if code not in known]
    found: dict[str, int] = {}
    if missing:
        rows = [
            {"code": code, "name": wanted[code][0], "unit_id": wanted[code][1]} for code in missing
        ]
        await session.execute(_insert_ignoring(session, _OFFICERS, "code"), rows)
        found = await _ids_by_code(session, _OFFICERS, missing)
    ids = {**known, **found}
    renamed = [
        {"o_id": ids[code], "o_name": name}
        for code, (name, _unit) in wanted.items()
        if name is not None
    ]
    if renamed:
        t = _OFFICERS.c
        statement = (
            update(_OFFICERS)
            .where(
                t.id == bindparam("o_id"),
                or_(t.name.is_(None), t.name != bindparam("o_name")),
            )
            .values(name=bindparam("o_name"))
        )
        await session.execute(statement, sorted(renamed, key=lambda r: int(str(r["o_id"]))))
    return found


def _insert_ignoring(session: AsyncSession, table: Table, key: str) -> Any:
    dialect = session.get_bind().dialect.name
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert_(table).on_conflict_do_nothing(index_elements=[table.c[key]])


async def new_ids(session: AsyncSession, cases: int, citizens: int) -> tuple[list[int], list[int]]:
    """Ids for that many new cases and new citizens, to insert them many at once."""
    citizens_table = cast(Table, Citizen.__table__)
    found = await allocate_ids(session, {_CASES: cases, citizens_table: citizens})
    return found[_CASES], found[citizens_table]


async def insert_cases(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Inserts the cases; each row gives its `id` (from `new_ids`)."""
    await insert_many(session, _CASES, rows)


_CASE_UPDATE_COLUMNS = (
    "unit_id",
    "procedure_id",
    "officer_id",
    "citizen_id",
    "status",
    "received_at",
    "due_at",
    "resolved_at",
    "delay_new_due_at",
    "delay_reason",
    "body_hash",
)


async def update_cases(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Updates stored cases by id; each row gives `id` and every column intake writes."""
    await update_many(
        session,
        _CASES,
        [{"id": row["id"], **{name: row[name] for name in _CASE_UPDATE_COLUMNS}} for row in rows],
    )


async def insert_link_tokens(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    await insert_many(session, _LINK_TOKENS, rows)


async def insert_case_events(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    await insert_many(session, _CASE_EVENTS, rows)


async def cases_with_relations(session: AsyncSession, case_ids: Collection[int]) -> dict[int, Case]:
    """Cases as ORM objects with unit, procedure, officer and citizen, freshly read (a bulk
    statement of this transaction may have changed rows the session holds)."""
    if not case_ids:
        return {}
    query = (
        _case_with_relations()
        .where(Case.id.in_(case_ids))
        .execution_options(populate_existing=True)
    )
    return {case.id: case for case in (await session.execute(query)).scalars()}


@dataclass
class SurveyState:
    """What a case's view shows of its survey."""

    id: int
    status: str
    channel: str | None
    completed_at: datetime | None


@dataclass(frozen=True)
class CaseLinks:
    """What a case's view needs first: its link token and survey (either may be missing),
    and whether it has escalations to read (most cases have none)."""

    token: str | None
    survey: SurveyState | None
    escalated: bool


async def links_and_surveys_of(
    session: AsyncSession, case_ids: Collection[int]
) -> dict[int, CaseLinks]:
    """Each case's `CaseLinks`, in one query."""
    tokens, surveys = _LINK_TOKENS.c, _SURVEYS.c
    escalated = exists().where(_ESCALATIONS.c.case_id == _CASES.c.id)
    query = (
        select(
            _CASES.c.id,
            tokens.token,
            escalated,
            surveys.id,
            surveys.status,
            surveys.channel,
            surveys.completed_at,
        )
        .select_from(_CASES)
        .outerjoin(_LINK_TOKENS, tokens.case_id == _CASES.c.id)
        .outerjoin(_SURVEYS, surveys.case_id == _CASES.c.id)
        .where(_CASES.c.id.in_(case_ids))
    )
    return {
        case_id: CaseLinks(
            token, SurveyState(*survey) if survey[0] is not None else None, bool(has_escalations)
        )
        for case_id, token, has_escalations, *survey in (await session.execute(query)).all()
    }


async def answers_of_surveys(
    session: AsyncSession, survey_ids: Collection[int]
) -> dict[int, list[Answer]]:
    found: dict[int, list[Answer]] = {}
    if not survey_ids:
        return found
    query = select(Answer).where(Answer.survey_id.in_(survey_ids)).order_by(Answer.id)
    for answer in (await session.execute(query)).scalars():
        found.setdefault(answer.survey_id, []).append(answer)
    return found


async def escalations_of_cases(
    session: AsyncSession, case_ids: Collection[int]
) -> dict[int, list[tuple[Escalation, str]]]:
    """Each case's escalations, oldest first, with the code of the unit holding each."""
    query = (
        select(Escalation, Unit.code)
        .join(Unit, Unit.id == Escalation.unit_id)
        .where(Escalation.case_id.in_(case_ids))
        .order_by(Escalation.id)
    )
    found: dict[int, list[tuple[Escalation, str]]] = {}
    for escalation, code in (await session.execute(query)).all():
        found.setdefault(escalation.case_id, []).append((escalation, code))
    return found


async def escalation_events_of_cases(
    session: AsyncSession, escalation_ids: Collection[int]
) -> list[tuple[EscalationEvent, str | None]]:
    """The events of these escalations, oldest first, with the code of the unit concerned."""
    if not escalation_ids:
        return []
    query = (
        select(EscalationEvent, Unit.code)
        .outerjoin(Unit, Unit.id == EscalationEvent.unit_id)
        .where(EscalationEvent.escalation_id.in_(escalation_ids))
        .order_by(EscalationEvent.id)
    )
    return [(row[0], row[1]) for row in (await session.execute(query)).all()]


async def insert_surveys(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Inserts a survey for each row's case that has none yet (one per case, ever)."""
    await insert_many(session, _SURVEYS, rows, ignoring="case_id")
