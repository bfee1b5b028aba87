"""Complaints reach the head of the unit, climb the hierarchy past their SLA, and come back.

Level 1 is the case's own unit; a unit whose head cannot be reached, or whose head is the
officer being rated, is passed over at once (and the gap recorded). What each event does in
each state is the table of `handlers/escalation_states.py`; `_fire` carries it out. Every step
is an `EscalationEvent`, the audit trail the case view and the digests read.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.chat import ChatContext, Reaction, say
from handlers.escalation_rules import CRITICAL, Trigger, default_rules, survey_triggers
from handlers.escalation_states import (
    Event,
    Guard,
    State,
    Step,
    Transition,
    needs_guard,
    state_of,
    status_of,
    transition,
)
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
# At the top of the hierarchy an overdue escalation's head is reminded this often (working
# time: one working day on the `vn` calendar).
OVERDUE_REMINDER_EVERY = timedelta(days=1)


def head_address(head: UnitHead | None, channels: Sequence[str]) -> tuple[str, str] | None:
    """Where a head can be reached on the configured channels, in channel preference order."""
    if head is None:
        return None
    for channel in channels:
        address = head.address_on(channel)
        if address:
            return channel, address
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
    await _route(session, escalation, case, now, policy, channels)
    return escalation


@dataclass(frozen=True)
class _Holder:
    """The head an escalation goes to next: their unit, where to reach them, the level."""

    unit: Unit
    address: tuple[str, str]
    level: int


# A unit passed over on the way up: the unit, why, and its level from where it started.
Skip = tuple[Unit, str, int | None]


async def _find_holder(
    session: AsyncSession,
    escalation: Escalation,
    case: Case,
    start_unit_id: int | None,
    channels: Sequence[str],
) -> tuple[_Holder | None, list[Skip]]:
    """The first reachable head from `start_unit_id` up, and the units passed over.

    Only looks: the caller records the skips when it hands the escalation on, so a daily
    check at the top of the hierarchy does not fill the audit trail.
    """
    if start_unit_id is None:
        return None, []
    origin_chain = await repo.chain(session, escalation.origin_unit_id)
    levels = {unit.id: index + 1 for index, unit in enumerate(origin_chain)}
    officer_code = case.officer.code if case.officer else None
    skipped: list[Skip] = []
    for unit in await repo.chain(session, start_unit_id):
        head = await repo.head_of(session, unit.id)
        if head is not None and officer_code and head.officer_code == officer_code:
            skipped.append((unit, "head_is_officer", levels.get(unit.id)))
            continue
        address = head_address(head, channels)
        if address is None:
            skipped.append((unit, "no_reachable_head", levels.get(unit.id)))
            continue
        return _Holder(unit, address, levels.get(unit.id, escalation.level + 1)), skipped
    return None, skipped


def _record_skips(
    session: AsyncSession, escalation: Escalation, skipped: list[Skip], now: datetime
) -> None:
    for unit, why, level in skipped:
        detail = {"unit": unit.code, "why": why}
        repo.add_event(session, escalation, "skipped", now, detail=detail, unit=unit, level=level)


async def _hand_to(
    session: AsyncSession,
    escalation: Escalation,
    case: Case,
    holder: _Holder,
    skipped: list[Skip],
    now: datetime,
    policy: SurveyPolicy,
    *,
    climbed_from: Unit | None,
) -> None:
    _record_skips(session, escalation, skipped, now)
    escalation.unit_id = holder.unit.id
    escalation.level = holder.level
    escalation.ack_due_at = policy.escalation.calendar.add(now, policy.escalation.ack_sla)
    await _send_card(session, escalation, case, holder.address, now, policy, climbed_from)
    repo.add_event(session, escalation, "sent", now, detail={"unit": holder.unit.code})


async def _route(
    session: AsyncSession,
    escalation: Escalation,
    case: Case,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> None:
    """Hands a new escalation to the first reachable head from the case's unit up."""
    holder, skipped = await _find_holder(session, escalation, case, case.unit_id, channels)
    if holder is not None:
        await _hand_to(session, escalation, case, holder, skipped, now, policy, climbed_from=None)
        return
    # Nobody can be reached: it stays with the case's unit, and its acknowledgement deadline
    # still runs, so that it shows as overdue then (and climbs if a head above has joined).
    _record_skips(session, escalation, skipped, now)
    escalation.ack_due_at = policy.escalation.calendar.add(now, policy.escalation.ack_sla)
    repo.add_event(session, escalation, "unrouted", now)
    log.warning("escalation %s has no reachable head up the hierarchy", escalation.id)


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


