"""Time-driven work as sweeps (docs/design.md): each run looks in the database for what is due.

Nothing is lost when the process was down at the due moment: the next sweep finds it. Each
step is its own transaction, so one failing step does not hold back the others.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from bot.app import Services
from bot.scheduler import SweepScheduler
from handlers import escalations, survey_flow

log = logging.getLogger(__name__)


# Invitations wait at most this long after they are due; the sweep is one indexed query.
SURVEY_SWEEP_EVERY = timedelta(seconds=10)
# SLAs are hours of working time; a minute late is nothing, and the query is one index scan.
ESCALATION_SWEEP_EVERY = timedelta(minutes=1)


async def survey_sweep(services: Services) -> int:
    """Expires, invites and reminds; returns how many surveys it moved."""
    now = services.clock.now()
    policy = services.policy
    async with services.sessions.begin() as session:
        expired = await survey_flow.expire_due(session, now)
    async with services.sessions.begin() as session:
        invited = await survey_flow.invite_due(session, now, policy, services.invitation_channels)
    async with services.sessions.begin() as session:
        reminded = await survey_flow.remind_due(session, now, policy)
    if invited or reminded:
        services.wake_dispatcher()
    if expired or invited or reminded:
        log.info("survey sweep: %d invited, %d reminded, %d expired", invited, reminded, expired)
    return expired + invited + reminded


async def escalation_sweep(services: Services) -> int:
    """Climbs escalations past their acknowledgement SLA; reminds, then climbs, unresolved ones."""
    async with services.sessions.begin() as session:
        moved = await escalations.sla_sweep(
            session, services.clock.now(), services.policy, services.invitation_channels
        )
    if moved:
        services.wake_dispatcher()
        log.info("escalation sweep: %d escalations moved", moved)
    return moved


def register_survey_sweeps(scheduler: SweepScheduler) -> None:
    scheduler.every(SURVEY_SWEEP_EVERY, survey_sweep, name="surveys")
    scheduler.every(ESCALATION_SWEEP_EVERY, escalation_sweep, name="escalations")
