"""The one entry point of every chat channel: a command, a pressed choice, or typed text.

A channel parses its platform's update into one of these calls inside one transaction, and
shows the returned `Reaction` for a press. Choice data is `<kind>:<reference>[:...]`.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import citizens, escalations, survey_flow
from handlers.chat import ChatContext, Reaction, say
from handlers.texts import t

log = logging.getLogger(__name__)

COMMANDS = ("start", "help", "lang", "stop", "delete")


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
    else:
        locale = await citizens.locale_of(session, ctx)
        await say(
            session, ctx.channel, ctx.address, {"text": t("command.unknown", locale)}, ctx.now
        )


async def choice_pressed(session: AsyncSession, ctx: ChatContext, data: str) -> Reaction:
    """Routes a pressed choice; anything malformed or forged changes nothing."""
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
    """A head's awaited note, else the answer to the open question, else what they can do."""
    if await escalations.note_received(session, ctx, text):
        return
    if await survey_flow.text_for_survey(session, ctx, text):
        return
    locale = await citizens.locale_of(session, ctx)
    await say(
        session, ctx.channel, ctx.address, {"text": t("survey.nothing_open", locale)}, ctx.now
    )
