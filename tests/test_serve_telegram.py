"""`sipas-bot serve` as a real process against a fake Bot API that rejects the token, and
against none at all until one comes up: start-up faults without tracebacks or secrets."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli_support import PYTHON, free_port, subprocess_env
from tests.fakes.telegram_api import FakeTelegramAPI

SECRET = "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
TOKEN = f"7123456789:{SECRET}"
API_TOKEN = "serve-telegram-test-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
DEADLINE = 60.0
CHAT = 4711
UNITS_YAML = """\
units:
  - {code: HN, name: UBND thành phố Hà Nội}
  - {code: HN-LB, name: UBND quận Long Biên, parent: HN}
"""
DELAYED_CASE: dict[str, Any] = {
    "case_code": "000.00.12.H26-261122-0042",
    "unit_code": "HN-LB",
    "procedure": {"code": "2.000815", "name": "Chứng thực bản sao từ bản chính"},
    "citizen": {"name": "Trần Văn Minh", "telegram_chat_id": CHAT, "locale": "vi"},
    "status": "delayed",
    "received_at": "2026-11-20T08:05:00+07:00",
    "due_at": "2026-11-25T17:00:00+07:00",
    "delay": {"new_due_at": "2026-12-02T17:00:00+07:00", "reason": "Chờ xác minh"},
}


async def start_serve(tmp_path: Path, **sipas: str) -> tuple[asyncio.subprocess.Process, str]:
    units = tmp_path / "units.yaml"
    units.write_text(UNITS_YAML, encoding="utf-8")
    port = free_port()
    env = subprocess_env(
        SIPAS_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'sipas.db'}",
        SIPAS_API_TOKENS=API_TOKEN,
        SIPAS_HTTP_PORT=str(port),
        SIPAS_UNITS_FILE=str(units),
        SIPAS_TELEGRAM_TOKEN=TOKEN,
        SIPAS_QUIET_HOURS="none",
        **sipas,
    )
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "bot",
        "serve",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return process, f"http://127.0.0.1:{port}"


async def until(
    check: Callable[[], Awaitable[Any]], process: asyncio.subprocess.Process, what: str
) -> Any:
    """Polls `check` until it returns something truthy; fails at the deadline or if serve ends."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if process.returncode is not None:
            _, stderr = await process.communicate()
            pytest.fail(f"serve ended ({process.returncode}) waiting for {what}: {stderr.decode()}")
        try:
            result = await check()
        except aiohttp.ClientConnectionError:
            result = None
        if result:
            return result
        await asyncio.sleep(0.1)
    pytest.fail(f"no {what} within {DEADLINE}s")


async def test_a_token_telegram_rejects_stops_serve_with_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    async with FakeTelegramAPI() as api:  # its token is not ours: every call answers 401
        process, _ = await start_serve(tmp_path, SIPAS_TELEGRAM_API_URL=api.base_url)
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    output = stdout.decode() + stderr.decode()
    assert process.returncode == 2, output
    assert "Traceback" not in output
    assert SECRET not in output
    errors = [line for line in output.splitlines() if "SIPAS_TELEGRAM_TOKEN" in line]
    assert errors == [
        f"sipas-bot: SIPAS_TELEGRAM_TOKEN (7123456789:***) was rejected by Telegram at "
        f"{api.base_url}: set the token @BotFather gave the bot"
    ]
    assert output.rstrip().splitlines()[-1] == errors[0]


async def test_serve_rides_out_a_bot_api_that_is_down_at_start(tmp_path: Path) -> None:
    api = FakeTelegramAPI(token=TOKEN)
    api_port = free_port()  # nothing listens there yet
    base_url = f"http://127.0.0.1:{api_port}/bot"
    process, url = await start_serve(
        tmp_path,
        SIPAS_TELEGRAM_API_URL=base_url,
        SIPAS_TELEGRAM_BOT_USERNAME="sipas_down_bot",
        SIPAS_CHANNEL_RETRY_MAX="1s",
    )
    try:
        async with aiohttp.ClientSession() as client:

            async def health() -> dict[str, Any] | None:
                async with client.get(f"{url}/healthz") as answer:
                    body: dict[str, Any] = await answer.json()
                    return body if answer.status == 200 else None

            async def unreachable() -> bool:
                body = await health()
                return body is not None and body.get("telegram") == "unreachable"

            await until(unreachable, process, "healthz with telegram unreachable")

            # Intake works at once; the letter waits in the outbox; the link is known without
            # getMe (SIPAS_TELEGRAM_BOT_USERNAME).
            async with client.post(f"{url}/api/v1/cases", json=DELAYED_CASE, headers=AUTH) as a:
                assert a.status == 201, await a.text()
                view = await a.json()
            assert view["links"]["telegram"].startswith("https://t.me/sipas_down_bot?start=")
            async with client.get(f"{url}/metrics") as answer:
                metrics = await answer.text()
            assert 'sipas_channel_state{channel="telegram",state="unreachable"} 1.0' in metrics

            await api.start(api_port)
            letter = await api.wait_for_message(CHAT, count=1, timeout=DEADLINE)
            assert DELAYED_CASE["case_code"] in letter.text

            async def ok() -> bool:
                body = await health()
                return body is not None and body.get("telegram") == "ok"

            await until(ok, process, "healthz with telegram ok")
            async with client.get(f"{url}/metrics") as answer:
                metrics = await answer.text()
            assert 'sipas_channel_state{channel="telegram",state="ok"} 1.0' in metrics
        assert "getMe" not in [method for method, _ in api.requests]

        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await api.stop()
    log = stderr.decode()
    assert process.returncode == 0, log
    assert "Traceback" not in log
    assert SECRET not in log
    attempts = [line for line in log.splitlines() if "cannot be reached (attempt" in line]
    assert attempts and "attempt 1:" in attempts[0]
    assert all(base_url in line for line in attempts)
    assert "Telegram channel started (polling) as @sipas_down_bot" in log
