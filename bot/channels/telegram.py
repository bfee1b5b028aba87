"""The Telegram channel: python-telegram-bot 22 turns updates into calls of the conversation.

Thin by design (STYLE.md 7): each update is parsed, handled in one transaction together with
the record that it was seen (so a redelivery does nothing), and answered through the outbox.
Only a press gets an immediate answer, its notice (answerCallbackQuery is not a message and
does not count against the bot's limits); the pressed message gets the choice appended and
loses its buttons through the outbox, like the error reply, so that every message and edit
is paced by the one sender of the bot (bot/outbox.py).
Polling, or webhook on the service's own aiohttp server with the secret header checked.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from telegram import BotCommand, Update
from telegram.constants import ChatType
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.app import Services
from bot.channels.telegram_sender import TelegramSender
from handlers import conversation
from handlers.chat import ChatContext, Reaction
from handlers.texts import t
from storage.models import Channel, Priority
from storage.repositories import outbox
from storage.repositories.updates import first_time

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
CHANNEL = Channel.TELEGRAM.value
# Right behind the reply it caused: the next question first, then the old one's checkmark.
_EDIT_PRIORITY = Priority.REPLY + 1

Step = Callable[[Any, ChatContext], Awaitable[Reaction | None]]


class TelegramChannel:
    """Owns the python-telegram-bot Application for the life of the service."""

    def __init__(self, services: Services) -> None:
        settings = services.settings
        assert settings.telegram_token is not None
        self.services = services
        self.webhook = settings.telegram_mode == "webhook"
        builder: ApplicationBuilder[Any, Any, Any, Any, Any, Any] = (
            Application.builder()
            .token(settings.telegram_token.get_secret_value())
            .base_url(settings.telegram_api_url)
            .base_file_url(settings.telegram_api_url.removesuffix("/bot") + "/file/bot")
        )
        if self.webhook:
            builder = builder.updater(None)
        self.application = builder.build()
        self.username: str | None = settings.telegram_bot_username
        self.sender = TelegramSender(self.application.bot)
        self._register_handlers()

    def _register_handlers(self) -> None:
        """Every handler in one place, in order: commands, presses, then plain text."""
        private = filters.ChatType.PRIVATE
        app = self.application
        app.add_handler(CommandHandler(list(conversation.COMMANDS), self._on_command, private))
        app.add_handler(CallbackQueryHandler(self._on_press))
        app.add_handler(MessageHandler(private & filters.COMMAND, self._on_command))
        app.add_handler(MessageHandler(private & filters.TEXT & ~filters.COMMAND, self._on_text))
        app.add_error_handler(self._on_error)

    # --- lifecycle ----------------------------------------------------------------------

    def link(self, token: str) -> str | None:
        return f"https://t.me/{self.username}?start={token}" if self.username else None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # release PTB's HTTP sessions; the service stops anyway
            raise

    async def _start(self) -> None:
        await self.application.initialize()  # getMe: fails fast on a wrong token
        self.username = self.application.bot.username
        await self._set_commands()
        await self.application.start()
        settings = self.services.settings
        if self.webhook:
            secret = settings.telegram_webhook_secret
            assert secret is not None
            await self.application.bot.set_webhook(
                url=settings.public_url + WEBHOOK_PATH,
                secret_token=secret.get_secret_value(),
                allowed_updates=["message", "callback_query"],
            )
        else:
            assert self.application.updater is not None
            # start_polling removes a webhook left from an earlier webhook-mode run.
            await self.application.updater.start_polling(
                allowed_updates=["message", "callback_query"]
            )
        log.info("Telegram channel started (%s) as @%s", settings.telegram_mode, self.username)

    async def stop(self) -> None:
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()
        if self.application.running:
            await self.application.stop()
        await self.application.shutdown()
        # After a failed initialize() PTB's shutdown() is a no-op; close the bot's client anyway.
        await self.application.bot.shutdown()

    async def _set_commands(self) -> None:
        for locale in ("vi", "en"):
            commands = [
                BotCommand(name, t(f"menu.{name}", locale)) for name in conversation.COMMANDS
            ]
            await self.application.bot.set_my_commands(commands, language_code=locale)
        default = self.services.settings.locale
        await self.application.bot.set_my_commands(
            [BotCommand(name, t(f"menu.{name}", default)) for name in conversation.COMMANDS]
        )

    # --- webhook ------------------------------------------------------------------------

    async def webhook_route(self, request: web.Request) -> web.Response:
        """Processes the update before answering, so Telegram redelivers what we did not store."""
        secret = self.services.settings.telegram_webhook_secret
        given = request.headers.get(SECRET_HEADER, "")
        if secret is None or not hmac.compare_digest(
            given.encode(), secret.get_secret_value().encode()
        ):
            log.warning("refused a Telegram webhook call without the right secret")
            return web.json_response(
                {"error": {"code": "forbidden", "message": "bad secret"}}, status=403
            )
        try:
            data = json.loads(await request.read())
            update = Update.de_json(data, self.application.bot)
        except (ValueError, TypeError, KeyError):
            return web.json_response(
                {"error": {"code": "invalid_input", "message": "not a Telegram update"}}, status=400
            )
        await self.application.process_update(update)
        return web.json_response({"ok": True})

    # --- updates ------------------------------------------------------------------------

    async def _on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not message.text:
            return
        word, _, argument = message.text.partition(" ")
        name = word.lstrip("/").split("@", 1)[0].lower()

        async def step(session: Any, ctx: ChatContext) -> None:
            await conversation.command_received(session, ctx, name, argument.strip() or None)

        await self._handle(update, step)

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or message.text is None:
            return
        text = message.text

        async def step(session: Any, ctx: ChatContext) -> None:
            await conversation.text_received(session, ctx, text)

        await self._handle(update, step)

    async def _on_press(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None:
            return
        if query.message is None or query.message.chat.type != ChatType.PRIVATE:
            await query.answer()
            return
        data = query.data or ""
        pressed = query.message

        async def step(session: Any, ctx: ChatContext) -> Reaction:
            # The pressed message gets the choice appended and loses its buttons: an edit,
            # paced like any message, so it goes through the outbox. Queued before the handler
            # runs, so that a handler erasing the person's data (/delete) erases it too, and
            # filled in (or dropped) once the handler said what was chosen.
            edit = await outbox.enqueue(
                session,
                channel=CHANNEL,
                address=ctx.address,
                payload={"text": "", "edit_message_id": str(pressed.message_id)},
                priority=_EDIT_PRIORITY,
                not_before=ctx.now,
            )
            reaction = await conversation.choice_pressed(session, ctx, data)
            assert edit is not None  # no dedupe key: always inserted
            chosen = None
            if reaction.chosen:
                text = getattr(pressed, "text", None) or ""
                chosen = {
                    "text": f"{text}\n\n✔ {reaction.chosen}",
                    "edit_message_id": str(pressed.message_id),
                }
            await outbox.fill_in(session, edit.id, chosen)
            return reaction

        reaction = await self._handle(update, step)
        await self._show(update, reaction)

    async def _handle(self, update: Update, step: Step) -> Reaction | None:
        chat = update.effective_chat
        if chat is None:
            return None
        user = update.effective_user
        services = self.services
        ctx = ChatContext(
            channel=CHANNEL,
            address=str(chat.id),
            now=services.clock.now(),
            policy=services.policy,
            language_hint=user.language_code if user else None,
            channels=tuple(services.invitation_channels),
            display_name=user.full_name if user else None,
        )
        async with services.sessions.begin() as session:
            if not await first_time(session, CHANNEL, update.update_id):
                log.info("Telegram update %s seen before; skipped", update.update_id)
                return None
            reaction = await step(session, ctx)
        services.wake_dispatcher()
        return reaction

    async def _show(self, update: Update, reaction: Reaction | None) -> None:
        """Answers the press at once (its notice; the edit of the pressed message is queued)."""
        query = update.callback_query
        assert query is not None
        try:
            await query.answer(reaction.toast if reaction else None)
        except TelegramError as exc:
            # Cosmetic: the answer is stored and the next message is queued whatever happens here.
            log.info("could not answer the press: %s", exc)

    async def _queue_reply(self, chat_id: int, payload: dict[str, Any]) -> None:
        """A message or edit outside a handler's transaction, through the outbox all the same."""
        services = self.services
        try:
            async with services.sessions.begin() as session:
                await outbox.enqueue(
                    session,
                    channel=CHANNEL,
                    address=str(chat_id),
                    payload=payload,
                    priority=Priority.REPLY,
                    not_before=services.clock.now(),
                )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not queue a reply: %s", exc)
            return
        services.wake_dispatcher()

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        update_id = update.update_id if isinstance(update, Update) else None
        log.error("error while handling Telegram update %s", update_id, exc_info=context.error)
        if isinstance(update, Update) and update.effective_chat is not None:
            text = t("error.generic", self.services.settings.locale)
            await self._queue_reply(update.effective_chat.id, {"text": text})


def configure_telegram(services: Services) -> TelegramChannel:
    """Builds the channel and plugs it into the service: link, sender, webhook route."""
    # PTB 22 gives retry_after as a timedelta only when asked, and warns on every 429 otherwise;
    # the sender handles both, so opt in to the future behaviour.
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    channel = TelegramChannel(services)
    services.link_builders[CHANNEL] = channel.link
    services.senders[CHANNEL] = channel.sender
    if channel.webhook:
        services.web_routes.append(web.post(WEBHOOK_PATH, channel.webhook_route))
    return channel
