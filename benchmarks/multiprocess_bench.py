"""Three `sipas-bot serve` processes share one bot: rate, limits and delivery across a kill -9.

Starts N `serve` processes (webhook mode) together on an empty PostgreSQL schema (they race
to migrate it), posts resolved cases to them round-robin as a load balancer would, kills the
elected sender with SIGKILL once a third of the invitations arrived, and reads what a fake Bot
API (over real HTTP, in this process, answering after `--latency`) recorded on arrival:

- messages a second while the backlog drained, against the bot-wide limit (default 30/s);
- the most messages in any one-second window (sliding, and by calendar second);
- the most messages to one chat in any one-second window;
- every invitation delivered, and how many twice.

Run from the repository root (PostgreSQL required; a temporary schema is dropped after):

    python benchmarks/multiprocess_bench.py [--cases 600] [--processes 3] [--no-kill]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

No TLS proxy in front: the processes run in webhook mode but this benchmark sends no updates
in, so TLS would only add a hop that no measured message crosses.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

# Run as a script from the repository root: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PTB_TIMEDELTA", "true")

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from tests.fakes.telegram_api import FakeTelegramAPI
from tests.multiprocess_support import (
    arrival,
    invitations,
    load_units,
    message_calls,
    most_in_a_calendar_second,
    most_in_a_window,
    per_chat_most,
    post_batches,
    start_serves,
)

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def bench(args: argparse.Namespace) -> None:
    schema = f"bench_{secrets.token_hex(4)}"
    dsn = args.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{args.database_url}?search_path={schema}"
    try:
        if args.logs is not None:  # keep the serve logs there
            args.logs.mkdir(parents=True, exist_ok=True)
            await run(args, url, args.logs)
        else:
            with tempfile.TemporaryDirectory(prefix="sipas-mp-bench-") as directory:
                await run(args, url, Path(directory))
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


async def run(args: argparse.Namespace, url: str, directory: Path) -> None:
    async with FakeTelegramAPI(latency=args.latency) as api:
        started = time.monotonic()
        serves = await start_serves(
            args.processes,
            url,
            api,
            directory,
            send_rate_global=str(args.rate),
            send_rate_per_chat="1",
            # Quiet hours until every case is in: then all invitations are due at once.
            quiet_hours=quiet_until(args.hold),
            # With --logs, each send is logged (masked) to see a takeover to the millisecond.
            log_level="DEBUG" if args.logs is not None else "INFO",
        )
        print(
            f"{args.processes} serve processes started together on an empty PostgreSQL schema:"
            f" all healthy after {time.monotonic() - started:.1f}s"
        )
        killed_at: float | None = None
        sampler: asyncio.Task[None] | None = None
        backlog: list[tuple[float, int]] = []
        try:
            await load_units(url)
            posted = time.monotonic()
            # In a thread of its own, so that posting does not stall the fake's event loop
            # (and with it the arrival stamps).
            await asyncio.to_thread(asyncio.run, post_batches(serves, range(args.cases)))
            print(
                f"{args.cases} resolved cases posted (batches of 50) in "
                f"{time.monotonic() - posted:.1f}s; invitations held by quiet hours until "
                f"{quiet_until(args.hold, started=now_local).split('-')[1]} local time"
            )
            sampler = asyncio.create_task(sample_backlog(url, backlog))
            deadline = time.monotonic() + args.timeout
            async with aiohttp.ClientSession() as client:
                if not args.no_kill:
                    await api.wait_until(
                        lambda: len(invitations(api)) >= args.cases // 3, args.timeout
                    )
                    leaders = [s for s in serves if await s.is_leader(client)]
                    print(f"elected senders before the kill: {len(leaders)}")
                    leaders[0].kill()
                    killed_at = time.monotonic()
                    print(
                        f"kill -9 of the sender after {len(invitations(api))} invitations, "
                        f"at {datetime.now():%H:%M:%S.%f}"[:-3]
                    )
            await api.wait_until(
                lambda: len(invitations(api)) >= args.cases, max(1.0, deadline - time.monotonic())
            )
            await asyncio.sleep(2.0)  # would a duplicate still come?
        finally:
            if sampler is not None:
                sampler.cancel()
            await asyncio.gather(*(serve.stop() for serve in serves))
        report(args, api, killed_at, directory, backlog)


now_local = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh"))


def quiet_until(hold: int, started: datetime | None = None) -> str:
    """SIPAS_QUIET_HOURS from two minutes ago to the first full minute `hold` seconds on."""
    begin = started or now_local
    end = begin + timedelta(seconds=hold + 60 - (begin.second + hold) % 60)
    return f"{(begin - timedelta(minutes=2)):%H:%M}-{end:%H:%M}"


async def sample_backlog(url: str, samples: list[tuple[float, int]]) -> None:
    """Every 0.2 s: how many messages are due and unsent (the backlog the sender works on)."""
    base, schema = url.split("?search_path=", 1)
    connection = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        while True:
            count = await connection.fetchval(
                f'SELECT count(*) FROM "{schema}".outbox '
                "WHERE status = 'pending' AND not_before <= now()"
            )
            samples.append((time.monotonic(), int(count)))
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


def rate_under_backlog(
    arrivals: list[float], samples: list[tuple[float, int]], rate: float
) -> tuple[float, float]:
    """Messages a second over the sample intervals that began with at least a second's work
    due (`rate` messages): what the sender achieves when it is the bottleneck. Returns the
    rate and the seconds it was measured over."""
    busy = [(start, end) for (start, due), (end, _) in itertools.pairwise(samples) if due >= rate]
    seconds = sum(end - start for start, end in busy)
    sent = sum(1 for t in arrivals if any(start <= t < end for start, end in busy))
    return (sent / seconds if seconds else 0.0), seconds


def report(
    args: argparse.Namespace,
    api: FakeTelegramAPI,
    killed_at: float | None,
    directory: Path,
    backlog: list[tuple[float, int]],
) -> None:
    received = invitations(api)
    calls = message_calls(api)
    # The fake stamps a sendMessage after its answer delay, an edit without one.
    arrivals = sorted(arrival(call, args.latency) for call in calls)
    first, last = arrivals[0], arrivals[-1]
    span = last - first
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    longest = max(gaps, default=0.0)
    duplicates = sum(len(c) - len({x.text for x in c}) for c in received.values())
    print(f"limits: {args.rate:g}/s in all, 1/s per chat; platform answer time {args.latency}s")
    print(
        f"invitations: {len(received)} of {args.cases} chats reached, {duplicates} delivered twice"
    )
    print(
        f"messages: {len(calls)} in {span:.1f}s from the first to the last = "
        f"{len(calls) / span:.2f}/s ({len(calls) / span / args.rate:.1%} of the limit)"
    )
    if killed_at is not None:
        print(
            f"  longest pause between two messages: {longest:.2f}s (the takeover after the kill);"
            f" without it {len(calls) / (span - longest):.2f}/s "
            f"({len(calls) / (span - longest) / args.rate:.1%} of the limit)"
        )
    under, seconds = rate_under_backlog(arrivals, backlog, args.rate)
    print(
        f"  while at least {args.rate:g} messages were due (sampled every 0.2 s, {seconds:.1f}s"
        f" in all): {under:.2f}/s ({under / args.rate:.1%} of the limit)"
    )
    if killed_at is not None:
        after = [t for t in arrivals if t > killed_at]
        if after:
            print(f"  first message after the kill: {after[0] - killed_at:.2f}s later")
    print(
        f"most messages in any 1 s window: {most_in_a_window(arrivals)} "
        f"(by calendar second: {most_in_a_calendar_second(arrivals)}); limit {args.rate:g}"
    )
    print(f"most messages to one chat in any 1 s window: {per_chat_most(calls, args.latency)}")
    errors = sum(
        log.read_text(errors="replace").count(" ERROR ") for log in directory.glob("serve-*.log")
    )
    print(f"ERROR lines in the serve logs: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument(
        "--hold", type=int, default=50, help="seconds of quiet hours from start (posting time)"
    )
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--logs", type=Path, help="keep the serve processes' logs in this folder")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
