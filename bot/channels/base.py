"""What every chat channel does with an update: de-duplicate it, run the conversation step
and the record that it was seen in one transaction, then wake the dispatcher.

A channel module only translates its platform's updates into an `Incoming` and a step of
`handlers.conversation`, and shows the returned `Reaction` where it has buttons to show it on.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import SecretStr

from handlers.chat import ChatContext, Reaction
from storage.repositories.updates import first_time

if TYPE_CHECKING:
    from bot.app import Services

log = logging.getLogger(__name__)

Step = Callable[[Any, ChatContext], Awaitable[Reaction | None]]

# How long start-up waits for a channel's first attempt to reach its platform before the
# service starts without it (the channel keeps trying in the background).
FIRST_ATTEMPT_SECONDS = 5.0


@dataclass(frozen=True)
class Incoming:
    """One update, as every channel sees it: its id (for de-duplication) and who sent it."""

    update_id: int
    address: str
    language_hint: str | None = None
    display_name: str | None = None


class ChannelBase:
    """The shared part of a chat channel; a subclass names itself and translates updates."""

    name: str

    def __init__(self, services: Services) -> None:
        self.services = services

    def context(self, incoming: Incoming) -> ChatContext:
        services = self.services
        return ChatContext(
            channel=self.name,
            address=incoming.address,
            now=services.clock.now(),
            policy=services.policy,
            language_hint=incoming.language_hint,
            channels=tuple(services.invitation_channels),
            display_name=incoming.display_name,
            public_url=services.settings.public_url,
        )

    async def handle(self, incoming: Incoming, step: Step) -> Reaction | None:
        """Runs `step` once per update: a redelivered update is skipped, in the same
        transaction as the effect, so a crash before the commit lets the redelivery through."""
        ctx = self.context(incoming)
        async with self.services.sessions.begin() as session:
            if not await first_time(session, self.name, incoming.update_id):
                log.info("%s update %s seen before; skipped", self.name, incoming.update_id)
                return None
            reaction = await step(session, ctx)
        self.services.wake_dispatcher()
        return reaction

    async def start_in_background(
        self,
        run: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
        *,
        release: Callable[[], Awaitable[None]],
    ) -> asyncio.Task[None]:
        """Runs the channel's `run(first_attempt)` loop as a task and waits, at most
        FIRST_ATTEMPT_SECONDS, for its first attempt to reach the platform.

        A loop that fails by then (a rejected token) fails start-up, after `release` frees
        what it holds; a platform that cannot be reached does not, and the loop keeps trying
        while the service runs. A loop that fails later stops the service (`abort`).
        """
        self.services.channels.set(self.name, "starting")
        first_attempt = asyncio.Event()
        task = asyncio.create_task(run(first_attempt), name=f"{self.name}-channel")
        waiting = asyncio.create_task(first_attempt.wait())
        try:
            await asyncio.wait(
                {task, waiting}, timeout=FIRST_ATTEMPT_SECONDS, return_when="FIRST_COMPLETED"
            )
        finally:
            waiting.cancel()
        if task.done() and not task.cancelled() and task.exception() is not None:
            await release()
            task.result()
        if not task.done():
            log.info(
                "%s channel not up yet; the service starts, the channel keeps trying", self.name
            )
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        self.services.abort(error)

    def webhook_refusal(
        self, request: web.Request, header: str, secret: SecretStr | None
    ) -> web.Response | None:
        """A 403 answer when the webhook call lacks the configured secret in `header`
        (compared in constant time), else None; a 503 while the channel is not up is the
        caller's, since only it knows."""
        given = request.headers.get(header, "")
        if secret is None or not hmac.compare_digest(
            given.encode(), secret.get_secret_value().encode()
        ):
            log.warning("refused a %s webhook call without the right secret", self.name)
            return web.json_response(
                {"error": {"code": "forbidden", "message": "bad secret"}}, status=403
            )
        return None
