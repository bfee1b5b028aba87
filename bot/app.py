"""The composition root: builds every part of the running service from one `Settings`.

Nothing happens at import time. `Services` owns the resources (engine, channels, dispatcher,
scheduler) and `run_services` starts and stops them in order, so a shutdown leaves no task
behind and disposes of the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.health import ChannelStates
from handlers.clock import Clock, SystemClock
from handlers.errors import InvalidInput
from handlers.policy import EscalationPolicy, SurveyPolicy
from handlers.units import LoadReport, load_units, parse_units_file
from handlers.web_survey import survey_link
from handlers.working_time import make_calendar
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.migrate import upgrade

if TYPE_CHECKING:  # the HTTP server and the outbox are not needed to build the services
    from aiohttp import web

    from bot.outbox import Sender

log = logging.getLogger(__name__)

# A part of the service with its own lifetime: started after the database is ready, stopped
# in reverse order at shutdown.
Startable = Callable[["Services"], Awaitable[Callable[[], Awaitable[None]]]]


@dataclass
class Services:
    """Everything a request, an update or a job needs; one per process."""

    settings: Settings
    engine: AsyncEngine
    sessions: SessionFactory
    clock: Clock
    policy: SurveyPolicy
    # Each configured channel adds its citizen link here (docs/contract.md section 4, `links`);
    # a builder answers None while it cannot make its link yet (the bot's name is unknown).
    link_builders: dict[str, Callable[[str], str | None]] = field(default_factory=dict)
    # Each configured channel's sender, by channel name, for the outbox dispatcher.
    senders: dict[str, Sender] = field(default_factory=dict)
    # Called after a commit that queued messages, so they leave without waiting for a poll.
    wake_dispatcher: Callable[[], None] = lambda: None
    # Called with the ids of cases whose intake just committed: a survey due now is invited
    # at once instead of at the next sweep (bot/jobs/sweeps.py, `InvitationWaker`).
    wake_invitations: Callable[[Sequence[int]], None] = lambda _case_ids: None
    web_routes: list[web.RouteDef] = field(default_factory=list)
    # Each configured channel's state (ok, starting, unreachable) for /healthz and /metrics.
    channels: ChannelStates = field(default_factory=ChannelStates)
    # A part that fails after start-up (a channel whose token is rejected once its platform
    # answers) stops the whole service with this error; `run_services` raises it.
    abort: Callable[[BaseException], None] = lambda error: None

    def links(self, token: str) -> Mapping[str, str]:
        # The chat links first, as docs/contract.md shows them; the web page's last. Built
        # for every case of a batch's answer: no sorting, no dictionary to throw away.
        made: dict[str, str] = {}
        for name, build in self.link_builders.items():
            if name != "web" and (link := build(token)) is not None:
                made[name] = link
        web_page = self.link_builders.get("web")
        if web_page is not None and (link := web_page(token)) is not None:
            made["web"] = link
        return made

    @property
    def invitation_channels(self) -> list[str]:
        """Chat channels configured to reach people, best first.

        From the settings, not from the senders of this process: any process (an import, the
        CLI) may queue a message, and the `serve` process with the channel sends it.
        """
        from bot.channels import configured_channels

        return configured_channels(self.settings)


def escalation_policy(settings: Settings) -> EscalationPolicy:
    calendar = make_calendar(
        settings.working_calendar,
        settings.timezone,
        makeup_days=settings.working_makeup_days,
        extra_days_off=settings.working_extra_days_off,
    )
    return EscalationPolicy(
        ack_sla=settings.escalation_ack_sla,
        resolve_sla=settings.escalation_resolve_sla,
        calendar=calendar,
    )


def survey_policy(settings: Settings) -> SurveyPolicy:
    return SurveyPolicy(
        delay=settings.survey_delay,
        quiet_hours=settings.quiet_hours,
        reminder_after=settings.reminder_after,
        expires_after=settings.survey_expires_after,
        questionnaire=settings.questionnaire,
        timezone=settings.timezone,
        default_locale=settings.locale,
        link_token_ttl=settings.link_token_ttl,
        escalation=escalation_policy(settings),
    )


def build_services(settings: Settings, *, clock: Clock | None = None) -> Services:
    engine = create_engine(settings.database_url)
    services = Services(
        settings=settings,
        engine=engine,
        sessions=create_session_factory(engine),
        clock=clock or SystemClock(),
        policy=survey_policy(settings),
    )
    # The web survey page is always there (bot/http/web_survey.py): anyone can answer in a browser.
    services.link_builders["web"] = survey_link(settings.public_url)
    return services


async def prepare_database(services: Services) -> None:
    """Applies migrations and loads the units file. Reaching the database is the caller's
    first step (`bot/startup.py` pings it, to say clearly when it cannot): asking again here
    cost every start a second round trip."""
    await upgrade(services.engine)
    if services.settings.units_file is not None:
        report = await load_units_file(services, services.settings.units_file)
        log.info("units file loaded: %s", report)


async def load_units_file(services: Services, path: Path) -> LoadReport:
    """Reads, checks and loads the units file (docs/contract.md section 5) in one transaction;
    errors name the file and the entry. Start-up and `sipas-bot units load` share it."""
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput({"file": f"cannot read {path}: {exc.strerror}"}) from None
    parsed = parse_units_file(text)
    async with services.sessions.begin() as session:
        return await load_units(session, parsed)


async def run_services(
    services: Services,
    parts: list[Startable],
    stop: asyncio.Event,
) -> None:
    """Starts each part, waits for `stop`, then stops them in reverse order.

    A part may call `services.abort(error)` while running: the service then stops as on a
    signal, and `error` is raised once every part is stopped.
    """
    failures: list[BaseException] = []

    def abort(error: BaseException) -> None:
        failures.append(error)
        stop.set()

    services.abort = abort
    async with AsyncExitStack() as stack:
        stack.push_async_callback(services.engine.dispose)
        for start in parts:
            stop_part = await start(services)
            stack.push_async_callback(stop_part)
        await stop.wait()
        log.info("shutting down")
    if failures:
        raise failures[0]
