"""Time-driven work as sweeps (docs/design.md): each run looks in the database for what is due.

Nothing is lost when the process was down at the due moment: the next sweep finds it. A sweep
selects the ids of what is due, then handles each item in its own short transaction that
claims it (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several processes split the work),
checks it is still due, handles it and commits. One bad item is logged with its id and tried
again later, with a growing pause, and never holds back the rest; short write transactions
also keep SQLite answering intake while a backlog is swept.

Invitations do not wait for the sweep: `InvitationWaker` runs the same per-item step right
after the intake transaction that resolved a case commits. The sweep stays the safety net.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.app import Services
from bot.jobs.scheduler import SweepScheduler
from handlers import escalations, survey_flow
from storage.db import is_postgresql

log = logging.getLogger(__name__)


# Invitations wait at most this long after they are due when no wake brought them sooner
# (a survey delay, the end of quiet hours, a process that was down); one indexed query.
SURVEY_SWEEP_EVERY = timedelta(seconds=10)
# SLAs are hours of working time; a minute late is nothing, and the query is one index scan.
ESCALATION_SWEEP_EVERY = timedelta(minutes=1)
# "The database is away", not "this item is bad": the run stops and the next one tries again.
_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError, ConnectionError, TimeoutError)

Step = Callable[[AsyncSession, int], Awaitable[bool]]


@dataclass
class Retries:
    """Items whose step failed, and when each may be tried again (this process's memory).

    The pause doubles with every failure, from `first` up to `most`, so a poisoned item costs
    one log line an hour rather than one a run. A restart forgets it, and tries once more.
    """

    first: timedelta = timedelta(minutes=1)
    most: timedelta = timedelta(hours=1)
    _failed: dict[tuple[str, int], tuple[int, datetime]] = field(default_factory=dict)

    def waiting(self, kind: str, now: datetime) -> set[int]:
        """The items of `kind` not to try yet."""
        return {item for (k, item), (_, at) in self._failed.items() if k == kind and at > now}

    def failed(self, kind: str, item: int, now: datetime) -> tuple[int, datetime]:
        """Records one more failure; returns how many in a row and when to try again."""
        count = self._failed.get((kind, item), (0, now))[0] + 1
        pause = min(self.first * 2 ** (count - 1), self.most)
        self._failed[(kind, item)] = (count, now + pause)
        return count, now + pause

    def succeeded(self, kind: str, item: int) -> None:
        self._failed.pop((kind, item), None)


def _where(exc: BaseException) -> str:
    """Where it failed (file:line in function) and the exception's type, never its message:
    an error message may quote a row's values, which may be personal data."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {Path(last.filename).name}:{last.lineno} in {last.name}"


async def each_item(
    services: Services,
    kind: str,
    ids: Iterable[int],
    step: Step,
    retries: Retries,
    *,
    on_done: Callable[[], None] = lambda: None,
) -> int:
    """Runs `step` on each item in its own transaction; returns how many did something."""
    done = 0
    for item in ids:
        try:
            async with services.sessions.begin() as session:
                changed = await step(session, item)
        except _UNREACHABLE:
            raise
        except Exception as exc:
            count, again = retries.failed(kind, item, services.clock.now())
            log.error(
                "%s %d failed (%d in a row): %s; tried again after %s",
                kind,
                item,
                count,
                _where(exc),
                again.isoformat(timespec="seconds"),
            )
            log.debug("%s %d failed", kind, item, exc_info=True)
            continue
        retries.succeeded(kind, item)
        if changed:
            done += 1
            on_done()
    return done


async def survey_sweep(services: Services, retries: Retries | None = None) -> int:
    """Expires, invites and reminds; returns how many surveys it moved."""
    retries = retries or Retries()
    now = services.clock.now()
    policy = services.policy
    channels = services.invitation_channels
    async with services.sessions() as session:
        to_expire = await survey_flow.due_expiries(
            session, now, leave_out=retries.waiting("expiry", now)
        )
        to_invite = await survey_flow.due_invitations(
            session, now, policy, channels, leave_out=retries.waiting("invitation", now)
        )
        to_remind = await survey_flow.due_reminders(
            session, now, policy, leave_out=retries.waiting("reminder", now)
        )

    async def expire(session: AsyncSession, survey_id: int) -> bool:
        return await survey_flow.expire_one(session, survey_id, now)

    async def invite(session: AsyncSession, survey_id: int) -> bool:
        return await survey_flow.invite_one(session, survey_id, now, policy, channels)

    async def remind(session: AsyncSession, survey_id: int) -> bool:
        return await survey_flow.remind_one(session, survey_id, now, policy)

    wake = services.wake_dispatcher
    expired = await each_item(services, "expiry", to_expire, expire, retries)
    invited = await each_item(services, "invitation", to_invite, invite, retries, on_done=wake)
    reminded = await each_item(services, "reminder", to_remind, remind, retries, on_done=wake)
    if expired or invited or reminded:
        log.info("survey sweep: %d invited, %d reminded, %d expired", invited, reminded, expired)
    return expired + invited + reminded


async def escalation_sweep(services: Services, retries: Retries | None = None) -> int:
    """Climbs escalations past their deadline, reminds their heads, or marks them overdue."""
    retries = retries or Retries()
    now = services.clock.now()
    async with services.sessions() as session:
        due = await escalations.due_for_sla(
            session, now, leave_out=retries.waiting("escalation", now)
        )

    async def step(session: AsyncSession, escalation_id: int) -> bool:
        return await escalations.deadline_passed(
            session, escalation_id, now, services.policy, services.invitation_channels
        )

    moved = await each_item(
        services, "escalation", due, step, retries, on_done=services.wake_dispatcher
    )
    if moved:
        log.info("escalation sweep: %d escalations moved", moved)
    return moved


def register_survey_sweeps(scheduler: SweepScheduler) -> None:
    # One memory of failed items per sweep, for the life of the scheduler.
    surveys = functools.partial(survey_sweep, retries=Retries())
    climbs = functools.partial(escalation_sweep, retries=Retries())
    scheduler.every(SURVEY_SWEEP_EVERY, surveys, name="surveys")
    scheduler.every(ESCALATION_SWEEP_EVERY, climbs, name="escalations")


class InvitationWaker:
    """Invites a just-resolved case's survey right after its intake commits (in-process).

    `wake(case_ids)` only queues; a few workers run the sweep's own per-item step, each in
    its own transaction, then wake the dispatcher. A survey not due yet (a survey delay, quiet
    hours) or whose citizen has no chat is left alone, for the sweep. Nothing is lost when
    the queue is dropped at shutdown: the sweep finds the same surveys.
    """

    def __init__(self, services: Services, *, workers: int = 2) -> None:
        self.services = services
        self._queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self, case_ids: Iterable[int]) -> None:
        woken = time.monotonic()
        for case_id in case_ids:
            self._queue.put_nowait((case_id, woken))

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"invitation-waker-{n}")
            for n in range(self._workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def settle(self) -> None:
        """Returns once every case woken so far has been handled (for tests and benchmarks)."""
        await self._queue.join()

    async def invite_now(self, case_id: int) -> bool:
        services = self.services
        async with services.sessions.begin() as session:
            invited = await survey_flow.invite_for_case(
                session,
                case_id,
                services.clock.now(),
                services.policy,
                services.invitation_channels,
            )
        if invited:
            services.wake_dispatcher()
        return invited

    async def invite_all(self, case_ids: Sequence[int]) -> list[bool | None]:
        """Invites the surveys of these cases in one transaction, each in a savepoint of its
        own: True, False (nothing to do) or None (it failed, was rolled back alone, and is left
        to the sweep). One transaction for the group because on SQLite every transaction
        waits its turn for the one write lock: a turn per case held the waker to about ten
        invitations a second, and at twenty resolutions a second they waited seconds."""
        services = self.services
        if len(case_ids) == 1:
            # Alone in its transaction, a case needs no savepoint: the rollback of the
            # transaction is its own. (At twenty resolutions a second most wakes bring one
            # case; its savepoint was two statements of the 26 a resolution costs.)
            try:
                return [await self.invite_now(case_ids[0])]
            except Exception as exc:
                _failed_at_once(case_ids[0], exc)
                return [None]
        results: list[bool | None] = []
        async with services.sessions.begin() as session:
            for case_id in case_ids:
                try:
                    async with session.begin_nested():
                        results.append(
                            await survey_flow.invite_for_case(
                                session,
                                case_id,
                                services.clock.now(),
                                services.policy,
                                services.invitation_channels,
                            )
                        )
                except Exception as exc:
                    _failed_at_once(case_id, exc)
                    results.append(None)
        if any(results):
            services.wake_dispatcher()
        return results

    # Cases invited in one transaction at most: a group's transaction stays short.
    _GROUP = 50

    async def _work(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self._GROUP and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                started = time.monotonic()
                results = await self.invite_all([case_id for case_id, _ in group])
                took = (time.monotonic() - started) * 1000
                for (case_id, woken), invited in zip(group, results, strict=True):
                    log.debug(
                        "case %d: invited=%s after %.0f ms in the queue, in %.0f ms (%d at once)",
                        case_id,
                        invited,
                        (started - woken) * 1000,
                        took,
                        len(group),
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The commit failed: the sweep finds every one of them again.
                log.error("invitations for %d cases failed at once: %s", len(group), _where(exc))
            finally:
                for _ in group:
                    self._queue.task_done()


def _failed_at_once(case_id: int, exc: Exception) -> None:
    """A woken invitation that failed (rolled back alone): the sweep tries it again, and keeps
    the backoff; one line is enough."""
    log.error("invitation for case %d failed at once: %s", case_id, _where(exc))


def invitation_waker_part(
    workers: int | None = None,
) -> Callable[[Services], Awaitable[Callable[[], Awaitable[None]]]]:
    """A `Startable`: wakes invitations on commit for the life of the service.

    By default one worker on SQLite (one writer at a time: a second would only wait for the
    lock) and four on PostgreSQL, where invitations to different people commit side by side.
    """

    async def start(services: Services) -> Callable[[], Awaitable[None]]:
        count = workers or (4 if is_postgresql(services.engine) else 1)
        waker = InvitationWaker(services, workers=count)
        waker.start()
        services.wake_invitations = waker.wake

        async def stop() -> None:
            services.wake_invitations = _no_wake
            await waker.stop()

        return stop

    return start


def _no_wake(_case_ids: Sequence[int]) -> None:
    return None
