"""A thin client of the Zalo Bot API (`POST <base><token>/<method>`, JSON in and out).

No SDK: the API is small and Telegram-like, and a client of our own lets errors map onto the
outbox's `SendError` family in one place (`bot.channels.zalo.sender`). Updates are parsed here
into plain `ZaloMessage`s whatever their wrapping: `{"ok": true, "result": ...}` or bare, one
update or a list.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.outbox.wire import on_the_wire

log = logging.getLogger(__name__)

TEXT_EVENT = "message.text.received"
# Text is at most this long per message; longer texts are split at line breaks.
MAX_TEXT = 2000


class ZaloApiError(Exception):
    """The Bot API answered with an error, or could not be reached (`status` 0)."""

    def __init__(
        self,
        status: int,
        description: str,
        *,
        error_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{error_code or status}: {description}")
        self.status = status
        self.error_code = error_code if error_code is not None else status
        self.description = description
        self.retry_after = retry_after

    @property
    def unreachable(self) -> bool:
        """No answer at all, a timeout or a 5xx: the platform, not the request, is at fault."""
        return self.status == 0 or self.status >= 500 or self.error_code >= 500

    @property
    def token_rejected(self) -> bool:
        return self.error_code == 401 or self.status == 401


@dataclass(frozen=True)
class ZaloMessage:
    """One incoming event from a person: their id, and the text when it is a text message."""

    event_name: str
    message_id: str
    user_id: str
    chat_id: str
    text: str | None
    display_name: str | None

    @property
    def update_id(self) -> int:
        """A number to de-duplicate on: Zalo message ids are strings (often hex), so those
        that are not small numbers are hashed to 63 bits."""
        if self.message_id.isdigit() and len(self.message_id) < 19:
            return int(self.message_id)
        digest = hashlib.blake2b(self.message_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1


def unwrap(body: Any) -> list[Mapping[str, Any]]:
    """The updates in a webhook body or a getUpdates answer: wrapped or not, one or a list."""
    if isinstance(body, Mapping) and "result" in body and "event_name" not in body:
        body = body["result"]
    if body is None:
        return []
    if isinstance(body, Mapping):
        return [body]
    if isinstance(body, list):
        return [item for item in body if isinstance(item, Mapping)]
    raise ValueError("not a Zalo update")


def parse_update(update: Mapping[str, Any]) -> ZaloMessage | None:
    """A person's message; None for anything without a sender (nothing to answer)."""
    message = update.get("message")
    if not isinstance(message, Mapping):
        return None
    sender = message.get("from") or {}
    chat = message.get("chat") or {}
    user_id = sender.get("id") if isinstance(sender, Mapping) else None
    chat_id = chat.get("id") if isinstance(chat, Mapping) else None
    message_id = message.get("message_id")
    if user_id is None or message_id is None:
        return None
    if isinstance(chat, Mapping) and "group" in str(chat.get("chat_type") or "").lower():
        return None  # groups are not surveyed: only a person's own chat
    if isinstance(sender, Mapping) and sender.get("is_bot"):
        return None
    text = message.get("text")
    name = (
        sender.get("display_name") or sender.get("first_name")
        if isinstance(sender, Mapping)
        else None
    )
    return ZaloMessage(
        event_name=str(update.get("event_name") or ""),
        message_id=str(message_id),
        user_id=str(user_id),
        chat_id=str(chat_id if chat_id is not None else user_id),
        text=text if isinstance(text, str) else None,
        display_name=str(name) if name else None,
    )


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Pieces of at most `limit` characters, cut at line breaks where possible."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit + 1)
        if cut <= 0:
            cut = rest.rfind(" ", 0, limit + 1)
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    if rest.strip():
        pieces.append(rest)
    return pieces


class ZaloApi:
    """Calls Bot API methods; owns its HTTP session until `close()`."""

    def __init__(self, base_url: str, token: str, *, request_timeout: float = 15.0) -> None:
        self._base = base_url
        self._token = token
        self._timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def bot_id(self) -> str:
        return self._token.split(":", 1)[0]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # The dispatcher counts each send from the moment its request is written
            # (bot/outbox/wire.py), not from when it decided to send.
            tracing = aiohttp.TraceConfig()
            tracing.on_request_headers_sent.append(_on_the_wire)
            self._session = aiohttp.ClientSession(trace_configs=[tracing])
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, wait: float | None = None
    ) -> Any:
        """The method's `result`; raises `ZaloApiError` for an error answer or no answer."""
        url = f"{self._base}{self._token}/{method}"
        limit = aiohttp.ClientTimeout(total=wait or self._timeout)
        try:
            async with self._client().post(url, json=dict(params or {}), timeout=limit) as answer:
                status = answer.status
                try:
                    body = await answer.json(content_type=None)
                except ValueError:
                    body = None
                retry_header = answer.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError) as exc:
            # The URL holds the token: say what failed, never where.
            raise ZaloApiError(0, f"{type(exc).__name__} calling {method}") from None
        if isinstance(body, Mapping) and body.get("ok") is True and status < 400:
            return body.get("result")
        description = ""
        error_code: int | None = None
        retry_after: float | None = None
        if isinstance(body, Mapping):
            description = str(body.get("description") or body.get("message") or "")
            code = body.get("error_code")
            error_code = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
            parameters = body.get("parameters")
            if isinstance(parameters, Mapping) and parameters.get("retry_after") is not None:
                retry_after = float(parameters["retry_after"])
        if retry_after is None and retry_header and retry_header.isdigit():
            retry_after = float(retry_header)
        if not description:
            description = f"HTTP {status} from {method}"
        raise ZaloApiError(status, description, error_code=error_code, retry_after=retry_after)


async def _on_the_wire(*_: object) -> None:
    on_the_wire()
