"""A rig for end-to-end chat tests: the real python-telegram-bot Application polling a fake
Bot API over HTTP, the real outbox dispatcher, the real aiohttp API, an injected clock.

Test modules use the `rig` fixture (import `rig_fixture` from here) or `make_rig` to choose
settings. Citizens are played through the fake API (`rig.api.push_text`, `rig.api.press`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.app import Services, build_services, prepare_database
from bot.channels import channel_parts
from bot.config import load_settings
from bot.http.api import create_web_app
from bot.jobs.sweeps import survey_sweep
from handlers.clock import FakeClock
from handlers.units import load_units, parse_units_file
from tests.contract_data import API_TOKEN, AUTH, units_yaml
from tests.contract_data import case_body as contract_case_body
from tests.fakes.telegram_api import FakeTelegramAPI, SentCall

UNITS_YAML = units_yaml(recipients=False)
# A procedure without a courtesy message, so the invitation follows resolution directly.
COPY_PROCEDURE = {
    "code": "2.000815",
    "name": "Chứng thực bản sao từ bản chính",
    "field": "Chứng thực",
}


def case_body(**changes: Any) -> dict[str, Any]:
    return contract_case_body(**{"procedure": COPY_PROCEDURE, **changes})


CASE = case_body()


class Rig:
    """One running service around a fake Telegram; stop() leaves nothing behind."""

    client: TestClient

    def __init__(self, api: FakeTelegramAPI, services: Services) -> None:
        self.api = api
        self.services = services
        self.clock = services.clock
        assert isinstance(self.clock, FakeClock)
        self._stops: list[Callable[[], Awaitable[None]]] = []

    async def post_case(self, body: dict[str, Any], expected: int | None = None) -> dict[str, Any]:
        response = await self.client.post("/api/v1/cases", json=body, headers=AUTH)
        data: dict[str, Any] = await response.json()
        if expected is not None:
            assert response.status == expected, data
        return data

    async def get_case(self, case_code: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/cases/{case_code}", headers=AUTH)
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data

    async def sweep(self) -> int:
        return await survey_sweep(self.services)

    async def link(self, chat_id: int, case_code: str = CASE["case_code"]) -> SentCall:
        """Plays a citizen opening the deep link of the case and agreeing; returns the reply."""
        view = await self.get_case(case_code)
        token = view["links"]["telegram"].split("start=", 1)[1]
        mark = self.api.mark()
        self.api.push_text(chat_id, f"/start {token}")
        await self.api.wait_for_message(chat_id, lambda m: _has_button(m, "Đồng ý"), since=mark)
        mark = self.api.mark()
        self.api.press(chat_id, "Đồng ý")
        return await self.api.wait_for_message(chat_id, since=mark)

    async def answer(self, chat_id: int, label_prefix: str) -> SentCall:
        """Presses a choice on the latest message and waits for the bot's next message."""
        mark = self.api.mark()
        self.api.press(chat_id, label_prefix)
        return await self.api.wait_for_message(chat_id, since=mark)

    async def say(self, chat_id: int, text: str) -> SentCall:
        mark = self.api.mark()
        self.api.push_text(chat_id, text)
        return await self.api.wait_for_message(chat_id, since=mark)

    async def stop(self) -> None:
        for stop in reversed(self._stops):
            await stop()
        self._stops.clear()
        await self.client.close()
        await self.services.engine.dispose()

    async def restart(self) -> None:
        """Stops everything (as a shutdown would) and starts a new process's worth of parts
        on the same database and the same Telegram."""
        settings = self.services.settings
        await self.stop()
        services = build_services(settings, clock=self.clock)
        await prepare_database(services)
        await self._start(services)

    async def _start(self, services: Services) -> None:
        self.services = services
        parts = channel_parts(services)
        self.client = TestClient(TestServer(create_web_app(services)))
        await self.client.start_server()
        for start in parts:
            self._stops.append(await start(services))


def _has_button(message: SentCall, prefix: str) -> bool:
    return any(text.startswith(prefix) for text, _ in FakeTelegramAPI.buttons(message))


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(migrated_database_url: str, clock: FakeClock) -> AsyncIterator[RigFactory]:
    rigs: list[tuple[Rig, FakeTelegramAPI]] = []

    async def make(**overrides: Any) -> Rig:
        api = FakeTelegramAPI()
        await api.start()
        values: dict[str, Any] = {
            "database_url": migrated_database_url,
            "api_tokens": API_TOKEN,
            "telegram_token": api.token,
            "telegram_api_url": api.base_url,
            "quiet_hours": "none",
            "send_rate_per_chat": 100.0,
            "send_rate_global": 1000.0,
        }
        values.update(overrides)
        services = build_services(load_settings(**values), clock=clock)
        await prepare_database(services)
        async with services.sessions.begin() as session:
            await load_units(session, parse_units_file(UNITS_YAML))
        rig = Rig(api, services)
        await rig._start(services)
        rigs.append((rig, api))
        return rig

    yield make
    for rig, api in reversed(rigs):
        await rig.stop()
        await api.stop()


@pytest.fixture
async def rig(make_rig: RigFactory) -> Rig:
    return await make_rig()
