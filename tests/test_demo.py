"""`sipas-bot demo`: seeds sample units and hundreds of cases, prints a working curl with the
token, starts fresh each run, and serves the real API on what it seeded."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient
from sqlalchemy import func, select

from bot.app import build_services
from bot.config import load_settings
from bot.http.api import create_web_app
from demo import data as demo_data
from demo.digest import HISTORY_PREFIX
from demo.web import FALLBACK_SUFFIX
from handlers.intake_schema import parse_case
from storage.models import Case, Unit, UnitHead
from tests.cli_support import PYTHON, free_port, run_main, subprocess_env
from tests.conftest import engine_for


def printed_curl(out: str) -> tuple[str, dict[str, object]]:
    """The token and the JSON body of the `curl` the demo printed."""
    token = re.search(r"Authorization: Bearer ([A-Za-z0-9_-]+)'", out)
    body = re.search(r"^\s+-d '(.+)'$", out, re.MULTILINE)
    assert token and body, out
    return token[1], json.loads(body[1])


async def counts(database_url: str) -> tuple[int, int, int]:
    engine = engine_for(database_url)
    try:
        async with engine.connect() as connection:
            units = await connection.scalar(select(func.count()).select_from(Unit))
            heads = await connection.scalar(select(func.count()).select_from(UnitHead))
            # Not the surveys of earlier weeks the digest needs (demo/digest.py).
            # Nor the case resolved for the web survey when the sample has none to offer.
            sample = ~Case.case_code.startswith(HISTORY_PREFIX) & ~Case.case_code.endswith(
                FALLBACK_SUFFIX
            )
            cases = await connection.scalar(select(func.count()).select_from(Case).where(sample))
    finally:
        await engine.dispose()
    return units or 0, heads or 0, cases or 0


async def test_demo_seeds_and_its_curl_works_against_the_api(
    migrated_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    aiohttp_client: AiohttpClient,
) -> None:
    monkeypatch.setenv("SIPAS_DATABASE_URL", migrated_database_url)
    assert await run_main(["demo", "--no-serve"]) == 0
    out = capsys.readouterr().out
    units, heads, cases = await counts(migrated_database_url)
    assert units == len(demo_data.UNITS) >= 11
    assert heads == units
    assert cases == demo_data.CASES >= 200
    assert f"Cases:     {cases} over the last" in out
    assert "sipas-bot serve" in out
    assert "/healthz" in out
    assert "/metrics" in out
    assert "QR code for the citizen's receipt" in out

    token, body = printed_curl(out)
    settings = load_settings(database_url=migrated_database_url, api_tokens=token)
    services = build_services(settings)
    try:
        client = await aiohttp_client(create_web_app(services))
        headers = {"Authorization": f"Bearer {token}"}
        answer = await client.post("/api/v1/cases", json=body, headers=headers)
        assert answer.status == 201, await answer.text()
        view = await client.get(f"/api/v1/cases/{body['case_code']}", headers=headers)
        assert (await view.json())["unit_code"] == "HN-LB-BD"

        # The printed web survey link opens a resolved case's consent page.
        link = re.search(r"^\s+(http://\S+/s/[A-Za-z0-9_-]+)$", out, re.MULTILINE)
        assert link, out
        page = await client.get("/s/" + link[1].rsplit("/s/", 1)[1])
        assert page.status == 200
        html = await page.text()
        assert "Nghị định 13/2023/NĐ-CP" in html and "Đồng ý" in html

        # The printed dashboard link signs an official of the city in; its overview names
        # the district that fell last week (the demo's story) and why.
        assert "sipas-bot dashboard link HN" in out
        signin = re.search(r"^\s+http://\S+(/dashboard/login/[A-Za-z0-9_-]+)$", out, re.MULTILINE)
        assert signin, out
        overview = await client.get(signin[1])
        assert overview.status == 200 and overview.url.path == "/dashboard"
        text = await overview.text()
        falls = text.split('id="falls"', 1)[1].split("</section>", 1)[0]
        assert "UBND quận Hai Bà Trưng" in falls and "Công chức" in falls, falls
    finally:
        await services.engine.dispose()


async def test_demo_without_a_database_url_starts_fresh_in_sipas_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "sipas-demo" / "sipas.db"
    for _ in range(2):
        assert await run_main(["demo", "--no-serve", "--cases", "12"]) == 0
        out = capsys.readouterr().out
        assert str(database) in out
        assert "recreated fresh" in out
        assert await counts(f"sqlite+aiosqlite:///{database}") == (
            len(demo_data.UNITS),
            len(demo_data.UNITS),
            12,
        )
    first_token, _ = printed_curl(out)
    assert len(first_token) >= 24


def test_sample_cases_are_seeded_valid_and_in_the_past() -> None:
    now = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    first = demo_data.sample_cases(random.Random(7), now)
    assert first == demo_data.sample_cases(random.Random(7), now)
    statuses = {str(case["status"]) for case in first}
    assert {"received", "resolved", "delayed", "rejected", "withdrawn"} <= statuses
    assert len({case["case_code"] for case in first}) == len(first)
    for body in first:
        case = parse_case(body)
        assert case.received_at <= now
        assert case.resolved_at is None or case.resolved_at <= now
    late = [
        case
        for case in map(parse_case, first)
        if case.resolved_at is not None and case.resolved_at > case.due_at
    ]
    assert late, "some cases should be resolved late"


async def test_demo_serves_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "bot",
        "demo",
        "--cases",
        "12",
        env=subprocess_env(SIPAS_HTTP_PORT=str(port)),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl+C to stop." in line:
                break
        out = "".join(lines)
        assert f"The server is running at http://127.0.0.1:{port}" in out, out
        token, body = printed_curl(out)
        async with aiohttp.ClientSession() as client:
            answer = await client.post(
                f"http://127.0.0.1:{port}/api/v1/cases",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status == 201, await answer.text()
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, stderr.decode()
        assert "shut down cleanly" in stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
