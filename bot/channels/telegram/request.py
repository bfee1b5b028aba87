"""python-telegram-bot's calls to the Bot API made with aiohttp rather than httpx.

A call's own CPU is mostly its HTTP client's. Sending 500 messages to the fake Bot API in
one process (the client's and the fake server's CPU together) took 1,129-1,526 µs a send
through PTB's `HTTPXRequest`, 464-499 µs through this class and 331-351 µs as aiohttp's bare
POST. The outbox sends every message through this, and the service already runs on aiohttp.

`telegram.request.BaseRequest` is PTB's documented seam for another HTTP client:
`do_request` gets the URL, the HTTP method, the parameters (each JSON-encoded, files apart)
and four timeouts, and returns the status and the body; PTB reads the answer and raises its
own errors from it (`RetryAfter`, `BadRequest`, `Forbidden`, ...). What this class must get
right is what `HTTPXRequest` does around the call:
- parameters go form-encoded, or as multipart with the files when there are files;
- a timeout is `TimedOut` and any other failure of the client `NetworkError`, named by its
  class, as PTB's own request names httpx's (never with the URL, which holds the token);
- `connect_timeout` bounds a new connection and `pool_timeout` the wait for a free one
  (aiohttp's `connect` timeout covers both), `read_timeout` each read of the answer.
  PTB's `write_timeout` has no counterpart: asyncio never blocks on a socket write, and the
  answer's read timeout follows the request's last byte.
With `tell_the_wire`, the moment the request's headers are written is told to the outbox
(bot/outbox/wire.py), as the httpx trace hook did.
"""

from __future__ import annotations

import aiohttp
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

from bot.outbox.wire import on_the_wire


class AiohttpRequest(BaseRequest):
    """A pool of `connection_pool_size` connections to the Bot API, opened on first use."""

    __slots__ = (
        "_connect_timeout",
        "_pool_size",
        "_pool_timeout",
        "_read_timeout",
        "_session",
        "_tell_the_wire",
    )

    def __init__(
        self,
        *,
        connection_pool_size: int = 1,
        read_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        tell_the_wire: bool = False,
    ) -> None:
        # PTB's defaults, as HTTPXRequest has them.
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._tell_the_wire = tell_the_wire
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        # Again after a shutdown: PTB restarts a bot's requests when its application restarts.
        if self._session is None or self._session.closed:
            self._session = self._new_session()

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _new_session(self) -> aiohttp.ClientSession:
        # Made within the running loop: an aiohttp session belongs to one.
        tracing = []
        if self._tell_the_wire:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_on_the_wire)
            tracing.append(trace)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._pool_size),
            trace_configs=tracing,
            headers={"User-Agent": self.USER_AGENT},
            # A proxy named in HTTPS_PROXY (and NO_PROXY) is used, as httpx did for PTB.
            trust_env=True,
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Used before `initialize`, as HTTPXRequest allows (its client is made at once).
            self._session = self._new_session()
        elif self._session.closed:
            # As HTTPXRequest: no call after a shutdown (nothing would close a new session).
            raise RuntimeError("This AiohttpRequest is not initialized!")
        return self._session

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        read = self._read_timeout if isinstance(read_timeout, DefaultValue) else read_timeout
        connect = (
            self._connect_timeout if isinstance(connect_timeout, DefaultValue) else connect_timeout
        )
        pool = self._pool_timeout if isinstance(pool_timeout, DefaultValue) else pool_timeout
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=read,
        )
        try:
            async with self._client().request(
                method, url, data=_body(request_data), timeout=timeout
            ) as answer:
                return answer.status, await answer.read()
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {_without_token(exc, url)}") from exc


def _body(request_data: RequestData | None) -> aiohttp.FormData | dict[str, str] | None:
    if request_data is None:
        return None
    fields = request_data.json_parameters
    files = request_data.multipart_data
    if not files:
        return fields  # form-encoded
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, (filename, content, mimetype) in files.items():
        form.add_field(name, content, filename=filename, content_type=mimetype)
    return form


def _without_token(error: Exception, url: str) -> str:
    """The error's text with the URL's `bot<token>` segment blanked, should it be there."""
    secret = url.rsplit("/", 2)[-2] if url.count("/") >= 2 else url
    return str(error).replace(secret, "bot<token>") if secret else str(error)


async def _on_the_wire(*_: object) -> None:
    on_the_wire()
