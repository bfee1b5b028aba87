"""Queries about cases, their reference data (units, procedures, officers) and link tokens."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from storage.models import (
    Answer,
    Case,
    CaseEvent,
    Escalation,
    EscalationEvent,
    LinkToken,
    Officer,
    Procedure,
    Survey,
    Unit,
)


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
