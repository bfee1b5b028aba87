"""A local fake of the Zalo Bot API, served over real HTTP by aiohttp.

It speaks what the service uses (`POST /bot<token>/<method>` with a JSON body): getMe,
long-polling getUpdates (its `result` one update or a list, as the real API may answer),
setWebhook, deleteWebhook, getWebhookInfo, sendMessage, sendPhoto and sendChatAction, with
the platform's checks (chat_id a string, text of 1-2000 characters, photo a URL, webhook
secret of 8-256 characters). It records what the bot sends, simulates people
(`push_text`, `push_event`), injects failures (`fail_next`) and waits for messages with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import web

DEFAULT_TOKEN: Final = "2718281828:ZALO-TEST-SECRET"
WAIT_SECONDS: Final = 10.0

JSONDict = dict[str, Any]


@dataclass(frozen=True)
class Sent:
    seq: int
    method: str
    chat_id: str
    text: str
    photo: str | None = None


@dataclass
class _Failure:
    method: str
    status: int
    body: JSONDict
    times: int
    headers: dict[str, str] = field(default_factory=dict)


class FakeZaloAPI:
    """One fake bot; `base_url` goes into SIPAS_ZALO_API_URL."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        updates_as: Literal["list", "single"] = "list",
        wrap_webhook: bool = False,
    ) -> None:
        self.token = token
        self.updates_as = updates_as
        self.wrap_webhook = wrap_webhook
        self.sent: list[Sent] = []
        self.calls: list[tuple[str, JSONDict]] = []
        self.webhook: JSONDict | None = None
        self._queue: list[JSONDict] = []
        self._failures: list[_Failure] = []
        self._seq = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        self._closing = True  # a long poll in progress answers now, not at its timeout
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/bot"

    # --- people --------------------------------------------------------------------------

    def make_update(
        self,
        user_id: str,
        text: str | None = None,
        *,
        event_name: str = "message.text.received",
        message_id: str | None = None,
    ) -> JSONDict:
        message: JSONDict = {
            "message_id": message_id or f"m{next(self._message_ids):x}",
            "date": 1764547200000,
            "chat": {"id": user_id, "chat_type": "PRIVATE"},
            "from": {"id": user_id, "display_name": f"Người dùng {user_id}", "is_bot": False},
        }
        if text is not None:
            message["text"] = text
        return {"event_name": event_name, "message": message}

    def push(self, update: JSONDict) -> JSONDict:
        """Queues an update for the next getUpdates."""
        self._queue.append(update)
        self._notify()
        return update

    def push_text(self, user_id: str, text: str, *, message_id: str | None = None) -> JSONDict:
        return self.push(self.make_update(user_id, text, message_id=message_id))

    def push_event(self, user_id: str, event_name: str) -> JSONDict:
        return self.push(self.make_update(user_id, None, event_name=event_name))

    def fail_next(
        self,
        method: str,
        status: int,
        description: str = "error",
        *,
        times: int = 1,
        error_code: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        body: JSONDict = {
            "ok": False,
            "error_code": error_code or status,
            "description": description,
        }
        headers = {}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
            headers["Retry-After"] = str(retry_after)
        self._failures.append(_Failure(method, status, body, times, headers))

    # --- what the bot did ----------------------------------------------------------------

    def mark(self) -> int:
        return self.sent[-1].seq if self.sent else 0

    def messages_to(self, chat_id: str, since: int = 0) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id and s.seq > since]

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    async def wait_for_message(
        self,
        chat_id: str,
        predicate: Callable[[Sent], bool] = lambda sent: True,
        *,
        since: int = 0,
        within: float = WAIT_SECONDS,
    ) -> Sent:
        """The first message to `chat_id` after `since` that satisfies `predicate`."""

        def found() -> Sent | None:
            return next((s for s in self.messages_to(chat_id, since) if predicate(s)), None)

        async def wait() -> Sent:
            while (hit := found()) is None:
                self._changed.clear()
                await self._changed.wait()
            return hit

        try:
            return await asyncio.wait_for(wait(), within)
        except TimeoutError:
            seen = [s.text[:80] for s in self.messages_to(chat_id, since)]
            raise AssertionError(
                f"no matching message to {chat_id} in {within}s; saw {seen}"
            ) from None

    async def wait_until(self, condition: Callable[[], bool], within: float = WAIT_SECONDS) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), within)

    def _notify(self) -> None:
        self._changed.set()

    # --- the API -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        try:
            params = await request.json() if request.can_read_body else {}
        except ValueError:
            return self._error(400, "body is not JSON")
        self.calls.append((method, params))
        self._notify()
        for failure in self._failures:
            if failure.method == method and failure.times > 0:
                failure.times -= 1
                return web.json_response(
                    failure.body, status=failure.status, headers=failure.headers
                )
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return self._error(404, f"unknown method {method}")
        result = await handler(params)
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(status: int, description: str) -> web.Response:
        return web.json_response(
            {"ok": False, "error_code": status, "description": description}, status=status
        )

    async def _m_getMe(self, params: JSONDict) -> Any:
        bot_id = self.token.split(":", 1)[0]
        return {"id": bot_id, "account_name": "bot.sipas", "display_name": "SIPAS"}

    async def _m_getUpdates(self, params: JSONDict) -> Any:
        if self.webhook is not None:
            return self._error(409, "webhook is set")
        timeout = float(params.get("timeout", 0))
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._queue:
            if self._closing:
                return self._error(408, "Request timeout")
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return self._error(408, "Request timeout")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        if self.updates_as == "single":
            return self._queue.pop(0)
        updates, self._queue = self._queue, []
        return updates

    async def _m_setWebhook(self, params: JSONDict) -> Any:
        url, secret = params.get("url"), params.get("secret_token")
        if not isinstance(url, str) or not url.startswith("https://"):
            return self._error(400, "url must be https")
        if not isinstance(secret, str) or not 8 <= len(secret) <= 256:
            return self._error(400, "secret_token must be 8-256 characters")
        self.webhook = {"url": url, "secret_token": secret}
        return {"url": url, "updated_at": 1764547200000}

    async def _m_deleteWebhook(self, params: JSONDict) -> Any:
        self.webhook = None
        return {"url": "", "updated_at": 1764547200000}

    async def _m_getWebhookInfo(self, params: JSONDict) -> Any:
        return {"url": (self.webhook or {}).get("url", ""), "updated_at": 1764547200000}

    async def _m_sendChatAction(self, params: JSONDict) -> Any:
        return True

    async def _m_sendMessage(self, params: JSONDict) -> Any:
        chat_id, text = params.get("chat_id"), params.get("text")
        if not isinstance(chat_id, str) or not chat_id:
            return self._error(400, "chat_id must be a string")
        if not isinstance(text, str) or not 1 <= len(text) <= 2000:
            return self._error(400, "text must be 1-2000 characters")
        return self._record("sendMessage", chat_id, text, None)

    async def _m_sendPhoto(self, params: JSONDict) -> Any:
        chat_id, photo = params.get("chat_id"), params.get("photo")
        if not isinstance(chat_id, str) or not chat_id:
            return self._error(400, "chat_id must be a string")
        if not isinstance(photo, str) or not photo.startswith(("http://", "https://")):
            return self._error(400, "photo must be a URL")
        return self._record("sendPhoto", chat_id, str(params.get("caption") or ""), photo)

    def _record(self, method: str, chat_id: str, text: str, photo: str | None) -> JSONDict:
        seq = next(self._seq)
        self.sent.append(Sent(seq, method, chat_id, text, photo))
        self._notify()
        return {"message_id": f"out{seq}", "date": 1764547200000}
