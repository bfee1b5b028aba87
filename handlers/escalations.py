"""Complaints reach the head of the unit, climb the hierarchy past their SLA, and come back.

Level 1 is the case's own unit; a unit whose head cannot be reached, or whose head is the
officer being rated, is passed over at once (and the gap recorded). Every step is an
`EscalationEvent`, the audit trail the case view and the digests read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.chat import ChatContext, Reaction, say
from handlers.escalation_rules import CRITICAL, Trigger, default_rules, survey_triggers
from handlers.policy import SurveyPolicy
from handlers.questionnaire import load_questionnaire
from handlers.rendering import Choice, local_date, payload
from handlers.surveys import new_ref
from handlers.texts import rating_labels, t
from storage.models import (
    Answer,
    Case,
    ContactStatus,
    Escalation,
    EscalationStatus,
    Priority,
    Survey,
    Unit,
    UnitHead,
)
from storage.repositories import cases as case_repo
from storage.repositories import citizens as citizen_repo
from storage.repositories import escalations as repo

log = logging.getLogger(__name__)

ACK = "ack"
RESOLVE = "res"


def head_address(head: UnitHead | None, channels: Sequence[str]) -> tuple[str, str] | None:
    """Where a head can be reached on the configured channels, in channel preference order."""
    if head is None:
        return None
    for channel in channels:
        if channel == "telegram" and head.telegram_chat_id:
            return channel, head.telegram_chat_id
        if channel == "zalo" and head.zalo_user_id:
            return channel, head.zalo_user_id
    return None


def actor_of(ctx: ChatContext) -> str:
    return f"{ctx.channel}:{ctx.address}"


# --- opening --------------------------------------------------------------------------------


async def survey_completed(
    session: AsyncSession,
    survey: Survey,
    answers: Sequence[Answer],
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> list[Escalation]:
    """Opens what the answers call for; returns the escalations opened."""
    questionnaire = load_questionnaire(survey.questionnaire)
    ratings = {a.question_id: a.value_int for a in answers if a.value_int is not None}
    yes_no = {a.question_id: a.value_text or "" for a in answers if a.value_text in {"yes", "no"}}
    comment_question = questionnaire.by_role("comment")
    comment = next(
        (
            a.value_text
            for a in answers
            if comment_question and a.question_id == comment_question.id and a.value_text
        ),
        None,
    )
    triggers = survey_triggers(questionnaire, ratings, yes_no, comment, default_rules())
    if not triggers:
        return []
    case = await case_repo.get_case_by_id(session, survey.case_id)
    assert case is not None
    factors: dict[str, list[int]] = {}
    for question in questionnaire.ratings:
        if question.id in ratings and question.factor:
            factors.setdefault(question.factor, []).append(ratings[question.id])
    means = {factor: round(sum(v) / len(v), 1) for factor, v in factors.items()}
    detail = {"ratings": ratings, "factors": means, "comment": comment}
    opened = []
    for trigger in triggers:
        escalation = await open_escalation(
            session, case, trigger, now, policy, channels, survey=survey, detail=detail
        )
        if escalation is not None:
            opened.append(escalation)
    return opened


async def case_resolved_late(
    session: AsyncSession, case: Case, now: datetime, policy: SurveyPolicy, channels: Sequence[str]
) -> Escalation | None:
    """A case resolved after its latest promised date is a complaint of its own."""
    promised = case.delay_new_due_at or case.due_at
    if case.resolved_at is None or case.resolved_at <= promised:
        return None
    trigger = Trigger("late", default_rules().late_severity)
    return await open_escalation(session, case, trigger, now, policy, channels, detail={})


async def open_escalation(
    session: AsyncSession,
    case: Case,
    trigger: Trigger,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    *,
    survey: Survey | None = None,
    detail: Mapping[str, object] | None = None,
) -> Escalation | None:
    """One escalation per case and reason, ever; None when it exists already."""
    if await repo.for_case(session, case.id, trigger.reason) is not None:
        return None
    sla = policy.escalation
    escalation = Escalation(
        ref=new_ref(),
        case_id=case.id,
        survey_id=survey.id if survey else None,
        reason=trigger.reason,
        severity=trigger.severity,
        level=1,
        unit_id=case.unit_id,
        origin_unit_id=case.unit_id,
        status=EscalationStatus.OPEN,
        detail=dict(detail or {}),
        opened_at=now,
        resolve_due_at=sla.calendar.add(now, sla.resolve_sla),
    )
    session.add(escalation)
    await session.flush()
    repo.add_event(session, escalation, "opened", now, detail={"severity": trigger.severity})
    if trigger.severity == CRITICAL:
        log.warning("critical escalation opened for a case of unit %s", case.unit.code)
    await _route(session, escalation, case, case.unit_id, now, policy, channels, climbed_from=None)
    return escalation


async def _route(
    session: AsyncSession,
    escalation: Escalation,
    case: Case,
    start_unit_id: int,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    *,
    climbed_from: Unit | None,
) -> bool:
    """Hands the escalation to the first reachable head from `start_unit_id` up; False if none."""
    origin_chain = await repo.chain(session, escalation.origin_unit_id)
    levels = {unit.id: index + 1 for index, unit in enumerate(origin_chain)}
    officer_code = case.officer.code if case.officer else None
    for unit in await repo.chain(session, start_unit_id):
        head = await repo.head_of(session, unit.id)
        address = head_address(head, channels)
        if head is not None and officer_code and head.officer_code == officer_code:
            repo.add_event(
                session,
                escalation,
                "skipped",
                now,
                detail={"unit": unit.code, "why": "head_is_officer"},
                unit=unit,
                level=levels.get(unit.id),
            )
            continue
        if address is None:
            repo.add_event(
                session,
                escalation,
                "skipped",
                now,
                detail={"unit": unit.code, "why": "no_reachable_head"},
                unit=unit,
                level=levels.get(unit.id),
            )
            continue
        escalation.unit_id = unit.id
        escalation.level = levels.get(unit.id, escalation.level + 1)
        escalation.ack_due_at = policy.escalation.calendar.add(now, policy.escalation.ack_sla)
        await _send_card(session, escalation, case, address, now, policy, climbed_from)
        repo.add_event(session, escalation, "sent", now, detail={"unit": unit.code})
        return True
    # Nobody above can be reached: it stays where it is, visible in the case view and digests.
    escalation.ack_due_at = None
    repo.add_event(session, escalation, "unrouted", now)
    log.warning("escalation %s has no reachable head up the hierarchy", escalation.id)
    return False


# --- the card --------------------------------------------------------------------------------


def _timeliness(case: Case, policy: SurveyPolicy) -> str:
    promised = case.delay_new_due_at or case.due_at
    if case.resolved_at is None or case.resolved_at <= promised:
        tz = policy.timezone
        if case.resolved_at is not None and (
            case.resolved_at.astimezone(tz).date() < promised.astimezone(tz).date()
        ):
            return "early"
        return "on_time"
    return "late"


def _ratings_text(escalation: Escalation, locale: str) -> str:
    factors: dict[str, float] = escalation.detail.get("factors") or {}
    if not factors:
        return t("escalation.none", locale)
    return "; ".join(
        f"{t(f'factor.{factor}', locale)} {value:g}/5" for factor, value in factors.items()
    )


async def _send_card(
    session: AsyncSession,
    escalation: Escalation,
    case: Case,
    address: tuple[str, str],
    now: datetime,
    policy: SurveyPolicy,
    climbed_from: Unit | None,
) -> None:
    locale = policy.default_locale
    tz = policy.timezone
    origin = await repo.unit(session, escalation.origin_unit_id)
    text = t(
        "escalation.card",
        locale,
        unit_name=origin.name,
        severity=t(f"escalation.severity.{escalation.severity}", locale),
        reason=t(f"escalation.reason.{escalation.reason}", locale),
        level=escalation.level,
        case_code=case.case_code,
        procedure_name=case.procedure.name,
        received_date=local_date(case.received_at, tz),
        due_date=local_date(case.delay_new_due_at or case.due_at, tz),
        timeliness=t(f"escalation.timeliness.{_timeliness(case, policy)}", locale),
        ratings=_ratings_text(escalation, locale),
        comment=escalation.detail.get("comment") or t("escalation.none", locale),
    )
    if climbed_from is not None:
        prefix = t("escalation.climbed_card_prefix", locale, lower_unit_name=climbed_from.name)
        text = f"{prefix}\n\n{text}"
    choices = [
        Choice(t("choice.acknowledge", locale), f"e:{escalation.ref}:{ACK}"),
        Choice(t("choice.resolved", locale), f"e:{escalation.ref}:{RESOLVE}"),
    ]
    channel, to = address
    await say(
        session, channel, to, payload(text, choices), now, priority=Priority.NOTICE, case_id=case.id
    )


# --- the head acts ---------------------------------------------------------------------------


async def _authorised(session: AsyncSession, escalation: Escalation, ctx: ChatContext) -> bool:
    """The heads it has reached: from its own unit up to the unit that holds it now."""
    heads = await repo.heads_by_address(session, ctx.channel, ctx.address)
    if not heads:
        return False
    reached: set[int] = set()
    for unit in await repo.chain(session, escalation.origin_unit_id):
        reached.add(unit.id)
        if unit.id == escalation.unit_id:
            break
    return any(head.unit_id in reached for head in heads)


async def escalation_pressed(
    session: AsyncSession, ctx: ChatContext, ref: str, action: str
) -> Reaction:
    locale = ctx.policy.default_locale
    escalation = await repo.by_ref(session, ref, for_update=True)
    if escalation is None or not await _authorised(session, escalation, ctx):
        log.warning("refused an escalation press from a chat that may not act on it")
        return Reaction(toast=t("escalation.not_authorised", locale))
    case = await case_repo.get_case_by_id(session, escalation.case_id)
    assert case is not None
    if escalation.status == EscalationStatus.RESOLVED:
        return Reaction(toast=t("escalation.resolve_done", locale, case_code=case.case_code))
    actor = actor_of(ctx)
    if action == ACK:
        if escalation.status == EscalationStatus.OPEN:
            escalation.status = EscalationStatus.ACKNOWLEDGED
            escalation.acknowledged_at = ctx.now
            repo.add_event(session, escalation, "acknowledged", ctx.now, actor=actor)
        body = payload(
            t("escalation.ack_done", locale, case_code=case.case_code),
            [Choice(t("choice.resolved", locale), f"e:{escalation.ref}:{RESOLVE}")],
        )
        await say(session, ctx.channel, ctx.address, body, ctx.now)
        return Reaction(chosen=t("choice.acknowledge", locale))
    if action == RESOLVE:
        await repo.clear_awaiting(session, actor)
        escalation.awaiting_note_from = actor
        await say(
            session,
            ctx.channel,
            ctx.address,
            payload(t("escalation.resolve_prompt_note", locale, case_code=case.case_code)),
            ctx.now,
        )
        return Reaction(chosen=t("choice.resolved", locale))
    return Reaction(toast=t("survey.stale_press", locale))


async def note_received(session: AsyncSession, ctx: ChatContext, text: str) -> bool:
    """A head's text after pressing «Đã xử lý» is the note; False if no note is awaited."""
    escalation = await repo.awaiting_note(session, actor_of(ctx))
    if escalation is None:
        return False
    note = text.strip()[:2000]
    locale = ctx.policy.default_locale
    escalation.awaiting_note_from = None
    escalation.status = EscalationStatus.RESOLVED
    escalation.resolved_at = ctx.now
    escalation.acknowledged_at = escalation.acknowledged_at or ctx.now
    escalation.resolution_note = note
    repo.add_event(
        session, escalation, "resolved", ctx.now, actor=actor_of(ctx), detail={"note": note}
    )
    case = await case_repo.get_case_by_id(session, escalation.case_id)
    assert case is not None
    await say(
        session,
        ctx.channel,
        ctx.address,
        payload(t("escalation.resolve_done", locale, case_code=case.case_code)),
        ctx.now,
    )
    await _tell_citizen(session, escalation, case, note, ctx)
    return True


