"""The outbox table: enqueue messages in the caller's transaction, claim and settle them.

Every function takes the caller's `AsyncSession` and never commits (STYLE.md 5): a handler
enqueues in the same transaction as the change that caused the message, and the dispatcher
wraps each claim and each settlement in its own short transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from storage.models import (
    CitizenContact,
    ContactStatus,
    OutboxMessage,
    OutboxStatus,
    Priority,
    Survey,
    SurveyStatus,
)
from storage.types import utcnow

# A survey still waiting for, or in the middle of, a conversation; the rest are settled.
_OPEN_SURVEY_STATUSES = (SurveyStatus.SCHEDULED, SurveyStatus.INVITED, SurveyStatus.IN_PROGRESS)
_ERROR_LIMIT = 500


async def enqueue(
    session: AsyncSession,
    *,
    channel: str,
    address: str,
    payload: Mapping[str, Any],
    priority: int = Priority.NOTICE,
    not_before: datetime | None = None,
    dedupe_key: str | None = None,
    case_id: int | None = None,
) -> OutboxMessage | None:
    """Adds a message to send; None when a message with the same `dedupe_key` exists already.

    `not_before=None` means "now" by the system clock; code that runs on an injected clock
    passes `not_before=clock.now()`. The insert is `INSERT ... ON CONFLICT (dedupe_key) DO
    NOTHING RETURNING`, atomic on both backends, so two transactions replaying the same event
    at once insert one row and neither fails (PostgreSQL makes the second wait for the first).
    It needs no SAVEPOINT, which pysqlite would turn into a premature COMMIT when the savepoint
    is the first statement of the transaction.
    """
    values: dict[str, Any] = {
        "channel": channel,
        "address": address,
        "payload": dict(payload),
        "priority": priority,
        "status": OutboxStatus.PENDING,
        "attempts": 0,
        "not_before": not_before if not_before is not None else utcnow(),
        "dedupe_key": dedupe_key,
        "case_id": case_id,
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(OutboxMessage).values(values)
    elif dialect == "sqlite":
        statement = sqlite.insert(OutboxMessage).values(values)
    else:  # pragma: no cover - the project supports these two backends only
        raise RuntimeError(f"unsupported database backend {dialect!r}")
    if dedupe_key is not None:
        statement = statement.on_conflict_do_nothing(index_elements=[OutboxMessage.dedupe_key])
    result = await session.scalars(statement.returning(OutboxMessage))
    return result.one_or_none()


async def claim_due(
    session: AsyncSession,
    now: datetime,
    limit: int,
    lease: timedelta,
    *,
    channels: Collection[str] | None = None,
    per_address: int | None = None,
) -> list[OutboxMessage]:
    """Claims up to `limit` due messages for `lease`, most urgent first (priority, then id).

    Each address is a queue in (priority, id) order, and only a prefix of it can be claimed:
    a row is claimable when every row ahead of it in its address's queue is due and unclaimed,
    and no row of that address carries a live claim (so one claimant owns an address at a time
    and nothing overtakes a message waiting for its retry). Rows scheduled for later that
    were never tried do not block the queue; a row that failed and waits for its retry does.
    At most `per_address` rows per address are taken, so a long queue for one chat cannot
    outlive its lease in memory.

    On PostgreSQL the rows are locked with `FOR UPDATE SKIP LOCKED`, so several processes
    share the outbox; a process that skipped the head of an address's queue (another one is
    claiming it right now) drops the whole address. SQLite has one writer and, per DESIGN.md,
    one process; the conditional update still refuses rows someone claimed meanwhile.
    """
    if limit <= 0:
        return []
    live_claim = and_(OutboxMessage.claimed_until.is_not(None), OutboxMessage.claimed_until > now)
    waiting = or_(OutboxMessage.not_before > now, live_claim)
    partition = (OutboxMessage.channel, OutboxMessage.address)
    in_queue = [
        OutboxMessage.status == OutboxStatus.PENDING,
        or_(OutboxMessage.not_before <= now, OutboxMessage.last_error.is_not(None)),
    ]
    if channels is not None:
        in_queue.append(OutboxMessage.channel.in_(list(channels)))
    queue = (
        select(
            OutboxMessage.id.label("id"),
            func.row_number()
            .over(partition_by=partition, order_by=(OutboxMessage.priority, OutboxMessage.id))
            .label("position"),
            # Running count of rows at or ahead of this one that are not ready to go.
            func.sum(case((waiting, 1), else_=0))
            .over(partition_by=partition, order_by=(OutboxMessage.priority, OutboxMessage.id))
            .label("blocked"),
            func.max(case((live_claim, 1), else_=0)).over(partition_by=partition).label("held"),
        )
        .where(*in_queue)
        .subquery()
    )
    conditions = [queue.c.blocked == 0, queue.c.held == 0]
    if per_address is not None:
        conditions.append(queue.c.position <= per_address)
    statement = (
        select(OutboxMessage, queue.c.position)
        .join(queue, queue.c.id == OutboxMessage.id)
        .where(*conditions)
        .order_by(OutboxMessage.priority, OutboxMessage.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True, of=OutboxMessage)
    rows = (await session.execute(statement)).all()

    # Keep, per address, the rows that continue the queue from its head without a gap: a gap
    # means another process locked the row in front, and that process owns the address.
    expected: dict[tuple[str, str], int] = {}
    candidates: list[OutboxMessage] = []
    for message, position in sorted(rows, key=lambda row: row[1]):
        key = (message.channel, message.address)
        if position == expected.get(key, 1):
            expected[key] = position + 1
            candidates.append(message)
    if not candidates:
        return []

    until = now + lease
    claimed_ids = set(
        (
            await session.scalars(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id.in_([message.id for message in candidates]),
                    OutboxMessage.status == OutboxStatus.PENDING,
                    or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until <= now),
                )
                .values(claimed_until=until)
                .returning(OutboxMessage.id)
                .execution_options(synchronize_session=False)
            )
        ).all()
    )
    claimed = [message for message in candidates if message.id in claimed_ids]
    for message in claimed:
        set_committed_value(message, "claimed_until", until)
    claimed.sort(key=lambda message: (message.priority, message.id))
    return claimed


async def mark_sent(
    session: AsyncSession,
    message_id: int,
    *,
    now: datetime,
    platform_message_id: str | None,
) -> bool:
    """Records that the platform accepted the message; False if it was settled meanwhile."""
    result = await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == message_id, OutboxMessage.status == OutboxStatus.PENDING)
        .values(
            status=OutboxStatus.SENT,
            sent_at=now,
            platform_message_id=platform_message_id,
            attempts=OutboxMessage.attempts + 1,
            claimed_until=None,
            last_error=None,
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) > 0


async def mark_retry(
    session: AsyncSession,
    message_id: int,
    *,
    not_before: datetime,
    error: str,
    count_attempt: bool = True,
) -> bool:
    """Puts the message back in the queue, due at `not_before`; releases the claim.

    A rate limit (429) is not the message's fault, so the dispatcher passes
    `count_attempt=False` for it and the message keeps all its attempts.
    """
    values: dict[str, Any] = {
        "not_before": not_before,
        "claimed_until": None,
        "last_error": error[:_ERROR_LIMIT],
    }
    if count_attempt:
        values["attempts"] = OutboxMessage.attempts + 1
    result = await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == message_id, OutboxMessage.status == OutboxStatus.PENDING)
        .values(values)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) > 0


async def mark_failed(
    session: AsyncSession, message_id: int, *, error: str, count_attempt: bool = True
) -> bool:
    """Gives the message up for good (invalid, unreachable, or out of attempts)."""
    values: dict[str, Any] = {
        "status": OutboxStatus.FAILED,
        "claimed_until": None,
        "last_error": error[:_ERROR_LIMIT],
    }
    if count_attempt:
        values["attempts"] = OutboxMessage.attempts + 1
    result = await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == message_id, OutboxMessage.status == OutboxStatus.PENDING)
        .values(values)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) > 0


async def release_claims(session: AsyncSession, message_ids: Iterable[int]) -> None:
    """Gives claimed but unsent messages back at once (a clean shutdown), not at lease expiry."""
    ids = list(message_ids)
    if not ids:
        return
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(ids), OutboxMessage.status == OutboxStatus.PENDING)
        .values(claimed_until=None)
        .execution_options(synchronize_session=False)
    )


async def mark_address_unreachable(
    session: AsyncSession, channel: str, address: str, now: datetime
) -> int:
    """The person blocked the bot or is gone: stop trying them everywhere it matters.

    Marks the citizen's contact unreachable, turns their open surveys (scheduled, invited,
    in progress) into `unreachable`, and cancels the address's other pending messages.
    Returns how many messages were cancelled.
    """
    await session.execute(
        update(CitizenContact)
        .where(CitizenContact.channel == channel, CitizenContact.address == address)
        .values(status=ContactStatus.UNREACHABLE)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Survey)
        .where(
            Survey.channel == channel,
            Survey.address == address,
            Survey.status.in_(_OPEN_SURVEY_STATUSES),
        )
        .values(status=SurveyStatus.UNREACHABLE, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.channel == channel,
            OutboxMessage.address == address,
            OutboxMessage.status == OutboxStatus.PENDING,
        )
        .values(
            status=OutboxStatus.CANCELLED,
            claimed_until=None,
            last_error="recipient unreachable",
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


async def platform_message_id(
    session: AsyncSession, message_id: int, *, channel: str, address: str
) -> str | None:
    """The platform's id of the message an outbox row produced, if it was sent to this address.

    The address is part of the lookup so that a wrong reference can never edit another
    person's message.
    """
    result = await session.scalar(
        select(OutboxMessage.platform_message_id).where(
            OutboxMessage.id == message_id,
            OutboxMessage.status == OutboxStatus.SENT,
            OutboxMessage.channel == channel,
            OutboxMessage.address == address,
        )
    )
    return result


async def pending_count(session: AsyncSession) -> int:
    """Messages still to send (claimed or not)."""
    count = await session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(OutboxMessage.status == OutboxStatus.PENDING)
    )
    return int(count or 0)


def _rowcount(result: Any) -> int:
    # CursorResult.rowcount; typed loosely because session.execute() is typed as Result.
    return int(getattr(result, "rowcount", 0) or 0)
