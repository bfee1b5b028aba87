"""Files handed out as expiring links: stored with a random token, fetched until they expire."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import SharedFile


async def share(
    session: AsyncSession,
    data: bytes,
    filename: str,
    content_type: str,
    now: datetime,
    ttl: timedelta,
) -> str:
    """Stores the file and returns its token; files past their expiry go at the same time."""
    await session.execute(delete(SharedFile).where(SharedFile.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(
        SharedFile(
            token=token,
            filename=filename[:200],
            content_type=content_type,
            data=data,
            created_at=now,
            expires_at=now + ttl,
        )
    )
    await session.flush()
    return token


async def shared(session: AsyncSession, token: str, now: datetime) -> SharedFile | None:
    found = (
        await session.execute(select(SharedFile).where(SharedFile.token == token))
    ).scalar_one_or_none()
    if found is None or found.expires_at <= now:
        return None
    return found
