"""What happens when the one-stop system posts a case: store it, mint the citizen's link,
check the status change, and start what the new status calls for (a survey, an apology).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import apologies, courtesy, escalations, surveys
from handlers.errors import Conflict, InvalidInput
from handlers.intake_schema import CaseIn, times_ahead
from handlers.policy import SurveyPolicy
from storage.models import Case, CaseStatus, Channel, Citizen, LinkToken
from storage.repositories import cases as case_repo
from storage.repositories import citizens as citizen_repo

# Which status may follow which. A case may arrive first in any status (the one-stop system
# may only report it once it is resolved); after that it only moves forward.
TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.RECEIVED: frozenset(CaseStatus),
    CaseStatus.DELAYED: frozenset(
        {CaseStatus.DELAYED, CaseStatus.RESOLVED, CaseStatus.REJECTED, CaseStatus.WITHDRAWN}
    ),
    CaseStatus.RESOLVED: frozenset({CaseStatus.RESOLVED}),
    CaseStatus.REJECTED: frozenset({CaseStatus.REJECTED}),
    CaseStatus.WITHDRAWN: frozenset({CaseStatus.WITHDRAWN}),
}
SURVEYED = frozenset({CaseStatus.RESOLVED, CaseStatus.REJECTED})


@dataclass(frozen=True)
class IntakeResult:
    case: Case
    created: bool
    changed: bool  # False for a replay of the last accepted body


def new_token() -> str:
    """32 characters of A-Za-z0-9_-: 192 random bits, unguessable and URL-safe."""
    return secrets.token_urlsafe(24)


async def case_posted(
    session: AsyncSession,
    body: CaseIn,
    now: datetime,
    policy: SurveyPolicy,
    *,
    channels: Sequence[str] = (),
) -> IntakeResult:
    """Creates or updates one case; the same body twice changes nothing and sends nothing.

    `channels`: the chat channels that can reach citizens, best first (for apologies and
    courtesy messages, which go out at once).
    """
    if ahead := times_ahead(body, now):
        raise InvalidInput(ahead)
    unit = await case_repo.unit_by_code(session, body.unit_code)
    if unit is None:
        raise InvalidInput(
            {"unit_code": f"unknown unit {body.unit_code!r}; load it with `sipas-bot units load`"}
        )
    fingerprint = body.fingerprint()
    case = await case_repo.get_case(session, body.case_code, for_update=True)
    if case is not None and case.body_hash == fingerprint:
        return IntakeResult(case, created=False, changed=False)

    old_status = CaseStatus(case.status) if case is not None else None
    if old_status is not None and body.status not in TRANSITIONS[old_status]:
        raise Conflict(
            f"case {body.case_code} is {old_status.value}; it cannot become {body.status.value}"
        )

    procedure = await case_repo.upsert_procedure(
        session, body.procedure.code, body.procedure.name, body.procedure.field
    )
    officer = (
        await case_repo.upsert_officer(session, body.officer.code, body.officer.name, unit.id)
        if body.officer
        else None
    )
    citizen = await _citizen_for(session, body, case, policy)

    promised_before = apologies.promised_date(case) if case is not None else None
    created = case is None
    if case is None:
        case = Case(case_code=body.case_code)
        session.add(case)
    case.unit_id = unit.id
    case.procedure_id = procedure.id
    case.officer_id = officer.id if officer else None
    case.citizen_id = citizen.id
    case.status = body.status.value
    case.received_at = body.received_at
    case.due_at = body.due_at
    case.resolved_at = body.resolved_at or (now if body.status in SURVEYED else None)
    if body.delay is not None:
        case.delay_new_due_at = body.delay.new_due_at
        case.delay_reason = body.delay.reason
    case.body_hash = fingerprint
    await session.flush()
    if created:
        session.add(
            LinkToken(token=new_token(), case_id=case.id, expires_at=now + policy.link_token_ttl)
        )
    if created or old_status != body.status:
        case_repo.add_event(session, case, body.status.value, {"from": old_status})

    if body.status == CaseStatus.DELAYED and case.delay_new_due_at != promised_before:
        old_due_at = promised_before or case.due_at
        await apologies.case_delayed(session, case, old_due_at, now, policy, channels)
    if body.status in SURVEYED and old_status not in SURVEYED:
        await surveys.case_resolved(session, case, citizen, now, policy)
        if body.status == CaseStatus.RESOLVED:
            await courtesy.case_resolved(session, case, now, policy, channels)
    await session.flush()
    refreshed = await case_repo.get_case_by_id(session, case.id)
    assert refreshed is not None
    if body.status == CaseStatus.RESOLVED and old_status != CaseStatus.RESOLVED:
        # Resolved after its (latest) promised date: the unit head hears of it too.
        await escalations.case_resolved_late(session, refreshed, now, policy, channels)
    return IntakeResult(refreshed, created=created, changed=True)


async def _citizen_for(
    session: AsyncSession, body: CaseIn, case: Case | None, policy: SurveyPolicy
) -> Citizen:
    """The person behind the case: already known by chat, by phone, or new."""
    given = body.citizen
    citizen: Citizen | None = None
    if case is not None and case.citizen_id is not None:
        citizen = await session.get(Citizen, case.citizen_id)
    if citizen is None and given.telegram_chat_id:
        citizen = await citizen_repo.citizen_by_contact(
            session, Channel.TELEGRAM, given.telegram_chat_id
        )
    if citizen is None and given.zalo_user_id:
        citizen = await citizen_repo.citizen_by_contact(session, Channel.ZALO, given.zalo_user_id)
    if citizen is None and given.phone:
        citizen = await citizen_repo.citizen_by_phone(session, given.phone)
    if citizen is None:
        # The desk's language only seeds a new record: a citizen's own /lang choice wins.
        citizen = Citizen(locale=given.locale or policy.default_locale)
        session.add(citizen)
    if citizen.erased_at is None or case is None:
        # New data from the desk is a new processing purpose; an erased record stays erased
        # for the case it was erased on.
        citizen.erased_at = None
        citizen.name = given.name or citizen.name
        citizen.phone = given.phone or citizen.phone
    await session.flush()
    # A chat id from the desk was given by the citizen at the desk: it links directly.
    if given.telegram_chat_id:
        await citizen_repo.attach_contact(
            session, citizen, Channel.TELEGRAM, given.telegram_chat_id, source="intake"
        )
    if given.zalo_user_id:
        await citizen_repo.attach_contact(
            session, citizen, Channel.ZALO, given.zalo_user_id, source="intake"
        )
    return citizen
