"""What every conversation step shares: who is talking, what to show for a press, and how a
message is queued (in the caller's transaction, through the outbox)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.policy import SurveyPolicy
from handlers.rendering import Payload
from storage.models import Priority
from storage.repositories import outbox


@dataclass(frozen=True)
class ChatContext:
    """Who is talking to us, on which channel, and when."""

    channel: str
    address: str
    now: datetime
    policy: SurveyPolicy
    language_hint: str | None = None
    # The chat channels configured in this process, best first (for messages to others).
    channels: tuple[str, ...] = ()
    display_name: str | None = None  # the name the platform shows; only used to name a head


@dataclass(frozen=True)
class Reaction:
    """What the channel shows right away for a press: a short notice, and the choice taken.

    `chosen` set: the pressed message gets the chosen label appended and loses its buttons.
    """

    toast: str | None = None
    chosen: str | None = None


async def say(
    session: AsyncSession,
    channel: str,
    address: str,
    body: Payload,
    now: datetime,
    *,
    priority: int = Priority.REPLY,
    dedupe_key: str | None = None,
    case_id: int | None = None,
) -> bool:
    """Queues a message in the caller's transaction; False when a duplicate was dropped."""
    row = await outbox.enqueue(
        session,
        channel=channel,
        address=address,
        payload=body,
        priority=priority,
        not_before=now,
        dedupe_key=dedupe_key,
        case_id=case_id,
    )
    return row is not None
