"""From resolution to invitation: how long after the 2xx of the resolving POST the invitation
reaches the platform, at a steady rate of resolutions, with and without a backlog.

Runs the `serve` stack in this process (the real aiohttp API on a free port, the Telegram
channel, the outbox dispatcher, the scheduler with its sweeps and the invitation wake) against
the fake Bot API over real HTTP, and posts resolved cases at `--rate` a second for
`--seconds` over HTTP, open loop (a slow answer does not slow the next post). Each case's
citizen gave their chat at the desk, so its survey is due at once. With `--backlog N`, N
invitations to other chats are queued in the outbox before the run, the way a morning after
quiet hours looks; with `--due-surveys M`, M surveys are due and not yet invited when the
run starts (the sweep's backlog). Run from the repository root:

    python benchmarks/invitation_bench.py [--rate 20] [--seconds 20] [--backlog 3000]
        [--due-surveys 0] [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Times are monotonic. A latency runs from the moment the client has the POST's 2xx answer to
the moment the fake Bot API received the invitation (its record time less its simulated
answer time, `--latency`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Run as a script from the repository root: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PTB_TIMEDELTA", "true")

import aiohttp
from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url

from benchmarks.dispatcher_bench import percentile, prepare_database
from bot.app import build_services
from bot.app import prepare_database as migrate_and_load
from bot.config import load_settings
from handlers.intake import case_posted
from handlers.intake_schema import parse_case
from handlers.units import load_units, parse_units_file
from storage.models import OutboxMessage, OutboxStatus, Priority
from tests.fakes.telegram_api import FakeTelegramAPI

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
UNITS = """
units:
  - code: HN
    name: UBND thành phố Hà Nội
    head: {name: Nguyễn Văn An, telegram_chat_id: 900}
  - code: HN-LB
    name: UBND quận Long Biên
    parent: HN
    head: {name: Lê Thị Bình, telegram_chat_id: 901}
