"""Queries about citizens and the chat contacts they agreed to be reached at."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    false,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from storage.inserts import insert_many
from storage.models import (
    Citizen,
    CitizenContact,
    ContactStatus,
    LinkToken,
    OpenPrompt,
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
    """Erases every trace of the citizen's chat addresses: surveys, messages, link tokens,
    open prompts.

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
        await session.execute(
            delete(OpenPrompt).where(OpenPrompt.channel == channel, OpenPrompt.address == address)
        )


# --- intake in bulk (see storage/repositories/cases.py) ---------------------------------------

_CITIZENS = cast(Table, Citizen.__table__)
_CONTACTS = cast(Table, CitizenContact.__table__)


@dataclass
class StoredContact:
    id: int
    channel: str
    address: str
    citizen_id: int
    status: str


@dataclass
class StoredCitizen:
    id: int
    name: str | None
    phone: str | None
    locale: str
    opted_out_at: datetime | None
    erased_at: datetime | None
    reachable: bool  # has an active contact (a chat to write to)


async def contacts_at(
    session: AsyncSession, addresses: Collection[tuple[str, str]]
) -> list[StoredContact]:
    """The contacts at these (channel, address) pairs."""
    if not addresses:
        return []
    c = _CONTACTS.c
    by_channel: dict[str, list[str]] = {}
    for channel, address in addresses:
        by_channel.setdefault(channel, []).append(address)
    query = select(c.id, c.channel, c.address, c.citizen_id, c.status).where(
        or_(*(and_(c.channel == ch, c.address.in_(found)) for ch, found in by_channel.items()))
    )
    return [StoredContact(*row) for row in (await session.execute(query)).all()]


def phones_locked(phones: Collection[str]) -> TextClause:
    """A condition that is always true and, on PostgreSQL, takes a transaction-level advisory
    lock per phone before the statement reads any row: added to the first statement of an
    intake transaction (`cases.cases_by_code`), it makes a second transaction with one of the
    phones wait there until the first commits; its later statements then see the citizens the
    first created (in READ COMMITTED each statement reads what was committed when it began).

    No key makes a phone unique (an erased citizen keeps none, a family may share one), so
    without it two processes taking a new citizen's first cases at once would each create
    them. Keyed by the schema, so deployments sharing a database do not wait for each other;
    in sorted order (a function scan takes the array's elements in order), so that two
    transactions locking overlapping sets cannot deadlock. PostgreSQL runs the subquery once,
    before the scan, whether or not any row matches.
    """
    return text(
        "(SELECT count(*) FROM (SELECT pg_advisory_xact_lock(hashtextextended("
        "'sipas-phone:' || current_schema() || ':' || phone, 0)) "
        "FROM unnest(CAST(:locked_phones AS text[])) AS phone) AS locked) >= 0"
    ).bindparams(bindparam("locked_phones", sorted(phones)))


def _is_active(contacts: Table) -> ColumnElement[bool]:
    """A contact the citizen can still be written at (not marked unreachable after the
    platform refused it). Intake's two ways of asking who can be reached share it."""
    return contacts.c.status == ContactStatus.ACTIVE.value


async def citizens_for_intake(
    session: AsyncSession, ids: Collection[int], phones: Collection[str], *, reachable: bool
) -> list[StoredCitizen]:
    """Citizens by id, and every citizen not erased who has one of the phones. With
    `reachable`, whether each has an active contact is read in the same query (intake's
    courtesy message needs it); without, it is given as False."""
    if not ids and not phones:
        return []
    c = _CITIZENS.c
    wanted: list[ColumnElement[bool]] = []
    if ids:
        wanted.append(c.id.in_(ids))
    if phones:
        wanted.append(and_(c.phone.in_(phones), c.erased_at.is_(None)))
    active = exists().where(_CONTACTS.c.citizen_id == c.id, _is_active(_CONTACTS))
    shown = active if reachable else false()
    query = select(c.id, c.name, c.phone, c.locale, c.opted_out_at, c.erased_at, shown).where(
        or_(*wanted)
    )
    return [StoredCitizen(*row) for row in (await session.execute(query)).all()]


async def insert_citizens(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Inserts the citizens; each row gives its `id` (from `cases.new_ids`)."""
    await insert_many(session, _CITIZENS, rows)


async def update_citizens(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Sets name, phone and erased_at of citizens by id."""
    if not rows:
        return
    c = _CITIZENS.c
    statement = (
        update(_CITIZENS)
        .where(c.id == bindparam("z_id"))
        .values(
            name=bindparam("z_name"), phone=bindparam("z_phone"), erased_at=bindparam("z_erased")
        )
    )
    params = [
        {"z_id": r["id"], "z_name": r["name"], "z_phone": r["phone"], "z_erased": r["erased_at"]}
        for r in sorted(rows, key=lambda r: int(r["id"]))
    ]
    await session.execute(statement, params)


async def insert_contacts(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        await session.execute(insert(_CONTACTS), list(rows))


async def update_contacts(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Moves contacts by id to a citizen and makes them active again."""
    if not rows:
        return
    c = _CONTACTS.c
    statement = (
        update(_CONTACTS)
        .where(c.id == bindparam("k_id"))
        .values(citizen_id=bindparam("k_citizen"), status=ContactStatus.ACTIVE.value)
    )
    params = [
        {"k_id": r["id"], "k_citizen": r["citizen_id"]}
        for r in sorted(rows, key=lambda r: int(r["id"]))
    ]
    await session.execute(statement, params)


async def citizens_with_active_contact(
    session: AsyncSession, citizen_ids: Collection[int]
) -> set[int]:
    if not citizen_ids:
        return set()
    c = _CONTACTS.c
    query = (
        select(c.citizen_id).where(c.citizen_id.in_(citizen_ids), _is_active(_CONTACTS)).distinct()
    )
    return set((await session.execute(query)).scalars())
