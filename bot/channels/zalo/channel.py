"""The Zalo channel: Zalo Bot API updates become calls of the conversation, answers go out
through the outbox (`bot.channels.zalo.sender`).

Thin like the Telegram channel: each message is handled in one transaction with the record
that it was seen (`bot.channels.base`). Zalo has no buttons, so everything a person sends is
text: a command (`/start TOKEN`), or a typed answer to the open prompt. Polling (getUpdates)
or webhook on the service's own aiohttp server with the secret header checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from aiohttp import web

from bot.app import Services
from bot.channels.base import ChannelBase, Incoming
from bot.channels.zalo.api import TEXT_EVENT, ZaloApi, ZaloApiError, parse_update, unwrap
from bot.channels.zalo.sender import ZaloSender
from bot.config import token_rejected
from bot.health import ChannelState
from bot.logging_setup import mask
from handlers import conversation
from handlers.chat import ChatContext
from storage.repositories import files

log = logging.getLogger(__name__)

CHANNEL = "zalo"
WEBHOOK_PATH = "/zalo/webhook"
SECRET_HEADER = "X-Bot-Api-Secret-Token"

RETRY_FIRST_SECONDS = 1.0
# getUpdates waits this long for an update before answering with none.
POLL_SECONDS = 30
# Answers to a long poll that only mean "nothing came in time".
_NO_UPDATES = (408,)


# How long a digest's chart and workbook links work.
FILE_LINK_TTL = timedelta(days=14)
FILES_PATH = "/files/{token}/{name}"
_CONTENT_TYPES = {
    ".png": "image/png",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


class SharedFileLinks:
    """Files as expiring links under SIPAS_PUBLIC_URL, stored in the database so that any
    process behind the load balancer can serve them."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def link(self, filename: str, data: bytes) -> str:
        services = self.services
        content_type = _CONTENT_TYPES.get(
            filename[filename.rfind(".") :].lower(), "application/octet-stream"
        )
        async with services.sessions.begin() as session:
            token = await files.share(
                session, data, filename, content_type, services.clock.now(), FILE_LINK_TTL
            )
        name = quote(filename, safe="")
        return f"{services.settings.public_url}/files/{token}/{name}"

    async def route(self, request: web.Request) -> web.Response:
        """`GET /files/<token>/<name>`: the file while its link is valid, else 404."""
        services = self.services
        async with services.sessions() as session:
            found = await files.shared(session, request.match_info["token"], services.clock.now())
        if found is None:
            return web.json_response(
                {"error": {"code": "not_found", "message": "no such file, or its link expired"}},
                status=404,
            )
        disposition = "inline" if found.content_type.startswith("image/") else "attachment"
        return web.Response(
            body=found.data,
            content_type=found.content_type,
            headers={
                "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(found.filename)}",
                "Cache-Control": "private, max-age=3600",
            },
        )


