"""The Telegram channel: python-telegram-bot 22 turns updates into calls of the conversation.

Thin by design: each update is parsed, handled in one transaction together with
the record that it was seen (so a redelivery does nothing), and answered through the outbox.
Only a press gets an immediate answer, its notice (answerCallbackQuery is not a message and
does not count against the bot's limits); the pressed message gets the choice appended and
loses its buttons through the outbox, like the error reply, so that every message and edit
is paced by the one sender of the bot (bot/outbox.py).
Polling, or webhook on the service's own aiohttp server with the secret header checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from telegram import BotCommand, Update, User
from telegram.constants import ChatType
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ExtBot,
    MessageHandler,
    filters,
)

from bot.app import Services
from bot.channels.base import ChannelBase, Incoming, Step
from bot.channels.telegram.request import AiohttpRequest
from bot.channels.telegram.sender import TelegramSender
from bot.config import telegram_token_rejected
from bot.health import ChannelState
from bot.logging_setup import mask
from handlers import conversation
from handlers.chat import ChatContext, Reaction
from handlers.texts import t
from storage.models import Channel, Priority
from storage.repositories import outbox

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
CHANNEL = Channel.TELEGRAM.value
# Right behind the reply it caused: the next question first, then the old one's checkmark.
_EDIT_PRIORITY = Priority.REPLY + 1

# Start-up waits this long for the first attempt to reach Telegram (a refused connection or
# a rejected token answers at once); past it the service starts and the channel follows.
RETRY_FIRST_SECONDS = 1.0


class _Bot(ExtBot[None]):
    """An ExtBot that, given the bot's username (SIPAS_TELEGRAM_BOT_USERNAME), does not ask
    getMe for it at start-up: the link to the bot is known before Telegram answers."""

    __slots__ = ("_known_user", "_polled")

    def __init__(self, token: str, *, username: str | None, **kwargs: Any) -> None:
        super().__init__(token, **kwargs)
        # Told after every long poll whether Telegram answered: the channel's state follows
        # the platform after start-up too, not only at it.
        # (python-telegram-bot freezes its objects: only underscored attributes may be set.)
        self._polled: Callable[[bool], None] = lambda reached: None
        self._known_user: User | None = None
        if username:
            bot_id = token.split(":", 1)[0]
            self._known_user = User(
                id=int(bot_id) if bot_id.isdigit() else 0,
                first_name=username,
                is_bot=True,
                username=username,
            )
            self._known_user.set_bot(self)

    def when_polled(self, callback: Callable[[bool], None]) -> None:
        self._polled = callback

    async def get_updates(self, *args: Any, **kwargs: Any) -> tuple[Update, ...]:
        try:
            updates = await super().get_updates(*args, **kwargs)
        except NetworkError as exc:
            # Connection failures, timeouts and 5xx; a BadRequest is an answer, not an outage.
            self._polled(isinstance(exc, BadRequest))
            raise
        self._polled(True)
        return updates

    async def get_me(self, **kwargs: Any) -> User:
        if self._known_user is None:
            return await super().get_me(**kwargs)
        # Bot.initialize() caches the answer of get_me in _bot_user; do as it would.
        self._bot_user = self._known_user
        return self._known_user


class TelegramChannel(ChannelBase):
    """Owns the python-telegram-bot Application for the life of the service."""

    name = CHANNEL

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        settings = services.settings
        assert settings.telegram_token is not None
        self.webhook = settings.telegram_mode == "webhook"
        # Webhook updates whose handling could not be stored (the database failed): their
        # request is answered 503, and Telegram delivers them again.
        self._unstored: set[int] = set()
        # Polling updates whose handling could not be stored: by update id, how many times
        # tried and the handle of the next try (see _handle_again).
        self._retries: dict[int, tuple[int, asyncio.TimerHandle]] = {}
        bot = _Bot(
            settings.telegram_token.get_secret_value(),
            username=settings.telegram_bot_username,
            base_url=settings.telegram_api_url,
            base_file_url=settings.telegram_api_url.removesuffix("/bot") + "/file/bot",
            # The pool sizes python-telegram-bot's ApplicationBuilder would choose.
            # The sender's calls tell the outbox when they reach the wire (bot/outbox/wire.py).
            request=AiohttpRequest(connection_pool_size=256, tell_the_wire=True),
            get_updates_request=AiohttpRequest(connection_pool_size=1),
        )
        builder = Application.builder().bot(bot)
        if self.webhook:
            builder = builder.updater(None)
        self.application = builder.build()
        bot.when_polled(self._polled)
        self.username: str | None = settings.telegram_bot_username
        self.sender = TelegramSender(self.application.bot)
        self._starting: asyncio.Task[None] | None = None
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
        """Reaches Telegram, or keeps trying in the background.

        A token Telegram rejects stops start-up (a `SettingsError`, exit code 2). A Bot API
        that cannot be reached does not: the HTTP API and the scheduler start, messages wait
        in the outbox, and the channel retries with backoff, one log line per attempt, until
        it is up (`/healthz` shows which). A rejection after start-up stops the service.
        """
        self._starting = await self.start_in_background(self._keep_starting, release=self.stop)

    async def _keep_starting(self, first_attempt: asyncio.Event) -> None:
        settings = self.services.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._start()
            except InvalidToken:
                raise telegram_token_rejected(settings) from None
            except TelegramError as exc:
                # Connection refused, DNS, timeouts, 5xx: all wrapped by PTB as TelegramError.
                delay = min(
                    RETRY_FIRST_SECONDS * 2 ** (attempt - 1),
                    settings.channel_retry_max.total_seconds(),
                )
                self.services.channels.set(CHANNEL, "unreachable")
                # A 400 or 409 is an answer (a webhook URL Telegram refuses, another process
                # polling), not an outage: say so, and keep trying all the same.
                outage = isinstance(exc, NetworkError) and not isinstance(exc, BadRequest)
                log.warning(
                    "Telegram Bot API at %s %s (attempt %d: %s); "
                    "retrying in %gs, messages wait in the outbox",
                    settings.telegram_api_url,
                    "cannot be reached" if outage else "refused a start-up call",
                    attempt,
                    mask(f"{type(exc).__name__}: {exc}"),
                    delay,
                )
                first_attempt.set()
                await asyncio.sleep(delay)
            else:
                self.services.channels.set(CHANNEL, "ok")
                first_attempt.set()
                return

    async def _start(self) -> None:
        """One attempt to bring the channel up; safe to repeat after a failure."""
        await self.application.initialize()  # getMe (unless the username is known)
        self.username = self.application.bot.username
        await self._set_commands()
        if not self.application.running:
            await self.application.start()
        settings = self.services.settings
        bot = self.application.bot
        if self.webhook:
            secret = settings.telegram_webhook_secret
            assert secret is not None
            await bot.set_webhook(
                url=settings.public_url + WEBHOOK_PATH,
                secret_token=secret.get_secret_value(),
                allowed_updates=["message", "callback_query"],
            )
        else:
            updater = self.application.updater
            assert updater is not None
            # Removes a webhook left from an earlier webhook-mode run. start_polling does so
            # too, but logs a traceback when that fails; here a failure is one more attempt.
            await bot.delete_webhook()
            await updater.start_polling(
                allowed_updates=["message", "callback_query"],
                error_callback=self._polling_failed,
            )
        log.info("Telegram channel started (%s) as @%s", settings.telegram_mode, self.username)

    def _polled(self, reached: bool) -> None:
        """After start-up, each long poll tells whether Telegram is reachable now; while it is
        not, the dispatcher holds the channel's messages instead of spending attempts."""
        if self.services.channels.get(CHANNEL) == "starting":
            return  # the start-up attempts own the state until the channel is up
        state: ChannelState = "ok" if reached else "unreachable"
        if self.services.channels.get(CHANNEL) != state:
            log.info("Telegram Bot API is %s", "reachable again" if reached else "unreachable")
        self.services.channels.set(CHANNEL, state)

    def _polling_failed(self, error: TelegramError) -> None:
        # PTB retries polling by itself; one line per failure instead of its traceback.
        log.warning(
            "Telegram polling failed, retrying: %s", mask(f"{type(error).__name__}: {error}")
        )

    async def stop(self) -> None:
        now = asyncio.get_running_loop().time()
        waiting = [handle for _, handle in self._retries.values() if handle.when() > now]
        for handle in waiting:
            handle.cancel()
        if waiting:
            log.error(
                "%d Telegram updates not stored yet are dropped at stop (the database failed "
                "while handling them)",
                len(waiting),
            )
        self._retries.clear()
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
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
        """Processes the update before answering, so Telegram redelivers what we did not store.

        python-telegram-bot hands a handler's exception to the error handler and returns: an
        update whose effects did not commit is noted there (`_on_error`) and answered 503
        here. Its record of being seen commits with its effects, so the redelivery is
        processed as if it were the first.
        """
        refusal = self.webhook_refusal(
            request, SECRET_HEADER, self.services.settings.telegram_webhook_secret
        )
        if refusal is not None:
            return refusal
        if not self.application.running:
            # Still starting: Telegram redelivers the update later.
            return web.json_response(
                {"error": {"code": "unavailable", "message": "starting"}}, status=503
            )
        try:
            data = json.loads(await request.read())
            update = Update.de_json(data, self.application.bot)
        except (ValueError, TypeError, KeyError):
            return web.json_response(
                {"error": {"code": "invalid_input", "message": "not a Telegram update"}}, status=400
            )
        await self.application.process_update(update)
        if update.update_id in self._unstored:
            self._unstored.discard(update.update_id)
            return web.json_response(
                {"error": {"code": "unavailable", "message": "not stored; send it again"}},
                status=503,
            )
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
        incoming = Incoming(
            update_id=update.update_id,
            address=str(chat.id),
            language_hint=user.language_code if user else None,
            display_name=user.full_name if user else None,
        )
        return await self.handle(incoming, step)

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
        if (
            self.webhook
            and isinstance(update, Update)
            and isinstance(context.error, (SQLAlchemyError, OSError))
        ):
            # Nothing of it was stored: Telegram delivers it again (see webhook_route), and
            # the person gets the real answer then, not an apology now.
            log.warning(
                "Telegram update %s not stored (%s); asking for it again",
                update_id,
                type(context.error).__name__,
            )
            self._unstored.add(update.update_id)
            return
        if (
            isinstance(update, Update)
            and isinstance(context.error, (SQLAlchemyError, OSError))
            and self._handle_again(update, context.error)
        ):
            return
        log.error("error while handling Telegram update %s", update_id, exc_info=context.error)
        if isinstance(update, Update) and update.effective_chat is not None:
            text = t("error.generic", self.services.settings.locale)
            await self._queue_reply(update.effective_chat.id, {"text": text})

    # Pauses before each new try of a polling update the database failed to store: about ten
    # minutes in all, as long as an outage the outbox and the sweeps ride out unnoticed.
    _RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 240.0)

    def _handle_again(self, update: Update, error: BaseException) -> bool:
        """Polling: Telegram counts an update as delivered once it was fetched, so one whose
        handling the database failed to store (nothing of it committed) would be lost. It is
        handled again here after a pause, as Telegram redelivers one a webhook answered 503
        for; the person gets the real answer then, not an apology now. False once the tries
        are used up (the caller logs it and apologises)."""
        tries = self._retries.get(update.update_id, (0, None))[0]
        if tries >= len(self._RETRY_DELAYS):
            self._retries.pop(update.update_id, None)
            return False
        delay = self._RETRY_DELAYS[tries]
        log.warning(
            "Telegram update %s not stored (%s); handling it again in %.0f s",
            update.update_id,
            type(error).__name__,
            delay,
        )
        handle = asyncio.get_running_loop().call_later(delay, self._requeue, update)
        self._retries[update.update_id] = (tries + 1, handle)
        return True

    def _requeue(self, update: Update) -> None:
        if not self.application.running:
            return  # stopping: stop() has said what is dropped
        self.application.update_queue.put_nowait(update)
        # A try that succeeds leaves its count behind: forget the counts whose last try is
        # long over (the longest pause is a few minutes).
        if len(self._retries) > 1000:
            over = asyncio.get_running_loop().time() - 2 * max(self._RETRY_DELAYS)
            self._retries = {
                key: (tries, handle)
                for key, (tries, handle) in self._retries.items()
                if handle.when() > over
            }


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
