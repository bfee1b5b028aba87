"""The one entry point of every chat channel: a command, a pressed choice, or typed text.

A channel parses its platform's update into one of these calls inside one transaction, and
shows the returned `Reaction` for a press. Choice data is `<kind>:<reference>[:...]`.

Typed text answers the address's open prompt (the last message sent there with choices) by
the choice's number or words, through the same path as a press: so every prompt works on a
channel without buttons, and typing works on every channel.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import citizens, dashboard_access, escalations, heads, survey_flow
from handlers.chat import ChatContext, Reaction, say
from handlers.rendering import choices_of, match_typed_choice
from handlers.texts import t
from storage.repositories import cases as case_repo
from storage.repositories import prompts

log = logging.getLogger(__name__)

COMMANDS = ("start", "help", "lang", "stop", "delete", "dashboard")

# What a link or invite token looks like (docs/contract.md section 4: `A-Za-z0-9_-`).
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,64}")


async def command_received(
    session: AsyncSession, ctx: ChatContext, name: str, argument: str | None = None
) -> None:
    if name == "start":
        await citizens.start_received(session, ctx, (argument or "").strip() or None)
    elif name == "help":
        await citizens.help_requested(session, ctx)
    elif name == "lang":
        await citizens.language_requested(session, ctx)
    elif name == "stop":
        await citizens.stop_requested(session, ctx)
    elif name == "delete":
        await citizens.delete_requested(session, ctx)
    elif name == "dashboard":
        await dashboard_access.dashboard_requested(session, ctx)
    else:
        locale = await citizens.locale_of(session, ctx)
        await say(
            session, ctx.channel, ctx.address, {"text": t("command.unknown", locale)}, ctx.now
        )


async def choice_pressed(session: AsyncSession, ctx: ChatContext, data: str) -> Reaction:
    """A choice taken (pressed or typed). The prompt it belongs to is no longer open: it was
    answered, or refused as out of date; a handler that asks again opens a new one."""
    prompt = await prompts.open_at(session, ctx.channel, ctx.address)
    reaction = await _route_choice(session, ctx, data)
    if prompt is not None and any(choice.data == data for choice in choices_of(prompt.payload)):
        await prompts.close(session, ctx.channel, ctx.address, prompt.outbox_id)
    return reaction


async def _route_choice(session: AsyncSession, ctx: ChatContext, data: str) -> Reaction:
    """Routes a choice to its handler; anything malformed or forged changes nothing."""
    kind, _, rest = data.partition(":")
    parts = rest.split(":") if rest else []
    if kind == "a" and len(parts) == 3 and parts[1].isdigit():
        return await survey_flow.answer_pressed(session, ctx, parts[0], int(parts[1]), parts[2])
    if kind == "s" and len(parts) == 2:
        return await survey_flow.survey_pressed(session, ctx, parts[0], parts[1])
    if kind == "c" and len(parts) == 2 and parts[1] in {"y", "n"}:
        return await citizens.consent_pressed(session, ctx, parts[0], parts[1] == "y")
    if kind == "e" and len(parts) == 2:
        return await escalations.escalation_pressed(session, ctx, parts[0], parts[1])
    if kind == "r" and len(parts) == 2:
        return await escalations.recovery_pressed(session, ctx, parts[0], parts[1])
    if kind == "l" and len(parts) == 1:
        return await citizens.language_chosen(session, ctx, parts[0])
    if kind == "d" and len(parts) == 1 and parts[0] in {"y", "n"}:
        return await citizens.delete_confirmed(session, ctx, parts[0] == "y")
    log.warning("refused a press with malformed data on %s", ctx.channel)
    return Reaction(toast=t("survey.stale_press", await citizens.locale_of(session, ctx)))


async def text_received(session: AsyncSession, ctx: ChatContext, text: str) -> None:
    """A head's awaited note, else a choice of the open prompt, else the answer to the open
    survey question, else a link token typed as it is; otherwise a hint."""
    if await escalations.note_received(session, ctx, text):
        return
    prompt = await prompts.open_at(session, ctx.channel, ctx.address)
    if prompt is not None:
        choice = match_typed_choice(text, choices_of(prompt.payload))
        if choice is not None:
            reaction = await choice_pressed(session, ctx, choice.data)
            if reaction.toast:
                await say(session, ctx.channel, ctx.address, {"text": reaction.toast}, ctx.now)
            return
    if await survey_flow.text_for_survey(session, ctx, text):
        return
    if await _token_typed(session, ctx, text.strip()):
        return
    locale = await citizens.locale_of(session, ctx)
    if prompt is not None:
        # Not one of the choices: say how to answer, and ask the same question again.
        await say(
            session, ctx.channel, ctx.address, {"text": t("chat.choose_hint", locale)}, ctx.now
        )
        again: dict[str, Any] = {
            key: prompt.payload[key] for key in ("text", "buttons") if key in prompt.payload
        }
        await say(session, ctx.channel, ctx.address, again, ctx.now)
        return
    await say(
        session, ctx.channel, ctx.address, {"text": t("survey.nothing_open", locale)}, ctx.now
    )


async def other_received(session: AsyncSession, ctx: ChatContext) -> None:
    """A picture, a sticker or anything else that is not text: only typed answers count."""
    locale = await citizens.locale_of(session, ctx)
    await say(session, ctx.channel, ctx.address, {"text": t("chat.type_please", locale)}, ctx.now)


async def _token_typed(session: AsyncSession, ctx: ChatContext, text: str) -> bool:
    """A link token sent as plain text (pasted from the receipt) works like `/start TOKEN`."""
    if not TOKEN_SHAPE.fullmatch(text):
        return False
    if await case_repo.link_token(session, text) is not None:
        await citizens.start_received(session, ctx, text)
        return True
    return await heads.head_start(session, ctx, text)
