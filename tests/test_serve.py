"""`sipas-bot serve` as a real process: it answers /healthz, takes a case, and on SIGTERM or
SIGINT shuts down cleanly and quickly with exit code 0."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from bot.app import Services, build_services
from bot.config import load_settings
from bot.jobs.registry import scheduler_part
from bot.jobs.scheduler import SweepScheduler
from tests.cli_support import PYTHON, REPO, free_port, subprocess_env

TOKEN = "serve-test-token-5d1f"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
UNITS_YAML = """\
units:
  - {code: HN, name: UBND thành phố Hà Nội}
  - {code: HN-LB, name: UBND quận Long Biên, parent: HN}
"""
CASE = {
    "case_code": "000.00.12.H26-261122-0001",
    "unit_code": "HN-LB",
    "procedure": {"code": "1.001193", "name": "Đăng ký khai sinh", "field": "Hộ tịch"},
    "officer": {"code": "CB-017", "name": "Nguyễn Thị Lan"},
    "citizen": {"name": "Trần Văn Minh", "phone": "0912345678", "locale": "vi"},
    "status": "received",
    "received_at": "2026-11-20T08:05:00+07:00",
    "due_at": "2026-11-25T17:00:00+07:00",
}


@dataclass
class Server:
    process: asyncio.subprocess.Process
    url: str

    async def stop(self, sig: signal.Signals) -> tuple[int, str, float]:
        """Sends `sig`; returns the exit code, the log and how long the shutdown took."""
        started = time.monotonic()
        self.process.send_signal(sig)
        _, stderr = await asyncio.wait_for(self.process.communicate(), STOP_TIMEOUT)
        assert self.process.returncode is not None
        return self.process.returncode, stderr.decode(), time.monotonic() - started


async def wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                break
            try:
                async with client.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    stderr = b""
    if process.returncode is not None and process.stderr is not None:
        stderr = await process.stderr.read()
    pytest.fail(f"serve did not become healthy at {url}: {stderr.decode()}")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    units = tmp_path / "units.yaml"
    units.write_text(UNITS_YAML, encoding="utf-8")
    port = free_port()
    env = subprocess_env(
        SIPAS_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'sipas.db'}",
        SIPAS_API_TOKENS=f"other-token,{TOKEN}",
        SIPAS_HTTP_PORT=str(port),
        SIPAS_UNITS_FILE=str(units),
    )
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "bot",
        "serve",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, process)
        yield Server(process, url)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serve_takes_a_case_then_stops_cleanly_on_a_signal(
    server: Server, sig: signal.Signals
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{server.url}/api/v1/cases", json=CASE, headers=headers) as answer:
            assert answer.status == 201, await answer.text()
            assert (await answer.json())["case_code"] == CASE["case_code"]
        async with client.post(f"{server.url}/api/v1/cases", json=CASE) as answer:
            assert answer.status == 401

    code, log, took = await server.stop(sig)

    assert code == 0, log
    assert took < STOP_TIMEOUT
    assert f"HTTP API listening on {server.url}" in log
    assert "channels enabled: none" in log
    assert f"{sig.name} received, shutting down" in log
    assert "shut down cleanly" in log
    assert "tasks still pending" not in log
    assert "Traceback" not in log
    # Neither the token nor the citizen's personal data reach the log.
    for secret in (TOKEN, "other-token", "0912345678", "Trần Văn Minh"):
        assert secret not in log


async def test_serve_with_a_port_in_use_says_so_and_exits_1(tmp_path: Path) -> None:
    port = free_port()
    blocker = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", port)
    try:
        env = subprocess_env(
            SIPAS_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'sipas.db'}",
            SIPAS_API_TOKENS=TOKEN,
            SIPAS_HTTP_PORT=str(port),
        )
        process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "bot",
            "serve",
            env=env,
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in stderr.decode()


async def test_the_scheduler_part_survives_a_failing_sweep_and_stops_without_leftovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    services = build_services(
        load_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    )
    failed_twice = asyncio.Event()
    slow_started = asyncio.Event()
    failures = 0

    async def failing(_services: Services) -> None:
        nonlocal failures
        failures += 1
        if failures == 2:
            failed_twice.set()
        raise RuntimeError("boom")

    async def slow(_services: Services) -> None:
        slow_started.set()
        await asyncio.sleep(3600)

    def register(sweeps: SweepScheduler) -> None:
        sweeps.every(timedelta(milliseconds=50), failing, name="failing")
        sweeps.every(timedelta(milliseconds=50), slow, name="slow")

    try:
        stop = await scheduler_part(lambda _services: [register])(services)
        await asyncio.wait_for(asyncio.gather(failed_twice.wait(), slow_started.wait()), 10)
        await stop()
    finally:
        await services.engine.dispose()
    assert "sweep failing failed" in caplog.text
    leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert leftover == []
