"""What the demo's seeding steps share (`DemoContext`); every step takes it and adds its line
to the summary."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime

from bot.app import Services
from demo import data as demo_data


@dataclass
class DemoContext:
    """What the seeding steps share: the services, one seeded random source, one `now`."""

    services: Services
    rng: random.Random
    now: datetime
    cases: int = demo_data.CASES
    # Lines for the summary, one or more per step ("Cases: 360 over 8 weeks ...").
    summary: list[str] = field(default_factory=list)
    # A received sample case and its citizen link token, to try the chat with.
    sample: tuple[str, str] | None = None
    # The case to open first: answered, complained about, handled by the head with a note.
    story: StoryCase | None = None
    # A resolved case whose survey is still open, and its link token: to answer on the web.
    web_sample: tuple[str, str] | None = None
    # A one-time sign-in link to the officials' dashboard for the city (15 minutes).
    dashboard_link: str | None = None


@dataclass(frozen=True)
class StoryCase:
    case_code: str
    unit_name: str
    reason: str
    note: str
