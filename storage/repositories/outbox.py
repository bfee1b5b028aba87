"""The outbox table: enqueue messages in the caller's transaction, claim and settle them.

Every function takes the caller's `AsyncSession` and never commits (STYLE.md 5): a handler
enqueues in the same transaction as the change that caused the message, and the dispatcher
wraps each claim and each settlement in its own short transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from storage.inserts import insert_for
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
    statement = insert_for(session, OutboxMessage).values(values)
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
    waiting_behind: set[tuple[str, str]] | None = None,
) -> list[OutboxMessage]:
    """Claims up to `limit` due messages for `lease`, most urgent first.

    Returned in (priority, id) order; among equal priorities, the addresses whose messages
    have been due the longest are taken first.

    Each address is a queue in (priority, id) order, and only a prefix of it can be claimed:
    nothing of an address is claimable while any of its rows carries a live claim (one
    claimant owns an address at a time), and a row that failed and waits for its retry blocks
    the rows behind it (nothing overtakes it). Rows scheduled for later that were never tried
    do not block. At most `per_address` rows per address are taken, so a long queue for one
    chat cannot outlive its lease in memory. `waiting_behind`, when given, receives the
    addresses whose due rows were left because of a live claim: their claimant should come
    back for them once it has sent what it holds.

    Cost: an index walk over the first `limit` due rows, a scan of the pending rows for the
    candidate addresses' queues (an index on (channel, address) would make that a lookup),
    and one UPDATE; never a sort of the whole backlog, which matters because on SQLite every
    transaction holds the write lock (storage/db.py begins IMMEDIATE).

    On PostgreSQL the chosen rows are locked with `FOR UPDATE SKIP LOCKED` and the UPDATE
    re-checks that each row is still free, so several processes share the outbox; a process
    that loses the head of an address's queue to another gives back what it took behind it.
    """
    if limit <= 0:
        return []
    free = or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until <= now)
    pending = [OutboxMessage.status == OutboxStatus.PENDING]
    if channels is not None:
        pending.append(OutboxMessage.channel.in_(list(channels)))

    # 1. The most urgent due and free rows name the candidate addresses. Ordered as the
    # ix_outbox_pending index is (the longest due first within a priority), so the database
    # reads the first `limit` matches and stops instead of sorting the whole backlog.
    heads = await session.execute(
        select(OutboxMessage.channel, OutboxMessage.address)
        .where(*pending, OutboxMessage.not_before <= now, free)
        .order_by(OutboxMessage.priority, OutboxMessage.not_before, OutboxMessage.id)
        .limit(limit)
    )
    candidates = list(dict.fromkeys((channel, address) for channel, address in heads))
    if not candidates:
        return []

    # 2. Their whole queues (due rows, and tried rows waiting for a retry), to see who may go.
    queue_rows = await session.execute(
        select(
            OutboxMessage.id,
            OutboxMessage.channel,
            OutboxMessage.address,
            OutboxMessage.priority,
            OutboxMessage.not_before,
            OutboxMessage.claimed_until,
        ).where(
            *pending,
            OutboxMessage.address.in_(sorted({address for _, address in candidates})),
            or_(OutboxMessage.not_before <= now, OutboxMessage.last_error.is_not(None)),
        )
    )
    queues: dict[tuple[str, str], list[tuple[int, int, datetime, datetime | None]]] = {}
    for row_id, channel, address, priority, not_before, claimed_until in queue_rows:
        queues.setdefault((channel, address), []).append(
            (priority, row_id, not_before, claimed_until)
        )
    chosen: list[tuple[int, int]] = []
    order: dict[tuple[str, str], list[int]] = {}
    for key in candidates:
        queue = sorted(queues.get(key, []))
        if any(claimed is not None and claimed > now for _, _, _, claimed in queue):
            if waiting_behind is not None:
                waiting_behind.add(key)
            continue
        order[key] = [row_id for _, row_id, _, _ in queue]
        for taken, (priority, row_id, not_before, _) in enumerate(queue):
            if not_before > now or (per_address is not None and taken >= per_address):
                break
            chosen.append((priority, row_id))
    chosen_ids = [row_id for _, row_id in sorted(chosen)[:limit]]
    if not chosen_ids:
        return []

    # 3. Lock and claim; then keep, per address, only an unbroken prefix of its queue.
    if session.get_bind().dialect.name == "postgresql":
        chosen_ids = list(
            (
                await session.scalars(
                    select(OutboxMessage.id)
                    .where(OutboxMessage.id.in_(chosen_ids))
                    .with_for_update(skip_locked=True)
                )
            ).all()
        )
    until = now + lease
    claimed = set(
        (
            await session.scalars(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id.in_(chosen_ids),
                    OutboxMessage.status == OutboxStatus.PENDING,
                    free,
                )
                .values(claimed_until=until)
                .returning(OutboxMessage.id)
                .execution_options(synchronize_session=False)
            )
        ).all()
    )
    kept: list[int] = []
    given_back: list[int] = []
    for ids in order.values():
        unbroken = True
        for row_id in ids:
            unbroken = unbroken and row_id in claimed
            if row_id in claimed:
                (kept if unbroken else given_back).append(row_id)
    if given_back:
        await release_claims(session, given_back)
    if not kept:
        return []
    messages = (
        await session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.id.in_(kept))
            .order_by(OutboxMessage.priority, OutboxMessage.id)
        )
    ).all()
    for message in messages:
        # The identity map may hold the row from before the UPDATE.
        set_committed_value(message, "claimed_until", until)
    return list(messages)


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
    return await _settle_unsent(
        session, message_id, {"not_before": not_before}, error=error, count_attempt=count_attempt
    )


async def mark_failed(
    session: AsyncSession, message_id: int, *, error: str, count_attempt: bool = True
) -> bool:
    """Gives the message up for good (invalid, unreachable, or out of attempts)."""
    return await _settle_unsent(
        session,
        message_id,
        {"status": OutboxStatus.FAILED},
        error=error,
        count_attempt=count_attempt,
    )


async def _settle_unsent(
    session: AsyncSession,
    message_id: int,
    changes: dict[str, Any],
    *,
    error: str,
    count_attempt: bool,
) -> bool:
    """Releases the claim of a still pending message, records the error, counts the attempt."""
    values: dict[str, Any] = {**changes, "claimed_until": None, "last_error": error[:_ERROR_LIMIT]}
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
