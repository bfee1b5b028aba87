"""A 503 with Retry-After while the database is unreachable, nothing stored, and service again
once it is back: PostgreSQL through a TCP proxy the test cuts, SQLite by taking its directory
away."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import ClientResponse

from bot.http.api import openapi_document
from storage.models import Case, CaseEvent
from tests.api_support import (
    Api,
    MakeApi,
    assert_documented,
    case_body,
    make_api_fixture,  # noqa: F401
    resolved_body,
)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut` closes the port and every connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, upstream_writer)),
            asyncio.create_task(self._pipe(upstream_reader, writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)
        self._writers -= {writer, upstream_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()


async def assert_unavailable(response: ClientResponse, method: str, template: str) -> None:
    assert response.status == 503, await response.text()
    assert int(response.headers["Retry-After"]) > 0
    await assert_documented(openapi_document(), response, method, template)


async def assert_everything_is_503(api: Api) -> None:
    response = await api.post(resolved_body("U-1"))
    await assert_unavailable(response, "POST", "/api/v1/cases")
    payload = await response.json()
    assert payload["error"]["code"] == "unavailable"

    response = await api.post(case_body("U-2"))
    await assert_unavailable(response, "POST", "/api/v1/cases")
    response = await api.post([case_body("U-3")], path="/api/v1/cases:batch")
    await assert_unavailable(response, "POST", "/api/v1/cases:batch")
    response = await api.get("/api/v1/cases/U-1")
    await assert_unavailable(response, "GET", "/api/v1/cases/{case_code}")
    response = await api.get("/api/v1/cases/U-1/qr.png")
    await assert_unavailable(response, "GET", "/api/v1/cases/{case_code}/qr.png")
    response = await api.client.get("/healthz")
    await assert_unavailable(response, "GET", "/healthz")
    assert await response.json() == {"status": "unavailable", "database": "unreachable"}
    # The web survey page says so to people, as a page.
    response = await api.client.get("/s/AnyLinkTokenAtAll")
    await assert_unavailable(response, "GET", "/s/{token}")
    assert "Xin lỗi, đã có lỗi xảy ra" in await response.text()


async def assert_nothing_stored_while_down_and_service_is_back(api: Api) -> None:
    assert (await api.client.get("/healthz")).status == 200
    view = await api.get("/api/v1/cases/U-1")
    assert (await view.json())["status"] == "received"  # the 503 resolution was not stored
    assert await api.count(Case) == 1
    assert await api.count(CaseEvent) == 1
    await api.post_json(resolved_body("U-1"), 200)
    await api.post_json(case_body("U-2"), 201)


async def test_503_while_the_database_is_unreachable(
    make_api: MakeApi, database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("postgresql"):
        await postgresql_goes_away(make_api, database_url)
    else:
        await sqlite_goes_away(make_api, tmp_path)


async def postgresql_goes_away(make_api: MakeApi, database_url: str) -> None:
    server = urlsplit(database_url)
    proxy = TcpProxy(server.hostname or "127.0.0.1", server.port or 5432)
    await proxy.open()
    try:
        proxied = database_url.replace(server.netloc.split("@")[-1], f"127.0.0.1:{proxy.port}", 1)
        api = await make_api(url=proxied)
        await api.post_json(case_body("U-1"), 201)

        await proxy.cut()
        await assert_everything_is_503(api)

        await proxy.open()
        await assert_nothing_stored_while_down_and_service_is_back(api)
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.cut()


async def sqlite_goes_away(make_api: MakeApi, tmp_path: Path) -> None:
    directory = tmp_path / "db"
    directory.mkdir()
    api = await make_api(url=f"sqlite+aiosqlite:///{directory / 'sipas.db'}")
    await api.post_json(case_body("U-1"), 201)

    # Pooled connections keep their open file; new ones find a plain file where the
    # directory was and cannot open the database.
    await api.services.engine.dispose()
    directory.rename(tmp_path / "db-away")
    directory.write_text("not a directory")
    await assert_everything_is_503(api)

    await api.services.engine.dispose()
    directory.unlink()
    (tmp_path / "db-away").rename(directory)
    await assert_nothing_stored_while_down_and_service_is_back(api)
