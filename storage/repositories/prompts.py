"""The prompt open at each address: the choices a typed reply is matched against."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.inserts import as_value_parameters, insert_for_backend, value_parameters
from storage.models import OpenPrompt


async def open_prompt(
    session: AsyncSession,
    channel: str,
    address: str,
    outbox_id: int,
    payload: Mapping[str, Any],
    now: datetime,
) -> None:
    """Makes this the address's open prompt, replacing any earlier one (one atomic upsert, so
    a sweep and an update writing to the same address at once do not collide)."""
    values = {
        "channel": channel,
        "address": address,
        "outbox_id": outbox_id,
        "payload": dict(payload),
        "opened_at": now,
    }
    statement = _upsert_statement(session.get_bind().dialect.name)
    await session.execute(statement, as_value_parameters(values))


@functools.cache
def _upsert_statement(backend: str) -> Any:
    """Built once per backend: each invitation and question sent opens a prompt."""
    statement = insert_for_backend(backend, OpenPrompt).values(
        value_parameters(
            OpenPrompt.__table__, ("channel", "address", "outbox_id", "payload", "opened_at")
        )
    )
    return statement.on_conflict_do_update(
        index_elements=[OpenPrompt.channel, OpenPrompt.address],
        set_={key: statement.excluded[key] for key in ("outbox_id", "payload", "opened_at")},
    )


async def open_at(session: AsyncSession, channel: str, address: str) -> OpenPrompt | None:
    statement = select(OpenPrompt).where(
        OpenPrompt.channel == channel, OpenPrompt.address == address
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def close(session: AsyncSession, channel: str, address: str, outbox_id: int) -> None:
    """Closes the prompt if it is still the one carried by `outbox_id` (not a newer one)."""
    await session.execute(
        delete(OpenPrompt).where(
            OpenPrompt.channel == channel,
            OpenPrompt.address == address,
            OpenPrompt.outbox_id == outbox_id,
        )
    )


async def close_if_for(
    session: AsyncSession, channel: str, address: str, prefixes: tuple[str, ...]
) -> None:
    """Closes the open prompt if its choices belong to what `prefixes` name (one survey's,
    say): once that is over, a typed reply must not be taken for one of them."""
    prompt = await open_at(session, channel, address)
    if prompt is None:
        return
    datas = [
        str(button.get("data", "")) for row in prompt.payload.get("buttons") or [] for button in row
    ]
    if any(data.startswith(prefixes) for data in datas):
        await close(session, channel, address, prompt.outbox_id)
