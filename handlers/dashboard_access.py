"""Who may read the officials' dashboard (docs/contract.md section 8): one-time sign-in links,
the sessions they open, logout, and `/dashboard` in chat for unit heads and digest recipients.

A link works once and for 15 minutes; a session lasts at most 12 hours and can be ended at
once. Every link issued, every sign-in and every sign-out is written to the audit log in the
same transaction, and no token is ever stored, logged or audited in clear.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import citizens
from handlers.chat import ChatContext, say
from handlers.errors import NotFound
from handlers.rendering import Payload
from handlers.texts import t
from storage.models import AuditEntry
from storage.repositories import cases as case_repo
from storage.repositories import dashboard as repo
from storage.repositories.dashboard import Grant, LiveSession

log = logging.getLogger(__name__)

LINK_TTL = timedelta(minutes=15)
SESSION_TTL = timedelta(hours=12)
# Dead links and sessions are deleted this long after they ended; until then a used or
# expired link is recognised (and told apart from one that never existed).
PRUNE_AFTER = timedelta(days=7)
LOGIN_PATH = "/dashboard/login/"
# What our tokens look like (43 characters of token_urlsafe(32)); anything else is not ours.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{20,64}")
CLI = "cli"


def login_link(public_url: str, token: str) -> str:
    """The sign-in link under SIPAS_PUBLIC_URL (which may carry a path prefix)."""
    return f"{public_url.rstrip('/')}{LOGIN_PATH}{token}"


def _audit(
    session: AsyncSession, now: datetime, actor: str, action: str, scope: str, **detail: object
) -> None:
    session.add(
        AuditEntry(
            at=now, actor=actor, action=action, entity="unit", entity_id=scope, detail=detail
        )
    )


@dataclass(frozen=True)
class IssuedLink:
    token: str
    scope_code: str
    scope_name: str
    head_of: str | None
    expires_at: datetime


async def link_issued(
    session: AsyncSession,
    unit_code: str,
    now: datetime,
    *,
    actor: str = CLI,
    head_of: str | None = None,
    via: str = "cli",
) -> IssuedLink:
    """Mints a one-time link to the scope of `unit_code`; `head_of` names the unit its holder
    heads (per-officer figures there only). NotFound when either unit is unknown."""
    scope = await case_repo.unit_by_code(session, unit_code)
    if scope is None:
        raise NotFound(f"no unit {unit_code!r}; load it with `sipas-bot units load`")
    head_unit_id: int | None = None
    if head_of is not None:
        head_unit = (
            scope if head_of == scope.code else await case_repo.unit_by_code(session, head_of)
        )
        if head_unit is None:
            raise NotFound(f"no unit {head_of!r}; load it with `sipas-bot units load`")
        head_unit_id = head_unit.id
    # Opportunistic: issuing links is rare, and this keeps both tables small without a job.
    await repo.prune(session, now - PRUNE_AFTER)
    token = secrets.token_urlsafe(32)
    grant = Grant(actor=actor, scope_unit_id=scope.id, head_of_unit_id=head_unit_id)
    link = await repo.add_link(session, token, grant, now, now + LINK_TTL)
    _audit(session, now, actor, "dashboard.link", scope.code, via=via, head_of=head_of)
    log.info("dashboard link issued for scope %s (%s)", scope.code, via)
    return IssuedLink(token, scope.code, scope.name, head_of, link.expires_at)


class LinkRefusal(StrEnum):
    UNKNOWN = "unknown"  # never issued (or malformed, or pruned long ago): 404
    GONE = "gone"  # used already, or expired: 410


@dataclass(frozen=True)
class SignIn:
    """A session just opened: the cookie's token (shown once, to the browser) and the session."""

    token: str
    session: LiveSession


async def signed_in(session: AsyncSession, link_token: str, now: datetime) -> SignIn | LinkRefusal:
    """Redeems a link into a session, once: of two requests with the same link, one wins."""
    if not TOKEN_SHAPE.fullmatch(link_token):
        return LinkRefusal.UNKNOWN
    grant = await repo.redeem_link(session, link_token, now)
    if grant is None:
        known = await repo.link_known(session, link_token)
        return LinkRefusal.GONE if known else LinkRefusal.UNKNOWN
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    row = await repo.add_session(session, token, grant, csrf, now, now + SESSION_TTL)
    codes = await repo.unit_codes(
        session, [grant.scope_unit_id, *filter(None, [grant.head_of_unit_id])]
    )
    scope_code = codes[grant.scope_unit_id]
    head_of = codes[grant.head_of_unit_id] if grant.head_of_unit_id is not None else None
    _audit(session, now, grant.actor, "dashboard.signin", scope_code, session_id=row.id)
    log.info("dashboard session %s opened for scope %s", row.id, scope_code)
    live = LiveSession(row.id, grant.actor, scope_code, head_of, csrf, row.expires_at)
    return SignIn(token, live)


async def session_found(session: AsyncSession, token: str, now: datetime) -> LiveSession | None:
    """The live session of a cookie's token: not expired, not revoked."""
    if not TOKEN_SHAPE.fullmatch(token):
        return None
    return await repo.live_session(session, token, now)


async def signed_out(
    session: AsyncSession, session_id: int, actor: str, scope_code: str, now: datetime
) -> bool:
    """Ends the session; False when it had ended already (nothing is audited then)."""
    if not await repo.revoke_session(session, session_id, now):
        return False
    _audit(session, now, actor, "dashboard.signout", scope_code, session_id=session_id)
    log.info("dashboard session %s ended", session_id)
    return True


# --- /dashboard in chat ------------------------------------------------------------------


def _link_message(issued: IssuedLink, link: str, locale: str) -> Payload:
    text = t(
        "dashboard.link",
        locale,
        unit_name=issued.scope_name,
        unit_code=issued.scope_code,
        link=link,
        minutes=int(LINK_TTL.total_seconds() // 60),
    )
    # `no_preview`: a previewer fetching the link would use it up. `sensitive`: the sign-in
    # link is not kept in the outbox once the message is settled (bot/outbox/dispatcher.py).
    return {"text": text, "no_preview": True, "sensitive": True}


async def dashboard_requested(session: AsyncSession, ctx: ChatContext) -> None:
    """`/dashboard`: a one-time link per scope the sender answers for (a head: their unit; a
    digest recipient: their scope); anyone else is told who may have one and how."""
    locale = await citizens.locale_of(session, ctx)
    officials = await repo.officials_at(session, ctx.channel, ctx.address)
    if not officials:
        await say(
            session,
            ctx.channel,
            ctx.address,
            {"text": t("dashboard.not_official", locale)},
            ctx.now,
        )
        return
    # One link per scope: a head who also receives their own unit's digest gets the head's.
    by_scope: dict[int, repo.Official] = {}
    for official in officials:
        if official.scope_unit_id not in by_scope or official.heads:
            by_scope[official.scope_unit_id] = official
    for official in by_scope.values():
        issued = await link_issued(
            session,
            official.scope_code,
            ctx.now,
            actor=official.actor,
            head_of=official.scope_code if official.heads else None,
            via=ctx.channel,
        )
        link = login_link(ctx.public_url, issued.token)
        await say(session, ctx.channel, ctx.address, _link_message(issued, link, locale), ctx.now)
