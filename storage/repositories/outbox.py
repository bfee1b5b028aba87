"""The outbox table: enqueue messages in the caller's transaction, claim and settle them.

Every function takes the caller's `AsyncSession` and never commits (STYLE.md 5): a handler
enqueues in the same transaction as the change that caused the message, and the dispatcher
wraps each claim and each settlement in its own short transaction.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    Select,
    String,
    Update,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from storage.inserts import as_value_parameters, insert_for_backend, value_parameters
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
# What a `sensitive` row keeps once settled (bot/outbox/dispatcher.py: its text held a
# one-time credential, which must not outlive its delivery in the table).
REDACTED: dict[str, Any] = {"text": "[removed once settled]", "sensitive": True}


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
    statement = _enqueue_statement(session.get_bind().dialect.name, dedupe_key is not None)
    result = await session.scalars(statement, as_value_parameters(values))
    row = result.one_or_none()
    if row is not None:
        session.info[_QUEUED] = True
        await notify_dispatcher(session)
    return row


@functools.cache
def _enqueue_statement(backend: str, deduplicated: bool) -> Any:
    """Built once per backend and kind (an invitation, an apology, a reply each queue one):
    building an insert and its cache key cost more than a third of running it."""
    statement = insert_for_backend(backend, OutboxMessage).values(
        value_parameters(OutboxMessage.__table__, _ENQUEUED)
    )
    if deduplicated:
        statement = statement.on_conflict_do_nothing(index_elements=[OutboxMessage.dedupe_key])
    return statement.returning(OutboxMessage)


_ENQUEUED = (
    "channel",
    "address",
    "payload",
    "priority",
    "status",
    "attempts",
    "not_before",
    "dedupe_key",
    "case_id",
)


_QUEUED = "sipas_outbox_queued"


def queued_any(session: AsyncSession) -> bool:
    """Whether `enqueue` added a message in this session: after its commit, the dispatcher has
    something new to claim (only then is waking it worth a claim)."""
    return bool(session.info.get(_QUEUED))


NOTIFY_CHANNEL = "sipas_outbox"
_NOTIFIED = "sipas_outbox_notified"


async def notify_dispatcher(session: AsyncSession) -> None:
    """On PostgreSQL, wakes the elected sender (in whichever process it runs) at commit.

    `NOTIFY` is transactional: delivered when the transaction commits, dropped when it rolls
    back, so the sender never looks for rows it cannot see yet. Sent once per transaction;
    the payload is the schema, so that deployments sharing a database ignore each other.
    SQLite has one process: the caller's `wake()` after its commit is enough there.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    transaction = session.sync_session.get_transaction()
    if transaction is None or session.info.get(_NOTIFIED) is transaction:
        return
    session.info[_NOTIFIED] = transaction
    await session.execute(
        text("SELECT pg_notify(:channel, current_schema())"), {"channel": NOTIFY_CHANNEL}
    )


@dataclass(frozen=True)
class Claim:
    """One round's claim: the rows taken, its token, and which addresses have more waiting."""

    messages: list[OutboxMessage]
    token: str
    # Addresses with further rows behind the one claimed (or behind a row we hold already):
    # the claimant comes back for them after sending what it holds.
    more_behind: set[tuple[str, str]]
    # Every row claimable when it ran was looked at and fewer than the limit were: a claim
    # made at once after it would find nothing new (only rows queued or come due since).
    complete: bool = False


async def fill_in(
    session: AsyncSession, message_id: int, payload: Mapping[str, Any] | None
) -> bool:
    """Gives a message queued ahead of its content its payload, or drops it (None).

    For a message whose place in the transaction matters but whose text is known only at its
    end (the edit of a pressed button: queued before the handler runs, so that an erasure by
    that handler erases it too). Touches only a still pending row; False when there was none.
    """
    condition = (OutboxMessage.id == message_id, OutboxMessage.status == OutboxStatus.PENDING)
    if payload is None:
        result = await session.execute(
            delete(OutboxMessage).where(*condition).execution_options(synchronize_session=False)
        )
    else:
        result = await session.execute(
            update(OutboxMessage)
            .where(*condition)
            .values(payload=dict(payload))
            .execution_options(synchronize_session=False)
        )
    return _rowcount(result) > 0