# --- the state machine -----------------------------------------------------------------------


def state(escalation: Escalation) -> State:
    return state_of(
        escalation.status,
        reminded_at=escalation.resolve_reminded_at,
        overdue_since=escalation.overdue_since,
    )


def deadline(escalation: Escalation) -> datetime | None:
    """When the sweep next acts on it: the state's deadline, or, overdue, the next reminder."""
    if escalation.status == EscalationStatus.OPEN:
        return escalation.ack_due_at
    if escalation.status == EscalationStatus.ACKNOWLEDGED:
        return escalation.resolve_due_at
    return None


def due_at(escalation: Escalation) -> datetime | None:
    """The deadline the head has now, or the one they missed while it is overdue."""
    if escalation.status == EscalationStatus.RESOLVED:
        return None
    return escalation.overdue_since or deadline(escalation)


@dataclass(frozen=True)
class _Act:
    """Who or what caused an event, and what it carries."""

    now: datetime
    policy: SurveyPolicy
    channels: Sequence[str]
    actor: str | None = None
    note: str | None = None


async def _fire(
    session: AsyncSession, escalation: Escalation, case: Case, event: Event, act: _Act
) -> Transition:
    """Carries out what `event` does in the escalation's state (`escalation_states.TABLE`)."""
    current = state(escalation)
    holder: _Holder | None = None
    skipped: list[Skip] = []
    guard = Guard.ANY
    if needs_guard(current, event):
        lower = await repo.unit(session, escalation.unit_id)
        holder, skipped = await _find_holder(
            session, escalation, case, lower.parent_id, act.channels
        )
        guard = Guard.ABOVE if holder is not None else Guard.TOP
    move = transition(current, event, guard)
    if move.step == Step.ACKNOWLEDGE:
        escalation.status = EscalationStatus.ACKNOWLEDGED
        escalation.acknowledged_at = act.now
        escalation.overdue_since = None
        repo.add_event(session, escalation, "acknowledged", act.now, actor=act.actor)
    elif move.step == Step.RESOLVE:
        await _resolve(session, escalation, case, act)
    elif move.step == Step.REMIND_TO_RESOLVE:
        await _remind_to_resolve(session, escalation, case, act)
    elif move.step == Step.REMIND_OVERDUE:
        await _remind_overdue(session, escalation, case, act)
    elif move.step in (Step.CLIMB, Step.REOPEN_ABOVE):
        assert holder is not None
        await _climb(
            session, escalation, case, holder, skipped, act, reopened=event == Event.REOPENED
        )
    elif move.step == Step.REOPEN_HERE:
        await _reopen_here(session, escalation, case, act)
    assert move.step == Step.IGNORE or status_of(move.to) == escalation.status
    return move


def _restart(escalation: Escalation, act: _Act) -> None:
    """Open again, with a full resolution period: a new head, or the same one asked again."""
    sla = act.policy.escalation
    escalation.status = EscalationStatus.OPEN
    escalation.acknowledged_at = None
    escalation.resolved_at = None
    escalation.awaiting_note_from = None
    escalation.resolve_reminded_at = None
    escalation.overdue_since = None
    escalation.resolve_due_at = sla.calendar.add(act.now, sla.resolve_sla)


async def _climb(
    session: AsyncSession,
    escalation: Escalation,
    case: Case,
    holder: _Holder,
    skipped: list[Skip],
    act: _Act,
    *,
    reopened: bool,
) -> None:
    """Hands the escalation to the next reachable head above; the lower head is told."""
    lower = await repo.unit(session, escalation.unit_id)
    _restart(escalation, act)
    why = "reopened" if reopened else "climbed"
    repo.add_event(session, escalation, why, act.now, detail={"from": lower.code})
    await _hand_to(
        session, escalation, case, holder, skipped, act.now, act.policy, climbed_from=lower
    )
    lower_address = head_address(await repo.head_of(session, lower.id), act.channels)
    if lower_address is not None and not reopened:
        text = t(
            "escalation.climbed_notice_lower",
            act.policy.default_locale,
            case_code=case.case_code,
            unit_name=holder.unit.name,
        )
        await say(
            session,
            lower_address[0],
            lower_address[1],
            payload(text),
            act.now,
            priority=Priority.NOTICE,
            case_id=case.id,
        )


