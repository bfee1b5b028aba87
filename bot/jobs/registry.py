"""Everything that runs on a timer, in one visible list, and the part of the service that runs
it: the scheduler with every sweep, and the invitation waker (the sweep's fast path).

A module that owns a sweep exposes a registrar (`register_x(scheduler)`) and is added to
`sweep_registrars` below.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bot.jobs.digests import register_digest_sweep
from bot.jobs.scheduler import Registrar, SweepScheduler
from bot.jobs.sweeps import invitation_waker_part, register_survey_sweeps

if TYPE_CHECKING:
    from bot.app import Services

log = logging.getLogger(__name__)


def sweep_registrars(services: Services) -> list[Registrar]:
    """Every sweep of the service, in registration order; add new sweeps here."""
    registrars: list[Registrar] = [register_survey_sweeps, register_digest_sweep]
    return registrars


def scheduler_part(
    registrars: Callable[[Services], list[Registrar]] = sweep_registrars,
) -> Callable[[Services], Awaitable[Callable[[], Awaitable[None]]]]:
    """A `Startable` that runs the scheduler with the given sweeps for the life of the service."""

    async def start(services: Services) -> Callable[[], Awaitable[None]]:
        # The fast path of the invitation sweep: invitations woken as intake commits.
        stop_waker = await invitation_waker_part()(services)
        sweeps = SweepScheduler(services)
        for register in registrars(services):
            register(sweeps)
        sweeps.start()
        log.info("scheduler started; sweeps: %s", ", ".join(sweeps.job_names) or "none")

        async def stop() -> None:
            await sweeps.stop()
            await stop_waker()

        return stop

    return start
