"""The scheduler part of the service: APScheduler 3 running the time-driven sweeps.

Every sweep (reminders, expiries, escalation SLAs, digests) is an `async def sweep(services)`
that looks in the database for what is due, so nothing is lost while the process was down
(docs/design.md). A module that owns a sweep adds its registrar to `sweep_registrars` in
`bot/jobs/registry.py`, the one visible list of everything that runs on a timer:

    def register_reminders(scheduler: SweepScheduler) -> None:
        scheduler.every(timedelta(minutes=1), send_due_reminders, name="reminders")
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

if TYPE_CHECKING:
    from bot.app import Services

log = logging.getLogger(__name__)

Sweep = Callable[["Services"], Awaitable[object]]


class SweepScheduler:
    """A thin, typed face of `AsyncIOScheduler` that runs sweeps with the services.

    Each sweep runs at most once at a time and missed runs coalesce into one: a sweep catches
    up on everything due anyway, so running it twice in a row gains nothing.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self.scheduler = AsyncIOScheduler(timezone=services.settings.timezone)
        self._running: set[asyncio.Task[Any]] = set()

    @property
    def job_names(self) -> list[str]:
        return [job.id for job in self.scheduler.get_jobs()]

    def every(self, interval: timedelta, sweep: Sweep, *, name: str) -> None:
        self.add(IntervalTrigger(seconds=interval.total_seconds()), sweep, name=name)

    def add(self, trigger: BaseTrigger, sweep: Sweep, *, name: str) -> None:
        """Runs `sweep(services)` on `trigger` (e.g. a CronTrigger for the weekly digest)."""
        self.scheduler.add_job(
            self._run,
            trigger,
            args=[sweep, name],
            id=name,
            name=name,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
            replace_existing=True,
        )

    async def _run(self, sweep: Sweep, name: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await sweep(self.services)
        except asyncio.CancelledError:
            raise
        except Exception:
            # One failing sweep must not stop the others, nor the next run of itself.
            log.exception("sweep %s failed", name)
        finally:
            if task is not None:
                self._running.discard(task)

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        """Stops scheduling and waits for sweeps in flight to finish being cancelled."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)  # cancels the running sweep tasks
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


Registrar = Callable[[SweepScheduler], None]
