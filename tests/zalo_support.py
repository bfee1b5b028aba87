"""A rig for end-to-end Zalo tests: the real Zalo channel polling (or called by) a fake Zalo
Bot API over HTTP, the real outbox dispatcher, the real aiohttp API, an injected clock; and,
when asked, the real Telegram channel against its own fake beside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.app import Services, build_services, prepare_database
from bot.channels import channel_parts
from bot.config import load_settings
from bot.http.api import create_web_app
from bot.jobs.sweeps import survey_sweep
from handlers.clock import FakeClock
from handlers.units import load_units, parse_units_file
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.fakes.zalo_api import FakeZaloAPI, Sent
from tests.telegram_support import API_TOKEN, AUTH, CASE, UNITS_YAML

# The district's head is on Zalo here; the city's on Telegram.
UNITS_WITH_ZALO_HEAD = """
units:
  - code: HN
    name: UBND thành phố Hà Nội
    head: {name: Nguyễn Văn An, telegram_chat_id: 900}
  - code: HN-LB
    name: UBND quận Long Biên
    parent: HN
    head: {name: Lê Thị Bình, zalo_user_id: "zl-head-901"}
"""


class ZaloRig:
    client: TestClient

    def __init__(
        self, zalo: FakeZaloAPI, services: Services, telegram: FakeTelegramAPI | None
    ) -> None:
        self.zalo = zalo
        self.telegram = telegram
        self.services = services
        self._stops: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        parts = channel_parts(self.services)
        self.client = TestClient(TestServer(create_web_app(self.services)))
        await self.client.start_server()
        for start in parts:
            self._stops.append(await start(self.services))

    async def stop(self) -> None:
        for stop in reversed(self._stops):
            await stop()
        self._stops.clear()
        await self.client.close()
        await self.services.engine.dispose()

    async def post_case(self, body: dict[str, Any], expected: int | None = None) -> dict[str, Any]:
        response = await self.client.post("/api/v1/cases", json=body, headers=AUTH)
        data: dict[str, Any] = await response.json()
        if expected is not None:
            assert response.status == expected, data
        return data

    async def get_case(self, case_code: str = CASE["case_code"]) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/cases/{case_code}", headers=AUTH)
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data

    async def sweep(self) -> int:
        return await survey_sweep(self.services)

    async def say(
        self, user: str, text: str, predicate: Callable[[Sent], bool] = lambda sent: True
    ) -> Sent:
        """The person types `text`; returns the bot's first reply that matches."""
        mark = self.zalo.mark()
        self.zalo.push_text(user, text)
        return await self.zalo.wait_for_message(user, predicate, since=mark)

    async def token(self, case_code: str = CASE["case_code"]) -> str:
        view = await self.get_case(case_code)
        return str(view["links"]["zalo"].split("start=", 1)[1])

    async def link(self, user: str, case_code: str = CASE["case_code"]) -> Sent:
        """The person sends `/start TOKEN` and agrees by typing 1; returns the confirmation."""
        consent = await self.say(user, f"/start {await self.token(case_code)}")
        assert "1. Đồng ý" in consent.text
        return await self.say(user, "1")


ZaloRigFactory = Callable[..., Awaitable[ZaloRig]]


@pytest.fixture
async def make_zalo_rig(
    migrated_database_url: str, clock: FakeClock
) -> AsyncIterator[ZaloRigFactory]:
    made: list[tuple[ZaloRig, list[Any]]] = []

    async def make(
        *,
        telegram: bool = False,
        updates_as: Literal["list", "single"] = "list",
        units: str = UNITS_YAML,
        **overrides: Any,
    ) -> ZaloRig:
        fakes: list[Any] = []
        zalo = FakeZaloAPI(updates_as=updates_as)
        await zalo.start()
        fakes.append(zalo)
        values: dict[str, Any] = {
            "database_url": migrated_database_url,
            "api_tokens": API_TOKEN,
            "zalo_token": zalo.token,
            "zalo_api_url": zalo.base_url,
            "quiet_hours": "none",
            "send_rate_per_chat": 100.0,
            "send_rate_global": 1000.0,
            "zalo_send_rate_per_chat": 100.0,
            "zalo_send_rate_global": 1000.0,
        }
        fake_telegram = None
        if telegram:
            fake_telegram = FakeTelegramAPI()
            await fake_telegram.start()
            fakes.append(fake_telegram)
            values["telegram_token"] = fake_telegram.token
            values["telegram_api_url"] = fake_telegram.base_url
        values.update(overrides)
        services = build_services(load_settings(**values), clock=clock)
        await prepare_database(services)
        async with services.sessions.begin() as session:
            await load_units(session, parse_units_file(units))
        rig = ZaloRig(zalo, services, fake_telegram)
        made.append((rig, fakes))
        await rig.start()
        return rig

    yield make
    for rig, fakes in reversed(made):
        await rig.stop()
        for fake in fakes:
            await fake.stop()


@pytest.fixture
async def zalo_rig(make_zalo_rig: ZaloRigFactory) -> ZaloRig:
    return await make_zalo_rig()