async def claim_due(
    session: AsyncSession,
    now: datetime,
    limit: int,
    lease: timedelta,
    *,
    channels: Collection[str] | None = None,
    holding: int = 0,
    exclude: Collection[int] = (),
    more_urgent_than: int | None = None,
) -> Claim:
    """Claims up to `limit` due messages for `lease`: at most one per address, most urgent first.

    Each address is a queue in (priority, id) order and only its head may go: nothing of an
    address is claimable while any of its rows carries a live claim (one claimant owns an
    address at a time), and a row that failed and waits for its retry blocks the rows behind
    it (nothing overtakes it). Rows scheduled for later that were never tried do not block.
    Taking one head per address per round is what keeps one busy chat (a head with 500
    complaints) from filling every claim while a hundred other chats wait: the heads of all
    addresses are ranked together in (priority, id) order.

    The heads come from one `row_number()` window (works on SQLite and PostgreSQL alike) over
    the queues of the addresses at the front of the backlog: an index walk of a few times
    `limit` rows and a lookup of those queues (8 ms for 20 rows, 17 ms for 200 on SQLite with
    10,000 waiting, against 40 ms for a window over all of them); the window runs over every
    pending row only when a few addresses fill the whole front.

    All rows of one claim carry one random `claim_token`; only its holder
    can settle them (`mark_sent`, `mark_retry`, `mark_failed`, `release_claims`), so a send
    that outlived its lease cannot settle the row another claimant took over.

    `holding` is how many rows the caller holds already: that many addresses blocked by a
    live claim and with more rows behind it are reported in `more_behind` too. Rows in
    `exclude` (those the caller holds) count as held: never claimed again, even with their
    lease over, and nothing behind them is claimed either.

    With `more_urgent_than`, only addresses with a due row of a lower (more urgent) priority
    are looked at: a caller whose hands are full asks only for what would go before the rows
    it holds (a reply, a fresh invitation), and the walk reads those few rows instead of the
    backlog's front again (56 ms a claim on SQLite with 3,000 waiting, claimed after every
    resolution, took the database's whole time).

    The UPDATE re-checks that each row is still free, so concurrent claimants never share a
    row (PostgreSQL makes the second wait for the first, then skips the row).
    """
    token = secrets.token_hex(16)
    if limit <= 0:
        return Claim([], token, set())
    shape = _Shape(
        channels=channels is not None, exclude=bool(exclude), urgent=more_urgent_than is not None
    )
    params: dict[str, Any] = {"now": now, "exclude": list(exclude)}
    if channels is not None:
        params["channels"] = list(channels)
    if more_urgent_than is not None:
        params["urgent"] = more_urgent_than
    # The front of the backlog in index order (ix_outbox_pending: a walk, not a sort) names
    # the candidate addresses, so the window reads their queues only. When a few addresses
    # fill that whole front (one head with 500 complaints), every queue is ranked instead:
    # that is the case fairness is for, and it is rare.
    front_size = 4 * limit + max(0, holding)
    front = (
        await session.execute(_front_statement(shape), {**params, "front_size": front_size})
    ).all()
    if not front:
        return Claim([], token, set(), complete=True)
    addresses = {address for _, address in front}
    by_address = len(front) < front_size or len(addresses) >= limit
    found = (
        await session.execute(
            _heads_statement(shape, by_address),
            {**params, "addresses": sorted(addresses), "heads": limit + max(0, holding)},
        )
    ).all()
    heads = [row for row in found if not row.held][:limit]
    more_behind = {(row.channel, row.address) for row in found if row.length > 1}
    # The front held every due row that is free (it was not full), and the heads of all
    # their queues were ranked: fewer heads than the limit means none is left.
    complete = len(front) < front_size and len(heads) < limit
    if not heads:
        return Claim([], token, more_behind, complete=complete)
    # The claimed rows come back whole from the UPDATE itself (one statement where an UPDATE
    # of ids and a SELECT of those rows were two; a claim follows every resolution).
    claimed = (
        await session.scalars(
            _CLAIM,
            {"ids": [row.id for row in heads], "now": now, "until": now + lease, "token": token},
        )
    ).all()
    if not claimed:
        return Claim([], token, more_behind)
    messages = sorted(claimed, key=lambda message: (message.priority, message.id))
    return Claim(messages, token, more_behind, complete=complete)