async def _reopen_here(
    session: AsyncSession, escalation: Escalation, case: Case, act: _Act
) -> None:
    """At the top of the hierarchy a rejected resolution goes back to the same head."""
    sla = act.policy.escalation
    _restart(escalation, act)
    escalation.ack_due_at = sla.calendar.add(act.now, sla.ack_sla)
    repo.add_event(session, escalation, "reopened", act.now)
    holder = await repo.unit(session, escalation.unit_id)
    address = head_address(await repo.head_of(session, holder.id), act.channels)
    if address is not None:
        await _send_card(session, escalation, case, address, act.now, act.policy, None)
        repo.add_event(session, escalation, "sent", act.now, detail={"unit": holder.code})


async def _remind_to_resolve(
    session: AsyncSession, escalation: Escalation, case: Case, act: _Act
) -> None:
    """Once, past the resolution deadline: one more acknowledgement period, then it climbs."""
    sla = act.policy.escalation
    locale = act.policy.default_locale
    holder = await repo.unit(session, escalation.unit_id)
    address = head_address(await repo.head_of(session, holder.id), act.channels)
    if address is not None:
        text = t(
            "escalation.resolve_reminder", locale, case_code=case.case_code, unit_name=holder.name
        )
        choices = [Choice(t("choice.resolved", locale), f"e:{escalation.ref}:{RESOLVE}")]
        await say(
            session,
            address[0],
            address[1],
            payload(text, choices),
            act.now,
            priority=Priority.NOTICE,
            case_id=case.id,
        )
    escalation.resolve_reminded_at = act.now
    escalation.resolve_due_at = sla.calendar.add(act.now, sla.ack_sla)
    repo.add_event(session, escalation, "reminded", act.now)


async def _remind_overdue(
    session: AsyncSession, escalation: Escalation, case: Case, act: _Act
) -> None:
    """Past its deadline with nobody above: it stays with its head, reminded each working day."""
    missed = deadline(escalation)
    assert missed is not None
    if escalation.overdue_since is None:
        escalation.overdue_since = missed
        repo.add_event(session, escalation, "overdue", act.now)
        log.warning("escalation %s is overdue at the top of the hierarchy", escalation.id)
    else:
        repo.add_event(session, escalation, "reminded", act.now)
    next_reminder = act.policy.escalation.calendar.add(act.now, OVERDUE_REMINDER_EVERY)
    if escalation.status == EscalationStatus.OPEN:
        escalation.ack_due_at = next_reminder
    else:
        escalation.resolve_due_at = next_reminder
    locale = act.policy.default_locale
    holder = await repo.unit(session, escalation.unit_id)
    address = head_address(await repo.head_of(session, holder.id), act.channels)
    if address is None:
        return  # nobody to remind: the case view and the digests show it overdue
    text = t(
        "escalation.overdue_reminder",
        locale,
        case_code=case.case_code,
        unit_name=holder.name,
        due_date=local_date(escalation.overdue_since, act.policy.timezone),
    )
    choices = [Choice(t("choice.resolved", locale), f"e:{escalation.ref}:{RESOLVE}")]
    if escalation.status == EscalationStatus.OPEN:
        choices.insert(0, Choice(t("choice.acknowledge", locale), f"e:{escalation.ref}:{ACK}"))
    await say(
        session,
        address[0],
        address[1],
        payload(text, choices),
        act.now,
        priority=Priority.NOTICE,
        case_id=case.id,
    )


async def _resolve(session: AsyncSession, escalation: Escalation, case: Case, act: _Act) -> None:
    note = act.note or ""
    escalation.awaiting_note_from = None
    escalation.status = EscalationStatus.RESOLVED
    escalation.resolved_at = act.now
    escalation.acknowledged_at = escalation.acknowledged_at or act.now
    escalation.overdue_since = None
    escalation.resolution_note = note
    repo.add_event(session, escalation, "resolved", act.now, actor=act.actor, detail={"note": note})
    await _tell_citizen(session, escalation, case, note, act)


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