async def _citizen_address(
    session: AsyncSession, case: Case, channels: Sequence[str]
) -> tuple[str, str, str] | None:
    """(channel, address, locale) of the citizen, preferring the chat they answered in."""
    if case.citizen is None or case.citizen.erased_at is not None:
        return None
    survey = await case_repo.survey_for_case(session, case.id)
    contact = await citizen_repo.active_contact(session, case.citizen.id, channels)
    if survey is not None and survey.channel and survey.address:
        found = await citizen_repo.contact(session, survey.channel, survey.address)
        if found is not None and found.status == ContactStatus.ACTIVE:
            contact = found
    if contact is None:
        return None
    return contact.channel, contact.address, case.citizen.locale


async def _tell_citizen(
    session: AsyncSession, escalation: Escalation, case: Case, note: str, ctx: ChatContext
) -> None:
    """Closes the loop: "you said, we did", and one question on how it was handled."""
    target = await _citizen_address(session, case, ctx.channels)
    if target is None:
        return
    channel, address, locale = target
    origin = await repo.unit(session, escalation.origin_unit_id)
    text = t(
        "escalation.citizen_outcome",
        locale,
        case_code=case.case_code,
        procedure_name=case.procedure.name,
        unit_name=origin.name,
        note=note,
    )
    await say(
        session, channel, address, payload(text), ctx.now, priority=Priority.NOTICE, case_id=case.id
    )
    choices = [
        Choice(label, f"r:{escalation.ref}:{score}")
        for score, label in enumerate(rating_labels(locale), start=1)
    ]
    await say(
        session,
        channel,
        address,
        payload(t("escalation.recovery_question", locale), choices),
        ctx.now,
        priority=Priority.NOTICE,
        case_id=case.id,
    )


