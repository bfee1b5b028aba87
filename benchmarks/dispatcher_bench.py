"""Outbox dispatcher under a backlog: sending rate against the limit, and reply latency.

Fills the outbox with invitations to distinct chats, runs the Dispatcher with the default
limits (30 messages/s in all, 1/s per chat) against the fake Bot API over real HTTP (PTB's
`Bot` through `TelegramSender`), and meanwhile plays a person answering with buttons every
`--reply-interval` seconds, the way the Telegram channel does: one transaction queues the next
question and the edit of the pressed one (the checkmark, through the outbox since edits count
against the limits too), then `wake()`. Run from the repository root:

    python benchmarks/dispatcher_bench.py [--invitations 10000] [--seconds 20]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--in-process]

Times are taken with the monotonic clock: a reply's latency runs from the commit of its
enqueue to the moment the fake API received the sendMessage call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as a script from the repository root: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# PTB 22 warns on every RetryAfter unless opted in to timedeltas; the sender handles both.
os.environ.setdefault("PTB_TIMEDELTA", "true")

from sqlalchemy import insert
from sqlalchemy.engine import make_url

from bot.outbox import Dispatcher, Sender
from handlers.clock import SystemClock
from storage.db import create_engine, create_session_factory
from storage.migrate import upgrade
from storage.models import OutboxMessage, OutboxStatus, Priority
from storage.repositories import outbox

ANSWERING_CHAT = 4242
FIRST_INVITED_CHAT = 10_000_000


class InProcessSender:
    """Stands in for the platform when the HTTP fake is not wanted: records arrival times."""

    channel = "telegram"

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.arrivals: list[tuple[str, str, float]] = []

    async def send(
        self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
    ) -> str | None:
        # Arrives now; the platform answers after its latency.
        self.arrivals.append((address, str(payload["text"]), time.monotonic()))
        await asyncio.sleep(self.latency)
        return str(len(self.arrivals))


class TimedSender:
    """Wraps a sender to note when the dispatcher handed it each reply (its queueing delay)."""

    def __init__(self, inner: Sender, watched: str) -> None:
        self.channel = inner.channel
        self._inner = inner
        self._watched = watched
        self.dispatched: dict[str, float] = {}
        self.starts: list[float] = []

    async def send(
        self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
    ) -> str | None:
        self.starts.append(time.monotonic())
        if address == self._watched:
            self.dispatched.setdefault(str(payload["text"]), time.monotonic())
        return await self._inner.send(address, payload, clear_buttons_of=clear_buttons_of)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def fill(sessions: Any, invitations: int) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "channel": "telegram",
            "address": str(FIRST_INVITED_CHAT + i),
            "priority": Priority.INVITATION,
            "payload": {"text": f"Mời ông/bà đánh giá hồ sơ #{i}"},
            "status": OutboxStatus.PENDING,
            "attempts": 0,
            "not_before": now,
            "created_at": now,
        }
        for i in range(invitations)
    ]
    async with sessions.begin() as session:
        for start in range(0, len(rows), 2000):
            await session.execute(insert(OutboxMessage), rows[start : start + 2000])


async def bench(args: argparse.Namespace) -> None:
    url, schema, cleanup = await prepare_database(args.database_url)
    engine = create_engine(url, schema=schema)
    try:
        await upgrade(engine)
        sessions = create_session_factory(engine)
        started = time.monotonic()
        await fill(sessions, args.invitations)
        print(
            f"database: {make_url(url).get_backend_name()}; "
            f"{args.invitations} invitations enqueued in {time.monotonic() - started:.1f}s"
        )
        await run_with_platform(args, sessions)
        async with sessions() as session:
            left = await outbox.pending_count(session)
        print(f"backlog left: {left} messages pending")
    finally:
        await engine.dispose()
        await cleanup()


async def run_with_platform(args: argparse.Namespace, sessions: Any) -> None:
    if args.in_process:
        fake = InProcessSender(args.latency)
        print(f"platform: in-process fake sender (latency {args.latency * 1000:.0f} ms)")
        report(args, await run_dispatcher(args, sessions, fake, lambda: fake.arrivals))
        return

    from telegram import Bot

    from bot.channels.telegram.request import AiohttpRequest
    from bot.channels.telegram.sender import TelegramSender

    # The service's request class, telling the dispatcher when each call reaches the wire. A
    # bare Bot has one HTTP connection (PTB's default), which caps sending at one request
    # per round trip; the service's Application gets PTB's application default of 256.
    request = AiohttpRequest(connection_pool_size=16, tell_the_wire=True)
    async with (
        fake_api_in_thread(args.latency) as api,
        Bot(api.token, base_url=api.base_url, request=request) as bot,
    ):
        print(
            "platform: FakeTelegramAPI over real HTTP, python-telegram-bot Bot + TelegramSender"
            f" (server latency {args.latency * 1000:.0f} ms)"
        )

        def arrived() -> list[tuple[str, str, float]]:
            # The fake stamps a sendMessage after its answer delay, an edit without one: the
            # arrival is the stamp less that delay.
            return [
                (
                    str(call.chat_id),
                    call.text or "",
                    call.timestamp - (args.latency if call.method == "sendMessage" else 0.0),
                )
                for call in api.sent
                if call.method in ("sendMessage", "editMessageText")
            ]

        report(args, await run_dispatcher(args, sessions, TelegramSender(bot), arrived))


@contextlib.asynccontextmanager
async def fake_api_in_thread(latency: float) -> AsyncIterator[Any]:
    """The fake Bot API on an event loop of its own: the dispatcher's work (claims, settling)
    must not delay the moment the platform stamps an arrival, or the stamps would bunch."""
    from tests.fakes.telegram_api import FakeTelegramAPI

    loop = asyncio.new_event_loop()
    api = FakeTelegramAPI(latency=latency)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(api.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(api.stop())
        loop.close()

    thread = threading.Thread(target=serve, name="fake-bot-api", daemon=True)
    thread.start()
    await asyncio.to_thread(ready.wait)
    try:
        yield api
    finally:
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)


async def run_dispatcher(
    args: argparse.Namespace, sessions: Any, sender: Sender, arrivals: Any
) -> Outcome:
    timed = TimedSender(sender, str(ANSWERING_CHAT))
    dispatcher = Dispatcher(sessions, {"telegram": timed}, SystemClock())  # default limits
    stop = asyncio.Event()
    enqueued: dict[str, float] = {}

    async def answering_person() -> None:
        n = 0
        pressed: int | None = None  # the outbox row of the question last pressed
        while not stop.is_set():
            await asyncio.sleep(args.reply_interval)
            text = f"reply {n}"
            async with sessions.begin() as session:
                if pressed is not None:
                    message_id = await outbox.platform_message_id(
                        session, pressed, channel="telegram", address=str(ANSWERING_CHAT)
                    )
                    if message_id is not None:
                        await outbox.enqueue(
                            session,
                            channel="telegram",
                            address=str(ANSWERING_CHAT),
                            payload={"text": f"{n} ✔", "edit_message_id": message_id},
                            priority=Priority.REPLY + 1,
                        )
                row = await outbox.enqueue(
                    session,
                    channel="telegram",
                    address=str(ANSWERING_CHAT),
                    payload={"text": text},
                    priority=Priority.REPLY,
                )
                assert row is not None
                pressed = row.id
            enqueued[text] = time.monotonic()
            dispatcher.wake()
            n += 1

    begin = time.monotonic()
    running = asyncio.create_task(dispatcher.run(stop))
    person = asyncio.create_task(answering_person())
    await asyncio.sleep(args.seconds)
    stop.set()
    end = time.monotonic()
    await running
    person.cancel()
    return Outcome(arrivals(), enqueued, timed.dispatched, timed.starts, begin, end)


@dataclass
class Outcome:
    arrivals: list[tuple[str, str, float]]  # (chat, text, when the platform recorded it)
    enqueued: dict[str, float]  # reply text -> when its enqueue committed
    dispatched: dict[str, float]  # reply text -> when the dispatcher called the sender
    starts: list[float]  # every call of the sender
    begin: float
    end: float


def busiest_second(times: list[float]) -> int:
    """The most events in any window of one second (times sorted)."""
    most, first = 0, 0
    for last, moment in enumerate(times):
        while times[first] <= moment - 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def summary(values: list[float]) -> str:
    return (
        f"p50 {statistics.median(values):.0f} ms, p95 {percentile(values, 0.95):.0f} ms, "
        f"max {max(values):.0f} ms"
    )


def report(args: argparse.Namespace, outcome: Outcome) -> None:
    arrivals, enqueued, begin, end = (
        outcome.arrivals,
        outcome.enqueued,
        outcome.begin,
        outcome.end,
    )
    in_window = [a for a in arrivals if begin <= a[2] <= end]
    times = sorted(a[2] for a in in_window)
    duration = end - begin
    print(f"ran {duration:.1f}s with limits 30/s in all, 1/s per chat")
    print(
        f"sent: {len(in_window)} messages (sends and edits), {len(in_window) / duration:.2f}/s "
        f"(limit 30/s = {30 * duration:.0f} in this time)"
    )
    print(
        f"busiest 1-second window: {busiest_second(sorted(outcome.starts))} sends started by "
        f"the dispatcher, {busiest_second(times)} messages recorded by the platform"
    )

    replies = [a for a in in_window if a[0] == str(ANSWERING_CHAT)]
    latencies = [(t - enqueued[text]) * 1000 for _, text, t in replies if text in enqueued]
    queued = [
        (outcome.dispatched[text] - enqueued[text]) * 1000
        for text in enqueued
        if text in outcome.dispatched
    ]
    unsent = len(enqueued) - len(latencies)
    if latencies:
        print(
            f"replies: {len(enqueued)} enqueued, one every {args.reply_interval:g}s (each with"
            " the edit of the pressed question), to one answering chat"
        )
        print(f"  commit -> dispatcher calls the sender: {summary(queued)}")
        print(
            f"  commit -> the message arrived at the platform: {summary(latencies)}"
            + (f"; {unsent} not sent at stop" if unsent else "")
        )
        reply_times = sorted(t for _, _, t in replies)
        gaps = [b - a for a, b in itertools.pairwise(reply_times)]
        if gaps:
            print(
                f"  smallest gap between two messages to that chat at the platform: "
                f"{min(gaps):.3f}s"
            )


async def prepare_database(url: str | None) -> tuple[str, str | None, Any]:
    """A throw-away database: a temporary SQLite file, or a fresh PostgreSQL schema."""
    if url is None:
        directory = tempfile.TemporaryDirectory(prefix="sipas-bench-")

        async def remove_file() -> None:
            directory.cleanup()

        return f"sqlite+aiosqlite:///{directory.name}/bench.db", None, remove_file
    if make_url(url).get_backend_name() != "postgresql":
        return url, None, _nothing
    import asyncpg  # type: ignore[import-untyped]

    schema = f"bench_{secrets.token_hex(4)}"
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')

    async def drop_schema() -> None:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()

    return url, schema, drop_schema


async def _nothing() -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invitations", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    # A person reads a question and presses an answer every few seconds; each press makes
    # two messages to that chat (the next question, the edit of the pressed one).
    parser.add_argument("--reply-interval", type=float, default=2.5)
    parser.add_argument(
        "--database-url", help="default: a temporary SQLite file; PostgreSQL gets a temp schema"
    )
    parser.add_argument(
        "--latency", type=float, default=0.05, help="platform answer time in seconds"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="skip HTTP: an in-process fake platform"
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