class ZaloChannel(ChannelBase):
    """Owns the Zalo Bot API client and the polling task for the life of the service."""

    name = CHANNEL

    def __init__(self, services: Services, *, poll_seconds: int = POLL_SECONDS) -> None:
        super().__init__(services)
        settings = services.settings
        assert settings.zalo_token is not None
        self.api = ZaloApi(settings.zalo_api_url, settings.zalo_token.get_secret_value())
        self.files = SharedFileLinks(services)
        self.sender = ZaloSender(self.api, self.files)
        self.webhook = settings.zalo_mode == "webhook"
        self.poll_seconds = poll_seconds
        self._running: asyncio.Task[None] | None = None
        self._up = False

    def link(self, token: str) -> str:
        """The bot's Zalo link with the case's token. Whether Zalo hands the `start` parameter
        to the bot is not documented; the token typed or pasted as a message links as well."""
        return f"https://zalo.me/{self.api.bot_id}?start={token}"

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Reaches Zalo, or keeps trying in the background (as the Telegram channel does): a
        rejected token stops start-up; an unreachable platform does not."""
        self._running = await self.start_in_background(self._run, release=self.api.close)

    def _rejected(self) -> Exception:
        settings = self.services.settings
        return token_rejected(
            "SIPAS_ZALO_TOKEN",
            settings.zalo_token,
            "Zalo",
            settings.zalo_api_url,
            "set the token the Zalo Bot Platform gave the bot",
        )

    def _set_state(self, state: ChannelState) -> None:
        if self.services.channels.get(CHANNEL) != state:
            log.info("Zalo channel is %s", state)
        self.services.channels.set(CHANNEL, state)

    def _delay(self, attempt: int) -> float:
        first = RETRY_FIRST_SECONDS * 2.0 ** max(0, attempt - 1)
        return float(min(first, self.services.settings.channel_retry_max.total_seconds()))

    async def _run(self, first_attempt: asyncio.Event) -> None:
        settings = self.services.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                me = await self.api.call("getMe")
                if self.webhook:
                    secret = settings.zalo_webhook_secret
                    assert secret is not None
                    if not 8 <= len(secret.get_secret_value()) <= 256 and attempt == 1:
                        log.warning(
                            "SIPAS_ZALO_WEBHOOK_SECRET should be 8 to 256 characters; "
                            "Zalo may refuse the webhook"
                        )
                    await self.api.call(
                        "setWebhook",
                        {
                            "url": settings.public_url + WEBHOOK_PATH,
                            "secret_token": secret.get_secret_value(),
                        },
                    )
                else:
                    await self.api.call("deleteWebhook")
            except ZaloApiError as exc:
                if exc.token_rejected:
                    raise self._rejected() from None
                delay = self._delay(attempt)
                self._set_state("unreachable")
                log.warning(
                    "Zalo Bot API at %s %s (attempt %d: %s); retrying in %gs, "
                    "messages wait in the outbox",
                    settings.zalo_api_url,
                    "cannot be reached" if exc.unreachable else "refused a start-up call",
                    attempt,
                    mask(str(exc)),
                    delay,
                )
                first_attempt.set()
                await asyncio.sleep(delay)
                continue
            self._up = True
            self._set_state("ok")
            name = (
                me.get("display_name") or me.get("account_name")
                if isinstance(me, Mapping)
                else None
            )
            log.info("Zalo channel started (%s) as %s", settings.zalo_mode, name or "the bot")
            first_attempt.set()
            break
        if not self.webhook:
            await self._poll()

    async def _poll(self) -> None:
        failures = 0
        while True:
            try:
                result = await self.api.call(
                    "getUpdates", {"timeout": self.poll_seconds}, wait=self.poll_seconds + 15
                )
            except ZaloApiError as exc:
                if exc.error_code in _NO_UPDATES:
                    continue
                if exc.token_rejected:
                    raise self._rejected() from None
                failures += 1
                if exc.unreachable:
                    self._set_state("unreachable")
                log.warning("Zalo polling failed, retrying: %s", mask(str(exc)))
                await asyncio.sleep(self._delay(failures))
                continue
            failures = 0
            self._set_state("ok")
            try:
                updates = unwrap(result)
            except ValueError:
                log.warning("Zalo getUpdates answered with something that is no update")
                continue
            for update in updates:
                try:
                    await self.process(update)
                except Exception:
                    # One bad update must not stop the channel; it is logged with its id.
                    log.exception("error while handling Zalo update %s", _id_of(update))

    async def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None and not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        self._up = False
        await self.api.close()

    # --- webhook ------------------------------------------------------------------------

    async def webhook_route(self, request: web.Request) -> web.Response:
        """Processes the update before answering, so Zalo redelivers what we did not store."""
        refusal = self.webhook_refusal(
            request, SECRET_HEADER, self.services.settings.zalo_webhook_secret
        )
        if refusal is not None:
            return refusal
        if not self._up:
            return web.json_response(
                {"error": {"code": "unavailable", "message": "starting"}}, status=503
            )
        try:
            updates = unwrap(json.loads(await request.read()))
        except ValueError:
            return web.json_response(
                {"error": {"code": "invalid_input", "message": "not a Zalo update"}}, status=400
            )
        for update in updates:
            await self.process(update)
        return web.json_response({"ok": True})

    # --- updates ------------------------------------------------------------------------

    async def process(self, update: Mapping[str, Any]) -> None:
        """One update: a command, a typed answer, or something that is not text."""
        message = parse_update(update)
        if message is None:
            return
        incoming = Incoming(
            update_id=message.update_id,
            address=message.chat_id,
            display_name=message.display_name,
        )
        text = (message.text or "").strip()
        if message.event_name not in (TEXT_EVENT, "") or not text:

            async def other(session: Any, ctx: ChatContext) -> None:
                await conversation.other_received(session, ctx)

            await self.handle(incoming, other)
            return
        if text.startswith("/"):
            word, _, argument = text.partition(" ")
            name = word.lstrip("/").lower()

            async def command(session: Any, ctx: ChatContext) -> None:
                await conversation.command_received(session, ctx, name, argument.strip() or None)

            await self.handle(incoming, command)
            return

        async def typed(session: Any, ctx: ChatContext) -> None:
            await conversation.text_received(session, ctx, text)

        await self.handle(incoming, typed)


def _id_of(update: Mapping[str, Any]) -> str:
    message = update.get("message")
    return str(message.get("message_id")) if isinstance(message, Mapping) else "?"


def configure_zalo(services: Services) -> ZaloChannel:
    """Builds the channel and plugs it into the service: link, sender, webhook route."""
    channel = ZaloChannel(services)
    services.link_builders[CHANNEL] = channel.link
    services.senders[CHANNEL] = channel.sender
    services.web_routes.append(web.get(FILES_PATH, channel.files.route))
    if channel.webhook:
        services.web_routes.append(web.post(WEBHOOK_PATH, channel.webhook_route))
    return channel