async def recovery_pressed(
    session: AsyncSession, ctx: ChatContext, ref: str, value: str
) -> Reaction:
    """The citizen rates how the complaint was handled; a low answer reopens it one level up."""
    escalation = await repo.by_ref(session, ref, for_update=True)
    citizen = await citizen_repo.citizen_by_contact(session, ctx.channel, ctx.address)
    locale = citizen.locale if citizen else ctx.policy.default_locale
    case = await case_repo.get_case_by_id(session, escalation.case_id) if escalation else None
    if (
        escalation is None
        or case is None
        or citizen is None
        or case.citizen_id != citizen.id
        or not value.isdigit()
        or not 1 <= int(value) <= 5
    ):
        log.warning("refused a recovery press that does not belong to the chat")
        return Reaction(toast=t("survey.not_yours", locale))
    # One answer per resolution: after a reopening and a new resolution, it is asked again.
    resolved_at = escalation.resolved_at
    answered = (
        escalation.recovery_at is not None
        and resolved_at is not None
        and (escalation.recovery_at >= resolved_at)
    )
    if escalation.status != EscalationStatus.RESOLVED or answered:
        return Reaction(toast=t("survey.stale_press", locale))
    score = int(value)
    escalation.recovery_rating = score
    escalation.recovery_at = ctx.now
    repo.add_event(
        session, escalation, "recovery", ctx.now, actor=actor_of(ctx), detail={"rating": score}
    )
    await say(
        session, ctx.channel, ctx.address, payload(t("escalation.recovery_thanks", locale)), ctx.now
    )
    if score <= default_rules().low_rating_max:
        await _climb(session, escalation, case, ctx.now, ctx.policy, ctx.channels, why="reopened")
    return Reaction(chosen=rating_labels(locale)[score - 1])


