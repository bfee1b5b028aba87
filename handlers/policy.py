"""The rules of timing the bot layer configures and the handlers apply (no platform code)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from handlers.questionnaire import DEFAULT_QUESTIONNAIRE
from handlers.working_time import AlwaysCalendar, WorkingCalendar


@dataclass(frozen=True)
class QuietHours:
    """A local-time window in which no invitation or reminder is sent; may wrap midnight."""

    start: time
    end: time

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def next_allowed(self, instant: datetime, tz: ZoneInfo) -> datetime:
        """`instant` itself when outside the window, else the window's end (local time)."""
        local = instant.astimezone(tz)
        if not self.contains(local.time().replace(tzinfo=None)):
            return instant
        # Inside the window: it ends today if its end is still ahead, else tomorrow (local).
        day = (
            local.date()
            if local.time().replace(tzinfo=None) < self.end
            else (local.date() + timedelta(days=1))
        )
        return datetime.combine(day, self.end, tzinfo=tz).astimezone(instant.tzinfo)


@dataclass(frozen=True)
class EscalationPolicy:
    """How long a unit head has, counted in working time, before a complaint climbs."""

    ack_sla: timedelta = timedelta(hours=8)
    resolve_sla: timedelta = timedelta(days=10)
    calendar: WorkingCalendar = field(default_factory=AlwaysCalendar)


@dataclass(frozen=True)
class SurveyPolicy:
    delay: timedelta = timedelta(0)
    quiet_hours: QuietHours | None = QuietHours(time(21, 0), time(7, 0))
    reminder_after: timedelta | None = timedelta(hours=24)
    expires_after: timedelta = timedelta(days=7)
    questionnaire: str = DEFAULT_QUESTIONNAIRE
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Ho_Chi_Minh"))
    default_locale: str = "vi"
    link_token_ttl: timedelta = timedelta(days=90)
    head_invite_ttl: timedelta = timedelta(days=7)
    escalation: EscalationPolicy = field(default_factory=EscalationPolicy)

    def sendable_at(self, instant: datetime) -> datetime:
        """The first moment at or after `instant` outside quiet hours."""
        if self.quiet_hours is None:
            return instant
        return self.quiet_hours.next_allowed(instant, self.timezone)
