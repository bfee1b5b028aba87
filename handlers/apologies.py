"""Apology letters for late cases (phiếu xin lỗi và hẹn lại ngày trả kết quả, required by the
one-stop rules of Nghị định 61/2018/NĐ-CP): one for each new return date a case is given, and
one with the invitation for a case resolved late that never had one. Each is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.chat import say
from handlers.policy import SurveyPolicy
from handlers.rendering import local_date, payload
from handlers.texts import t
from storage.models import (
    Apology,
    Case,
    CaseStatus,
    Citizen,
    CitizenContact,
    Priority,
    Procedure,
    Survey,
    Unit,
)
from storage.repositories import apologies as apology_repo
from storage.repositories import citizens as citizen_repo

log = logging.getLogger(__name__)

DELAYED = "delayed"
LATE_RESOLUTION = "late_resolution"

# How a letter addresses a person whose name the desk did not give, or who had it erased.
_NO_NAME = {"vi": "Ông/Bà", "en": "Sir/Madam"}


def promised_date(case: Case) -> datetime:
    """The return date the citizen was last promised: the latest new date, else the first."""
    return case.delay_new_due_at or case.due_at


async def case_delayed(
    session: AsyncSession,
    case: Case,
    old_due_at: datetime,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> Apology | None:
    """A case given a new return date: records the apology and sends the letter if it can.

    Returns the new record, or None when this case already has the letter for this date (the
    same delay reported again), in which case nothing is sent either. Without a chat contact
    the record stays: the desk still owes the citizen the paper letter, and digests count it.
    """
    new_due_at = case.delay_new_due_at
    if new_due_at is None:  # the intake schema requires it with `delayed`; nothing to promise
        return None
    apology = await apology_repo.record(
        session,
        case_id=case.id,
        unit_id=case.unit_id,
        kind=DELAYED,
        old_due_at=old_due_at,
        new_due_at=new_due_at,
        reason=case.delay_reason,
        now=now,
    )
    if apology is None:
        return None
    citizen = await _citizen_of(session, case)
    contact = await _reachable_contact(session, citizen, channels)
    if citizen is None or contact is None:
        log.info("apology for case %s recorded; no chat to send it to", case.id)
        return apology
    unit, procedure = await _unit_and_procedure(session, case)
    tz = policy.timezone
    text = t(
        "apology.letter",
        citizen.locale,
        citizen_name=_addressee(citizen),
        case_code=case.case_code,
        procedure_name=procedure.name,
        unit_name=unit.name,
        received_date=local_date(case.received_at, tz),
        old_due_date=local_date(old_due_at, tz),
        new_due_date=local_date(new_due_at, tz),
        reason=case.delay_reason or "",
    )
    # A letter is a notice, not a survey: it goes now, but not into anyone's night.
    await say(
        session,
        contact.channel,
        contact.address,
        payload(text),
        policy.sendable_at(now),
        priority=Priority.NOTICE,
        dedupe_key=f"apology:{case.id}:{apology.new_due_at.isoformat()}",
        case_id=case.id,
    )
    return apology


async def late_resolution(
    session: AsyncSession,
    survey: Survey,
    case: Case,
    contact: CitizenContact,
    now: datetime,
    policy: SurveyPolicy,
) -> None:
    """Called as the invitation is queued: a case resolved after its promised date, whose
    citizen never got a letter with a new date, gets an apology just ahead of the invitation.
    """
    if case.status != CaseStatus.RESOLVED or case.resolved_at is None:
        return
    promised = promised_date(case)
    if case.resolved_at <= promised:
        return
    if await apology_repo.has_kind(session, case.id, DELAYED):
        return  # the citizen was told of the delay and given a new date already
    await apology_repo.record(
        session,
        case_id=case.id,
        unit_id=case.unit_id,
        kind=LATE_RESOLUTION,
        old_due_at=promised,
        new_due_at=case.resolved_at,
        reason=None,
        now=now,
    )
    citizen = await _citizen_of(session, case)
    unit, procedure = await _unit_and_procedure(session, case)
    tz = policy.timezone
    text = t(
        "apology.late_resolution",
        survey.locale,
        citizen_name=_addressee(citizen, survey.locale),
        case_code=case.case_code,
        procedure_name=procedure.name,
        unit_name=unit.name,
        old_due_date=local_date(promised, tz),
        resolved_date=local_date(case.resolved_at, tz),
    )
    # Same priority as the invitation and queued first, so the outbox sends it first (it
    # sends each address's messages in priority, then insertion, order).
    await say(
        session,
        contact.channel,
        contact.address,
        payload(text),
        now,
        priority=Priority.INVITATION,
        dedupe_key=f"apology:{case.id}:late",
        case_id=case.id,
    )


async def _citizen_of(session: AsyncSession, case: Case) -> Citizen | None:
    # session.get answers from the identity map when intake has the citizen loaded already.
    return await session.get(Citizen, case.citizen_id) if case.citizen_id is not None else None


async def _reachable_contact(
    session: AsyncSession, citizen: Citizen | None, channels: Sequence[str]
) -> CitizenContact | None:
    """Where the citizen agreed to be reached; nowhere once they withdrew consent (/stop)."""
    if citizen is None or citizen.erased_at is not None or citizen.opted_out_at is not None:
        return None
    return await citizen_repo.active_contact(session, citizen.id, channels)


async def _unit_and_procedure(session: AsyncSession, case: Case) -> tuple[Unit, Procedure]:
    unit = await session.get(Unit, case.unit_id)
    procedure = await session.get(Procedure, case.procedure_id)
    assert unit is not None and procedure is not None  # foreign keys
    return unit, procedure


def _addressee(citizen: Citizen | None, locale: str | None = None) -> str:
    language = locale or (citizen.locale if citizen else "vi")
    if citizen is None or citizen.erased_at is not None or not citizen.name:
        return _NO_NAME.get(language, _NO_NAME["vi"])
    return citizen.name