# --- the SLA sweep ---------------------------------------------------------------------------


async def _climb(
    session: AsyncSession,
    escalation: Escalation,
    case: Case,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    *,
    why: str,
) -> None:
    """Hands the escalation to the next reachable head above; the lower head is told."""
    lower = await repo.unit(session, escalation.unit_id)
    sla = policy.escalation
    escalation.status = EscalationStatus.OPEN
    escalation.acknowledged_at = None
    escalation.resolved_at = None
    escalation.awaiting_note_from = None
    escalation.resolve_reminded_at = None
    escalation.resolve_due_at = sla.calendar.add(now, sla.resolve_sla)
    repo.add_event(
        session,
        escalation,
        "reopened" if why == "reopened" else "climbed",
        now,
        detail={"why": why, "from": lower.code},
    )
    routed = False
    if lower.parent_id is not None:
        routed = await _route(
            session, escalation, case, lower.parent_id, now, policy, channels, climbed_from=lower
        )
    if not routed:
        # The top of the hierarchy: the same head is asked again, and the climb stops here.
        address = head_address(await repo.head_of(session, lower.id), channels)
        if address is not None:
            escalation.unit_id = lower.id
            await _send_card(session, escalation, case, address, now, policy, climbed_from=None)
        escalation.ack_due_at = None
        return
    lower_address = head_address(await repo.head_of(session, lower.id), channels)
    if lower_address is not None and why != "reopened":
        holder = await repo.unit(session, escalation.unit_id)
        text = t(
            "escalation.climbed_notice_lower",
            policy.default_locale,
            case_code=case.case_code,
            unit_name=holder.name,
        )
        await say(
            session,
            lower_address[0],
            lower_address[1],
            payload(text),
            now,
            priority=Priority.NOTICE,
            case_id=case.id,
        )


async def sla_sweep(
    session: AsyncSession,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    *,
    limit: int = 200,
) -> int:
    """Climbs what was not acknowledged in time; reminds, then climbs, what was not resolved."""
    moved = 0
    for escalation in await repo.due_for_ack(session, now, limit):
        case = await case_repo.get_case_by_id(session, escalation.case_id)
        assert case is not None
        await _climb(session, escalation, case, now, policy, channels, why="ack_sla")
        moved += 1
    sla = policy.escalation
    for escalation in await repo.due_for_resolution(session, now, limit):
        case = await case_repo.get_case_by_id(session, escalation.case_id)
        assert case is not None
        if escalation.resolve_reminded_at is None:
            address = head_address(await repo.head_of(session, escalation.unit_id), channels)
            holder = await repo.unit(session, escalation.unit_id)
            if address is not None:
                text = t(
                    "escalation.resolve_reminder",
                    policy.default_locale,
                    case_code=case.case_code,
                    unit_name=holder.name,
                )
                choices = [
                    Choice(
                        t("choice.resolved", policy.default_locale), f"e:{escalation.ref}:{RESOLVE}"
                    )
                ]
                await say(
                    session,
                    address[0],
                    address[1],
                    payload(text, choices),
                    now,
                    priority=Priority.NOTICE,
                    case_id=case.id,
                )
            escalation.resolve_reminded_at = now
            # One more acknowledgement period to act, then it goes up.
            escalation.resolve_due_at = sla.calendar.add(now, sla.ack_sla)
            repo.add_event(session, escalation, "reminded", now)
        else:
            await _climb(session, escalation, case, now, policy, channels, why="resolve_sla")
        moved += 1
    return moved
