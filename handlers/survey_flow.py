"""The survey conversation: invitation, reminder, questions, back and skip, the end, expiry.

State lives in the `surveys` row; each answer is one transaction of the caller's: store the
answer, move the survey on, queue the next message in the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import apologies, survey_answers
from handlers.chat import ChatContext, Reaction, say
from handlers.policy import SurveyPolicy
from handlers.questionnaire import Question, load_questionnaire
from handlers.rendering import (
    Choice,
    invitation_message,
    match_typed_choice,
    numbered_lines,
    payload,
    question_choices,
    question_message,
)
from handlers.texts import t
from storage.models import (
    Case,
    Citizen,
    CitizenContact,
    Priority,
    Survey,
    SurveyStatus,
)
from storage.repositories import cases as case_repo
from storage.repositories import citizens as citizen_repo
from storage.repositories import prompts
from storage.repositories import surveys as survey_repo

log = logging.getLogger(__name__)

OPEN = (SurveyStatus.INVITED, SurveyStatus.IN_PROGRESS)
PENDING = (SurveyStatus.SCHEDULED, SurveyStatus.INVITED, SurveyStatus.IN_PROGRESS)


# An invitation that follows the service within minutes goes before invitations waiting in a
# backlog (the morning after quiet hours, a bulk import, a dispatcher that was down): the
# citizen has just been served and is the most likely to answer, and a backlog is late
# anyway. Still behind replies and notices. A case resolved late keeps the plain priority,
# so that its apology (queued just before, at that priority) still arrives first.
FRESH_FOR = timedelta(minutes=10)
FRESH_INVITATION = Priority.INVITATION - 2


def invitation_priority(case: Case, now: datetime) -> int:
    resolved_at = case.resolved_at
    if (
        resolved_at is not None
        and now - resolved_at <= FRESH_FOR
        and resolved_at <= apologies.promised_date(case)
    ):
        return FRESH_INVITATION
    return Priority.INVITATION


# --- sweeps -----------------------------------------------------------------------------


async def invite(
    session: AsyncSession,
    survey: Survey,
    contact: CitizenContact,
    now: datetime,
    policy: SurveyPolicy,
    *,
    case: Case | None = None,
) -> None:
    """Queues the invitation (after a late case's apology); `case`, when the caller has it
    loaded, saves loading it again."""
    case = case or await case_repo.get_case_by_id(session, survey.case_id)
    assert case is not None
    questionnaire = load_questionnaire(survey.questionnaire)
    survey.channel = contact.channel
    survey.address = contact.address
    survey.status = SurveyStatus.INVITED
    survey.invited_at = now
    survey.expires_at = now + policy.expires_after
    body = invitation_message(survey, case, questionnaire, policy.timezone, reminder=False)
    await apologies.late_resolution(session, survey, case, contact, now, policy)
    await say(
        session,
        contact.channel,
        contact.address,
        body,
        now,
        priority=invitation_priority(case, now),
        dedupe_key=f"invite:{survey.id}",
        case_id=case.id,
    )


async def invite_if_due(
    session: AsyncSession,
    survey: Survey | None,
    citizen: Citizen | None,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> bool:
    """Invites at once a survey that is due now, rather than leave it to the next sweep."""
    if (
        survey is None
        or citizen is None
        or survey.status != SurveyStatus.SCHEDULED
        or survey.due_at > now
        or policy.sendable_at(now) != now
    ):
        return False
    contact = await citizen_repo.active_contact(session, citizen.id, channels)
    if contact is None:
        return False
    survey.locale = citizen.locale
    await invite(session, survey, contact, now, policy)
    return True


async def due_invitations(
    session: AsyncSession,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    *,
    limit: int = 500,
    leave_out: Collection[int] = (),
) -> Sequence[int]:
    """Ids of the scheduled surveys due now, outside quiet hours, on a reachable channel."""
    if policy.sendable_at(now) != now:
        return []
    return await survey_repo.due_for_invitation(session, now, channels, limit, leave_out=leave_out)


async def invite_one(
    session: AsyncSession,
    survey_id: int,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> bool:
    """Invites one survey if it is still due; the sweep's and the wake's per-item step.

    The same rules on both paths: not before `due_at` (the survey delay), never in quiet
    hours, only on a reachable channel, never to someone who opted out. False when there was
    nothing to do (another process took it, or it is no longer due).
    """
    if policy.sendable_at(now) != now:
        return False
    survey = await survey_repo.claim(session, survey_id)
    return await _invite_claimed(session, survey, now, policy, channels)


async def invite_for_case(
    session: AsyncSession,
    case_id: int,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> bool:
    """Invites the case's survey at once if it is due now (a resolution was just committed)."""
    if policy.sendable_at(now) != now:
        return False
    claimed = await survey_repo.claim_scheduled_for_case(session, case_id)
    if claimed is None:
        return False
    survey, case = claimed
    return await _invite_claimed(session, survey, now, policy, channels, case=case)


async def _invite_claimed(
    session: AsyncSession,
    survey: Survey | None,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    *,
    case: Case | None = None,
) -> bool:
    """`case`: the survey's, as `case_for_invitation` loads it, when the claim brought it."""
    if survey is None or survey.status != SurveyStatus.SCHEDULED or survey.due_at > now:
        return False
    case = case or await survey_repo.case_for_invitation(session, survey.case_id)
    citizen = case.citizen if case else None
    if case is None or citizen is None or citizen.erased_at is not None:
        return False
    if citizen.opted_out_at is not None:
        survey.status = SurveyStatus.OPTED_OUT
        return False
    contact = await citizen_repo.active_contact(session, citizen.id, channels)
    if contact is None:
        return False  # it waits for a chat to be linked (consent invites at once then)
    survey.locale = citizen.locale
    await invite(session, survey, contact, now, policy, case=case)
    return True


async def due_reminders(
    session: AsyncSession,
    now: datetime,
    policy: SurveyPolicy,
    *,
    limit: int = 500,
    leave_out: Collection[int] = (),
) -> Sequence[int]:
    """Ids of invitations left unanswered for `reminder_after`, outside quiet hours."""
    if policy.reminder_after is None or policy.sendable_at(now) != now:
        return []
    return await survey_repo.due_for_reminder(
        session, now - policy.reminder_after, limit, leave_out=leave_out
    )


async def remind_one(
    session: AsyncSession, survey_id: int, now: datetime, policy: SurveyPolicy
) -> bool:
    """One reminder for an invitation left unanswered, if it still is."""
    if policy.reminder_after is None or policy.sendable_at(now) != now:
        return False
    survey = await survey_repo.claim(session, survey_id)
    if (
        survey is None
        or survey.status != SurveyStatus.INVITED
        or survey.reminded_at is not None
        or survey.invited_at is None
        or survey.invited_at > now - policy.reminder_after
        or survey.channel is None
        or survey.address is None
    ):
        return False
    case = await case_repo.get_case_by_id(session, survey.case_id)
    if case is None:
        return False
    survey.reminded_at = now
    questionnaire = load_questionnaire(survey.questionnaire)
    body = invitation_message(survey, case, questionnaire, policy.timezone, reminder=True)
    await say(
        session,
        survey.channel,
        survey.address,
        body,
        now,
        priority=Priority.INVITATION,
        dedupe_key=f"remind:{survey.id}",
        case_id=case.id,
    )
    return True


async def due_expiries(
    session: AsyncSession, now: datetime, *, limit: int = 1000, leave_out: Collection[int] = ()
) -> Sequence[int]:
    return await survey_repo.due_for_expiry(session, now, limit, leave_out=leave_out)


async def expire_one(session: AsyncSession, survey_id: int, now: datetime) -> bool:
    """A survey not finished by its expiry ends as `expired`; nothing is sent about it."""
    survey = await survey_repo.claim(session, survey_id)
    if (
        survey is None
        or survey.status not in PENDING
        or survey.expires_at is None
        or survey.expires_at > now
    ):
        return False
    survey.status = SurveyStatus.EXPIRED
    await _close_prompts(session, survey)
    return True


# --- the conversation -------------------------------------------------------------------


async def _close_prompts(session: AsyncSession, survey: Survey) -> None:
    """A survey that is over leaves no question open for a typed reply to answer."""
    if survey.channel is not None and survey.address is not None:
        refs = (f"a:{survey.ref}:", f"s:{survey.ref}:")
        await prompts.close_if_for(session, survey.channel, survey.address, refs)


def _owned_by(survey: Survey, ctx: ChatContext) -> bool:
    return survey.channel == ctx.channel and survey.address == ctx.address


async def _load_for_press(
    session: AsyncSession, ctx: ChatContext, ref: str
) -> tuple[Survey | None, Reaction | None]:
    survey = await survey_repo.by_ref(session, ref, for_update=True)
    if survey is None or not _owned_by(survey, ctx):
        log.warning("refused a survey press on %s from a chat that does not own it", ctx.channel)
        return None, Reaction(toast=t("survey.not_yours", ctx.policy.default_locale))
    if survey.status == SurveyStatus.COMPLETED:
        return None, Reaction(toast=t("survey.already_completed", survey.locale))
    if survey.status not in OPEN:
        return None, Reaction(toast=t("survey.expired", survey.locale))
    return survey, None


async def survey_pressed(
    session: AsyncSession, ctx: ChatContext, ref: str, action: str
) -> Reaction:
    """`Bắt đầu` or `Để sau` on an invitation."""
    survey, refusal = await _load_for_press(session, ctx, ref)
    if survey is None:
        assert refusal is not None
        return refusal
    if action == "later":
        if survey.status != SurveyStatus.INVITED:
            return Reaction(toast=t("survey.stale_press", survey.locale))
        await say(
            session,
            ctx.channel,
            ctx.address,
            payload(t("survey.later_ack", survey.locale)),
            ctx.now,
        )
        return Reaction(chosen=t("choice.later", survey.locale))
    if action != "start":
        return Reaction(toast=t("survey.stale_press", survey.locale))
    if survey.status == SurveyStatus.IN_PROGRESS:
        # A second press of Start re-sends the open question rather than starting over.
        await _ask(session, survey, ctx)
        return Reaction()
    survey.status = SurveyStatus.IN_PROGRESS
    survey.started_at = ctx.now
    survey.position = 0
    await _ask(session, survey, ctx)
    return Reaction(chosen=t("choice.start", survey.locale))


async def answer_pressed(
    session: AsyncSession, ctx: ChatContext, ref: str, position: int, value: str
) -> Reaction:
    """A choice pressed on a question; honoured only for the open question of the owner."""
    survey, refusal = await _load_for_press(session, ctx, ref)
    if survey is None:
        assert refusal is not None
        return refusal
    if survey.status != SurveyStatus.IN_PROGRESS or position != survey.position:
        log.info("stale survey press ignored (survey %s)", survey.id)
        return Reaction(toast=t("survey.stale_press", survey.locale))
    question = load_questionnaire(survey.questionnaire).questions[position]
    chosen = next(
        (c for c in question_choices(survey, question, position) if c.data.endswith(f":{value}")),
        None,
    )
    if chosen is None:
        log.warning("refused a press with a value the question does not offer")
        return Reaction(toast=t("survey.stale_press", survey.locale))
    await _apply(session, survey, question, value, ctx)
    return Reaction(chosen=chosen.label)


async def text_for_survey(session: AsyncSession, ctx: ChatContext, text: str) -> bool:
    """A typed message, taken as the answer to this chat's open question; False if none is open."""
    survey = await survey_repo.open_for_address(session, ctx.channel, ctx.address)
    if survey is None:
        return False
    if survey.status == SurveyStatus.INVITED:
        choices = [
            Choice(t("choice.start", survey.locale), "start"),
            Choice(t("choice.later", survey.locale), "later"),
        ]
        picked = match_typed_choice(text, choices)
        if picked is None:
            await _explain_choices(session, survey, ctx, choices)
        else:
            await survey_pressed(session, ctx, survey.ref, picked.data)
        return True
    question = load_questionnaire(survey.questionnaire).questions[survey.position]
    choices = question_choices(survey, question, survey.position)
    picked = match_typed_choice(text, choices)
    if picked is not None:
        await _apply(session, survey, question, picked.data.rsplit(":", 1)[1], ctx)
    elif question.kind == "text":
        await _apply(session, survey, question, "text", ctx, text=text.strip())
    else:
        await _explain_choices(session, survey, ctx, choices)
    return True


async def _explain_choices(
    session: AsyncSession, survey: Survey, ctx: ChatContext, choices: list[Choice]
) -> None:
    listing = numbered_lines(choices)
    await say(
        session,
        ctx.channel,
        ctx.address,
        payload(t("survey.invalid_reply", survey.locale, choices=listing)),
        ctx.now,
    )


async def _apply(
    session: AsyncSession,
    survey: Survey,
    question: Question,
    value: str,
    ctx: ChatContext,
    *,
    text: str | None = None,
) -> None:
    """Stores one answer (or goes back) through the rules every channel shares, then asks the
    next question or, after the last, completes the survey and thanks the citizen."""
    assert question.id == survey_answers.open_question(survey).id
    await survey_answers.record_answer(session, survey, value, ctx.now, text=text)
    if not survey_answers.answered_all(survey):
        await _ask(session, survey, ctx)
        return
    opened = await survey_answers.complete_survey(
        session, survey, ctx.now, ctx.policy, ctx.channels
    )
    thanks = t("survey.thanks", survey.locale)
    if opened:
        case = await case_repo.get_case_by_id(session, survey.case_id)
        assert case is not None
        thanks += "\n\n" + t("survey.thanks_escalated", survey.locale, unit_name=case.unit.name)
    await say(session, ctx.channel, ctx.address, payload(thanks), ctx.now)


async def _ask(session: AsyncSession, survey: Survey, ctx: ChatContext) -> None:
    case = await case_repo.get_case_by_id(session, survey.case_id)
    assert case is not None
    body = question_message(
        survey, case, load_questionnaire(survey.questionnaire), ctx.policy.timezone
    )
    await say(session, ctx.channel, ctx.address, body, ctx.now, case_id=case.id)
