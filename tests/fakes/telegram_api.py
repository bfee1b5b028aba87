"""A local fake of the Telegram Bot API, served over real HTTP by aiohttp.

The project's tests point the real python-telegram-bot ``Application`` at this server
(``ApplicationBuilder().base_url(api.base_url)``) so that handlers, the updater, the
request layer and the JSON (de)serialisation all run for real while nothing leaves the
machine.  The fake:

* speaks the wire format PTB 22 uses (every call is a ``POST``; parameters are sent as
  ``application/x-www-form-urlencoded`` or, when files are uploaded, ``multipart/form-data``,
  with every non-string value JSON-encoded); ``application/json`` bodies and query strings
  are accepted too;
* implements the methods the bot needs (``getMe``, long-polling ``getUpdates``, commands,
  webhooks, messages, edits, callback answers, photo/document uploads, deletes) and returns
  realistic objects so that ``de_json`` works;
* records every outgoing action in :attr:`FakeTelegramAPI.sent` and offers helpers to wait
  for messages without sleeping blindly;
* simulates users (:meth:`FakeTelegramAPI.push_text`, :meth:`FakeTelegramAPI.press`, ...);
* injects failures in Telegram's documented error shape (:meth:`FakeTelegramAPI.fail_next`).

Typical use::

    async with FakeTelegramAPI() as api:
        app = Application.builder().token(api.token).base_url(api.base_url).build()
        ...
        api.push_text(42, "/start abc")
        reply = await api.wait_for_message(42, count=1)
        api.press(42, "Hài lòng")
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import html
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from aiohttp import BodyPartReader, web

__all__ = [
    "DEFAULT_BOT_ID",
    "DEFAULT_BOT_USERNAME",
    "DEFAULT_TOKEN",
    "FailedCall",
    "FakeTelegramAPI",
    "SentCall",
]

JSONDict = dict[str, Any]
# When the request being answered had been read (SentCall.arrived).
_ARRIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("arrived", default=None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


DEFAULT_TOKEN: Final = "123456:TEST-TOKEN"
DEFAULT_BOT_ID: Final = 123456
DEFAULT_BOT_USERNAME: Final = "sipas_test_bot"

#: Methods whose successful calls create a new message in the chat.
MESSAGE_METHODS: Final = frozenset({"sendMessage", "sendPhoto", "sendDocument"})

#: Form fields that are strings in the Bot API and must never be JSON-decoded (PTB sends
#: ``str`` values verbatim, so a text like ``"123"`` or ``"true"`` must stay a string).
_STRING_FIELDS: Final = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "callback_query_id",
        "inline_message_id",
        "language_code",
        "url",
        "secret_token",
        "ip_address",
        "business_connection_id",
        "message_effect_id",
        "description",
        "short_description",
        "name",
        "title",
        "emoji",
        "action",
        "photo",
        "document",
        "thumbnail",
    }
)

_ERROR_DESCRIPTIONS: Final[dict[int, str]] = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request",
    429: "Too Many Requests: retry after {retry_after}",
    500: "Internal Server Error",
    502: "Bad Gateway",
}

_NOT_MODIFIED: Final = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
_MAX_TEXT_LENGTH: Final = 4096
_MAX_CALLBACK_DATA_BYTES: Final = 64
_HTML_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class SentCall:
    """One successful outgoing call made by the bot (recorded in ``FakeTelegramAPI.sent``).

    ``text`` is the message text (``caption`` for media); ``reply_markup`` is the parsed markup
    that was sent; ``message`` is the Message object returned to the bot (``None`` for calls
    that do not return one).  ``seq`` is the position in ``sent`` (usable as ``since=``).
    """

    seq: int
    method: str
    chat_id: int | str | None
    text: str | None
    reply_markup: JSONDict | None
    message_id: int | None
    timestamp: float
    params: JSONDict = field(repr=False)
    caption: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    message: JSONDict | None = field(default=None, repr=False)
    #: When the request's headers had been read, before its body and any simulated answer
    #: time (``latency``): the moment the platform's limits would count it.
    arrived: float | None = None


@dataclass(frozen=True)
class FailedCall:
    """A call that was answered with an injected error (recorded in ``FakeTelegramAPI.failed``)."""

    method: str
    chat_id: int | str | None
    status: int
    description: str
    timestamp: float
    params: JSONDict = field(repr=False)


@dataclass
class _FailureRule:
    method: str
    status: int
    description: str
    retry_after: int | None
    remaining: int
    chat_id: int | str | None


@dataclass(frozen=True)
class _Upload:
    field_name: str
    file_name: str
    size: int
    content_type: str


class _APIError(Exception):
    """Raised inside a method implementation to answer with a Bot API error."""

    def __init__(self, status: int, description: str, parameters: JSONDict | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _normalise_chat_id(value: Any) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    text = str(value)
    try:
        return int(text)
    except ValueError:
        return text


def _as_int(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    return int(value)


def _as_float(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    return float(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in {"true", "1"}
    return bool(value)


def _as_dict(value: Any) -> JSONDict | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise _APIError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    return value


def _decode_form_value(name: str, raw: str) -> Any:
    if name in _STRING_FIELDS:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _error_body(status: int, description: str, parameters: JSONDict | None = None) -> JSONDict:
    body: JSONDict = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return body


class FakeTelegramAPI:
    """An in-process Telegram Bot API server for tests (see the module docstring).

    Use it as ``async with FakeTelegramAPI() as api:`` or call :meth:`start` / :meth:`stop`.
    All state lives on the instance: ``sent``, ``failed``, ``my_commands``, ``webhook``.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        bot_username: str = DEFAULT_BOT_USERNAME,
        bot_id: int = DEFAULT_BOT_ID,
        bot_first_name: str = "SIPAS Test Bot",
        latency: float = 0.0,
        strict_not_modified: bool = True,
    ) -> None:
        self.token = token
        self.bot_username = bot_username
        self.bot_id = bot_id
        self.bot_first_name = bot_first_name
        #: Seconds of artificial delay before every ``sendMessage`` answer (for benchmarks).
        self.latency = latency
        #: Answer edits that change nothing with Telegram's "message is not modified" 400.
        self.strict_not_modified = strict_not_modified

        #: Successful outgoing calls, in order of arrival.
        self.sent: list[SentCall] = []
        #: Calls answered with an injected error (never in ``sent``).
        self.failed: list[FailedCall] = []
        #: Every request that reached a known method: ``(method, params)``; includes reads.
        self.requests: list[tuple[str, JSONDict]] = []
        #: ``setMyCommands`` state keyed by language code ("" = default).
        self.my_commands: dict[str, list[JSONDict]] = {}
        #: ``setWebhook`` parameters, or ``None`` when no webhook is set.
        self.webhook: JSONDict | None = None

        self._updates: list[JSONDict] = []
        self._next_update_id = 1
        self._message_counters: dict[int | str, int] = {}
        self._messages: dict[tuple[int | str, int], JSONDict] = {}
        self._chat_names: dict[int | str, str] = {}
        self._callback_queries: dict[str, int | str] = {}
        self._callback_ids = itertools.count(1)
        self._failures: list[_FailureRule] = []
        self._changed: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, port: int = 0) -> None:
        """Start listening on 127.0.0.1 on `port` (default: a random free port)."""
        if self._runner is not None:
            raise RuntimeError("FakeTelegramAPI is already running")
        self._closing = False
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/file/bot{token}/{path:.*}", self._handle_file)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Wake pending long polls and shut the server down. Safe to call twice."""
        self._closing = True
        self._notify()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeTelegramAPI:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The TCP port the server listens on (only after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("FakeTelegramAPI is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """Value for ``ApplicationBuilder().base_url(...)``; PTB appends ``<token>/<method>``."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """Value for ``ApplicationBuilder().base_file_url(...)`` (file downloads answer 404)."""
        return f"http://127.0.0.1:{self.port}/file/bot"

    @property
    def bot_user(self) -> JSONDict:
        """The bot's ``User`` object as returned by ``getMe``."""
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    # ------------------------------------------------------------------ inspection

    def calls(self, method: str | None = None, chat_id: int | str | None = None) -> list[SentCall]:
        """Recorded successful calls, optionally filtered by method name and chat."""
        return [
            c
            for c in self.sent
            if (method is None or c.method == method) and (chat_id is None or c.chat_id == chat_id)
        ]

    def messages_to(self, chat_id: int | str) -> list[SentCall]:
        """New messages (sendMessage/sendPhoto/sendDocument) the bot sent to ``chat_id``."""
        return [c for c in self.sent if c.method in MESSAGE_METHODS and c.chat_id == chat_id]

    def last_message(self, chat_id: int | str) -> SentCall:
        """The most recent new message to ``chat_id``; AssertionError if there is none."""
        messages = self.messages_to(chat_id)
        if not messages:
            raise AssertionError(f"the bot sent no message to chat {chat_id!r}")
        return messages[-1]

    def message_state(self, chat_id: int | str, message_id: int) -> JSONDict | None:
        """Current server-side Message (after edits), or ``None`` if unknown or deleted."""
        message = self._messages.get((chat_id, message_id))
        return copy.deepcopy(message) if message is not None else None

    @staticmethod
    def buttons(message: SentCall | JSONDict | None) -> list[tuple[str, str]]:
        """``(text, callback_data)`` of every inline button, row by row.

        Accepts a :class:`SentCall`, a Message dict or a ``reply_markup`` dict.  Buttons
        without callback data (e.g. URL buttons) appear with an empty string.
        """
        if message is None:
            return []
        markup: Any
        if isinstance(message, SentCall):
            markup = message.reply_markup
        elif "inline_keyboard" in message:
            markup = message
        else:
            markup = message.get("reply_markup")
        if not isinstance(markup, dict):
            return []
        return [
            (str(button.get("text", "")), str(button.get("callback_data", "")))
            for row in markup.get("inline_keyboard", [])
            for button in row
        ]

    def mark(self) -> int:
        """A cursor for ``wait_for_message(..., since=api.mark())`` taken *before* acting."""
        return len(self.sent)

    # ------------------------------------------------------------------ waiting

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the condition, part of the API
        *,
        message: str = "",
    ) -> None:
        """Wait until ``predicate()`` is true; re-checked on every request/push and every 20 ms.

        Raises AssertionError (with ``message``) on timeout.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(message or f"condition not met within {timeout}s")
            event = self._event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, 0.02))

    async def wait_for_message(
        self,
        chat_id: int | str,
        predicate: Callable[[SentCall], bool] | None = None,
        *,
        count: int | None = None,
        since: int | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the condition, part of the API
    ) -> SentCall:
        """Wait for a message to ``chat_id`` and return it.

        * ``count=n``: wait until at least ``n`` messages (matching ``predicate`` if given)
          were sent to the chat, ever; return the n-th.  Deterministic — preferred.
        * ``since=api.mark()``: return the first matching message recorded after the mark.
        * otherwise, with a ``predicate``: the first matching message ever sent (so a reply
          that arrived before this call is not missed); without one: the first message
          recorded after this call.
        """
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        if since is None:
            since = 0 if (predicate is not None or count is not None) else len(self.sent)
        start = since

        def matching() -> list[SentCall]:
            return [
                c
                for c in self.messages_to(chat_id)
                if c.seq >= start and (predicate is None or predicate(c))
            ]

        needed = count or 1
        try:
            await self.wait_until(lambda: len(matching()) >= needed, timeout)
        except AssertionError:
            texts = [c.text for c in self.messages_to(chat_id)]
            raise AssertionError(
                f"no{' ' + str(needed) if needed > 1 else ''} matching message to chat "
                f"{chat_id!r} within {timeout}s (since seq {start}); messages so far: {texts!r}; "
                f"failed calls: {[(f.method, f.status) for f in self.failed]!r}"
            ) from None
        return matching()[needed - 1]

    async def wait_for_call(
        self,
        method: str,
        *,
        chat_id: int | str | None = None,
        predicate: Callable[[SentCall], bool] | None = None,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the condition, part of the API
    ) -> SentCall:
        """Wait until ``count`` successful calls of ``method`` exist; return the count-th."""

        def matching() -> list[SentCall]:
            return [c for c in self.calls(method, chat_id) if predicate is None or predicate(c)]

        await self.wait_until(
            lambda: len(matching()) >= count,
            timeout,
            message=f"fewer than {count} {method} call(s) within {timeout}s; "
            f"methods seen: {[c.method for c in self.sent]!r}",
        )
        return matching()[count - 1]

    # ------------------------------------------------------------------ simulating users

    def make_update(
        self,
        chat_id: int,
        text: str,
        *,
        first_name: str = "Minh",
        language_code: str = "vi",
        update_id: int | None = None,
    ) -> JSONDict:
        """Build (but do not queue) a text-message Update, e.g. to POST to a webhook.

        Texts starting with ``/`` get a ``bot_command`` entity, as Telegram does.
        """
        self._chat_names[chat_id] = first_name
        message: JSONDict = {
            "message_id": self._next_message_id(chat_id),
            "from": self._user(chat_id, first_name, language_code),
            "chat": self._chat(chat_id),
            "date": int(time.time()),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            message["entities"] = [
                {"type": "bot_command", "offset": 0, "length": _utf16_len(command)}
            ]
        return {"update_id": self._take_update_id(update_id), "message": message}

    def make_callback_update(
        self,
        chat_id: int,
        data: str,
        *,
        message_id: int | None = None,
        first_name: str = "Minh",
        language_code: str = "vi",
        update_id: int | None = None,
    ) -> JSONDict:
        """Build (but do not queue) a callback_query Update on a stored bot message.

        Without ``message_id`` the latest bot message to the chat is used.
        """
        if message_id is None:
            bot_ids = [mid for mid, _ in self._bot_messages(chat_id)]
            if not bot_ids:
                raise AssertionError(f"no bot message in chat {chat_id!r} to attach a callback to")
            message_id = max(bot_ids)
        stored = self._messages.get((chat_id, message_id))
        if stored is None:
            raise AssertionError(f"message {message_id} in chat {chat_id!r} does not exist")
        query_id = str(next(self._callback_ids) * 1000 + 7)
        self._callback_queries[query_id] = chat_id
        return {
            "update_id": self._take_update_id(update_id),
            "callback_query": {
                "id": query_id,
                "from": self._user(chat_id, first_name, language_code),
                "message": copy.deepcopy(stored),
                "chat_instance": f"ci-{chat_id}",
                "data": data,
            },
        }

    def make_contact_update(
        self,
        chat_id: int,
        phone_number: str,
        *,
        first_name: str = "Minh",
        language_code: str = "vi",
        user_id: int | None = None,
    ) -> JSONDict:
        """Build (but do not queue) an Update carrying a shared contact."""
        self._chat_names[chat_id] = first_name
        contact: JSONDict = {
            "phone_number": phone_number,
            "first_name": first_name,
            "user_id": chat_id if user_id is None else user_id,
        }
        return {
            "update_id": self._take_update_id(None),
            "message": {
                "message_id": self._next_message_id(chat_id),
                "from": self._user(chat_id, first_name, language_code),
                "chat": self._chat(chat_id),
                "date": int(time.time()),
                "contact": contact,
            },
        }

    def push_raw_update(self, update: JSONDict) -> int:
        """Queue an Update dict for ``getUpdates`` as-is (duplicates allowed); return its id.

        An Update without ``update_id`` gets the next one.  As on Telegram, an update whose id
        is below an offset the bot already confirmed is dropped by the next ``getUpdates``.
        """
        update = copy.deepcopy(update)
        if "update_id" not in update:
            update["update_id"] = self._take_update_id(None)
        else:
            self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
        self._updates.append(update)
        self._notify()
        return int(update["update_id"])

    def push_text(
        self, chat_id: int, text: str, *, first_name: str = "Minh", language_code: str = "vi"
    ) -> int:
        """Simulate the user typing ``text`` in a private chat; return the update id."""
        return self.push_raw_update(
            self.make_update(chat_id, text, first_name=first_name, language_code=language_code)
        )

    def push_callback(
        self,
        chat_id: int,
        data: str,
        *,
        message_id: int | None = None,
        first_name: str = "Minh",
        language_code: str = "vi",
    ) -> int:
        """Simulate an inline-button press with ``data`` on a stored bot message."""
        return self.push_raw_update(
            self.make_callback_update(
                chat_id,
                data,
                message_id=message_id,
                first_name=first_name,
                language_code=language_code,
            )
        )

    def push_contact(
        self,
        chat_id: int,
        phone_number: str,
        *,
        first_name: str = "Minh",
        language_code: str = "vi",
        user_id: int | None = None,
    ) -> int:
        """Simulate the user sharing a contact; return the update id."""
        return self.push_raw_update(
            self.make_contact_update(
                chat_id,
                phone_number,
                first_name=first_name,
                language_code=language_code,
                user_id=user_id,
            )
        )

    def press(self, chat_id: int, label_prefix: str) -> int:
        """Press the button whose text starts with ``label_prefix`` on the latest bot message
        (current state, after edits) in the chat that has one; return the update id.

        Raises AssertionError listing the available buttons if none matches.
        """
        candidates = self._bot_messages(chat_id)
        for message_id, message in reversed(candidates):
            for text, data in self.buttons(message):
                if text.startswith(label_prefix) and data:
                    return self.push_callback(chat_id, data, message_id=message_id)
        available = {mid: self.buttons(m) for mid, m in candidates if self.buttons(m)}
        raise AssertionError(
            f"no inline button starting with {label_prefix!r} in chat {chat_id!r}; "
            f"available buttons by message_id: {available!r}"
        )

    # ------------------------------------------------------------------ failure injection

    def fail_next(
        self,
        method: str,
        status: int = 429,
        *,
        retry_after: int | None = None,
        description: str | None = None,
        count: int = 1,
        chat_id: int | str | None = None,
    ) -> None:
        """Answer the next ``count`` calls of ``method`` (only for ``chat_id`` if given) with
        an error in Telegram's shape: 429 carries ``parameters.retry_after`` (default 1),
        403 "Forbidden: bot was blocked by the user", 400 "Bad Request: ...", 500/502
        "Internal Server Error"/"Bad Gateway".  Rules are consumed in order of creation.
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        if status == 429 and retry_after is None:
            retry_after = 1
        if description is None:
            template = _ERROR_DESCRIPTIONS.get(status, f"Error {status}")
            description = template.format(retry_after=retry_after)
        self._failures.append(
            _FailureRule(
                method=method.lower(),
                status=status,
                description=description,
                retry_after=retry_after if status == 429 else None,
                remaining=count,
                chat_id=chat_id,
            )
        )

    def _take_failure(self, method: str, chat_id: int | str | None) -> _FailureRule | None:
        for rule in self._failures:
            if rule.method == method.lower() and (rule.chat_id is None or rule.chat_id == chat_id):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._failures.remove(rule)
                return rule
        return None

    # ------------------------------------------------------------------ HTTP plumbing

    def _event(self) -> asyncio.Event:
        # One event per waiting loop: the server may run on a thread of its own
        # (tests/threaded.py) while a test waits on its main loop.
        loop = asyncio.get_running_loop()
        event = self._changed.get(loop)
        if event is None:
            event = self._changed[loop] = asyncio.Event()
        return event

    def _notify(self) -> None:
        # An event made on another thread just as this swaps the map may miss this one wake:
        # `wait_until` looks again within 20 ms, a long poll answers at its timeout. Only a
        # server on its own thread meets this (the multi-process test, which uses the webhook).
        changed, self._changed = self._changed, {}
        for loop, event in changed.items():
            if loop is _running_loop():
                event.set()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def _handle_file(self, request: web.Request) -> web.Response:
        return web.json_response(_error_body(404, "Not Found"), status=404)

    async def _handle(self, request: web.Request) -> web.Response:
        # The request's headers are in: as near to its arrival as this server can tell (each
        # request runs in a task of its own).
        _ARRIVED.set(time.monotonic())
        try:
            if request.match_info["token"] != self.token:
                return web.json_response(_error_body(401, "Unauthorized"), status=401)
            method_name = request.match_info["method"]
            handler = self._METHODS.get(method_name.lower())
            if handler is None:
                return web.json_response(
                    _error_body(404, "Not Found: method not found"), status=404
                )
            canonical = self._CANONICAL[method_name.lower()]
            params, uploads = await self._read_params(request)
            self.requests.append((canonical, params))
            chat_id = _normalise_chat_id(params.get("chat_id"))
            if canonical == "answerCallbackQuery":
                chat_id = self._callback_queries.get(str(params.get("callback_query_id")))
            rule = self._take_failure(canonical, chat_id)
            if rule is not None:
                return self._fail(canonical, chat_id, params, rule)
            if canonical == "sendMessage" and self.latency > 0:
                await asyncio.sleep(self.latency)
            result = await handler(self, canonical, params, uploads)
            return web.json_response({"ok": True, "result": result})
        except _APIError as exc:
            return web.json_response(
                _error_body(exc.status, exc.description, exc.parameters), status=exc.status
            )
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response(_error_body(400, f"Bad Request: {exc}"), status=400)
        finally:
            self._notify()

    def _fail(
        self, method: str, chat_id: int | str | None, params: JSONDict, rule: _FailureRule
    ) -> web.Response:
        self.failed.append(
            FailedCall(
                method=method,
                chat_id=chat_id,
                status=rule.status,
                description=rule.description,
                timestamp=time.monotonic(),
                params=params,
            )
        )
        parameters = {"retry_after": rule.retry_after} if rule.retry_after is not None else None
        return web.json_response(
            _error_body(rule.status, rule.description, parameters), status=rule.status
        )

    async def _read_params(self, request: web.Request) -> tuple[JSONDict, list[_Upload]]:
        params: JSONDict = {k: _decode_form_value(k, v) for k, v in request.query.items()}
        uploads: list[_Upload] = []
        if not request.can_read_body:
            return params, uploads
        content_type = request.content_type
        if content_type == "application/json":
            body = await request.json()
            if not isinstance(body, dict):
                raise _APIError(400, "Bad Request: request body must be a JSON object")
            params.update(body)
        elif content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                if part.filename is not None:
                    data = await part.read()
                    uploads.append(
                        _Upload(
                            field_name=part.name,
                            file_name=part.filename,
                            size=len(data),
                            content_type=part.headers.get("Content-Type", ""),
                        )
                    )
                else:
                    params[part.name] = _decode_form_value(part.name, await part.text())
        else:
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, str):
                    params[key] = _decode_form_value(key, value)
        return params, uploads

    # ------------------------------------------------------------------ state helpers

    def _take_update_id(self, wanted: int | None) -> int:
        if wanted is not None:
            self._next_update_id = max(self._next_update_id, wanted + 1)
            return wanted
        update_id = self._next_update_id
        self._next_update_id += 1
        return update_id

    def _next_message_id(self, chat_id: int | str) -> int:
        value = self._message_counters.get(chat_id, 0) + 1
        self._message_counters[chat_id] = value
        return value

    def _bot_messages(self, chat_id: int | str) -> list[tuple[int, JSONDict]]:
        """Stored (not deleted) bot messages in the chat, oldest first."""
        return sorted(
            (
                (mid, m)
                for (cid, mid), m in self._messages.items()
                if cid == chat_id and m["from"]["is_bot"]
            ),
            key=lambda item: item[0],
        )

    @staticmethod
    def _user(chat_id: int, first_name: str, language_code: str) -> JSONDict:
        return {
            "id": chat_id,
            "is_bot": False,
            "first_name": first_name,
            "language_code": language_code,
        }

    def _chat(self, chat_id: int | str) -> JSONDict:
        if isinstance(chat_id, str):  # "@channelusername"
            return {
                "id": -1001000000001,
                "type": "channel",
                "title": chat_id,
                "username": chat_id.lstrip("@"),
            }
        return {
            "id": chat_id,
            "type": "private",
            "first_name": self._chat_names.get(chat_id, "Minh"),
        }

    def _record(
        self,
        method: str,
        params: JSONDict,
        *,
        chat_id: int | str | None = None,
        text: str | None = None,
        reply_markup: JSONDict | None = None,
        message_id: int | None = None,
        caption: str | None = None,
        upload: _Upload | None = None,
        message: JSONDict | None = None,
    ) -> None:
        self.sent.append(
            SentCall(
                seq=len(self.sent),
                method=method,
                chat_id=chat_id,
                text=text,
                reply_markup=reply_markup,
                message_id=message_id,
                timestamp=time.monotonic(),
                params=params,
                arrived=_ARRIVED.get(None),
                caption=caption,
                file_name=upload.file_name if upload else None,
                file_size=upload.size if upload else None,
                message=copy.deepcopy(message) if message is not None else None,
            )
        )

    @staticmethod
    def _validate_markup(markup: JSONDict | None) -> None:
        if not markup or "inline_keyboard" not in markup:
            return
        for row in markup["inline_keyboard"]:
            for button in row:
                if not button.get("text"):
                    raise _APIError(400, "Bad Request: text buttons are unallowed")
                data = button.get("callback_data")
                if data is not None and not (
                    0 < len(str(data).encode()) <= _MAX_CALLBACK_DATA_BYTES
                ):
                    raise _APIError(400, "Bad Request: BUTTON_DATA_INVALID")

    @staticmethod
    def _visible_text(text: str, parse_mode: Any) -> str:
        if isinstance(parse_mode, str) and parse_mode.upper() == "HTML":
            return html.unescape(_HTML_TAG.sub("", text))
        return text

    def _require_chat(self, params: JSONDict) -> int | str:
        chat_id = _normalise_chat_id(params.get("chat_id"))
        if chat_id is None or chat_id == "":
            raise _APIError(400, "Bad Request: chat_id is empty")
        return chat_id

    def _new_message(
        self, chat_id: int | str, params: JSONDict
    ) -> tuple[JSONDict, JSONDict | None]:
        markup = _as_dict(params.get("reply_markup"))
        self._validate_markup(markup)
        message: JSONDict = {
            "message_id": self._next_message_id(chat_id),
            "from": self.bot_user,
            "chat": self._chat(chat_id),
            "date": int(time.time()),
        }
        if markup and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        return message, markup

    def _stored(self, params: JSONDict, action: str) -> tuple[int | str, int, JSONDict]:
        chat_id = self._require_chat(params)
        message_id = _as_int(params.get("message_id"), 0)
        stored = self._messages.get((chat_id, message_id))
        if stored is None:
            raise _APIError(400, f"Bad Request: message to {action} not found")
        return chat_id, message_id, stored

    # ------------------------------------------------------------------ methods

    async def _get_me(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        return self.bot_user

    async def _get_updates(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        if self.webhook is not None:
            raise _APIError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _as_int(params.get("offset"), 0)
        limit = max(1, min(100, _as_int(params.get("limit"), 100)))
        timeout = _as_float(params.get("timeout"), 0.0)

        def confirm() -> None:
            if offset > 0:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            elif offset < 0:
                self._updates = self._updates[offset:]

        confirm()
        if not self._updates and timeout > 0 and not self._closing:
            deadline = asyncio.get_running_loop().time() + timeout
            while not self._updates and not self._closing:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._event().wait(), timeout=remaining)
                except TimeoutError:
                    break
                confirm()
        return copy.deepcopy(self._updates[:limit])

    async def _set_my_commands(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        commands = params.get("commands")
        if isinstance(commands, str):
            commands = json.loads(commands)
        if not isinstance(commands, list):
            raise _APIError(400, "Bad Request: can't parse commands JSON object")
        language_code = str(params.get("language_code") or "")
        self.my_commands[language_code] = [dict(c) for c in commands]
        self._record(method, params)
        return True

    async def _delete_my_commands(
        self, method: str, params: JSONDict, uploads: list[_Upload]
    ) -> Any:
        self.my_commands.pop(str(params.get("language_code") or ""), None)
        self._record(method, params)
        return True

    async def _get_my_commands(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        return copy.deepcopy(self.my_commands.get(str(params.get("language_code") or ""), []))

    async def _delete_webhook(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        self.webhook = None
        if _as_bool(params.get("drop_pending_updates")):
            self._updates.clear()
        self._record(method, params)
        return True

    async def _set_webhook(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        url = str(params.get("url") or "")
        if not url:
            self.webhook = None
        else:
            if not url.startswith("https://"):
                raise _APIError(400, "Bad Request: bad webhook: HTTPS url must be provided")
            self.webhook = dict(params)
        if _as_bool(params.get("drop_pending_updates")):
            self._updates.clear()
        self._record(method, params)
        return True

    async def _get_webhook_info(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        info: JSONDict = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook and self.webhook.get("allowed_updates"):
            info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    async def _send_message(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        chat_id = self._require_chat(params)
        text = str(params.get("text") or "")
        if not text.strip():
            raise _APIError(400, "Bad Request: message text is empty")
        if len(text) > _MAX_TEXT_LENGTH:
            raise _APIError(400, "Bad Request: message is too long")
        message, markup = self._new_message(chat_id, params)
        message["text"] = self._visible_text(text, params.get("parse_mode"))
        self._messages[(chat_id, message["message_id"])] = message
        self._record(
            method,
            params,
            chat_id=chat_id,
            text=text,
            reply_markup=markup,
            message_id=message["message_id"],
            message=message,
        )
        return copy.deepcopy(message)

    async def _send_media(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        chat_id = self._require_chat(params)
        field_name = "photo" if method == "sendPhoto" else "document"
        upload = next((u for u in uploads if u.field_name == field_name), None)
        if upload is None and isinstance(params.get(field_name), str):
            reference = str(params[field_name])
            if reference.startswith("attach://"):
                name = reference.removeprefix("attach://")
                upload = next((u for u in uploads if u.field_name == name), None)
            else:
                upload = _Upload(field_name, reference.rsplit("/", 1)[-1], 0, "")
        if upload is None:
            raise _APIError(400, f"Bad Request: there is no {field_name} in the request")
        caption = params.get("caption")
        message, markup = self._new_message(chat_id, params)
        file_id = f"FAKE-{field_name.upper()}-{len(self.sent) + 1}"
        if field_name == "photo":
            message["photo"] = [
                {
                    "file_id": file_id,
                    "file_unique_id": file_id + "-u",
                    "width": 320,
                    "height": 320,
                    "file_size": upload.size,
                }
            ]
        else:
            message["document"] = {
                "file_id": file_id,
                "file_unique_id": file_id + "-u",
                "file_name": upload.file_name,
                "mime_type": upload.content_type or "application/octet-stream",
                "file_size": upload.size,
            }
        if caption:
            message["caption"] = self._visible_text(str(caption), params.get("parse_mode"))
        self._messages[(chat_id, message["message_id"])] = message
        self._record(
            method,
            params,
            chat_id=chat_id,
            text=str(caption) if caption else None,
            caption=str(caption) if caption else None,
            reply_markup=markup,
            message_id=message["message_id"],
            upload=upload,
            message=message,
        )
        return copy.deepcopy(message)

    async def _edit_message_text(
        self, method: str, params: JSONDict, uploads: list[_Upload]
    ) -> Any:
        if params.get("inline_message_id"):
            self._record(method, params, text=str(params.get("text") or ""))
            return True
        chat_id, message_id, stored = self._stored(params, "edit")
        text = str(params.get("text") or "")
        if not text.strip():
            raise _APIError(400, "Bad Request: message text is empty")
        markup = _as_dict(params.get("reply_markup"))
        self._validate_markup(markup)
        visible = self._visible_text(text, params.get("parse_mode"))
        new_markup = markup if markup and "inline_keyboard" in markup else None
        if (
            self.strict_not_modified
            and stored.get("text") == visible
            and stored.get("reply_markup") == new_markup
        ):
            raise _APIError(400, _NOT_MODIFIED)
        stored["text"] = visible
        stored["edit_date"] = int(time.time())
        if new_markup is None:
            stored.pop("reply_markup", None)
        else:
            stored["reply_markup"] = new_markup
        self._record(
            method,
            params,
            chat_id=chat_id,
            text=text,
            reply_markup=markup,
            message_id=message_id,
            message=stored,
        )
        return copy.deepcopy(stored)

    async def _edit_message_reply_markup(
        self, method: str, params: JSONDict, uploads: list[_Upload]
    ) -> Any:
        if params.get("inline_message_id"):
            self._record(method, params, reply_markup=_as_dict(params.get("reply_markup")))
            return True
        chat_id, message_id, stored = self._stored(params, "edit")
        markup = _as_dict(params.get("reply_markup"))
        self._validate_markup(markup)
        new_markup = markup if markup and markup.get("inline_keyboard") else None
        if self.strict_not_modified and stored.get("reply_markup") == new_markup:
            raise _APIError(400, _NOT_MODIFIED)
        if new_markup is None:
            stored.pop("reply_markup", None)
        else:
            stored["reply_markup"] = new_markup
        stored["edit_date"] = int(time.time())
        self._record(
            method,
            params,
            chat_id=chat_id,
            reply_markup=markup,
            message_id=message_id,
            message=stored,
        )
        return copy.deepcopy(stored)

    async def _answer_callback_query(
        self, method: str, params: JSONDict, uploads: list[_Upload]
    ) -> Any:
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self._callback_queries:
            raise _APIError(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        chat_id = self._callback_queries.pop(query_id)
        text = params.get("text")
        self._record(method, params, chat_id=chat_id, text=str(text) if text else None)
        return True

    async def _delete_message(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        chat_id, message_id, _ = self._stored(params, "delete")
        del self._messages[(chat_id, message_id)]
        self._record(method, params, chat_id=chat_id, message_id=message_id)
        return True

    async def _send_chat_action(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        self._record(method, params, chat_id=self._require_chat(params))
        return True

    async def _true(self, method: str, params: JSONDict, uploads: list[_Upload]) -> Any:
        self._record(method, params)
        return True

    _Handler = Callable[["FakeTelegramAPI", str, JSONDict, list[_Upload]], Awaitable[Any]]

    _METHOD_TABLE: Final[dict[str, _Handler]] = {
        "getMe": _get_me,
        "getUpdates": _get_updates,
        "setMyCommands": _set_my_commands,
        "deleteMyCommands": _delete_my_commands,
        "getMyCommands": _get_my_commands,
        "deleteWebhook": _delete_webhook,
        "setWebhook": _set_webhook,
        "getWebhookInfo": _get_webhook_info,
        "sendMessage": _send_message,
        "sendPhoto": _send_media,
        "sendDocument": _send_media,
        "editMessageText": _edit_message_text,
        "editMessageReplyMarkup": _edit_message_reply_markup,
        "answerCallbackQuery": _answer_callback_query,
        "deleteMessage": _delete_message,
        "sendChatAction": _send_chat_action,
        "close": _true,
        "logOut": _true,
    }
    _METHODS: Final[dict[str, _Handler]] = {k.lower(): v for k, v in _METHOD_TABLE.items()}
    _CANONICAL: Final[dict[str, str]] = {k.lower(): k for k in _METHOD_TABLE}
