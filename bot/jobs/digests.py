"""Weekly digests in chat: each head gets their unit's digest (with the units below it) and each
`digest_recipients` entry its scope's, once per (recipient, week), through the outbox.

The sweep runs at SIPAS_DIGEST_SCHEDULE and again every few minutes: it works out the last
scheduled moment and the week it reports on (the whole week before that moment's week), and
hands to the outbox every digest of that week not yet recorded in `digest_deliveries`. A
digest claimed after `LATE_AFTER` past its moment (the service was down) says it is late. The
claim is the insert of the (recipient, week) row, in the same transaction as the outbox rows
(text, then chart, then workbook), so a restart, a second process or a replayed job sends
nothing twice. Someone with no reachable chat is recorded (no channel), logged and counted.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger
from prometheus_client import Counter

from bot.app import Services
from bot.config import WeeklySchedule
from bot.digest.render import History, build_files
from bot.digest.snapshots import stored_weeks
from bot.jobs.scheduler import SweepScheduler
from handlers.chat import say
from handlers.digest import (
    Counts,
    Report,
    UnitTree,
    Week,
    load_tree,
    officer_figures,
    scope_history,
    scope_report,
    week_counts,
)
from storage.models import DigestRecipient, Priority, UnitHead
from storage.repositories import reports as repo

log = logging.getLogger(__name__)

LATE_AFTER = timedelta(hours=1)
CATCH_UP_EVERY = timedelta(minutes=10)
DIGESTS = Counter(
    "sipas_digests_total", "Weekly digests handed to the outbox, or not.", ["outcome"]
)


@dataclass(frozen=True)
class Target:
    """Someone who gets a digest: a head (their unit) or a recipient (their scope)."""

    key: str  # head:<unit code> | recipient:<id>
    scope_unit_id: int
    address: tuple[str, str] | None  # (channel, address) on a configured channel
    is_head: bool


@dataclass
class DeliveryOutcome:
    queued: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    already: int = 0

    def __str__(self) -> str:
        return (
            f"{len(self.queued)} digests queued, {len(self.unreachable)} recipients "
            f"unreachable, {self.already} already sent"
        )


def due_moment(now: datetime, schedule: WeeklySchedule, services: Services) -> datetime:
    """The last scheduled moment at or before `now` (local weekday and time)."""
    tz = services.settings.timezone
    local = now.astimezone(tz)
    days_back = (local.weekday() - schedule.weekday) % 7
    moment = datetime.combine(local.date() - timedelta(days=days_back), schedule.at, tzinfo=tz)
    if moment > local:
        moment -= timedelta(days=7)
    return moment


def _address(person: UnitHead | DigestRecipient, channels: Sequence[str]) -> tuple[str, str] | None:
    """The first of the configured channels, in preference order, on which they have an address."""
    for channel in channels:
        address = person.address_on(channel)
        if address:
            return channel, address
    return None


async def _targets(services: Services, tree: UnitTree) -> list[Target]:
    channels = services.invitation_channels
    async with services.sessions() as session:
        await repo.begin_reading(session)
        heads = await repo.heads(session)
        recipients = await repo.recipients(session)
    targets = [
        Target(
            key=f"head:{tree.by_id[head.unit_id].code}",
            scope_unit_id=head.unit_id,
            address=_address(head, channels),
            is_head=True,
        )
        for head in heads
    ]
    targets += [
        Target(
            key=f"recipient:{recipient.id}",
            scope_unit_id=recipient.scope_unit_id,
            address=_address(recipient, channels),
            is_head=False,
        )
        for recipient in recipients
    ]
    return targets


async def deliver_week(
    services: Services, week: Week, *, late: bool = False, scope_code: str | None = None
) -> DeliveryOutcome:
    """Queues `week`'s digest for every head and recipient that has not had it yet.

    `scope_code` limits it to those whose scope is that unit (`sipas-bot digest --send`).
    """
    settings = services.settings
    tz, minimum, locale = settings.timezone, settings.digest_min_responses, settings.locale
    outcome = DeliveryOutcome()
    async with services.sessions() as session:
        await repo.begin_reading(session)
        tree = await load_tree(session)
        done = await repo.delivered_keys(session, week.label)
    targets = [t for t in await _targets(services, tree) if t.key not in done]
    if scope_code is not None:
        scope_id = tree.find(scope_code).id
        targets = [t for t in targets if t.scope_unit_id == scope_id]
    outcome.already = len(done)
    if not targets:
        return outcome

    # One count of the whole tree serves every scope: a digest is a roll-up of it. Closed
    # weeks come stored (and are stored now if they were not: the sweep warms them for the
    # API and the dashboard); the history holds this week and the one before.
    closed = stored_weeks(services)
    async with services.sessions() as session:
        await repo.begin_reading(session)
        history: History = await scope_history(session, week, tz, None, closed=closed)
        counts: dict[int, Counts] = (
            (await closed.counts([week], tz, full=[week]))[week]
            if closed.is_closed(week, tz)
            else await week_counts(session, week, tz, None)
        )
        previous = history[week.previous()]
    for target in targets:
        now = services.clock.now()
        if target.address is None:
            async with services.sessions.begin() as session:
                claimed = await repo.record_delivery(
                    session,
                    recipient=target.key,
                    week=week.label,
                    scope_unit_id=target.scope_unit_id,
                    channel=None,
                    address=None,
                    late=late,
                    now=now,
                )
            if claimed:
                log.warning("no reachable chat for the digest of %s", target.key)
                DIGESTS.labels("unreachable").inc()
                outcome.unreachable.append(target.key)
            continue
        scope = tree.by_id[target.scope_unit_id]
        officers = None
        if target.is_head:
            async with services.sessions() as session:
                await repo.begin_reading(session)
                officers = await officer_figures(session, week, tz, scope.id, minimum)
        report: Report = scope_report(
            week, tz, tree, scope, counts, previous, minimum, officers=officers
        )
        files = await build_files(services, report, locale, late=late, history=(history, tree))
        channel, address = target.address
        async with services.sessions.begin() as session:
            claimed = await repo.record_delivery(
                session,
                recipient=target.key,
                week=week.label,
                scope_unit_id=scope.id,
                channel=channel,
                address=address,
                late=late,
                now=now,
            )
            if not claimed:
                continue
            key = f"digest:{target.key}:{week.label}"
            caption_name = report.overall.name
            photo_caption = dt_caption("photo_caption", locale, week, caption_name)
            document_caption = dt_caption("document_caption", locale, week, caption_name)
            await say(
                session,
                channel,
                address,
                {"text": files.text},
                now,
                priority=Priority.INVITATION,
                dedupe_key=f"{key}:text",
            )
            await say(
                session,
                channel,
                address,
                {"text": photo_caption, "photo": _file(files.stem + ".png", files.png)},
                now,
                priority=Priority.INVITATION,
                dedupe_key=f"{key}:photo",
            )
            await say(
                session,
                channel,
                address,
                {"text": document_caption, "document": _file(files.stem + ".xlsx", files.xlsx)},
                now,
                priority=Priority.INVITATION,
                dedupe_key=f"{key}:document",
            )
        DIGESTS.labels("late" if late else "queued").inc()
        outcome.queued.append(target.key)
        services.wake_dispatcher()
    return outcome


def dt_caption(key: str, locale: str, week: Week, name: str) -> str:
    from handlers.digest_text import dt

    return dt(key, locale, week=week.label, name=name)


def _file(filename: str, data: bytes) -> dict[str, str]:
    return {"filename": filename, "data_b64": base64.b64encode(data).decode("ascii")}


async def send_due_digests(services: Services) -> DeliveryOutcome:
    """The sweep: last week's digests once the schedule's moment has passed."""
    now = services.clock.now()
    moment = due_moment(now, services.settings.digest_schedule, services)
    week = Week.containing(moment, services.settings.timezone).previous()
    late = now - moment > LATE_AFTER
    outcome = await deliver_week(services, week, late=late)
    if outcome.queued or outcome.unreachable:
        log.info("digests of %s: %s%s", week.label, outcome, " (late)" if late else "")
    # Last week (the dashboard's default) and the one before (its trend), stored as soon as
    # last week has closed, whether or not a digest is due, so that the first page need not
    # count. After the digests: a failure here must not hold them back.
    last = Week.last(now, services.settings.timezone)
    await stored_weeks(services).warm(
        [last.previous(), last], services.settings.timezone, full=[last]
    )
    return outcome


def register_digest_sweep(scheduler: SweepScheduler) -> None:
    """At SIPAS_DIGEST_SCHEDULE, and every few minutes to catch up after a stop."""
    schedule = scheduler.services.settings.digest_schedule
    trigger = CronTrigger(
        day_of_week=schedule.day_name,
        hour=schedule.at.hour,
        minute=schedule.at.minute,
        timezone=scheduler.services.settings.timezone,
    )
    scheduler.add(trigger, send_due_digests, name="digests")
    scheduler.every(CATCH_UP_EVERY, send_due_digests, name="digests_catch_up")


__all__ = [
    "DeliveryOutcome",
    "deliver_week",
    "due_moment",
    "register_digest_sweep",
    "send_due_digests",
]
