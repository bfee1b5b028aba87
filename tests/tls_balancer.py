"""A TLS-terminating, round-robin reverse proxy on aiohttp: the load balancer in front of
several `serve` processes in tests/multiprocess_support.py, as in a production deployment.

Its certificate (for 127.0.0.1 and localhost) comes from a throwaway CA made by `trustme`;
clients trust that CA through `client_ssl()`, so nothing runs with verification turned off.
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
from collections.abc import AsyncIterator
from types import TracebackType

import aiohttp
import trustme
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.threaded import in_a_thread

# Headers that describe one connection, not the message (RFC 9110 7.6.1): a proxy drops
# them; Host and Content-Length are set anew for the hop to the backend and back.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Cases arrive in batches; the serve process sets its own limit, the proxy must not be lower.
MAX_BODY = 64 * 1024 * 1024
BACKEND_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=5)


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """`headers` without the hop-by-hop ones, including any the Connection header names."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
    }
    return CIMultiDict(
        (name, value)
        for name, value in headers.items()
        if name.lower() not in HOP_BY_HOP and name.lower() not in named
    )


class TlsBalancer:
    """HTTPS on 127.0.0.1 (a free port, known once started), forwarding each request to the
    next of `backends` in turn. Set `backends` once they are up; until then it answers 503.

    A backend that refuses the connection (a process killed) is skipped for the next one, as
    a real balancer's health check would; the request had not reached it, so nothing is lost
    or repeated. A backend that fails once the request is sent is not retried (nginx's
    default for a POST): it may have acted on the request, and the caller (Telegram, the
    one-stop system) decides whether to send it again. 502 then, as a balancer answers.
    """

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.backends: list[str] = []
        #: Requests answered by a backend, and connections refused on the way (failovers).
        self.forwarded = 0
        self.refused = 0
        self._turn = itertools.count()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("TlsBalancer is not started")
        return f"https://127.0.0.1:{self._port}"

    def client_ssl(self) -> ssl.SSLContext:
        """A client context that verifies the balancer's certificate against its CA."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    async def start(self) -> None:
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ssl)
        # A fresh connection to the backend per request (nginx's default upstream HTTP/1.0):
        # a pooled connection to a killed process fails as a reset once the request is
        # written, which cannot be told from a failure mid-request; a new one is refused.
        # The body is passed on as it came: no decompressing what the caller then gets.
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            auto_decompress=False,
            timeout=BACKEND_TIMEOUT,
        )
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._client.close()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> TlsBalancer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _rotation(self) -> list[str]:
        """Every backend once, starting with the next one in turn."""
        first = next(self._turn) % len(self.backends)
        return self.backends[first:] + self.backends[:first]

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._client is not None
        if not self.backends:
            return web.Response(status=503, text="no backend yet")
        body = await request.read()
        headers = end_to_end(request.headers)
        # What the backend would otherwise not know: who called, over what, under which name.
        forwarded_for = request.headers.get("X-Forwarded-For")
        client = request.remote or ""
        headers["X-Forwarded-For"] = f"{forwarded_for}, {client}" if forwarded_for else client
        headers["X-Forwarded-Proto"] = "https"
        headers["X-Forwarded-Host"] = request.host
        for backend in self._rotation():
            try:
                async with self._client.request(
                    request.method,
                    backend + request.raw_path,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                ) as answer:
                    payload = await answer.read()
                    self.forwarded += 1
                    return web.Response(
                        status=answer.status,
                        reason=answer.reason,
                        headers=end_to_end(answer.headers),
                        body=payload,
                    )
            except aiohttp.ClientConnectorError:
                self.refused += 1  # never reached it: the next one gets the request
            except TimeoutError:
                return web.Response(status=504, text="backend timed out")
            except aiohttp.ClientError as exc:
                return web.Response(status=502, text=f"backend failed: {exc}")
        return web.Response(status=502, text="every backend refused the connection")


@contextlib.asynccontextmanager
async def balancer_in_a_thread() -> AsyncIterator[TlsBalancer]:
    """A TlsBalancer on an event loop of its own thread, as a balancer is a machine of its own:
    its TLS handshakes and forwarding then never hold up the caller's loop, where the fake Bot
    API stamps each call's arrival (in one loop, they moved stamps by tens of milliseconds,
    enough to put 11 calls into a second that the platform saw as 10). Set `backends` from
    the caller's thread; the balancer reads it on each request."""
    async with in_a_thread(TlsBalancer(), "tls-balancer") as balancer:
        yield balancer