# The statements of a claim, of settling and of announcing are built once, their values
# passed as parameters. A claim follows every resolution, and building its statements
# (a few hundred expression objects) and computing their cache keys cost more CPU than
# running them: `claim_due` of one row took 4.5 ms of CPU where the same statements built
# once take 3 (SQLite, measured in a loop).
_NOW = bindparam("now", type_=OutboxMessage.__table__.c.claimed_until.type)
_FREE = or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until <= _NOW)


@dataclass(frozen=True)
class _Shape:
    """Which of a claim's optional conditions apply: one statement built for each shape."""

    channels: bool
    exclude: bool
    urgent: bool


@functools.cache
def _front_statement(shape: _Shape) -> Select[str, str]:
    where = [OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.not_before <= _NOW]
    if shape.channels:
        where.append(OutboxMessage.channel.in_(bindparam("channels", expanding=True)))
    if shape.exclude:
        where.append(OutboxMessage.id.not_in(bindparam("exclude", expanding=True)))
    if shape.urgent:
        where.append(OutboxMessage.priority < bindparam("urgent", type_=Integer()))
    return (
        select(OutboxMessage.channel, OutboxMessage.address)
        .where(*where, _FREE)
        .order_by(OutboxMessage.priority, OutboxMessage.not_before, OutboxMessage.id)
        .limit(bindparam("front_size", type_=Integer()))
    )


@functools.cache
def _heads_statement(shape: _Shape, by_address: bool) -> Select[Any]:
    """Each address's queue ranked in (priority, id) order; its head, if it may go, and
    whether a claim holds the address (for `more_behind`)."""
    where = [
        OutboxMessage.status == OutboxStatus.PENDING,
        # The rows that make up a queue: due ones, tried ones waiting for a retry, held ones.
        or_(
            OutboxMessage.not_before <= _NOW,
            OutboxMessage.last_error.is_not(None),
            OutboxMessage.claimed_until > _NOW,
        ),
    ]
    if shape.channels:
        where.append(OutboxMessage.channel.in_(bindparam("channels", expanding=True)))
    if by_address:
        where.append(OutboxMessage.address.in_(bindparam("addresses", expanding=True)))
    per_address = (OutboxMessage.channel, OutboxMessage.address)
    live = OutboxMessage.claimed_until > _NOW
    # A row the caller holds blocks its address like a live claim, even with its lease over.
    if shape.exclude:
        live = or_(live, OutboxMessage.id.in_(bindparam("exclude", expanding=True)))
    held = case((live, 1), else_=0)
    queues = (
        select(
            OutboxMessage.id,
            OutboxMessage.channel,
            OutboxMessage.address,
            OutboxMessage.priority,
            OutboxMessage.not_before,
            OutboxMessage.claimed_until,
            func.row_number()
            .over(partition_by=per_address, order_by=(OutboxMessage.priority, OutboxMessage.id))
            .label("position"),
            func.count().over(partition_by=per_address).label("length"),
            func.max(held).over(partition_by=per_address).label("held"),
        )
        .where(*where)
        .subquery()
    )
    return (
        select(queues.c.id, queues.c.channel, queues.c.address, queues.c.length, queues.c.held)
        .where(
            queues.c.position == 1,
            or_(
                and_(queues.c.held == 0, queues.c.not_before <= _NOW),
                and_(queues.c.held == 1, queues.c.length > 1),
            ),
        )
        # The claimable heads first, then addresses blocked by a claim (for more_behind).
        .order_by(queues.c.held, queues.c.priority, queues.c.id)
        .limit(bindparam("heads", type_=Integer()))
    )


# The UPDATE re-checks that each row is still free: concurrent claimants never share a row.
_CLAIM = (
    update(OutboxMessage)
    .where(
        OutboxMessage.id.in_(bindparam("ids", expanding=True)),
        OutboxMessage.status == OutboxStatus.PENDING,
        _FREE,
    )
    .values(
        claimed_until=bindparam("until", type_=_NOW.type),
        claim_token=bindparam("token", type_=String()),
        announced_at=None,
    )
    .returning(OutboxMessage)
    .execution_options(synchronize_session=False, populate_existing=True)
)