def _act(ctx: ChatContext, *, note: str | None = None) -> _Act:
    return _Act(ctx.now, ctx.policy, ctx.channels, actor=actor_of(ctx), note=note)


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
        await _fire(session, escalation, case, Event.ACKNOWLEDGED, _act(ctx))
        body = payload(
            t("escalation.ack_done", locale, case_code=case.case_code),
            [Choice(t("choice.resolved", locale), f"e:{escalation.ref}:{RESOLVE}")],
        )
        await say(session, ctx.channel, ctx.address, body, ctx.now)
        return Reaction(chosen=t("choice.acknowledge", locale))
    if action == RESOLVE:
        # Not an event yet: the head is asked for the note, and the note resolves it.
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
    case = await case_repo.get_case_by_id(session, escalation.case_id)
    assert case is not None
    await _fire(session, escalation, case, Event.RESOLVED, _act(ctx, note=note))
    await say(
        session,
        ctx.channel,
        ctx.address,
        payload(t("escalation.resolve_done", ctx.policy.default_locale, case_code=case.case_code)),
        ctx.now,
    )
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
    session: AsyncSession, escalation: Escalation, case: Case, note: str, act: _Act
) -> None:
    """Closes the loop: "you said, we did", and one question on how it was handled."""
    target = await _citizen_address(session, case, act.channels)
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
        session, channel, address, payload(text), act.now, priority=Priority.NOTICE, case_id=case.id
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
        act.now,
        priority=Priority.NOTICE,
        case_id=case.id,
    )


def recovery_open(escalation: Escalation) -> bool:
    """Whether the citizen may rate how the complaint was handled: it is resolved, and this
    resolution is not rated yet (after a reopening and a new resolution, it is asked again)."""
    resolved_at = escalation.resolved_at
    answered = (
        escalation.recovery_at is not None
        and resolved_at is not None
        and (escalation.recovery_at >= resolved_at)
    )
    return escalation.status == EscalationStatus.RESOLVED and not answered


async def record_recovery(
    session: AsyncSession,
    escalation: Escalation,
    case: Case,
    score: int,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    *,
    actor: str,
) -> bool:
    """Stores the citizen's 1-5 rating of how the complaint was handled, on any channel; a low
    rating reopens it one level up. False (nothing changed) when no rating is open."""
    if not recovery_open(escalation) or not 1 <= score <= 5:
        return False
    escalation.recovery_rating = score
    escalation.recovery_at = now
    repo.add_event(session, escalation, "recovery", now, actor=actor, detail={"rating": score})
    if score <= default_rules().low_rating_max:
        act = _Act(now, policy, channels, actor=actor)
        await _fire(session, escalation, case, Event.REOPENED, act)
    return True


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
    if not recovery_open(escalation):
        return Reaction(toast=t("survey.stale_press", locale))
    score = int(value)
    await say(
        session, ctx.channel, ctx.address, payload(t("escalation.recovery_thanks", locale)), ctx.now
    )
    await record_recovery(
        session, escalation, case, score, ctx.now, ctx.policy, ctx.channels, actor=actor_of(ctx)
    )
    return Reaction(chosen=rating_labels(locale)[score - 1])


# --- the SLA sweep ---------------------------------------------------------------------------


async def due_for_sla(
    session: AsyncSession, now: datetime, *, limit: int = 200, leave_out: Collection[int] = ()
) -> Sequence[int]:
    """Ids of unresolved escalations whose deadline (or overdue reminder) has come."""
    return await repo.due_ids(session, now, limit, leave_out=leave_out)


async def deadline_passed(
    session: AsyncSession,
    escalation_id: int,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> bool:
    """The sweep's per-item step: climbs, reminds, or marks overdue one escalation if it is
    still due; False when there was nothing to do (another process took it, or a head acted).
    """
    escalation = await repo.claim(session, escalation_id)
    if escalation is None:
        return False
    due = deadline(escalation)
    if due is None or due > now:
        return False
    case = await case_repo.get_case_by_id(session, escalation.case_id)
    assert case is not None
    move = await _fire(
        session, escalation, case, Event.DEADLINE_PASSED, _Act(now, policy, channels)
    )
    return move.step != Step.IGNORE