"""
FIRST_CHAT = 20_000_000
BACKLOG_CHAT = 30_000_000
DUE_CHAT = 40_000_000


def case_body(code: str, chat: int, resolved_at: datetime) -> dict[str, Any]:
    """A case resolved now, on time, whose citizen gave their chat at the desk; a procedure
    without a courtesy message, so the invitation is the first message to the chat."""
    return {
        "case_code": code,
        "unit_code": "HN-LB",
        "procedure": {"code": "2.000815", "name": "Chứng thực bản sao", "field": "Chứng thực"},
        "officer": {"code": "CB-017", "name": "Nguyễn Thị Lan"},
        "citizen": {"name": "Trần Văn Minh", "telegram_chat_id": chat, "locale": "vi"},
        "status": "resolved",
        "received_at": (resolved_at - timedelta(days=3)).isoformat(),
        "due_at": (resolved_at + timedelta(days=3)).isoformat(),
        "resolved_at": resolved_at.isoformat(),
    }


async def queue_backlog(services: Any, count: int) -> None:
    """`count` invitations already in the outbox, waiting for the dispatcher."""
    if count <= 0:
        return
    now = datetime.now(UTC)
    rows = [
        {
            "channel": "telegram",
            "address": str(BACKLOG_CHAT + i),
            "priority": Priority.INVITATION,
            "payload": {"text": f"Mời ông/bà đánh giá hồ sơ BACKLOG-{i}"},
            "status": OutboxStatus.PENDING,
            "attempts": 0,
            "not_before": now,
            "created_at": now,
        }
        for i in range(count)
    ]
    async with services.sessions.begin() as session:
        for start in range(0, len(rows), 2000):
            await session.execute(insert(OutboxMessage), rows[start : start + 2000])


async def schedule_due_surveys(services: Any, count: int) -> None:
    """`count` cases resolved a while ago whose surveys are due and not yet invited."""
    if count <= 0:
        return
    resolved_at = datetime.now(UTC) - timedelta(hours=1)
    async with services.sessions.begin() as session:
        for i in range(count):
            body = case_body(f"DUE-{i}", DUE_CHAT + i, resolved_at)
            await case_posted(session, parse_case(body), resolved_at, services.policy)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url, schema, cleanup = await prepare_database(args.database_url)
    if schema is not None:
        url = f"{url}?search_path={schema}"
    api = FakeTelegramAPI(latency=args.latency)
    await api.start()
    port = free_port()
    settings = load_settings(database_url=url, api_tokens=TOKEN, quiet_hours="none")
    services = build_services(settings)
    server: asyncio.subprocess.Process | None = None
    try:
        await migrate_and_load(services)
        async with services.sessions.begin() as session:
            await load_units(session, parse_units_file(UNITS))
        await queue_backlog(services, args.backlog)
        await schedule_due_surveys(services, args.due_surveys)
        # The service runs as `sipas-bot serve` in its own process, as in production: the
        # load and the fake platform here do not share its event loop.
        env = {
            **os.environ,
            "SIPAS_DATABASE_URL": url,
            "SIPAS_API_TOKENS": TOKEN,
            "SIPAS_HTTP_PORT": str(port),
            "SIPAS_TELEGRAM_TOKEN": api.token,
            "SIPAS_TELEGRAM_API_URL": api.base_url,
            "SIPAS_TELEGRAM_BOT_USERNAME": api.bot_username,
            "SIPAS_QUIET_HOURS": "none",
            "SIPAS_LOG_LEVEL": args.log_level,
        }
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        command = [args.serve_script] if args.serve_script else ["-m", "bot", "serve"]
        server = await asyncio.create_subprocess_exec(
            sys.executable, *profile, *command, env=env, cwd=str(ROOT)
        )
        base = f"http://127.0.0.1:{port}"
        answered: dict[int, float] = {}
        answered_wall: dict[int, datetime] = {}
        statuses: list[int] = []

        async def post(client: aiohttp.ClientSession, number: int) -> None:
            chat = FIRST_CHAT + number
            body = case_body(f"BENCH-{number}", chat, datetime.now(UTC))
            async with client.post(
                f"{base}/api/v1/cases", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                await response.read()
                statuses.append(response.status)
                if response.status in (200, 201):
                    answered[chat] = time.monotonic()
                    answered_wall[chat] = datetime.now(UTC)

        total = int(args.rate * args.seconds)
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as client:
            await wait_healthy(client, base, server)
            cpu_before = cpu_seconds(server.pid)
            begin = time.monotonic()
            posts = []
            for number in range(total):
                delay = begin + number / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                posts.append(asyncio.create_task(post(client, number)))
            await asyncio.gather(*posts)
            # Let the last invitations arrive (the sweep, every 10 s, is the safety net).
            with contextlib.suppress(AssertionError):
                await api.wait_until(
                    lambda: len(arrivals(api, args.latency)) >= len(answered), timeout=args.grace
                )
        cpu_used = cpu_seconds(server.pid) - cpu_before
        server.send_signal(signal.SIGTERM)
        await server.wait()
        arrived = arrivals(api, args.latency)
        latencies = [(arrived[c] - t) * 1000 for c, t in answered.items() if c in arrived]
        async with services.sessions() as session:
            backlog_left = (
                await session.execute(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.status == OutboxStatus.PENDING)
                )
            ).scalar_one()
            queued = {
                int(address): (created, sent)
                for address, created, sent in await session.execute(
                    select(
                        OutboxMessage.address, OutboxMessage.created_at, OutboxMessage.sent_at
                    ).where(OutboxMessage.dedupe_key.like("invite:%"))
                )
            }
        return {
            "backend": make_url(url).get_backend_name(),
            "posted": total,
            "non_2xx": sum(1 for s in statuses if s not in (200, 201)),
            "latencies": latencies,
            "missing": len(answered) - len(latencies),
            "backlog_left": backlog_left,
            "cpu_ms_per_case": cpu_used * 1000 / max(1, total),
            "to_queue": [
                (queued[c][0] - t).total_seconds() * 1000
                for c, t in answered_wall.items()
                if c in queued
            ],
            "to_send": [
                (sent - created).total_seconds() * 1000
                for c, (created, sent) in queued.items()
                if sent is not None and c in answered_wall
            ],
        }
    finally:
        if server is not None and server.returncode is None:
            server.kill()
            await server.wait()
        await services.engine.dispose()
        await api.stop()
        await cleanup()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_healthy(
    client: aiohttp.ClientSession, base: str, server: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.returncode is not None:
            raise RuntimeError(f"sipas-bot serve exited with {server.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with client.get(f"{base}/healthz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError("sipas-bot serve did not become healthy within 60 s")


def arrivals(api: FakeTelegramAPI, latency: float) -> dict[int, float]:
    """First sendMessage to each bench chat: when it reached the fake (record less latency)."""
    found: dict[int, float] = {}
    for call in api.calls("sendMessage"):
        chat = int(call.chat_id) if call.chat_id is not None else 0
        if FIRST_CHAT <= chat < BACKLOG_CHAT and chat not in found:
            found[chat] = call.timestamp - latency
    return found


def report(args: argparse.Namespace, outcome: dict[str, Any]) -> None:
    values = outcome["latencies"]
    print(
        f"{outcome['backend']}: {outcome['posted']} resolutions at {args.rate:g}/s for "
        f"{args.seconds:g}s; backlog {args.backlog} queued invitations, "
        f"{args.due_surveys} due surveys; platform latency {args.latency * 1000:.0f} ms"
    )
    if not values:
        print("  no invitation arrived")
        return
    print(
        f"  2xx -> invitation at the platform: p50 {statistics.median(values):.0f} ms, "
        f"p95 {percentile(values, 0.95):.0f} ms, p99 {percentile(values, 0.99):.0f} ms, "
        f"max {max(values):.0f} ms ({len(values)} measured, {outcome['missing']} missing, "
        f"{outcome['non_2xx']} non-2xx answers)"
    )
    for label, key in (("2xx -> invitation queued", "to_queue"), ("queued -> sent", "to_send")):
        part = outcome[key]
        if part:
            print(
                f"  {label}: p50 {statistics.median(part):.0f} ms, "
                f"p99 {percentile(part, 0.99):.0f} ms (wall clock)"
            )
    print(f"  outbox still pending at the end: {outcome['backlog_left']}")
    print(
        f"  the serve process used {outcome['cpu_ms_per_case']:.1f} ms of CPU per resolution "
        f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="resolutions a second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=0, help="invitations queued beforehand")
    parser.add_argument("--due-surveys", type=int, default=0, help="surveys due beforehand")
    parser.add_argument("--grace", type=float, default=15.0, help="wait for stragglers")
    parser.add_argument(
        "--database-url", help="default: a temporary SQLite file; PostgreSQL gets a temp schema"
    )
    parser.add_argument(
        "--latency", type=float, default=0.05, help="platform answer time in seconds"
    )
    parser.add_argument("--log-level", default="WARNING", help="of the serve process")
    parser.add_argument("--serve-script", help="a script to run instead of `-m bot serve`")
    parser.add_argument("--profile", help="run serve under cProfile, writing this file")
    args = parser.parse_args()
    report(args, asyncio.run(run(args)))


if __name__ == "__main__":
    main()
