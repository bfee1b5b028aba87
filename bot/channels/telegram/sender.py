"""Telegram's `Sender` for the outbox dispatcher: payloads become Bot API calls.

It translates python-telegram-bot's errors into the dispatcher's `SendError` family, so the
dispatcher decides about retries and limits in one place for every channel. It does no rate
limiting of its own (docs/design.md: the dispatcher owns the platform limits).
"""

from __future__ import annotations

import base64
import logging
import warnings
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, LinkPreviewOptions
from telegram import error as tg
from telegram.warnings import PTBDeprecationWarning

from bot.outbox import (
    PermanentSendError,
    RetryAfter,
    SendError,
    TransientSendError,
    Unreachable,
    mask_address,
)

logger = logging.getLogger(__name__)

CHANNEL = "telegram"

# BadRequest descriptions meaning "there is no keyboard left to take away": clearing the
# buttons is then already done, and the message that follows must still go out.
_NOTHING_TO_CLEAR = (
    "message is not modified",
    "message to edit not found",
    "message can't be edited",
)
# BadRequest descriptions meaning the address itself is gone, not that the message is wrong.
_GONE = ("chat not found", "user not found")
# A payload with `no_preview`: Telegram's previewer fetching a one-time link would use it up.
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


def translate_error(error: tg.TelegramError) -> SendError:
    """Maps a python-telegram-bot error onto the dispatcher's family.

    PTB raises `NetworkError` with the server's description for any status it has no class
    for, including every 5xx (see `telegram/request/_baserequest.py`), and `BadRequest`
    subclasses `NetworkError`: so BadRequest is tested first and the rest of the network
    family is transient.
    """
    description = error.message
    if isinstance(error, tg.RetryAfter):
        return RetryAfter(retry_after_seconds(error), description)
    if isinstance(error, tg.Forbidden):
        return Unreachable(description)
    if isinstance(error, tg.BadRequest):
        if any(phrase in description.lower() for phrase in _GONE):
            return Unreachable(description)
        return PermanentSendError(description)
    if isinstance(error, tg.ChatMigrated):
        # Only groups migrate; the stored address is stale and the message cannot go there.
        return PermanentSendError(f"chat migrated to {error.new_chat_id}")
    if isinstance(error, tg.InvalidToken):
        # A configuration error hits every message alike: keep them, retry, and let the
        # operator see the log rather than fail the whole outbox.
        logger.error("Telegram rejected the bot token: %s", description)
        return TransientSendError(description)
    # TimedOut, NetworkError (5xx, connection failures), Conflict and anything new.
    return TransientSendError(description)


def retry_after_seconds(error: tg.RetryAfter) -> float:
    """`retry_after` in seconds, whether PTB gives an int (the default in 22.x, deprecated)
    or a timedelta (with PTB_TIMEDELTA=true, and always in a future major version)."""
    with warnings.catch_warnings():
        # Reading the int form warns on every access; the value is what matters here.
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: Any = error.retry_after
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def keyboard(rows: Sequence[Sequence[Mapping[str, Any]]] | None) -> InlineKeyboardMarkup | None:
    """`[[{"label", "data"}], ...]` as an inline keyboard (a button may carry "url" instead)."""
    if not rows:
        return None
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(text=str(button["label"]), url=str(button["url"]))
                if "url" in button
                else InlineKeyboardButton(
                    text=str(button["label"]), callback_data=str(button["data"])
                )
                for button in row
            ]
            for row in rows
        ]
    )


def _chat_id(address: str) -> int | str:
    # Private chats are numeric; "@channelname" addresses stay strings.
    try:
        return int(address)
    except ValueError:
        return address


class TelegramSender:
    """Sends outbox payloads with python-telegram-bot's `Bot`."""

    channel = CHANNEL

    def __init__(self, bot: Bot) -> None:
        self._bot = bot

    async def send(
        self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
    ) -> str | None:
        text = payload.get("text")
        if not isinstance(text, str) or not text.strip():
            raise PermanentSendError("payload has no text")
        chat_id = _chat_id(address)
        if "photo" in payload or "document" in payload:
            return await self._send_file(chat_id, payload, text)
        markup = keyboard(payload.get("buttons"))
        try:
            if payload.get("edit_message_id") is not None:
                # An edit of a message in this chat (the pressed question gets the answer):
                # when that message is gone there is nothing left to edit, and that is fine.
                return await self._edit(chat_id, int(payload["edit_message_id"]), text, markup)
            if clear_buttons_of is not None:
                if payload.get("edit"):
                    edited = await self._edit(chat_id, int(clear_buttons_of), text, markup)
                    if edited is not None:
                        return edited
                else:
                    await self._clear_buttons(chat_id, int(clear_buttons_of), address)
            message = await self._bot.send_message(
                chat_id,
                text,
                reply_markup=markup,
                link_preview_options=_NO_PREVIEW if payload.get("no_preview") else None,
            )
        except tg.TelegramError as exc:
            raise translate_error(exc) from exc
        return str(message.message_id)

    async def _edit(
        self, chat_id: int | str, message_id: int, text: str, markup: InlineKeyboardMarkup | None
    ) -> str | None:
        """Replaces the message's text and keyboard; None when it is gone (send anew then)."""
        try:
            await self._bot.edit_message_text(
                text, chat_id=chat_id, message_id=message_id, reply_markup=markup
            )
        except tg.BadRequest as exc:
            description = exc.message.lower()
            if "message is not modified" in description:
                return str(message_id)  # a retried edit that went through the first time
            if "message to edit not found" in description or "can't be edited" in description:
                return None
            raise
        return str(message_id)

    async def _clear_buttons(self, chat_id: int | str, message_id: int, address: str) -> None:
        try:
            await self._bot.edit_message_reply_markup(
                chat_id=chat_id, message_id=message_id, reply_markup=None
            )
        except tg.BadRequest as exc:
            if not any(phrase in exc.message.lower() for phrase in _NOTHING_TO_CLEAR):
                # Clearing is a courtesy; the new message matters more than the old buttons.
                logger.warning(
                    "could not clear buttons of message %s in %s: %s",
                    message_id,
                    mask_address(CHANNEL, address),
                    exc.message,
                )

    async def _send_file(self, chat_id: int | str, payload: Mapping[str, Any], caption: str) -> str:
        """`{"photo": FILE}` or `{"document": FILE}` with the text as caption, where FILE is
        `{"filename", "data_b64"}`: the bytes travel in the outbox row, so a retry or a restart
        sends the same file (a digest's chart and workbook)."""
        kind = "photo" if "photo" in payload else "document"
        file = payload[kind]
        try:
            data = base64.b64decode(file["data_b64"], validate=True)
            upload = InputFile(data, filename=str(file["filename"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentSendError(f"payload has no valid {kind}: {exc}") from None
        try:
            if kind == "photo":
                message = await self._bot.send_photo(chat_id, upload, caption=caption[:1024])
            else:
                message = await self._bot.send_document(chat_id, upload, caption=caption[:1024])
        except tg.TelegramError as exc:
            raise translate_error(exc) from exc
        return str(message.message_id)
