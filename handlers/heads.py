"""Unit heads join by a one-time invite link: `sipas-bot heads invite UNIT` mints it, the head
opens it, and their chat receives that unit's escalations from then on."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.chat import ChatContext, say
from handlers.errors import NotFound
from handlers.policy import SurveyPolicy
from handlers.rendering import payload
from handlers.texts import t
from storage.models import HeadInvite, UnitHead
from storage.repositories import cases as case_repo
from storage.repositories import escalations as repo

log = logging.getLogger(__name__)


async def invite_head(
    session: AsyncSession, unit_code: str, now: datetime, policy: SurveyPolicy
) -> HeadInvite:
    unit = await case_repo.unit_by_code(session, unit_code)
    if unit is None:
        raise NotFound(f"no unit {unit_code!r}; load it with `sipas-bot units load`")
    invite = HeadInvite(
        token=secrets.token_urlsafe(24),
        unit_id=unit.id,
        created_at=now,
        expires_at=now + policy.head_invite_ttl,
    )
    session.add(invite)
    await session.flush()
    return invite


async def head_start(session: AsyncSession, ctx: ChatContext, token: str) -> bool:
    """Links the chat as the head of the invite's unit; False if `token` is no head invite."""
    invite = await repo.invite(session, token, for_update=True)
    if invite is None:
        return False
    locale = ctx.policy.default_locale
    if invite.used_at is not None or invite.expires_at <= ctx.now:
        await say(
            session,
            ctx.channel,
            ctx.address,
            payload(t("escalation.head_invite_invalid", locale)),
            ctx.now,
        )
        return True
    unit = await repo.unit(session, invite.unit_id)
    head = await repo.head_of(session, unit.id)
    if head is None:
        head = UnitHead(unit_id=unit.id, name=ctx.display_name or unit.name)
        session.add(head)
    head.set_address(ctx.channel, ctx.address)
    invite.used_at = ctx.now
    invite.used_by = f"{ctx.channel}:{ctx.address}"
    await session.flush()
    log.info("a head was linked to unit %s through an invite", unit.code)
    await say(
        session,
        ctx.channel,
        ctx.address,
        payload(t("escalation.head_invite_welcome", locale, unit_name=unit.name)),
        ctx.now,
    )
    return True
