"""A citizen links their chat to a case (with consent), changes language, stops, or erases data.

Consent follows Nghị định 13/2023/NĐ-CP: what is collected and why is said before anything is
stored; /stop withdraws consent for new surveys; /delete erases the person's personal data and
keeps their answers only as anonymous statistics.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import heads
from handlers.chat import ChatContext, Reaction, say
from handlers.rendering import consent_message, delete_confirm_message, language_message, payload
from handlers.survey_flow import invite_if_due
from handlers.texts import t
from storage.models import Citizen, SurveyStatus
from storage.repositories import cases as case_repo
from storage.repositories import citizens as citizen_repo
from storage.repositories import surveys as survey_repo

log = logging.getLogger(__name__)


async def locale_of(session: AsyncSession, ctx: ChatContext) -> str:
    """The language to answer in: the citizen's choice, else their app's, else the default."""
    citizen = await citizen_repo.citizen_by_contact(session, ctx.channel, ctx.address)
    if citizen is not None:
        return citizen.locale
    if ctx.language_hint and ctx.language_hint[:2] in {"vi", "en"}:
        return ctx.language_hint[:2]
    return ctx.policy.default_locale


async def _reply(session: AsyncSession, ctx: ChatContext, key: str, locale: str) -> None:
    await say(session, ctx.channel, ctx.address, payload(t(key, locale)), ctx.now)


async def start_received(session: AsyncSession, ctx: ChatContext, token: str | None) -> None:
    """`/start` alone welcomes (and resumes a stopped citizen); `/start TOKEN` asks consent."""
    locale = await locale_of(session, ctx)
    if not token:
        citizen = await citizen_repo.citizen_by_contact(session, ctx.channel, ctx.address)
        if citizen is not None and citizen.opted_out_at is not None:
            citizen.opted_out_at = None  # /stop said "type /start to receive them again"
        await _reply(session, ctx, "start.no_token", locale)
        return
    link = await case_repo.link_token(session, token)
    if link is None and await heads.head_start(session, ctx, token):
        return
    if link is None:
        log.info("unknown link token presented on %s", ctx.channel)
        await _reply(session, ctx, "start.token_unknown", locale)
        return
    if link.expires_at <= ctx.now:
        await _reply(session, ctx, "start.token_expired", locale)
        return
    if link.used_at is not None:
        await _reply(session, ctx, "start.token_used", locale)
        return
    case = await case_repo.get_case_by_id(session, link.case_id)
    assert case is not None
    await say(session, ctx.channel, ctx.address, consent_message(case, token, locale), ctx.now)


async def consent_pressed(
    session: AsyncSession, ctx: ChatContext, token: str, agreed: bool
) -> Reaction:
    locale = await locale_of(session, ctx)
    link = await case_repo.link_token(session, token)
    if link is None or link.expires_at <= ctx.now:
        return Reaction(toast=t("start.token_expired", locale))
    if link.used_at is not None:
        return Reaction(toast=t("start.token_used", locale))
    if not agreed:
        await _reply(session, ctx, "consent.declined", locale)
        return Reaction(chosen=t("choice.decline", locale))
    case = await case_repo.get_case_by_id(session, link.case_id)
    assert case is not None
    citizen = await _citizen_for_chat(session, ctx, case.citizen, locale)
    case.citizen_id = citizen.id
    citizen.opted_out_at = None
    await citizen_repo.attach_contact(
        session, citizen, ctx.channel, ctx.address, source="chat", consented_at=ctx.now
    )
    link.used_at = ctx.now
    link.used_by = f"{ctx.channel}:{ctx.address}"
    await say(
        session,
        ctx.channel,
        ctx.address,
        payload(t("consent.accepted", citizen.locale, case_code=case.case_code)),
        ctx.now,
    )
    # A case already resolved need not wait for the next sweep to be surveyed.
    survey = await case_repo.survey_for_case(session, case.id)
    await invite_if_due(session, survey, citizen, ctx.now, ctx.policy, [ctx.channel])
    return Reaction(chosen=t("choice.agree", locale))


async def _citizen_for_chat(
    session: AsyncSession, ctx: ChatContext, case_citizen: Citizen | None, locale: str
) -> Citizen:
    """The chat's person: already known by this chat (then the case joins them), or the case's."""
    known = await citizen_repo.citizen_by_contact(session, ctx.channel, ctx.address)
    if known is not None:
        if case_citizen is not None and case_citizen.id != known.id:
            known.name = known.name or case_citizen.name
            known.phone = known.phone or case_citizen.phone
        return known
    if case_citizen is not None:
        return case_citizen
    citizen = Citizen(locale=locale)
    session.add(citizen)
    await session.flush()
    return citizen


async def help_requested(session: AsyncSession, ctx: ChatContext) -> None:
    await _reply(session, ctx, "command.help", await locale_of(session, ctx))


async def language_requested(session: AsyncSession, ctx: ChatContext) -> None:
    locale = await locale_of(session, ctx)
    await say(session, ctx.channel, ctx.address, language_message(locale), ctx.now)


async def language_chosen(session: AsyncSession, ctx: ChatContext, locale: str) -> Reaction:
    if locale not in {"vi", "en"}:
        return Reaction(toast=t("survey.stale_press", ctx.policy.default_locale))
    citizen = await citizen_repo.citizen_by_contact(session, ctx.channel, ctx.address)
    if citizen is not None:
        citizen.locale = locale
        for survey in await survey_repo.pending_for_address(session, ctx.channel, ctx.address):
            survey.locale = locale
    await _reply(session, ctx, "command.lang_set", locale)
    return Reaction(chosen=t(f"choice.lang_{locale}", locale))


async def stop_requested(session: AsyncSession, ctx: ChatContext) -> None:
    """No more surveys: the open and future ones of this person become `opted_out`."""
    locale = await locale_of(session, ctx)
    citizen = await citizen_repo.citizen_by_contact(session, ctx.channel, ctx.address)
    if citizen is not None:
        citizen.opted_out_at = ctx.now
        case_ids = await case_repo.case_ids_of_citizen(session, citizen.id)
        for survey in await survey_repo.pending_for_citizen(session, case_ids):
            survey.status = SurveyStatus.OPTED_OUT
    await _reply(session, ctx, "command.stop_done", locale)


async def delete_requested(session: AsyncSession, ctx: ChatContext) -> None:
    locale = await locale_of(session, ctx)
    await say(session, ctx.channel, ctx.address, delete_confirm_message(locale), ctx.now)


async def delete_confirmed(session: AsyncSession, ctx: ChatContext, confirmed: bool) -> Reaction:
    """Erases name, phone and chat contacts; cases and answers stay, no longer tied to a person."""
    locale = await locale_of(session, ctx)
    if not confirmed:
        await _reply(session, ctx, "command.delete_cancelled", locale)
        return Reaction(chosen=t("choice.no", locale))
    citizen = await citizen_repo.citizen_by_contact(session, ctx.channel, ctx.address)
    if citizen is not None:
        case_ids = await case_repo.case_ids_of_citizen(session, citizen.id)
        for survey in await survey_repo.pending_for_citizen(session, case_ids):
            survey.status = SurveyStatus.OPTED_OUT
        await case_repo.detach_citizen(session, citizen.id)
        await citizen_repo.forget_contacts(session, citizen.id)
        await session.delete(citizen)
        await session.flush()
        log.info("personal data erased on request (%s)", ctx.channel)
    await _reply(session, ctx, "command.delete_done", locale)
    return Reaction(chosen=t("choice.yes", locale))
