"""Queries about citizens and the chat contacts they agreed to be reached at."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import (
    Citizen,
    CitizenContact,
    ContactStatus,
    LinkToken,
    OutboxMessage,
    OutboxStatus,
    Survey,
)

# What replaces an erased address or text.
ERASED = "erased"


async def contact(session: AsyncSession, channel: str, address: str) -> CitizenContact | None:
    query = select(CitizenContact).where(
        CitizenContact.channel == channel, CitizenContact.address == address
    )
    return (await session.execute(query)).scalar_one_or_none()


async def citizen_by_contact(session: AsyncSession, channel: str, address: str) -> Citizen | None:
    query = (
        select(Citizen)
        .join(CitizenContact, CitizenContact.citizen_id == Citizen.id)
        .where(CitizenContact.channel == channel, CitizenContact.address == address)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def citizen_by_phone(session: AsyncSession, phone: str) -> Citizen | None:
    # Oldest first: a phone seen on several records belongs to the person first known by it.
    query = (
        select(Citizen)
        .where(Citizen.phone == phone, Citizen.erased_at.is_(None))
        .order_by(Citizen.id)
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def contacts_of(session: AsyncSession, citizen_id: int) -> Sequence[CitizenContact]:
    query = (
        select(CitizenContact)
        .where(CitizenContact.citizen_id == citizen_id)
        .order_by(CitizenContact.id)
    )
    return (await session.execute(query)).scalars().all()


async def active_contact(
    session: AsyncSession, citizen_id: int, channels: Sequence[str]
) -> CitizenContact | None:
    """The contact the citizen linked most recently among `channels` (a chat consent counts
    from its moment, a contact from the desk from when it was stored); `channels` order breaks
    a tie."""
    found = [
        c
        for c in await contacts_of(session, citizen_id)
        if c.status == ContactStatus.ACTIVE and c.channel in channels
    ]
    if not found:
        return None
    order = list(channels)
    return max(
        found,
        key=lambda c: (c.consented_at or c.created_at, -order.index(c.channel), c.id),
    )


async def attach_contact(
    session: AsyncSession,
    citizen: Citizen,
    channel: str,
    address: str,
    *,
    source: str,
    consented_at: datetime | None = None,
) -> CitizenContact:
    """Links an address to a citizen; an address already linked elsewhere moves to this one."""
    existing = await contact(session, channel, address)
    if existing is None:
        existing = CitizenContact(
            citizen_id=citizen.id, channel=channel, address=address, source=source
        )
        session.add(existing)
    else:
        existing.citizen_id = citizen.id
        existing.status = ContactStatus.ACTIVE
    if consented_at is not None:
        existing.consented_at = consented_at
    await session.flush()
    return existing


async def forget_contacts(session: AsyncSession, citizen_id: int) -> None:
    """Erases every trace of the citizen's chat addresses: surveys, messages, link tokens.

    Messages already sent lose their text too (an apology letter names the person); messages
    still waiting are cancelled. The contacts themselves go with the citizen row.
    """
    addresses = [(c.channel, c.address) for c in await contacts_of(session, citizen_id)]
    for channel, address in addresses:
        await session.execute(
            update(Survey)
            .where(Survey.channel == channel, Survey.address == address)
            .values(address=None)
        )
        await session.execute(
            update(OutboxMessage)
            .where(
                OutboxMessage.channel == channel,
                OutboxMessage.address == address,
                OutboxMessage.status == OutboxStatus.PENDING,
            )
            .values(status=OutboxStatus.CANCELLED)
        )
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.channel == channel, OutboxMessage.address == address)
            .values(address=ERASED, payload={"erased": True})
        )
        await session.execute(
            update(LinkToken)
            .where(LinkToken.used_by == f"{channel}:{address}")
            .values(used_by=ERASED)
        )