def _held_by(message_id: int, token: str) -> list[Any]:
    """The row, still pending and still under this claim (not taken over by another)."""
    return [
        OutboxMessage.id == message_id,
        OutboxMessage.status == OutboxStatus.PENDING,
        OutboxMessage.claim_token == token,
    ]


async def mark_sent(
    session: AsyncSession,
    message_id: int,
    *,
    token: str,
    now: datetime,
    platform_message_id: str | None,
    redact: bool = False,
) -> bool:
    """Records that the platform accepted the message; False if the claim was lost meanwhile
    (settled, or its lease ran out and another claimant holds it). `redact` replaces the
    payload with `REDACTED`."""
    result = await session.execute(
        _SENT_REDACTED if redact else _SENT,
        {"message": message_id, "token": token, "at": now, "on_platform": platform_message_id},
    )
    return _rowcount(result) > 0


def _settle_sent(*, redact: bool) -> Update:
    values: dict[str, Any] = {
        "status": OutboxStatus.SENT,
        "sent_at": bindparam("at", type_=_NOW.type),
        "platform_message_id": bindparam("on_platform", type_=String()),
        "attempts": OutboxMessage.attempts + 1,
        "claimed_until": None,
        "claim_token": None,
        "last_error": None,
    }
    if redact:
        values["payload"] = dict(REDACTED)
    return (
        update(OutboxMessage)
        .where(
            OutboxMessage.id == bindparam("message", type_=Integer()),
            OutboxMessage.status == OutboxStatus.PENDING,
            OutboxMessage.claim_token == bindparam("token", type_=String()),
        )
        .values(values)
        .execution_options(synchronize_session=False)
    )


# Built once, as the claim's statements are: one of them settles every message sent.
_SENT = _settle_sent(redact=False)
_SENT_REDACTED = _settle_sent(redact=True)


async def mark_retry(
    session: AsyncSession,
    message_id: int,
    *,
    token: str,
    not_before: datetime,
    error: str,
    count_attempt: bool = True,
) -> bool:
    """Puts the message back in the queue, due at `not_before`; releases the claim.

    A rate limit (429) is not the message's fault, so the dispatcher passes
    `count_attempt=False` for it and the message keeps all its attempts. False when the claim
    was lost meanwhile.
    """
    return await _settle_unsent(
        session,
        message_id,
        token,
        {"not_before": not_before},
        error=error,
        count_attempt=count_attempt,
    )


async def mark_failed(
    session: AsyncSession,
    message_id: int,
    *,
    token: str,
    error: str,
    count_attempt: bool = True,
    redact: bool = False,
) -> bool:
    """Gives the message up for good (invalid, unreachable, or out of attempts); `redact`
    replaces the payload with `REDACTED`."""
    changes: dict[str, Any] = {"status": OutboxStatus.FAILED}
    if redact:
        changes["payload"] = dict(REDACTED)
    return await _settle_unsent(
        session, message_id, token, changes, error=error, count_attempt=count_attempt
    )


async def _settle_unsent(
    session: AsyncSession,
    message_id: int,
    token: str,
    changes: dict[str, Any],
    *,
    error: str,
    count_attempt: bool,
) -> bool:
    """Releases our claim of a still pending message, records the error, counts the attempt."""
    values: dict[str, Any] = {
        **changes,
        "claimed_until": None,
        "claim_token": None,
        "last_error": error[:_ERROR_LIMIT],
    }
    if count_attempt:
        values["attempts"] = OutboxMessage.attempts + 1
    result = await session.execute(
        update(OutboxMessage)
        .where(*_held_by(message_id, token))
        .values(values)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) > 0


async def release_claims(
    session: AsyncSession, message_ids: Iterable[int], *, token: str | None = None
) -> None:
    """Gives claimed but unsent messages back at once (a clean shutdown), not at lease expiry.

    With `token`, only the rows still under that claim (the dispatcher always passes it).
    """
    ids = list(message_ids)
    if not ids:
        return
    condition = [OutboxMessage.id.in_(ids), OutboxMessage.status == OutboxStatus.PENDING]
    if token is not None:
        condition.append(OutboxMessage.claim_token == token)
    await session.execute(
        update(OutboxMessage)
        .where(*condition)
        .values(claimed_until=None, claim_token=None)
        .execution_options(synchronize_session=False)
    )


