"""With SIPAS_TELEGRAM_TOKEN set, the demo runs the bot too and prints a sample deep link."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from bot.config import load_settings
from demo.run import run_demo
from tests.cli_support import free_port
from tests.fakes.telegram_api import FakeTelegramAPI


async def test_demo_with_telegram_prints_a_deep_link_that_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with FakeTelegramAPI() as api:
        settings = load_settings(
            telegram_token=api.token,
            telegram_api_url=api.base_url,
            http_port=free_port(),
            quiet_hours="none",
        )
        out = io.StringIO()
        stop = asyncio.Event()
        demo = asyncio.create_task(run_demo(settings, serve=True, cases=40, out=out, stop=stop))
        try:
            await api.wait_until(lambda: "t.me/" in out.getvalue() or demo.done(), timeout=30)
            if demo.done():
                demo.result()  # raises what stopped the demo
            link = next(w for w in out.getvalue().split() if w.startswith("https://t.me/"))
            assert link.startswith("https://t.me/sipas_test_bot?start=")
            api.push_text(4242, "/start " + link.split("start=")[1])
            consent = await api.wait_for_message(4242, count=1, timeout=10)
            assert "Nghị định 13/2023" in consent.text
        finally:
            stop.set()
            await asyncio.wait_for(demo, timeout=15)
