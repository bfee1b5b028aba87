"""Zalo's `Sender` for the outbox dispatcher: payloads become Bot API calls.

Zalo has no buttons: a payload's choices are written under its text as numbered lines
(`handlers.rendering.numbered_lines`, the same numbering typed answers are matched with).
It cannot edit a message either, so an edit goes out as a new message and there are no
buttons to clear. It cannot upload files: a payload's photo (`{"photo": FILE}`, a digest's
chart) is stored and sent by an expiring URL (sendPhoto fetches it), and a document (the
digest's workbook) becomes a download link in the text. Errors map onto the dispatcher's
`SendError` family, which owns retries and limits.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from bot.channels.zalo.api import MAX_TEXT, ZaloApi, ZaloApiError, split_text
from bot.outbox import PermanentSendError, RetryAfter, SendError, TransientSendError, Unreachable
from handlers.rendering import choices_of, numbered_lines

logger = logging.getLogger(__name__)

CHANNEL = "zalo"

# When a 429 says not how long to wait.
DEFAULT_RETRY_AFTER = 5.0
# Descriptions meaning the person is gone or has blocked the bot.
_GONE = ("block", "not found", "not exist", "unfollow", "invalid user")


def translate_error(error: ZaloApiError) -> SendError:
    if error.error_code == 429 or error.status == 429 or error.retry_after is not None:
        return RetryAfter(error.retry_after or DEFAULT_RETRY_AFTER, error.description)
    if error.unreachable:
        return TransientSendError(error.description)
    if error.token_rejected:
        # A configuration error hits every message alike: keep them and let the log say why.
        logger.error("Zalo rejected the bot token: %s", error.description)
        return TransientSendError(error.description)
    if error.error_code == 403 or any(word in error.description.lower() for word in _GONE):
        return Unreachable(error.description)
    return PermanentSendError(error.description)


def render(payload: Mapping[str, Any]) -> str:
    """The text a person reads: the message, then its choices as numbered lines."""
    text = str(payload.get("text") or "").strip()
    choices = [choice for choice in choices_of(payload) if choice.data]
    links = [
        f"{button['label']}: {button['url']}"
        for row in payload.get("buttons") or []
        for button in row
        if "url" in button
    ]
    parts = [text]
    if choices:
        parts.append(numbered_lines(choices))
    if links:
        parts.append("\n".join(links))
    return "\n\n".join(part for part in parts if part)


class FileLinks(Protocol):
    """Hands out a file as a URL the platform (or a person) can fetch for a while."""

    async def link(self, filename: str, data: bytes) -> str: ...


def _file_of(payload: Mapping[str, Any], kind: str) -> tuple[str, bytes]:
    """`{"filename", "data_b64"}`: the bytes travel in the outbox row (bot/outbox.py)."""
    try:
        file = payload[kind]
        return str(file["filename"]), base64.b64decode(file["data_b64"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise PermanentSendError(f"payload has no valid {kind}: {exc}") from None


class ZaloSender:
    """Sends outbox payloads with the Zalo Bot API."""

    channel = CHANNEL

    def __init__(self, api: ZaloApi, files: FileLinks | None = None) -> None:
        self._api = api
        self._files = files

    async def send(
        self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
    ) -> str | None:
        if payload.get("edit_message_id") is not None:
            # Zalo cannot change a message it sent, and an edit is never sent anew
            # (bot/outbox.py): it only restated a choice already taken (Telegram's checkmark).
            return str(payload["edit_message_id"])
        text = render(payload)
        kind = "photo" if "photo" in payload else "document" if "document" in payload else None
        url: str | None = None
        if kind is not None:
            if self._files is None:
                raise PermanentSendError(f"cannot send a {kind} on Zalo without file links")
            url = await self._files.link(*_file_of(payload, kind))
            if kind == "document":
                text = f"{text}\n{url}" if text else url
        if not text and kind != "photo":
            raise PermanentSendError("payload has no text")
        message_id: str | None = None
        try:
            if kind == "photo":
                photo = {"chat_id": address, "photo": url, "caption": text[:MAX_TEXT]}
                return _message_id(await self._api.call("sendPhoto", photo))
            for piece in split_text(text):
                result = await self._api.call("sendMessage", {"chat_id": address, "text": piece})
                message_id = _message_id(result)
        except ZaloApiError as exc:
            raise translate_error(exc) from exc
        return message_id


def _message_id(result: Any) -> str | None:
    if isinstance(result, Mapping) and result.get("message_id") is not None:
        return str(result["message_id"])
    return None