# The last_error of a row freed from a sender that stopped: its send may have gone out.
TAKEN_OVER = "taken over from a sender that stopped; it may have been sent"


@dataclass(frozen=True)
class RecentSend:
    """A send of an earlier sender, for a new one to count against the limits: `at` is when
    it started (the row's `sent_at`)."""

    channel: str
    address: str
    payload: Mapping[str, Any]
    at: datetime


async def announce(
    session: AsyncSession, message_ids: Collection[int], *, token: str, now: datetime
) -> set[int]:
    """Records that the holder of claim `token` may start sending these rows from `now` on,
    before it calls the platform for any of them. Returns the rows still under that claim
    (the others were taken over: they must not be sent)."""
    if not message_ids:
        return set()
    announced = await session.scalars(
        _ANNOUNCE, {"ids": list(message_ids), "token": token, "at": now}
    )
    return set(announced)


_ANNOUNCE = (
    update(OutboxMessage)
    .where(
        OutboxMessage.id.in_(bindparam("ids", expanding=True)),
        OutboxMessage.status == OutboxStatus.PENDING,
        OutboxMessage.claim_token == bindparam("token", type_=String()),
    )
    .values(announced_at=bindparam("at", type_=_NOW.type))
    .returning(OutboxMessage.id)
    .execution_options(synchronize_session=False)
)


@dataclass(frozen=True)
class Freed:
    """The claims a new elected sender freed: how many were free at once, and the rows that
    had been announced (their sends may have begun), which wait one chat spacing."""

    at_once: int
    announced: list[tuple[str, str, Mapping[str, Any]]]  # (channel, address, payload)

    @property
    def waiting(self) -> int:
        return len(self.announced)

    def __len__(self) -> int:
        return self.at_once + self.waiting


async def void_claims(
    session: AsyncSession, now: datetime, channels: Collection[str], retry_at: datetime
) -> Freed:
    """Frees every live claim on these channels at once (a new elected sender takes over: the
    only one that sends, so any claim left is of a sender that is gone).

    A row its sender had announced (`announce`) may have been sent just before the sender
    went, so it waits until `retry_at` (one chat spacing) as a tried row waits for its retry:
    marked with a `last_error`, it also keeps the rows behind it in its chat from overtaking
    it. A row never announced was never sent: it is free at once.
    """
    live = (
        OutboxMessage.status == OutboxStatus.PENDING,
        OutboxMessage.channel.in_(list(channels)),
        OutboxMessage.claimed_until > now,
    )
    waiting = await session.execute(
        update(OutboxMessage)
        .where(*live, OutboxMessage.announced_at.is_not(None))
        .values(
            claimed_until=None,
            claim_token=None,
            announced_at=None,
            not_before=retry_at,  # a claimed row was due already: this only puts it later
            last_error=TAKEN_OVER,
        )
        .returning(OutboxMessage.channel, OutboxMessage.address, OutboxMessage.payload)
        .execution_options(synchronize_session=False)
    )
    announced = [(channel, address, payload) for channel, address, payload in waiting]
    at_once = await session.execute(
        update(OutboxMessage)
        .where(*live)
        .values(claimed_until=None, claim_token=None)
        .execution_options(synchronize_session=False)
    )
    return Freed(at_once=_rowcount(at_once), announced=announced)


async def recent_sends(
    session: AsyncSession, channels: Collection[str], since: datetime
) -> list[RecentSend]:
    """The messages sent on these channels that started since `since` (ix_outbox_sent_at)."""
    rows = await session.execute(
        select(
            OutboxMessage.channel,
            OutboxMessage.address,
            OutboxMessage.payload,
            OutboxMessage.sent_at,
        ).where(
            OutboxMessage.sent_at >= since,
            OutboxMessage.channel.in_(list(channels)),
            OutboxMessage.status == OutboxStatus.SENT,
        )
    )
    return [RecentSend(channel, address, payload, at) for channel, address, payload, at in rows]


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
            claim_token=None,
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
