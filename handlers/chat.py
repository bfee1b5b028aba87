"""What every conversation step shares: who is talking, what to show for a press, and how a
message is queued (in the caller's transaction, through the outbox)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.policy import SurveyPolicy
from handlers.rendering import Payload
from storage.models import Priority
from storage.repositories import outbox, prompts


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
    # SIPAS_PUBLIC_URL: where links to the service's own pages (the dashboard's sign-in) point.
    public_url: str = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Reaction:
    """What follows a choice right away: a short notice, and the label of the choice taken.

    A channel with buttons shows `toast` as a toast on the press, and appends `chosen` to the
    pressed message (which loses its buttons). Where the choice was typed (any channel, and
    always on a channel without buttons) a toast becomes a short message of its own
    (`handlers.conversation.text_received`) and `chosen` needs no showing.
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
    """Queues a message in the caller's transaction; False when a duplicate was dropped.

    A message with choices becomes the address's open prompt, which a typed number or word
    answers on any channel (`handlers.conversation.text_received`).
    """
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
    if row is None:
        return False
    if body.get("buttons"):
        await prompts.open_prompt(session, channel, address, row.id, body, now)
    return True
