"""The dashboard's sign-in links and sessions, found by the SHA-256 of their token.

Every function takes the caller's session and never commits (STYLE.md 5). Redeeming a link
and revoking a session are single conditional UPDATEs, so two requests racing for the same
row cannot both win, on SQLite (one writer at a time) as on PostgreSQL (the second UPDATE
waits for the first to commit and then finds the row no longer matches).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from storage.models import (
    DashboardLink,
    DashboardSession,
    DigestRecipient,
    HeadContact,
    RecipientContact,
    Unit,
    UnitHead,
)


def token_hash(token: str) -> str:
    """What is stored of a token: its SHA-256, hex (a token is random, so no salt is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What a link or a session opens: a scope, and the unit its holder heads, if any."""

    actor: str
    scope_unit_id: int
    head_of_unit_id: int | None


@dataclass(frozen=True)
class LiveSession:
    """A valid session with its units' codes, as a page needs them."""

    id: int
    actor: str
    scope_code: str
    head_of: str | None
    csrf_token: str
    expires_at: datetime


async def add_link(
    session: AsyncSession, token: str, grant: Grant, now: datetime, expires_at: datetime
) -> DashboardLink:
    link = DashboardLink(
        token_hash=token_hash(token),
        scope_unit_id=grant.scope_unit_id,
        head_of_unit_id=grant.head_of_unit_id,
        actor=grant.actor,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(link)
    await session.flush()
    return link


async def redeem_link(session: AsyncSession, token: str, now: datetime) -> Grant | None:
    """Marks the link used and returns what it grants; None when it is unknown, used or
    expired. Only one caller ever gets the grant of a link (see the module's docstring)."""
    result = await session.execute(
        update(DashboardLink)
        .where(
            DashboardLink.token_hash == token_hash(token),
            DashboardLink.used_at.is_(None),
            DashboardLink.expires_at > now,
        )
        .values(used_at=now)
        .returning(DashboardLink.actor, DashboardLink.scope_unit_id, DashboardLink.head_of_unit_id)
        .execution_options(synchronize_session=False)
    )
    row = result.one_or_none()
    if row is None:
        return None
    return Grant(
        actor=row.actor, scope_unit_id=row.scope_unit_id, head_of_unit_id=row.head_of_unit_id
    )


async def link_known(session: AsyncSession, token: str) -> bool:
    """Whether the token is one of our links (used or expired), to tell "gone" from "never"."""
    found = await session.scalar(
        select(DashboardLink.id).where(DashboardLink.token_hash == token_hash(token))
    )
    return found is not None


async def add_session(
    session: AsyncSession,
    token: str,
    grant: Grant,
    csrf_token: str,
    now: datetime,
    expires_at: datetime,
) -> DashboardSession:
    row = DashboardSession(
        token_hash=token_hash(token),
        scope_unit_id=grant.scope_unit_id,
        head_of_unit_id=grant.head_of_unit_id,
        actor=grant.actor,
        csrf_token=csrf_token,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return row


async def live_session(session: AsyncSession, token: str, now: datetime) -> LiveSession | None:
    """The session of a cookie's token while it is neither expired nor revoked."""
    scope = aliased(Unit)
    head_of = aliased(Unit)
    row = (
        await session.execute(
            select(
                DashboardSession.id,
                DashboardSession.actor,
                DashboardSession.csrf_token,
                DashboardSession.expires_at,
                scope.code.label("scope_code"),
                head_of.code.label("head_of"),
            )
            .join(scope, scope.id == DashboardSession.scope_unit_id)
            .outerjoin(head_of, head_of.id == DashboardSession.head_of_unit_id)
            .where(
                DashboardSession.token_hash == token_hash(token),
                DashboardSession.revoked_at.is_(None),
                DashboardSession.expires_at > now,
            )
        )
    ).one_or_none()
    if row is None:
        return None
    return LiveSession(
        id=row.id,
        actor=row.actor,
        scope_code=row.scope_code,
        head_of=row.head_of,
        csrf_token=row.csrf_token,
        expires_at=row.expires_at,
    )


async def revoke_session(session: AsyncSession, session_id: int, now: datetime) -> bool:
    """Ends a session; False when it had ended already (revoked, or by a racing logout)."""
    result = await session.execute(
        update(DashboardSession)
        .where(DashboardSession.id == session_id, DashboardSession.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0) > 0


async def prune(session: AsyncSession, before: datetime) -> int:
    """Deletes links and sessions that ended before `before` (the audit log keeps the story).

    Recent dead rows are kept a while so that a used or expired link still reads as "no
    longer valid" rather than "unknown".
    """
    removed = 0
    for statement in (
        delete(DashboardLink).where(DashboardLink.expires_at < before),
        delete(DashboardSession).where(
            or_(DashboardSession.expires_at < before, DashboardSession.revoked_at < before)
        ),
    ):
        result = await session.execute(statement.execution_options(synchronize_session=False))
        removed += int(getattr(result, "rowcount", 0) or 0)
    return removed


async def unit_codes(session: AsyncSession, unit_ids: list[int]) -> dict[int, str]:
    rows = await session.execute(select(Unit.id, Unit.code).where(Unit.id.in_(unit_ids)))
    return {row.id: row.code for row in rows}


@dataclass(frozen=True)
class Official:
    """One role an address holds: the head of a unit, or a digest recipient of a scope."""

    actor: str  # "head:<unit code>" or "recipient:<id>", as the digest names them
    scope_unit_id: int
    scope_code: str
    scope_name: str
    heads: bool  # the scope is the unit this person heads


async def officials_at(session: AsyncSession, channel: str, address: str) -> list[Official]:
    """The heads and digest recipients whose chat address on `channel` is `address`."""
    heads = await session.execute(
        select(Unit.id, Unit.code, Unit.name)
        .join(UnitHead, UnitHead.unit_id == Unit.id)
        .join(HeadContact, HeadContact.head_id == UnitHead.id)
        .where(HeadContact.channel == channel, HeadContact.address == address)
        .order_by(Unit.code)
    )
    found = [Official(f"head:{row.code}", row.id, row.code, row.name, heads=True) for row in heads]
    recipients = await session.execute(
        select(DigestRecipient.id.label("recipient_id"), Unit.id, Unit.code, Unit.name)
        .join(Unit, Unit.id == DigestRecipient.scope_unit_id)
        .join(RecipientContact, RecipientContact.recipient_id == DigestRecipient.id)
        .where(RecipientContact.channel == channel, RecipientContact.address == address)
        .order_by(DigestRecipient.id)
    )
    found += [
        Official(f"recipient:{row.recipient_id}", row.id, row.code, row.name, heads=False)
        for row in recipients
    ]
    return found
